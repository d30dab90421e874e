"""/v1/settlements, /v1/payouts and merchant statements (docs/settlement.md).

Finance staff start a run (``POST /v1/settlements/run``, refused until the cut-off of the last
trade date it settles); staff list runs, merchants list their own settlements and payouts; a
merchant's statement is a file download in CSV, XLSX or PDF. Another tenant's merchant answers
404.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.auth.domain import Role
from shoudan.container import Container
from shoudan.settlement.domain import PayoutStatus
from shoudan.settlement.models import Payout, SettlementItem, SettlementRun
from shoudan.settlement.service import SettlementService
from shoudan.settlement.statements import MEDIA_TYPES

router = APIRouter(tags=["settlement"])


def service(container: Container) -> SettlementService:
    return SettlementService(
        container.database, container.ledger, container.vault, container.clock
    )


class RunIn(BaseModel):
    date: dt.date = Field(description="The settlement date (Asia/Shanghai), YYYY-MM-DD.")


class SettlementOut(BaseModel):
    """A run (staff), or one merchant's part of it (that merchant): amounts in fen."""

    run_id: str
    run_key: str
    term: str
    run_date: str
    status: str
    merchant_id: str | None
    merchants: int
    payments: int
    settled_amount: int
    d0_fees: int
    debt_collected: int
    debt_carried: int
    payouts: int
    payout_amount: int
    blocked: int
    started_at: dt.datetime
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, run: SettlementRun) -> SettlementOut:
        return cls(
            run_id=run.id, run_key=run.run_key, term=run.term, run_date=run.run_date,
            status=run.status, merchant_id=None, merchants=run.merchants, payments=run.payments,
            settled_amount=run.settled_amount, d0_fees=run.d0_fees,
            debt_collected=run.debt_collected, debt_carried=run.debt_carried,
            payouts=run.payouts, payout_amount=run.payout_amount, blocked=run.blocked,
            started_at=run.started_at, finished_at=run.finished_at,
        )  # fmt: skip

    @classmethod
    def of_item(cls, run: SettlementRun, item: SettlementItem) -> SettlementOut:
        return cls.of(run).model_copy(update={
            "merchant_id": item.merchant_id, "merchants": 1, "payments": item.payments,
            "settled_amount": item.moved, "d0_fees": item.d0_fee,
            "debt_collected": item.debt_collected, "debt_carried": item.debt_carried,
            "payouts": 1 if item.payout_amount else 0, "payout_amount": item.payout_amount,
            "blocked": 0,
        })  # fmt: skip


class SettlementList(BaseModel):
    data: list[SettlementOut]


class PayoutOut(BaseModel):
    id: str
    merchant_id: str
    run_id: str | None
    status: PayoutStatus
    amount: int
    currency: str
    account: str | None = Field(description="The settlement account, masked.")
    holder_name: str | None
    block_reason: str | None = Field(description="Why staff must act before it can go out.")
    batch_id: str | None
    batch_line: int | None
    bank_reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    completed_at: dt.datetime | None

    @classmethod
    def of(cls, payout: Payout) -> PayoutOut:
        return cls(
            id=payout.id, merchant_id=payout.merchant_id, run_id=payout.run_id,
            status=PayoutStatus(payout.status), amount=payout.amount, currency=payout.currency,
            account=payout.account_masked, holder_name=payout.holder_name,
            block_reason=payout.block_reason, batch_id=payout.batch_id,
            batch_line=payout.batch_line, bank_reason=payout.bank_reason,
            created_at=payout.created_at, updated_at=payout.updated_at,
            completed_at=payout.completed_at,
        )  # fmt: skip


@router.post("/v1/settlements/run", response_model=SettlementOut)
def run_settlement(body: RunIn, principal: PrincipalDep, container: ContainerDep) -> SettlementOut:
    """Run (or resume) the T+1 settlement of a date — finance staff. Running a completed date
    again answers its summary and changes nothing."""
    principal.require_staff(Role.FINANCE)
    run = service(container).run_t1(body.date, actor=principal.id)
    return SettlementOut.of(run)


@router.get("/v1/settlements", response_model=SettlementList)
def list_settlements(
    principal: PrincipalDep,
    container: ContainerDep,
    date: Annotated[dt.date | None, Query(description="Only the runs of this date.")] = None,
) -> SettlementList:
    """Staff: the runs, newest first. A merchant: its own part of each run."""
    settlement = service(container)
    if principal.is_staff:
        runs = settlement.list_runs(principal, date)
        return SettlementList(data=[SettlementOut.of(r) for r in runs])
    items = settlement.merchant_items(principal, date)
    return SettlementList(data=[SettlementOut.of_item(run, item) for run, item in items])


@router.get("/v1/payouts", response_model=Page[PayoutOut])
def list_payouts(
    principal: PrincipalDep,
    container: ContainerDep,
    status: PayoutStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[PayoutOut]:
    """Newest first; ``status=blocked`` is the staff's queue of payouts waiting for an account
    in the merchant's own name. Merchants see only their own."""
    after = decode_cursor(cursor) if cursor else None
    rows = service(container).list_payouts(
        principal, status.value if status else None, limit + 1, after
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return Page[PayoutOut](data=[PayoutOut.of(p) for p in page], next_cursor=next_cursor)


@router.get(
    "/v1/merchants/{merchant_id}/statements",
    response_class=Response,
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}},
)
def merchant_statement(
    merchant_id: str,
    principal: PrincipalDep,
    container: ContainerDep,
    period: Annotated[str, Query(max_length=10, description="YYYY-MM or YYYY-MM-DD")],
    format: Literal["csv", "xlsx", "pdf"] = "csv",
) -> Response:
    """The merchant's statement for a month or a day: opening balance, sales, fees, refunds,
    deposits, payouts, closing balance, day by day — every figure from the ledger."""
    name, body = service(container).statement(principal, merchant_id, period, format)
    disposition = f"attachment; filename*=UTF-8''{quote(name)}"
    return Response(body, media_type=MEDIA_TYPES[format],
                    headers={"Content-Disposition": disposition})  # fmt: skip
