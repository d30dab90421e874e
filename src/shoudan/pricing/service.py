"""Fee plan use cases. They run inside the caller's transaction (``session``), so creating a
plan commits or rolls back with whatever else the use case does.

Plans are immutable once stored: payments record the plan code and the rate they were priced
at, and a plan whose rates changed under them would make old quotes unexplainable. A new rate
is a new plan (code).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shoudan.core.clock import Clock, SystemClock
from shoudan.core.db import is_sqlite
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.pricing.domain import DEFAULT_PLANS, FeePlan, plan_from_dict, plan_to_dict
from shoudan.pricing.models import FeePlanRecord


def _definition(plan: FeePlan) -> str:
    return json.dumps(plan_to_dict(plan), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _insert(session: Session, plan: FeePlan, clock: Clock) -> bool:
    """INSERT … ON CONFLICT DO NOTHING: True when this call stored the plan. Race-free, so two
    processes seeding the defaults at once neither fail nor duplicate."""
    insert = sqlite_insert if is_sqlite(session) else pg_insert
    statement = (
        insert(FeePlanRecord)
        .values(
            code=plan.code, name=plan.name, definition=_definition(plan), created_at=clock.now()
        )
        .on_conflict_do_nothing(index_elements=["code"])
        .returning(FeePlanRecord.code)
    )
    # RETURNING, not rowcount: the row comes back only when this statement inserted it.
    return session.execute(statement).scalar_one_or_none() is not None


def ensure_default_plans(
    session: Session, clock: Clock | None = None, plans: Iterable[FeePlan] = DEFAULT_PLANS
) -> list[str]:
    """Store the default plans that are missing; returns the codes it created. Idempotent, and
    an existing plan with a default's code is left as it is (never overwritten)."""
    clock = clock or SystemClock()
    return [plan.code for plan in plans if _insert(session, plan, clock)]


def create_plan(session: Session, plan: FeePlan, clock: Clock | None = None) -> FeePlan:
    if not isinstance(plan, FeePlan):
        raise DomainError(ErrorCode.INVALID_INPUT, "create_plan needs a FeePlan")
    if not _insert(session, plan, clock or SystemClock()):
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"fee plan {plan.code!r} already exists", plan_code=plan.code
        )
    return plan


@lru_cache(maxsize=256)
def _parse(definition: str) -> FeePlan:
    """Plans are immutable (a new rate is a new plan code), so a definition parses once per
    process: every payment needs its plan, and parsing costs more than the query."""
    return plan_from_dict(json.loads(definition))


def _load(record: FeePlanRecord) -> FeePlan:
    plan = _parse(record.definition)
    if plan.code != record.code:
        raise DomainError(
            ErrorCode.INTERNAL_ERROR, f"fee plan row {record.code!r} holds plan {plan.code!r}"
        )
    return plan


def get_plan(session: Session, code: str) -> FeePlan:
    record = session.get(FeePlanRecord, code) if isinstance(code, str) else None
    if record is None:
        raise DomainError(ErrorCode.FEE_PLAN_NOT_FOUND, f"no fee plan {code!r}", plan_code=code)
    return _load(record)


def list_plans(session: Session) -> list[FeePlan]:
    """Every stored plan, by code."""
    records = session.execute(select(FeePlanRecord).order_by(FeePlanRecord.code)).scalars()
    return [_load(record) for record in records]
