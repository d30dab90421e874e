"""The settlement batch path (``SettlementService._settle_plain``) against the one-by-one path
(``_settle_in``), on SQLite and PostgreSQL: the same world settled both ways gives the same
ledger, payouts, history, webhook events, items and settled payments; and the batch path's
edge cases (a merchant listed twice, a concurrent run of the same key, …)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shoudan.auth.domain import Role
from shoudan.auth.service import create_api_key
from shoudan.core.clock import SHANGHAI
from shoudan.core.db import Database
from shoudan.ledger import chart
from shoudan.ledger.domain import Hold, Posting
from shoudan.ledger.models import LedgerAccount, LedgerEntry, LedgerPosting
from shoudan.merchants.models import Merchant
from shoudan.merchants.service import MerchantInput, create_merchant
from shoudan.notifications.service import stats as outbox_stats
from shoudan.payments.models import Payment
from shoudan.settlement.models import (
    Payout,
    PayoutStatusChange,
    SettlementItem,
    SettlementRun,
)
from shoudan.settlement.service import SettlementService
from shoudan.terminals.service import TerminalInput, create_terminal
from shoudan.webhooks.models import Event
from tests import pg
from tests.settlement_world import SettlementWorld, build_settlement_world

MON = datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI)  # a Monday, a working day
TUE = datetime(2026, 11, 24, 10, 0, tzinfo=SHANGHAI)


def _check(world: SettlementWorld) -> None:
    """What tests/test_settlement.py's fixture checks when a test ends."""
    report = world.world.container.ledger.verify()
    assert report.violations == [], report.violations
    world.rw.run_worker()
    with world.database.read() as session:
        assert outbox_stats(session)["dead"] == 0


@pytest.fixture
def sw(database: Database, tmp_path: Path) -> Iterator[SettlementWorld]:
    world = build_settlement_world(database, tmp_path / "one")
    yield world
    _check(world)


@pytest.fixture
def twin_database(database: Database, request: pytest.FixtureRequest,
                  tmp_path: Path) -> Iterator[Database]:  # fmt: skip
    """A second fresh database on the same engine as ``database``."""
    if database.dialect == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "twin.db"
        with closing(sqlite3.connect(template)) as src, closing(sqlite3.connect(path)) as dst:
            src.backup(dst)
        twin = Database(f"sqlite:///{path}")
        yield twin
        twin.dispose()
        return
    server: str = request.getfixturevalue("pg_server")
    name = pg.unique_name("twin")
    twin = Database(pg.create_database(server, name, template=request.getfixturevalue(
        "pg_template")))  # fmt: skip
    yield twin
    twin.dispose()
    pg.drop_database(server, name)


# -- helpers ------------------------------------------------------------------------------------
class Shop:
    """One more merchant of the world: its id, API key and terminal."""

    def __init__(self, sw: SettlementWorld, index: int, holder: str | None = None) -> None:
        container, clock = sw.world.container, sw.world.clock
        with sw.database.transaction() as session:
            view = create_merchant(
                session, container.vault, container.ledger,
                MerchantInput(f"测试商户{index}", "small_business", "5411", "3100",
                              f"1390000{index:04d}"),
                actor="test", clock=clock,
            )  # fmt: skip
            self.merchant_id = view.merchant_id
            self.terminal_id = create_terminal(
                session, container.vault,
                TerminalInput(f"SN-X-{index:04d}", f"TX{index:06d}", "smart", self.merchant_id),
                actor="test", clock=clock,
            )[0].terminal_id  # fmt: skip
            self.key = create_api_key(session, role=Role.MERCHANT, merchant_id=self.merchant_id,
                                      name=f"shop {index}")[1]  # fmt: skip
        sw.give_account(self.merchant_id, holder=holder)
        self.sw = sw

    def pay(self, when: datetime, amount: int) -> dict[str, Any]:
        return self.sw.pay(when, amount, key=self.key, terminal_id=self.terminal_id)


def hold_refund(sw: SettlementWorld, account_id: str, amount: int, hold_id: str) -> None:
    """A refund's funds hold on a merchant balance, as the refunds domain places it."""
    entry = Hold(hold_id, (Posting(account_id, amount),
                           Posting(chart.channel_payable("unionpay"), -amount)),
                 code="refund.funds")  # fmt: skip
    sw.world.container.ledger.submit([entry])[0].raise_for_error()


def disable_batch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every merchant goes one by one (the path the batch path must reproduce)."""

    def every_merchant(self, session, run, merchants):  # type: ignore[no-untyped-def]
        return {m.merchant_id for m in merchants}

    monkeypatch.setattr(SettlementService, "_settle_plain", every_merchant)


def one_by_one_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The merchants ``_settle_in`` is called for (spied on, not changed)."""
    calls: list[str] = []
    original = SettlementService._settle_in

    def spy(self, session, run, merchant, fee):  # type: ignore[no-untyped-def]
        calls.append(merchant.merchant_id)
        return original(self, session, run, merchant, fee)

    monkeypatch.setattr(SettlementService, "_settle_in", spy)
    return calls


def snapshot(sw: SettlementWorld) -> dict[str, Any]:
    """Everything a run writes, with the random ids (payouts, payments, events) replaced by
    what they stand for, so two worlds built alike compare equal."""
    with sw.database.read() as session:
        payouts = list(session.scalars(select(Payout).order_by(Payout.merchant_id,
                                                                 Payout.created_at)))  # fmt: skip
        names = {p.id: f"{p.merchant_id}#{n}" for n, p in enumerate(payouts)}
        runs = {r.id: r.run_key for r in session.scalars(select(SettlementRun))}

        def plain(text: str | None) -> str | None:
            if text is None:
                return None
            for ident, name in (*names.items(), *runs.items()):
                text = text.replace(ident, name)
            return text

        accounts = {
            a.id: (a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
            for a in session.scalars(select(LedgerAccount))
            if ":payment:" not in a.id  # one per payment: payment ids are random
        }
        entries = {}
        for entry in session.scalars(select(LedgerEntry)):
            if entry.code.split(".")[0] not in {"settlement", "payout", "deposit", "debt"}:
                continue
            postings = session.execute(
                select(LedgerPosting.account_id, LedgerPosting.amount)
                .where(LedgerPosting.entry_id == entry.id).order_by(LedgerPosting.seq)
            ).all()  # fmt: skip
            entries[plain(entry.id)] = (entry.kind, entry.code, plain(entry.description),
                                        [tuple(p) for p in postings])  # fmt: skip
        history = sorted((
            (names[h.payout_id], h.from_status, h.to_status, h.actor, h.note)
            for h in session.scalars(select(PayoutStatusChange))
        ), key=repr)
        items = sorted((
            (runs[i.run_id], i.merchant_id, i.payments, i.gross, i.fees, i.net, i.d0_fee,
             i.moved, i.debt_collected, i.debt_carried,
             names.get(i.payout_id) if i.payout_id else None, i.payout_amount)
            for i in session.scalars(select(SettlementItem))
        ), key=repr)  # fmt: skip
        events = sorted((
            (e.merchant_id, e.type, plain(e.dedupe_key),
             json.dumps({k: plain(v) if isinstance(v, str) else v
                         for k, v in json.loads(e.data).items()}, sort_keys=True))
            for e in session.scalars(select(Event))
        ), key=repr)  # fmt: skip
        payments = sorted(
            (p.merchant_id, p.captured_amount, p.settled_at is not None)
            for p in session.scalars(select(Payment))
        )
        run_rows = sorted(
            (r.run_key, r.status, r.merchants, r.payments, r.settled_amount, r.d0_fees,
             r.debt_collected, r.debt_carried, r.payouts, r.payout_amount, r.blocked)
            for r in session.scalars(select(SettlementRun))
        )  # fmt: skip
    return {
        "accounts": accounts, "entries": entries, "history": history, "items": items,
        "events": events, "payments": payments, "runs": run_rows,
        "payouts": [(names[p.id], p.status, p.amount, p.account_masked, p.holder_name,
                     p.block_reason, runs.get(p.run_id or "")) for p in payouts],
    }  # fmt: skip


# -- equivalence ---------------------------------------------------------------------------------
def mixed_world(sw: SettlementWorld) -> None:
    """Plain merchants, a refund hold, a blocked payout (holder name), debt, nothing to do,
    payments not due yet; settled over two days (the blocked merchant fixes its account)."""
    b = sw.world.merchant_b
    blocked = Shop(sw, 1, holder="王小二")  # verified, not in the merchant's own name
    debtor = Shop(sw, 2)
    Shop(sw, 3)  # no payment at all
    late = Shop(sw, 4)
    overheld = Shop(sw, 5)  # a refund holds more than its due payments bring
    instant = Shop(sw, 6)  # D0: always one by one
    with sw.database.transaction() as session:
        session.get(Merchant, instant.merchant_id).fee_plan_code = "d0"
    instant.pay(MON, 50_000)
    sw.at(2026, 11, 23, 10, 6)
    sw.settlement.run_d0(actor="test")
    overheld.pay(MON, 20_000)
    overheld.pay(TUE, 10_000)
    hold_refund(sw, chart.merchant_unsettled(overheld.merchant_id), 25_000, "refund:test3:funds")
    sw.pay(MON, 10_000)
    sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    hold_refund(sw, chart.merchant_unsettled(b), 15_000, "refund:test1:funds")
    blocked.pay(MON, 30_000)
    debtor.pay(MON, 40_000)
    sw.charge_debt(debtor.merchant_id, 29_900, "dep:test:charge")
    late.pay(TUE, 5_000)  # due on Wednesday
    sw.settle(date(2026, 11, 24))
    # the blocked merchant's settled balance: a refund holds part of it; then a new sale
    hold_refund(sw, chart.merchant_settled(blocked.merchant_id), 7_000, "refund:test2:funds")
    blocked.pay(TUE, 1_000)
    sw.pay(TUE, 3_000)
    debtor.pay(TUE, 2_000)
    sw.settle(date(2026, 11, 25))
    sw.give_account(blocked.merchant_id)  # its own account now: the blocked payout goes
    sw.pay(datetime(2026, 11, 25, 10, 0, tzinfo=SHANGHAI), 4_000)
    sw.settle(date(2026, 11, 26))
    sw.settle(date(2026, 11, 26))  # again: nothing changes


def test_the_batch_path_settles_exactly_as_one_by_one(
    sw: SettlementWorld, twin_database: Database, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    with monkeypatch.context() as patch:
        calls = one_by_one_calls(patch)
        mixed_world(sw)
    with monkeypatch.context() as patch:
        disable_batch_path(patch)
        twin = build_settlement_world(twin_database, tmp_path / "two")
        mixed_world(twin)
    assert snapshot(sw) == snapshot(twin)
    # the batch path did the work: only the merchants with debt or a D0 fee went one by one
    with sw.database.read() as session:
        d0 = session.scalars(select(Merchant.merchant_id).where(Merchant.fee_plan_code == "d0"))
        assert set(calls) == {_merchant_with_debt(sw), *d0}
    _check(twin)


def _merchant_with_debt(sw: SettlementWorld) -> str:
    with sw.database.read() as session:
        account = session.scalars(
            select(LedgerPosting.account_id).join(LedgerEntry)
            .where(LedgerEntry.code == "deposit.charge", LedgerPosting.amount > 0)
        ).one()  # fmt: skip
    return account.split(":")[2]  # asset:merchant:<id>:debt


# -- edge cases ----------------------------------------------------------------------------------
def _open_run(sw: SettlementWorld, day: date) -> SettlementRun:
    """Open ``day``'s T+1 run without settling anyone (to drive ``_settle_batch`` directly)."""
    from shoudan.settlement.domain import Term, cutoff_instant, run_key, t1_capture_boundary

    sw.world.clock.set(cutoff_instant(day) + timedelta(minutes=5))
    return sw.settlement._open(Term.T1, day, t1_capture_boundary(day), run_key(Term.T1, day),
                               "test")  # fmt: skip


def test_a_merchant_listed_twice_in_a_batch_is_settled_once(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sw.world.merchant_a, sw.world.merchant_b
    pa = sw.pay(MON, 10_000)
    pb = sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    calls = one_by_one_calls(monkeypatch)
    run = _open_run(sw, date(2026, 11, 24))
    assert sw.settlement._settle_batch(run, [a, b, a], [0, 0, 0]) == 0
    with sw.database.read() as session:
        items = {i.merchant_id: i.payout_amount for i in session.scalars(select(SettlementItem))}
        paid = {(p.merchant_id, p.amount) for p in session.scalars(select(Payout))}
    assert items == {a: pa["net"], b: pb["net"]}
    assert paid == {(a, pa["net"]), (b, pb["net"])}
    assert calls == []  # settled by the batch path, not left to one by one


def test_a_merchant_the_batch_cannot_read_fails_alone(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merchant listed for the run but not found when its batch reads the merchants (an id
    that stopped resolving): that merchant fails and is logged, the others are settled."""
    from shoudan.settlement import service as settlement_service

    a, b = sw.world.merchant_a, sw.world.merchant_b
    sw.pay(MON, 10_000)
    pb = sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    original = settlement_service.get_merchants

    def without_a(session, merchant_ids):  # type: ignore[no-untyped-def]
        return {m: v for m, v in original(session, merchant_ids).items() if m != a}

    monkeypatch.setattr(settlement_service, "get_merchants", without_a)
    run = _open_run(sw, date(2026, 11, 24))
    assert sw.settlement._settle_batch(run, [a, b], [0, 0]) == 1
    assert {p.merchant_id: p.amount for p in _payouts(sw)} == {b: pb["net"]}


def test_a_database_error_in_the_batch_path_falls_back_to_one_by_one(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real statement error (PostgreSQL then refuses every statement until the savepoint is
    rolled back): nothing of the batch path stays, every merchant is settled one by one."""
    from shoudan.settlement import service as settlement_service

    a, b = sw.world.merchant_a, sw.world.merchant_b
    pa = sw.pay(MON, 10_000)
    pb = sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    original = settlement_service._batch_sums

    def broken(driver, merchant_ids, boundary):  # type: ignore[no-untyped-def]
        sums = original(driver, merchant_ids, boundary)
        driver.execute("UPDATE payments SET settled_at = NULL WHERE no_such_column = 1")
        return sums

    monkeypatch.setattr(settlement_service, "_batch_sums", broken)
    calls = one_by_one_calls(monkeypatch)
    run = sw.settle(date(2026, 11, 24))
    assert (run.status, run.merchants, run.payout_amount) == (
        "completed", 2, pa["net"] + pb["net"],
    )  # fmt: skip
    assert sorted(calls) == sorted([a, b])


def test_two_runs_of_the_same_date_at_once_settle_each_merchant_once(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    shops = [Shop(sw, n) for n in range(1, 4)]
    nets = [sw.pay(MON, 10_000)["net"]] + [s.pay(MON, 10_000 * n)["net"]
                                         for n, s in enumerate(shops, 2)]  # fmt: skip
    calls = one_by_one_calls(monkeypatch)
    together = threading.Barrier(2)
    original = SettlementService._settle_batch

    def at_once(self, run, merchant_ids, fees):  # type: ignore[no-untyped-def]
        together.wait()
        return original(self, run, merchant_ids, fees)

    monkeypatch.setattr(SettlementService, "_settle_batch", at_once)
    other = SettlementService(sw.database, sw.world.container.ledger, sw.world.container.vault,
                              sw.world.clock)  # fmt: skip
    sw.at(2026, 11, 24, 23, 5)
    runs: list[SettlementRun] = []
    errors: list[BaseException] = []

    def settle(service: SettlementService) -> None:
        try:
            runs.append(service.run_t1(date(2026, 11, 24), actor="test"))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=settle, args=(s,)) for s in (sw.settlement, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [r.status for r in runs] == ["completed", "completed"]
    with sw.database.read() as session:
        assert sorted(p.amount for p in session.scalars(select(Payout))) == sorted(nets)
        assert sorted(i.payout_amount for i in session.scalars(select(SettlementItem))) == (
            sorted(nets)
        )
    assert calls == []  # neither fell back to one by one


def test_a_batch_path_rolled_back_after_unblocking_a_payout_leaves_nothing_half_done(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch path turned a blocked payout pending (ORM row, history row) before its ledger
    batch failed: the one-by-one path must find the payout blocked again and do it once."""
    from shoudan.ledger.service import Ledger

    a = sw.world.merchant_a
    sw.give_account(a, holder="王小二")
    payment = sw.pay(MON, 10_000)
    sw.settle(date(2026, 11, 24))
    (blocked,) = _payouts(sw)
    assert blocked.status == "blocked"
    sw.give_account(a)  # in order now
    original = Ledger.post_all

    def refuse_batches(self, session, items):  # type: ignore[no-untyped-def]
        if len(items) > 1:  # the batch path posts all its entries at once
            original(self, session, items)  # written, then rolled back with the savepoint
            raise RuntimeError("a refused entry")
        return original(self, session, items)

    sw.pay(TUE, 2_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    monkeypatch.setattr(Ledger, "post_all", refuse_batches)
    calls = one_by_one_calls(monkeypatch)
    run = sw.settle(date(2026, 11, 25))
    assert calls  # the batch path was rolled back
    assert run.status == "completed"
    (payout,) = [p for p in _payouts(sw) if p.merchant_id == a]
    assert (payout.id, payout.status, payout.amount) == (blocked.id, "pending", payment["net"])
    with sw.database.read() as session:
        moves = [(h.from_status, h.to_status) for h in session.scalars(
            select(PayoutStatusChange).where(PayoutStatusChange.payout_id == payout.id)
            .order_by(PayoutStatusChange.id))]  # fmt: skip
        assert moves == [(None, "blocked"), ("blocked", "pending")]
        assert session.get(LedgerEntry, f"payout:{payout.id}") is not None
    assert sw.merchant_balances(a) == {"unsettled": 0, "settled": 0, "debt": 0}


def _payouts(sw: SettlementWorld) -> list[Payout]:
    with sw.database.read() as session:
        return list(session.scalars(select(Payout).order_by(Payout.created_at, Payout.id)))


class PowerCut(BaseException):
    """The process dies: nothing in the run may catch it."""


def test_a_run_that_died_after_its_first_batch_resumes_with_the_next(
    sw: SettlementWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One merchant per batch: the first batch commits (batch path), the process dies in the
    second; the rerun settles the second and leaves the first alone."""
    from shoudan.settlement import service as settlement_service

    a, b = sw.world.merchant_a, sw.world.merchant_b
    pa = sw.pay(MON, 10_000)
    pb = sw.pay(MON, 20_000, key=sw.world.key_b, terminal_id=sw.world.terminal_b)
    monkeypatch.setattr(settlement_service, "BATCH", 1)
    original = settlement_service.open_payout
    batches = 0

    def die_in_the_second_batch(session, merchant, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal batches
        batches += 1
        if batches == 2:
            raise PowerCut
        return original(session, merchant, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(settlement_service, "open_payout", die_in_the_second_batch)
        with pytest.raises(PowerCut):
            sw.settle(date(2026, 11, 24))
    assert len(_payouts(sw)) == 1
    calls = one_by_one_calls(monkeypatch)
    run = sw.settle(date(2026, 11, 24))
    assert (run.status, run.merchants, run.payout_amount) == (
        "completed", 2, pa["net"] + pb["net"],
    )  # fmt: skip
    assert sorted((p.merchant_id, p.amount) for p in _payouts(sw)) == sorted(
        [(a, pa["net"]), (b, pb["net"])]
    )
    assert calls == []
