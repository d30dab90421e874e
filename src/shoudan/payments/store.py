"""The payment path's own SQL, on the driver cursor of the use case's transaction.

A payment is the busiest write of the system (every sale of every terminal): here each step
is one statement written by hand, not a unit of work of the ORM, whose per-statement cost was
most of a payment's CPU (docs/benchmarks.md). The rules stay in ``service.py`` and
``domain.py``; these functions only read and write rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from shoudan.core.db import DriverSQL
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.merchants.domain import MerchantStatus
from shoudan.payments.models import Payment, PaymentStatusChange
from shoudan.pricing.domain import FeePlan
from shoudan.pricing.service import get_plan
from shoudan.terminals.domain import TerminalStatus, is_terminal_id
from shoudan.terminals.service import terminal_not_found

CARD, MERCHANT = "card", "merchant"
PAYMENT_COLUMNS = tuple(column.key for column in Payment.__table__.columns)


@dataclass(frozen=True, slots=True)
class PaymentPoint:
    """What a payment needs to know of its terminal and merchant, read in one statement."""

    terminal_id: str
    product: str
    terminal_status: str
    merchant_id: str
    merchant_status: str
    fee_plan_code: str
    daily_limit: int | None

    def check_can_pay(self) -> None:
        """Both able to take a payment (the rule of ``terminals.service.payment_point``)."""
        if self.terminal_status != TerminalStatus.ACTIVE.value:
            raise DomainError(
                ErrorCode.TERMINAL_INACTIVE, f"the terminal is {self.terminal_status}",
                terminal_id=self.terminal_id, terminal_status=self.terminal_status,
            )  # fmt: skip
        if self.merchant_status != MerchantStatus.ACTIVE.value:
            raise DomainError(
                ErrorCode.MERCHANT_INACTIVE, f"the merchant is {self.merchant_status}",
                merchant_id=self.merchant_id, merchant_status=self.merchant_status,
            )  # fmt: skip


class PlanCache:
    """Fee plans by code, each read once: a plan never changes (a new rate is a new code)."""

    def __init__(self) -> None:
        self._plans: dict[str, FeePlan] = {}

    def cached(self, code: str) -> FeePlan | None:
        return self._plans.get(code)

    def get(self, session: Session, code: str) -> FeePlan:
        plan = self._plans.get(code)
        if plan is None:
            plan = self._plans[code] = get_plan(session, code)
        return plan


def load_point(driver: DriverSQL, terminal_id: str) -> PaymentPoint:
    """The terminal and its merchant, or ``terminal_not_found``; not checked yet (a retry is
    answered before a terminal suspended since is refused)."""
    if not is_terminal_id(terminal_id):
        raise terminal_not_found(terminal_id)
    rows = driver.execute(
        "SELECT t.product, t.status, t.merchant_id, m.status, m.fee_plan_code, m.daily_limit"
        " FROM terminals t JOIN merchants m ON m.merchant_id = t.merchant_id"
        " WHERE t.terminal_id = ?",
        (terminal_id,),
    )
    if not rows:
        raise terminal_not_found(terminal_id)
    product, status, merchant_id, merchant_status, plan_code, daily_limit = rows[0]
    return PaymentPoint(
        terminal_id, product, status, merchant_id, merchant_status, plan_code,
        None if daily_limit is None else int(daily_limit),
    )  # fmt: skip


def lock_payment(driver: DriverSQL, payment_id: str) -> Payment:
    """The payment, row-locked for the rest of the transaction, read only: a detached copy
    for a use case that changes other rows because of it (a refund request)."""
    rows = driver.load(Payment, "id = ?", (payment_id,), for_update=True)
    if not rows:
        raise DomainError(ErrorCode.PAYMENT_NOT_FOUND, "payment not found")
    return rows[0]


def has_idempotency_key(driver: DriverSQL, merchant_id: str, key: str) -> bool:
    """Has the merchant a payment made with this Idempotency-Key (a retry)?"""
    return bool(
        driver.execute(
            "SELECT 1 FROM payments WHERE merchant_id = ? AND idempotency_key = ?",
            (merchant_id, key),
        )
    )


RRN_SEQUENCE_SIZE = 9_999_999  # the 7-digit sequence part of an RRN (``compose_rrn``)


def draw_rrn_numbers(driver: DriverSQL, day: str, count: int) -> list[int]:
    """``count`` sequence parts of new payments' RRNs, 1 … 9,999,999, never the same twice in
    a business day while the day has fewer payments than that. PostgreSQL: a sequence (no
    lock: payments commit side by side); its values wrap around, and any run of fewer than
    9,999,999 consecutive values is distinct. SQLite: the day's counter row, advanced by
    ``count`` (the write transaction is exclusive anyway)."""
    if driver.is_sqlite:
        last = advance_rrn(driver, day, count)
        return list(range(last - count + 1, last + 1))
    rows = driver.execute(
        "SELECT nextval('payment_rrn_seq') FROM generate_series(1, CAST(? AS integer))",
        (count,),
    )
    return [(int(value) - 1) % RRN_SEQUENCE_SIZE + 1 for (value,) in rows]


def advance_rrn(driver: DriverSQL, day: str, step: int) -> int:
    """Add ``step`` to the business day's RRN counter (created at 0 if needed) and return its
    value (SQLite's RRNs: ``draw_rrn_numbers``)."""
    ((value,),) = driver.execute(
        "INSERT INTO rrn_counters (business_date, last_value) VALUES (?, ?)"
        " ON CONFLICT (business_date) DO UPDATE"
        " SET last_value = rrn_counters.last_value + excluded.last_value RETURNING last_value",
        (day, step),
    )
    return int(value)


def _scopes(card_token: str | None, merchant_id: str) -> list[tuple[str, str]]:
    return [(MERCHANT, merchant_id)] + ([(CARD, card_token)] if card_token else [])


def _by_scope(rows: list[Any]) -> tuple[int, int]:
    found = {scope: int(amount) for scope, amount in rows}
    return found.get(CARD, 0), found.get(MERCHANT, 0)


def day_totals(
    driver: DriverSQL, card_token: str | None, merchant_id: str, day: str
) -> tuple[int, int]:
    """(this card's, this merchant's) approved amounts of the business day: two rows of the
    running totals, whatever the day's volume."""
    scopes = _scopes(card_token, merchant_id)
    wanted = " OR ".join(["(scope = ? AND scope_key = ?)"] * len(scopes))
    return _by_scope(
        driver.execute(
            "SELECT scope, amount FROM payment_day_totals"
            f" WHERE business_date = ? AND ({wanted})",
            (day, *(value for scope in scopes for value in scope)),
        )
    )


def count(driver: DriverSQL, payment: Payment, delta: int) -> tuple[int, int]:
    """Add ``delta`` fen to the running totals of the payment's business day (its card's and
    its merchant's) in one statement; returns the (card, merchant) totals after it."""
    scopes = _scopes(payment.card_token, payment.merchant_id)
    values = ", ".join(["(?, ?, ?, ?)"] * len(scopes))
    return _by_scope(
        driver.execute(
            f"INSERT INTO payment_day_totals (business_date, scope, scope_key, amount) VALUES"
            f" {values} ON CONFLICT (business_date, scope, scope_key) DO UPDATE"
            " SET amount = payment_day_totals.amount + excluded.amount RETURNING scope, amount",
            [v for scope, key in scopes for v in (payment.business_date, scope, key, delta)],
        )
    )


def insert_payments(driver: DriverSQL, payments: Sequence[Payment]) -> None:
    """Insert new payments (transient objects, every column set), a row each, in one go."""
    # straight from each object's __dict__ (every column set, nothing loaded lazily): the
    # instrumented attributes cost more than the row's statement
    driver.insert_many(
        Payment, [{column: vars(p)[column] for column in PAYMENT_COLUMNS} for p in payments]
    )


def insert_history(driver: DriverSQL, rows: Sequence[Mapping[str, object]]) -> None:
    """Status history rows (``payment_status_history``), in one go."""
    driver.insert_many(PaymentStatusChange, rows)


def times_in(driver: DriverSQL, payment_id: str, status: str) -> int:
    """How often the payment has entered ``status`` (a reversed void or completion lets it
    enter one again): the generation of its next such change's ledger entry and event."""
    [(count,)] = driver.execute(
        "SELECT count(*) FROM payment_status_history WHERE payment_id = ? AND to_status = ?",
        (payment_id, status),
    )
    return int(count)
