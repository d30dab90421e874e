"""Property tests of settlement: the date arithmetic against the holiday calendar (pure), and
the money — for any mix of payments, refunds and deposit charges settled over several days, on
SQLite and PostgreSQL, to the fen:

    captured = payouts + fees + refunds + (deposit charges − debt carried) + balances left

where the balances left are what is not due yet (unsettled) or not paid out yet (settled).
A payout is never negative and the debt never below zero."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from shoudan.core.calendar import add_working_days, is_working_day
from shoudan.core.clock import SHANGHAI
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger import chart
from shoudan.ledger.domain import transfer
from shoudan.payments.models import Payment
from shoudan.settlement.domain import (
    amount_to_settle,
    check_run_date,
    cutoff_instant,
    due_date,
    due_run_date,
    run_opens_at,
    split_charge,
    t1_capture_boundary,
    trade_date,
)
from shoudan.settlement.models import Payout
from tests.settlement_world import build_settlement_world

instants = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 20), timezones=st.just(UTC)
)
days = st.dates(min_value=date(2026, 1, 2), max_value=date(2026, 12, 31))


@given(instants, days)
def test_a_payment_is_due_by_a_run_exactly_when_its_t1_date_has_come(
    captured: datetime, run_date: date
) -> None:
    due = due_date(trade_date(captured))
    assert (captured < t1_capture_boundary(run_date)) == (due <= run_date)
    assert is_working_day(due) and due > trade_date(captured)


@given(instants)
def test_a_sale_is_settled_on_the_eve_of_its_due_date(captured: datetime) -> None:
    """Issue #7: netting happens at the cut-off: the run of a sale's due date opens at the
    cut-off of the day before it (Monday 23:00 for Tuesday), and the worker runs it then."""
    due = due_date(trade_date(captured))
    opens = run_opens_at(due)
    assert opens == cutoff_instant(due - timedelta(days=1)) and captured < opens
    check_run_date(due, opens)
    assert due_run_date(opens) == due


@given(instants)
def test_the_worker_runs_the_latest_working_day_whose_run_is_open(now: datetime) -> None:
    run_date = due_run_date(now)
    assert is_working_day(run_date)
    check_run_date(run_date, now)
    with pytest.raises(DomainError) as caught:
        check_run_date(add_working_days(run_date, 1), now)
    assert caught.value.code is ErrorCode.SETTLEMENT_DATE_IN_FUTURE


@given(st.integers(0, 10**9), st.integers(-(10**9), 10**9))
def test_the_amount_settled_is_never_negative_nor_more_than_the_balance(
    available: int, not_due: int
) -> None:
    moved = amount_to_settle(available, not_due)
    assert 0 <= moved <= available


@given(st.integers(0, 10**9), st.integers(-(10**9), 10**9))
def test_a_charge_is_split_between_balance_and_debt_to_the_fen(amount: int, available: int) -> None:
    covered, debt = split_charge(amount, available)
    assert covered + debt == amount and covered >= 0 and debt >= 0
    assert covered <= max(0, available)


# -- the money, on both engines -------------------------------------------------------------------
operation = st.one_of(
    st.tuples(st.just("pay"), st.integers(1, 3_000_000), st.booleans()),
    st.tuples(st.just("refund"), st.integers(1, 200_000), st.booleans()),
    st.tuples(st.just("deposit"), st.integers(1, 100_000), st.just(False)),
)
DEBIT, CREDIT = "6222020000000000018", "6258070000000017"


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_settlement_arithmetic(engine: str, request: pytest.FixtureRequest,
                               tmp_path: Path) -> None:  # fmt: skip
    database: Database = request.getfixturevalue(
        "sqlite_database" if engine == "sqlite" else "pg_database"
    )
    sw = build_settlement_world(database, tmp_path)
    a = sw.world.merchant_a
    state = {"day": date(2026, 11, 2), "seq": 0, "refunds": 0, "charges": 0}

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.lists(operation, max_size=5), min_size=1, max_size=3))
    def scenario(days_of_operations: list[list[tuple[str, int, bool]]]) -> None:
        for operations in days_of_operations:
            day = state["day"]
            for index, (kind, amount, flag) in enumerate(operations):
                when = datetime(day.year, day.month, day.day, 9, index, tzinfo=SHANGHAI)
                state["seq"] += 1
                if kind == "pay":
                    card = {"pan": CREDIT if flag else DEBIT, "expiry": "2912",
                            "pin": None if flag else "123456", "entry_mode": "chip"}  # fmt: skip
                    sw.pay(when, amount, card=card)
                elif kind == "refund":
                    _refund(sw, a, amount, flag, f"refund:prop{state['seq']}", state)
                else:
                    sw.charge_debt(a, amount, f"dep:prop{state['seq']}:charge")
                    state["charges"] += amount
            run = sw.settle(day)
            assert run.payout_amount >= 0
            state["day"] = day + timedelta(days=1)
        _check_identity(sw, a, state)

    scenario()
    assert sw.world.container.ledger.verify().violations == []


def _refund(sw, merchant_id: str, amount: int, from_settled: bool, entry_id: str,
            state: dict) -> None:  # fmt: skip
    """A refund's charge to the merchant as the refunds domain books it, as far as the
    balance goes (a short balance makes a real refund wait)."""
    account = (chart.merchant_settled if from_settled else chart.merchant_unsettled)(merchant_id)
    available = sw.balance(account)
    if available <= 0:
        return
    charge = min(amount, available)
    entry = transfer(entry_id, account, chart.channel_payable("unionpay"), charge,
                     code="refund.test")  # fmt: skip
    sw.world.container.ledger.submit([entry])[0].raise_for_error()
    state["refunds"] += charge


def _check_identity(sw, merchant_id: str, state: dict) -> None:
    with sw.database.read() as session:
        captured, fees = session.execute(
            select(func.coalesce(func.sum(Payment.captured_amount), 0),
                   func.coalesce(func.sum(Payment.fee), 0))
            .where(Payment.merchant_id == merchant_id, Payment.status == "captured")
        ).one()  # fmt: skip
        amounts = list(session.scalars(
            select(Payout.amount).where(Payout.merchant_id == merchant_id,
                                        Payout.status == "pending")
        ))  # fmt: skip
    assert all(amount > 0 for amount in amounts)  # never a negative (or empty) payout
    balances = sw.merchant_balances(merchant_id)
    assert balances["debt"] >= 0
    collected = state["charges"] - balances["debt"]
    assert int(captured) == (
        sum(amounts) + int(fees) + state["refunds"] + collected
        + balances["unsettled"] + balances["settled"]
    )  # fmt: skip
    assert balances["settled"] == 0  # everything settled was paid out (accounts verified)
    assert sw.balance(chart.PAYOUTS_IN_FLIGHT) >= sum(amounts)
