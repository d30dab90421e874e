"""Settlement runs, debt and payouts end to end, on SQLite and PostgreSQL: T+1 over the
holiday calendar, the cut-off, D0 with its fee, idempotent and resumable runs, debt carried and
cleared, payouts blocked for an account not in the merchant's own name, the bank batch, its
simulator and the confirmation import (rejections back to the balance, with notifications)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from shoudan.core.clock import SHANGHAI
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger import chart
from shoudan.ledger.models import LedgerEntry
from shoudan.ledger.repository import LedgerRepository
from shoudan.notifications.service import stats as outbox_stats
from shoudan.payments.models import Payment
from shoudan.settlement import bankfile
from shoudan.settlement.models import Payout, PayoutStatusChange, SettlementItem
from shoudan.settlement.simulator import simulate
from shoudan.sms.models import SmsMessage
from shoudan.webhooks.models import Event
from tests.settlement_world import (
    CLOSED_ACCOUNT,
    GOOD_ACCOUNT,
    SettlementWorld,
    build_settlement_world,
)

MON = datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI)  # a Monday, a working day


@contextmanager
def usual_umask() -> Iterator[None]:
    """022, as on most machines: a file must be owner-only whatever the umask."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


class PowerCut(BaseException):
    """The process dies: nothing in the run may catch it (an ordinary error is caught per
    merchant)."""


@pytest.fixture
def sw(database: Database, tmp_path: Path):
    world = build_settlement_world(database, tmp_path)
    yield world
    report = world.world.container.ledger.verify()
    assert report.violations == [], report.violations
    world.rw.run_worker()
    with world.database.read() as session:
        assert outbox_stats(session)["dead"] == 0


def entries(sw: SettlementWorld) -> int:
    with sw.database.read() as session:
        return int(session.scalar(select(func.count()).select_from(LedgerEntry)) or 0)


def payouts(sw: SettlementWorld, merchant_id: str) -> list[Payout]:
    with sw.database.read() as session:
        return list(session.scalars(
            select(Payout).where(Payout.merchant_id == merchant_id).order_by(Payout.created_at)
        ))  # fmt: skip


# -- T+1 ----------------------------------------------------------------------------------------
def test_t1_settles_on_the_next_working_day_and_pays_out(sw: SettlementWorld) -> None:
    a = sw.world.merchant_a
    payment = sw.pay(MON, 10_000)
    monday = sw.settle(date(2026, 11, 23))
    assert monday.payments == 0  # captured Monday: due Tuesday
    assert sw.merchant_balances(a)["unsettled"] == payment["net"]
    tuesday = sw.settle(date(2026, 11, 24))
    assert (tuesday.status, tuesday.payments, tuesday.settled_amount) == (
        "completed", 1, payment["net"],
    )  # fmt: skip
    assert tuesday.payouts == 1 and tuesday.payout_amount == payment["net"]
    assert sw.merchant_balances(a) == {"unsettled": 0, "settled": 0, "debt": 0}
    assert sw.balance(chart.PAYOUTS_IN_FLIGHT) == payment["net"]
    with sw.database.read() as session:
        assert session.get(Payment, payment["id"]).settled_at is not None
    (payout,) = payouts(sw, a)
    assert (payout.status, payout.amount, payout.account_masked.endswith("5677")) == (
        "pending", payment["net"], True,
    )  # fmt: skip


def test_a_run_twice_changes_nothing(sw: SettlementWorld) -> None:
    sw.pay(MON, 10_000)
    first = sw.settle(date(2026, 11, 24))
    before = entries(sw)
    again = sw.settle(date(2026, 11, 24))
    assert again.id == first.id and entries(sw) == before
    assert len(payouts(sw, sw.world.merchant_a)) == 1


def test_a_crashed_run_resumes_with_the_merchants_not_done(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoudan.settlement import service as settlement_service

    a, b = sw.world.merchant_a, sw.world.merchant_b
    sw.pay(MON, 10_000)
    sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    calls = 0
    original = settlement_service.open_payout

    def crash_on_second(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise PowerCut
        return original(*args, **kwargs)

    monkeypatch.setattr(settlement_service, "open_payout", crash_on_second)
    with pytest.raises(PowerCut):
        sw.settle(date(2026, 11, 24))
    monkeypatch.setattr(settlement_service, "open_payout", original)
    with sw.database.read() as session:  # the open batch died with the process
        assert session.scalar(select(func.count()).select_from(SettlementItem)) == 0
    run = sw.settle(date(2026, 11, 24))
    assert run.status == "completed" and run.merchants == 2
    assert len(payouts(sw, a)) == 1 and len(payouts(sw, b)) == 1
    with sw.database.read() as session:
        assert session.scalar(select(func.count()).select_from(SettlementItem)) == 2


def test_the_cut_off_moves_a_late_payment_to_the_next_trade_date(sw: SettlementWorld) -> None:
    before = sw.pay(datetime(2026, 11, 23, 22, 59, 59, tzinfo=SHANGHAI), 10_000)
    late = sw.pay(datetime(2026, 11, 23, 23, 0, 0, tzinfo=SHANGHAI), 20_000)
    run = sw.settle(date(2026, 11, 24))
    assert (run.payments, run.settled_amount) == (1, before["net"])
    assert sw.merchant_balances(sw.world.merchant_a)["unsettled"] == late["net"]
    assert sw.settle(date(2026, 11, 25)).settled_amount == late["net"]


def test_a_settlement_date_in_the_future_is_refused(sw: SettlementWorld) -> None:
    sw.at(2026, 11, 23, 22, 59)  # Tuesday's run opens at Monday's cut-off
    with pytest.raises(DomainError) as caught:
        sw.settlement.run_t1(date(2026, 11, 24), actor="test")
    assert caught.value.code is ErrorCode.SETTLEMENT_DATE_IN_FUTURE
    assert "2026-11-23 23:00" in caught.value.message
    sw.at(2026, 11, 28, 23, 30)  # Monday 30's run opens on Sunday 29, 23:00
    with pytest.raises(DomainError) as caught:
        sw.settlement.run_t1(date(2026, 11, 30), actor="test")
    assert "2026-11-29 23:00" in caught.value.message
    response = sw.world.client.post(
        "/v1/settlements/run", json={"date": "2026-11-30"}, headers=sw.rw.headers("finance")
    )
    assert response.status_code == 422
    assert response.json()["code"] == "settlement_date_in_future"


def test_national_day_and_its_make_up_saturday(sw: SettlementWorld) -> None:
    """2026: 1-7 October off; Saturday 10 October is a make-up working day (调休)."""
    a = sw.world.merchant_a
    sept = sw.pay(datetime(2026, 9, 30, 12, 0, tzinfo=SHANGHAI), 10_000)
    assert sw.settle(date(2026, 10, 1)).payments == 0  # a holiday: nothing is due
    assert sw.settle(date(2026, 10, 7)).payments == 0
    assert sw.settle(date(2026, 10, 8)).settled_amount == sept["net"]  # first working day
    friday = sw.pay(datetime(2026, 10, 9, 12, 0, tzinfo=SHANGHAI), 20_000)
    assert sw.settle(date(2026, 10, 10)).settled_amount == friday["net"]  # Saturday, worked
    saturday_late = sw.pay(datetime(2026, 10, 10, 23, 30, tzinfo=SHANGHAI), 30_000)
    assert sw.settle(date(2026, 10, 11)).payments == 0  # Sunday off
    assert sw.settle(date(2026, 10, 12)).settled_amount == saturday_late["net"]
    assert sw.merchant_balances(a)["unsettled"] == 0


# -- D0 -----------------------------------------------------------------------------------------
def test_d0_settles_every_slot_for_the_plans_fee(sw: SettlementWorld) -> None:
    from shoudan.merchants.models import Merchant

    b = sw.world.merchant_b
    with sw.database.transaction() as session:
        session.get(Merchant, b).fee_plan_code = "d0"  # the D0 product: ¥3 a payment
    kwargs = {"key": sw.world.key_b, "terminal_id": sw.world.terminal_b}
    big = sw.pay(datetime(2026, 11, 23, 10, 1, tzinfo=SHANGHAI), 50_000, **kwargs)
    tiny = sw.pay(datetime(2026, 11, 23, 10, 2, tzinfo=SHANGHAI), 150, **kwargs)  # net < ¥3
    sw.at(2026, 11, 23, 10, 3)
    early = sw.settlement.run_d0(actor="test")
    assert early.payments == 0  # the slot started at 10:00: both came after it
    sw.at(2026, 11, 23, 10, 6)
    run = sw.settlement.run_d0(actor="test")
    assert run.term == "D0" and run.payments == 2
    assert run.d0_fees == 300 + tiny["net"]  # never more than a payment brings in
    assert run.payout_amount == big["net"] - 300
    assert sw.balance(chart.D0_FEE_REVENUE) == 300 + tiny["net"]
    assert sw.merchant_balances(b) == {"unsettled": 0, "settled": 0, "debt": 0}
    assert sw.settlement.run_d0(actor="test").id == run.id  # same slot: same run
    # the T+1 run leaves D0 merchants alone
    assert sw.settle(date(2026, 11, 24)).merchants == 0


# -- debt ---------------------------------------------------------------------------------------
def test_debt_is_carried_then_cleared_by_itself(sw: SettlementWorld) -> None:
    a = sw.world.merchant_a
    sw.charge_debt(a, 29_900, "dep:test:charge")  # a ¥299 deposit charged at activation
    first = sw.pay(MON, 10_000)
    run = sw.settle(date(2026, 11, 24))
    assert (run.debt_collected, run.debt_carried, run.payouts) == (first["net"], 29_900 - first["net"], 0)  # noqa: E501
    assert sw.merchant_balances(a) == {"unsettled": 0, "settled": 0, "debt": 29_900 - first["net"]}
    assert payouts(sw, a) == []  # never a negative payout
    second = sw.pay(datetime(2026, 11, 24, 10, 0, tzinfo=SHANGHAI), 50_000)
    run = sw.settle(date(2026, 11, 25))
    owed = 29_900 - first["net"]
    assert (run.debt_collected, run.debt_carried) == (owed, 0)
    assert run.payout_amount == second["net"] - owed
    assert sw.merchant_balances(a)["debt"] == 0


# -- payouts ------------------------------------------------------------------------------------
def test_an_account_in_another_name_blocks_the_payout_with_a_reason(sw: SettlementWorld) -> None:
    a = sw.world.merchant_a
    sw.give_account(a, holder="王小二")  # verified, but not the merchant's legal name (二清)
    payment = sw.pay(MON, 10_000)
    run = sw.settle(date(2026, 11, 24))
    assert (run.payouts, run.blocked) == (0, 1)
    (payout,) = payouts(sw, a)
    assert payout.status == "blocked" and "王小二" in payout.block_reason
    assert "一清" in payout.block_reason
    assert sw.merchant_balances(a)["settled"] == payment["net"]  # the money stayed
    response = sw.world.client.get("/v1/payouts?status=blocked", headers=sw.rw.headers("finance"))
    assert response.status_code == 200
    assert [p["block_reason"] for p in response.json()["data"]] == [payout.block_reason]
    sw.give_account(a)  # the merchant's own account, verified
    sw.settle(date(2026, 11, 25))
    (payout,) = payouts(sw, a)  # the same payout, now on its way
    assert (payout.status, payout.amount) == ("pending", payment["net"])
    assert sw.merchant_balances(a)["settled"] == 0


def test_an_unverified_account_blocks_the_payout(sw: SettlementWorld) -> None:
    a = sw.world.merchant_a
    sw.give_account(a, verify=False)
    sw.pay(MON, 10_000)
    sw.settle(date(2026, 11, 24))
    (payout,) = payouts(sw, a)
    assert payout.status == "blocked" and "not verified" in payout.block_reason


def _export_and_confirm(sw: SettlementWorld, tmp_path: Path) -> tuple[Path, Path]:
    batch = sw.payouts.export_batch("test")
    assert batch is not None
    batch_file = tmp_path / f"{batch.batch_id}.csv"
    with batch_file.open("w", encoding="utf-8") as out:
        bankfile.write_batch(batch.lines, out)
    confirmation = tmp_path / f"{batch.batch_id}.confirmation.csv"
    simulate(batch_file, confirmation)
    return batch_file, confirmation


def _import(sw: SettlementWorld, path: Path):  # type: ignore[no-untyped-def]
    rows = bankfile.parse_confirmations(path.name, path.read_text(encoding="utf-8"))
    return sw.payouts.import_confirmations(path.name, rows, "test")


def test_bank_batch_paid_and_rejected_lines(sw: SettlementWorld, tmp_path: Path) -> None:
    a, b = sw.world.merchant_a, sw.world.merchant_b
    sw.give_account(b, number=CLOSED_ACCOUNT)  # the bank will return b's payout
    pa = sw.pay(MON, 10_000)
    pb = sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    sw.settle(date(2026, 11, 24))
    batch_file, confirmation = _export_and_confirm(sw, tmp_path)
    text = batch_file.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(bankfile.BATCH_COLUMNS)
    assert "老王面馆" in text and f"{pa['net'] // 100}.{pa['net'] % 100:02d}" in text
    summary = _import(sw, confirmation)
    assert (summary.paid, summary.rejected, summary.returned_amount) == (1, 1, pb["net"])
    assert [p.status for p in payouts(sw, a)] == ["paid"]
    (returned,) = payouts(sw, b)
    assert (returned.status, returned.bank_reason) == ("rejected", "account_closed")
    assert sw.merchant_balances(b)["settled"] == pb["net"]  # back in the merchant's balance
    assert sw.balance(chart.PAYOUTS_IN_FLIGHT) == 0
    assert sw.balance(chart.BANK_SETTLEMENT) == -pa["net"]
    # the merchant is told: a webhook event and, through the outbox, a text message
    with sw.database.read() as session:
        types = [e.type for e in session.scalars(select(Event).where(Event.merchant_id == b))]
        assert "payout.rejected" in types
    sw.rw.run_worker()
    with sw.database.read() as session:
        texts = [m.text for m in session.scalars(select(SmsMessage))
                 if m.purpose == "payout.rejected"]  # fmt: skip
    assert len(texts) == 1 and "0000" in texts[0] and "退回" in texts[0]
    # importing the same confirmation again changes nothing
    before = entries(sw)
    again = _import(sw, confirmation)
    assert (again.paid, again.rejected, again.unchanged) == (0, 0, 2) and entries(sw) == before
    # the next run does not send the money to the account that bounced
    sw.settle(date(2026, 11, 25))
    assert "rejected" in payouts(sw, b)[-1].block_reason


def test_a_confirmation_for_an_unknown_line_imports_nothing(
    sw: SettlementWorld, tmp_path: Path
) -> None:
    sw.pay(MON, 10_000)
    sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    sw.settle(date(2026, 11, 24))
    _batch, confirmation = _export_and_confirm(sw, tmp_path)
    lines = confirmation.read_text(encoding="utf-8").splitlines()
    fields = lines[2].split(",")
    fields[2] = "po_UNKNOWN"
    lines[2] = ",".join(fields)
    confirmation.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DomainError) as caught:
        _import(sw, confirmation)
    assert caught.value.code is ErrorCode.BANK_FILE_INVALID
    assert f"{confirmation.name}: line 3, column payout_id: unknown payout" in caught.value.message
    assert {p.status for p in payouts(sw, sw.world.merchant_a)} == {"exported"}
    assert {p.status for p in payouts(sw, sw.world.merchant_b)} == {"exported"}


def test_a_malformed_confirmation_names_line_and_column() -> None:
    text = "batch_id,line,payout_id,amount,status,reason\npb_1,1,po_1,12.5,paid,\n"
    with pytest.raises(DomainError) as caught:
        bankfile.parse_confirmations("c.csv", text)
    assert caught.value.message.startswith("c.csv: line 2, column amount:")
    with pytest.raises(DomainError) as caught:
        bankfile.parse_confirmations("c.csv", "batch,line\n")
    assert "line 1" in caught.value.message and "header" in caught.value.message


# -- HTTP ---------------------------------------------------------------------------------------
def test_settlement_api(sw: SettlementWorld) -> None:
    sw.pay(MON, 10_000)
    sw.at(2026, 11, 24, 23, 30)
    forbidden = sw.world.client.post(
        "/v1/settlements/run", json={"date": "2026-11-24"}, headers=sw.rw.headers("a")
    )
    assert forbidden.status_code == 403
    response = sw.world.client.post(
        "/v1/settlements/run", json={"date": "2026-11-24"}, headers=sw.rw.headers("finance")
    )
    assert response.status_code == 200, response.text
    assert response.json()["payments"] == 1
    runs = sw.world.client.get("/v1/settlements?date=2026-11-24", headers=sw.rw.headers("finance"))
    assert [r["run_key"] for r in runs.json()["data"]] == ["T1:2026-11-24"]
    mine = sw.world.client.get("/v1/settlements?date=2026-11-24", headers=sw.rw.headers("a"))
    assert [r["merchant_id"] for r in mine.json()["data"]] == [sw.world.merchant_a]
    theirs = sw.world.client.get("/v1/settlements?date=2026-11-24", headers=sw.rw.headers("b"))
    assert theirs.json()["data"] == []
    assert len(sw.world.client.get("/v1/payouts", headers=sw.rw.headers("a")).json()["data"]) == 1
    assert sw.world.client.get("/v1/payouts", headers=sw.rw.headers("b")).json()["data"] == []


def test_a_sale_is_netted_at_its_cut_off_and_paid_the_next_working_day(
    sw: SettlementWorld,
) -> None:
    """Issue #7: Monday's sale is netted at Monday 23:00, so Tuesday's bank batch carries it."""
    payment = sw.pay(MON, 10_000)
    sw.at(2026, 11, 23, 23, 1)
    run = sw.settlement.run_t1(date(2026, 11, 24), actor="test")
    assert (run.status, run.payments, run.payout_amount) == ("completed", 1, payment["net"])
    assert [p.status for p in payouts(sw, sw.world.merchant_a)] == ["pending"]


def test_worker_job_runs_the_next_due_date_right_after_each_cut_off(sw: SettlementWorld) -> None:
    monday = sw.pay(MON, 10_000)
    sw.at(2026, 11, 23, 22, 59)
    assert sw.settlement.run_due()[-1].run_key == "T1:2026-11-23"  # Monday's own, nothing new
    sw.at(2026, 11, 23, 23, 1)
    runs = sw.settlement.run_due()
    assert [r.run_key for r in runs][-1] == "T1:2026-11-24"
    assert runs[-1].settled_amount == monday["net"]
    again = sw.settlement.run_due()  # the date is done: only the D0 slot is looked at
    assert [r.term for r in again] == ["D0"]
    friday = sw.pay(datetime(2026, 11, 27, 12, 0, tzinfo=SHANGHAI), 20_000)
    sw.at(2026, 11, 27, 23, 1)  # Friday's sales are due Monday, with the weekend's
    assert [r.term for r in sw.settlement.run_due()][-1] == "T1"
    assert sw.merchant_balances(sw.world.merchant_a)["unsettled"] == friday["net"]
    sw.at(2026, 11, 29, 23, 1)  # Sunday's cut-off: Monday's run
    runs = sw.settlement.run_due()
    assert (runs[-1].run_key, runs[-1].settled_amount) == ("T1:2026-11-30", friday["net"])


def test_bank_simulate_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shoudan.cli.main import app

    batch = tmp_path / "pb_1.csv"
    lines = [
        bankfile.BatchLine("pb_1", 1, "po_1", "m1", "老王面馆", "中国银行", GOOD_ACCOUNT, 150),
        bankfile.BatchLine("pb_1", 2, "po_2", "m2", "便利小店", "中国银行", CLOSED_ACCOUNT, 99),
    ]
    with batch.open("w", encoding="utf-8") as out:
        bankfile.write_batch(lines, out)
    with usual_umask():
        result = CliRunner().invoke(app, ["bank", "simulate", str(batch)])
    assert result.exit_code == 0, result.output
    assert "1 paid, 1 rejected" in result.output
    assert stat.S_IMODE((tmp_path / "pb_1.confirmation.csv").stat().st_mode) == 0o600
    answers = bankfile.parse_confirmations(
        "c", (tmp_path / "pb_1.confirmation.csv").read_text(encoding="utf-8")
    )
    assert [(a.payout_id, a.status, a.reason, a.amount) for a in answers] == [
        ("po_1", "paid", "", 150), ("po_2", "rejected", "account_closed", 99),
    ]  # fmt: skip


# -- payouts that can no longer go ---------------------------------------------------------------
def _history(sw: SettlementWorld, payout_id: str) -> list[str]:
    with sw.database.read() as session:
        return list(session.scalars(
            select(PayoutStatusChange.to_status).where(PayoutStatusChange.payout_id == payout_id)
            .order_by(PayoutStatusChange.id)
        ))  # fmt: skip


def test_a_payout_pending_to_an_account_the_bank_bounced_is_cancelled_then_paid_to_the_new_one(
    sw: SettlementWorld, tmp_path: Path
) -> None:
    a = sw.world.merchant_a
    sw.give_account(a, number=CLOSED_ACCOUNT)  # account X: the bank will reject it
    first = sw.pay(MON, 10_000)
    sw.settle(date(2026, 11, 24))
    _batch, confirmation = _export_and_confirm(sw, tmp_path)  # P1 exported to X
    second = sw.pay(datetime(2026, 11, 24, 10, 0, tzinfo=SHANGHAI), 20_000)
    sw.settle(date(2026, 11, 25))  # P2 pending to X
    _import(sw, confirmation)  # P1 rejected: account_closed
    p1, p2 = payouts(sw, a)
    assert (p1.status, p2.status) == ("rejected", "pending")
    assert sw.payouts.export_batch("test") is None  # P2 cannot go to X: cancelled, not stranded
    p2 = payouts(sw, a)[1]
    assert p2.status == "cancelled" and "rejected" in p2.block_reason
    assert _history(sw, p2.id) == ["pending", "cancelled"]
    assert sw.balance(chart.PAYOUTS_IN_FLIGHT) == 0
    assert sw.merchant_balances(a)["settled"] == first["net"] + second["net"]
    sw.give_account(a)  # staff replace X with Y, the merchant's own, and verify it
    sw.settle(date(2026, 11, 26))
    latest = payouts(sw, a)[-1]
    assert (latest.status, latest.amount) == ("pending", first["net"] + second["net"])
    assert latest.account_masked.endswith("5677")
    _batch, confirmation = _export_and_confirm(sw, tmp_path)
    assert _import(sw, confirmation).paid == 1
    assert sw.balance(chart.PAYOUTS_IN_FLIGHT) == 0
    assert sw.merchant_balances(a)["settled"] == 0
    with sw.database.read() as session:
        assert session.get(LedgerEntry, f"payout:{p2.id}:cancelled") is not None
        types = [e.type for e in session.scalars(select(Event).where(Event.merchant_id == a))]
    assert types.count("payout.cancelled") == 1  # the merchant's integration hears of it


def test_a_payout_pending_to_a_replaced_account_is_cancelled_and_paid_again(
    sw: SettlementWorld, tmp_path: Path
) -> None:
    a, b = sw.world.merchant_a, sw.world.merchant_b
    pa = sw.pay(MON, 10_000)
    pb = sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    sw.settle(date(2026, 11, 24))
    sw.give_account(a)  # a new account row replaces the one a's payout was made for
    batch = sw.payouts.export_batch("test")
    assert batch is not None and [line.merchant_id for line in batch.lines] == [b]
    (cancelled,) = payouts(sw, a)
    assert batch.cancelled == [(cancelled.id, cancelled.block_reason)]
    assert cancelled.status == "cancelled" and "replaced" in cancelled.block_reason
    assert sw.balance(chart.PAYOUTS_IN_FLIGHT) == pb["net"]
    assert sw.merchant_balances(a)["settled"] == pa["net"]
    sw.settle(date(2026, 11, 25))
    assert [(p.status, p.amount) for p in payouts(sw, a)] == [
        ("cancelled", pa["net"]), ("pending", pa["net"]),
    ]  # fmt: skip
    response = sw.world.client.get("/v1/payouts?status=cancelled", headers=sw.rw.headers("a"))
    assert [p["id"] for p in response.json()["data"]] == [cancelled.id]


# -- one merchant at a time ----------------------------------------------------------------------
def test_a_run_locks_the_due_payments_before_the_merchants_accounts(sw: SettlementWorld) -> None:
    """A void or refund locks its payment, then the accounts: the run must take them in the
    same order, or the two deadlock on PostgreSQL."""
    sw.pay(MON, 10_000)
    order: list[str] = []
    original = LedgerRepository.lock_accounts

    def spy_accounts(self, ids):  # type: ignore[no-untyped-def]
        order.append("accounts")
        return original(self, ids)

    def spy_sql(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM payments" in statement:
            order.append("payments FOR UPDATE" if "FOR UPDATE" in statement else "payments")

    engine = sw.database.engine
    LedgerRepository.lock_accounts = spy_accounts  # type: ignore[method-assign]
    event.listen(engine, "before_cursor_execute", spy_sql)
    try:
        sw.settle(date(2026, 11, 24))
    finally:
        event.remove(engine, "before_cursor_execute", spy_sql)
        LedgerRepository.lock_accounts = original  # type: ignore[method-assign]
    first_payments = next(i for i, what in enumerate(order) if what.startswith("payments"))
    assert first_payments < order.index("accounts"), order
    if sw.database.dialect == "postgresql":
        assert order[first_payments] == "payments FOR UPDATE"


def _fail_batch_path_for(
    monkeypatch: pytest.MonkeyPatch, merchant_id: str, error: Exception
) -> None:
    """Make the batch path fail when it reaches ``merchant_id``, so the batch falls back to
    settling its merchants one by one (the path the next failures are injected in)."""
    from shoudan.settlement import service as settlement_service

    original = settlement_service.open_payout

    def failing(session, merchant, *args, **kwargs):  # type: ignore[no-untyped-def]
        if merchant.merchant_id == merchant_id:
            raise error
        return original(session, merchant, *args, **kwargs)

    monkeypatch.setattr(settlement_service, "open_payout", failing)


def test_one_merchant_failing_does_not_stop_the_others_and_the_rerun_completes(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sw.world.merchant_a, sw.world.merchant_b
    sw.pay(MON, 10_000)
    pb = sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    original = sw.settlement._settle_in

    def fail_for_a(session, run, merchant, fee):  # type: ignore[no-untyped-def]
        if merchant.merchant_id == a:
            raise RuntimeError("a bug that only merchant a's data shows")
        original(session, run, merchant, fee)

    with monkeypatch.context() as patch:
        _fail_batch_path_for(patch, a, RuntimeError("the same bug, in the batch path"))
        sw.settlement._settle_in = fail_for_a  # type: ignore[method-assign]
        run = sw.settle(date(2026, 11, 24))
        sw.settlement._settle_in = original  # type: ignore[method-assign]
    assert (run.status, run.merchants, run.payout_amount) == ("running", 1, pb["net"])
    assert payouts(sw, a) == [] and len(payouts(sw, b)) == 1
    rerun = sw.settle(date(2026, 11, 24))
    assert (rerun.id, rerun.status, rerun.merchants) == (run.id, "completed", 2)
    assert len(payouts(sw, a)) == 1 and len(payouts(sw, b)) == 1


def test_a_merchant_that_loses_a_race_is_tried_again(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from psycopg.errors import DeadlockDetected, SerializationFailure

    a = sw.world.merchant_a
    payment = sw.pay(MON, 10_000)
    original = sw.settlement._settle_in
    # the last one unwrapped, as the ledger's raw-cursor account locks raise it
    raw: Exception = (sqlite3.OperationalError("database is locked")
                      if sw.database.dialect == "sqlite" else DeadlockDetected("deadlock"))
    races: list[Exception] = [
        OperationalError("UPDATE payments ...", {}, SerializationFailure("could not serialize")),
        raw,
    ]
    # the batch path loses a race too: rolled back to its savepoint, then one by one
    _fail_batch_path_for(monkeypatch, a, OperationalError("UPDATE payments ...", {},
                                                          DeadlockDetected("deadlock")))

    def lose_twice(session, run, merchant, fee):  # type: ignore[no-untyped-def]
        original(session, run, merchant, fee)  # the work is done, then rolled back
        if merchant.merchant_id == a and races:
            raise races.pop(0)

    sw.settlement._settle_in = lose_twice  # type: ignore[method-assign]
    run = sw.settle(date(2026, 11, 24))
    sw.settlement._settle_in = original  # type: ignore[method-assign]
    assert races == []
    assert (run.status, run.settled_amount) == ("completed", payment["net"])
    assert [p.amount for p in payouts(sw, a)] == [payment["net"]]


# -- bank files ----------------------------------------------------------------------------------
def test_bank_export_writes_an_owner_only_file_and_can_write_it_again(
    sw: SettlementWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from shoudan.cli import bank
    from shoudan.cli.main import app

    class NoContainer:
        def dispose(self) -> None:
            """The world's container outlives the command."""

    monkeypatch.setattr(bank, "_payouts", lambda url: (sw.payouts, NoContainer()))
    sw.pay(MON, 10_000)
    sw.settle(date(2026, 11, 24))
    with usual_umask():
        result = CliRunner().invoke(app, ["bank", "export", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("pb_*.csv")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text(encoding="utf-8")
    assert GOOD_ACCOUNT in first
    path.write_text("half a fi", encoding="utf-8")  # the first write failed midway
    again = CliRunner().invoke(app, ["bank", "export", "--batch", path.stem, "--out",
                                     str(tmp_path)])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert path.read_text(encoding="utf-8") == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    missing = CliRunner().invoke(app, ["bank", "export", "--batch", "pb_NOPE"])
    assert missing.exit_code != 0
