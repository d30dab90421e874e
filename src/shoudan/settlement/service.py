"""Settlement runs: T+1 for a date, D0 every few minutes (rules in ``settlement.domain``).

A run is recorded first (``settlement_runs``, unique per date or D0 slot), then the merchants
are settled BATCH per transaction (one commit), each in its own savepoint: its due payments are
locked, then its ledger accounts (the order a void or refund takes: payment, then accounts — no
deadlock), its due payments are marked settled, the money moves, its debt is collected, its
payout is made (or blocked), and a ``settlement_items`` row records it — all in that one
savepoint. A merchant whose savepoint loses a race (deadlock, serialization failure) is tried
again; one that still fails is rolled back alone, logged and skipped, and the other merchants
are settled: the run then stays ``running`` until it is run again. A crash leaves whole
merchants done or not done (the open batch is not done); running again skips the done ones
(resumable), and a completed run answers its summary without touching anything (idempotent).

Per merchant (signed fen, debit +):

=============  ======================================================  =========================
D0 fee         unsettled +covered; debt +rest; D0 fee revenue −fee     ``stl:<run>:<mid>:d0fee``
settle         unsettled +moved; settled −moved                        ``stl:<run>:<mid>:settle``
debt           ``deposits.service.collect_merchant_debt``              ``debt:<run>:<mid>``
payout         ``settlement.payouts.pay_out``                          ``payout:<id>``
=============  ======================================================  =========================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, time
from itertools import islice
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from shoudan.auth.domain import Principal, Role
from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault
from shoudan.core.db import Database, DriverSQL, newest_first
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.core.models import UTCDateTime
from shoudan.deposits.service import collect_merchant_debt
from shoudan.ledger import chart
from shoudan.ledger.domain import AccountState, Posting, Transfer, transfer
from shoudan.ledger.repository import LedgerRepository
from shoudan.ledger.service import Ledger
from shoudan.merchants.models import Merchant
from shoudan.merchants.service import MerchantView, get_merchants, list_merchants
from shoudan.payments.domain import PaymentStatus
from shoudan.pricing.service import list_plans
from shoudan.settlement.domain import (
    DEFAULT_CUTOFF,
    DEFAULT_D0_EVERY_MINUTES,
    RunStatus,
    Term,
    amount_to_settle,
    check_run_date,
    d0_slot,
    due_run_date,
    latest_run_date,
    run_key,
    split_charge,
    t1_capture_boundary,
)
from shoudan.settlement.models import Payout, SettlementItem, SettlementRun
from shoudan.settlement.payouts import open_payout, pay_out
from shoudan.settlement.statements import (
    Statement,
    build_statement,
    filename,
    parse_period,
    render,
)

log = logging.getLogger(__name__)

# The open batch transaction of this thread / task, if any (see ``_settle_batch``).
_BATCH: ContextVar[Session | None] = ContextVar("settlement_batch", default=None)

Progress = Callable[[int, int], None]
"""Called as (merchants done, merchants in the run) while a run goes."""

PAGE = 500
# merchants per transaction: one commit (fsync) for them all; each has its own savepoint. On
# SQLite the batch holds the write lock for its duration (a fraction of a second): payments
# arriving meanwhile wait that long (busy timeout), once per batch.
BATCH = 100  # ~0.3 s of write lock on SQLite at 3 ms per merchant
ATTEMPTS = 3  # per merchant, when its transaction loses a race (deadlock, serialization)
CAPTURED = PaymentStatus.CAPTURED.value


@dataclass(frozen=True, slots=True)
class _Due:
    payments: int = 0
    gross: int = 0
    fees: int = 0
    net: int = 0
    d0_fee: int = 0


@dataclass(frozen=True, slots=True)
class _Balances:
    unsettled: int  # available: credit balance less what refunds hold
    settled: int
    debt: int


def _term_of_plans(session: Session) -> dict[str, Term]:
    """A D0 product is sold as a fee plan with a D0 fee (pricing ``d0_fee``); others are T+1."""
    return {plan.code: Term.D0 if plan.d0_fee > 0 else Term.T1 for plan in list_plans(session)}


def _d0_fees(session: Session) -> dict[str, int]:
    return {plan.code: plan.d0_fee for plan in list_plans(session)}


class SettlementService:
    def __init__(
        self,
        database: Database,
        ledger: Ledger,
        vault: Vault,
        clock: Clock,
        *,
        cutoff: time = DEFAULT_CUTOFF,
        d0_every_minutes: int = DEFAULT_D0_EVERY_MINUTES,
    ) -> None:
        self.database = database
        self.ledger = ledger
        self.vault = vault
        self.clock = clock
        self.cutoff = cutoff
        self.d0_every_minutes = d0_every_minutes

    # -- runs ---------------------------------------------------------------------------------
    def run_t1(
        self, run_date: date, *, actor: str, progress: Progress | None = None
    ) -> SettlementRun:
        """Settle every T+1 merchant's payments due by ``run_date`` (refused before the
        cut-off of the last trade date due on it). Idempotent and resumable."""
        check_run_date(run_date, self.clock.now(), self.cutoff)
        boundary = t1_capture_boundary(run_date, self.cutoff)
        key = run_key(Term.T1, run_date)
        return self._run(Term.T1, run_date, boundary, key, actor, progress)

    def run_d0(self, *, actor: str, progress: Progress | None = None) -> SettlementRun:
        """Settle the D0 merchants' payments captured before the current slot's start."""
        now = self.clock.now()
        slot = d0_slot(now, self.d0_every_minutes)
        run_date = latest_run_date(now, self.cutoff)
        return self._run(Term.D0, run_date, slot, run_key(Term.D0, run_date, slot), actor,
                         progress)  # fmt: skip

    def run_due(self, actor: str = "system:worker") -> list[SettlementRun]:
        """What the worker calls every loop: the current D0 slot, and the T+1 run of the latest
        working day whose run has opened (right after each cut-off: Monday 23:00 runs
        Tuesday's), each unless already completed."""
        now = self.clock.now()
        runs = [self.run_d0(actor=actor)]
        run_date = due_run_date(now, self.cutoff)
        key = run_key(Term.T1, run_date)
        with self.database.read() as session:
            done = session.scalar(
                select(SettlementRun.id).where(
                    SettlementRun.run_key == key,
                    SettlementRun.status == RunStatus.COMPLETED.value,
                )
            )
        if done is None:
            runs.append(self.run_t1(run_date, actor=actor))
        return runs

    def _run(
        self,
        term: Term,
        run_date: date,
        boundary: datetime,
        key: str,
        actor: str,
        progress: Progress | None,
    ) -> SettlementRun:
        run = self._open(term, run_date, boundary, key, actor)
        if run.status == RunStatus.COMPLETED.value:
            return run
        with self.database.read() as session:
            terms = _term_of_plans(session)
            fees = _d0_fees(session)
            total = session.scalar(
                select(func.count()).select_from(Merchant).where(
                    Merchant.fee_plan_code.in_([c for c, t in terms.items() if t is term])
                )
            ) or 0  # fmt: skip
        failed = done = 0
        merchant_list = self._merchants(terms, term)
        pages = iter(lambda: list(islice(merchant_list, BATCH)), [])
        for merchants in pages:
            plan_fees = [fees.get(m.fee_plan_code, 0) if term is Term.D0 else 0
                         for m in merchants]  # fmt: skip
            failed += self._settle_batch(run, [m.merchant_id for m in merchants], plan_fees)
            done += len(merchants)
            if progress is not None:
                progress(done, total)
        if failed:
            log.error("settlement %s: %d merchants failed; run it again to resume", key, failed)
        return self._finish(run.id, complete=not failed)

    def _open(
        self, term: Term, run_date: date, boundary: datetime, key: str, actor: str
    ) -> SettlementRun:
        with self.database.read() as session:
            run = session.scalars(
                select(SettlementRun).where(SettlementRun.run_key == key)
            ).one_or_none()
        if run is not None:
            return run
        now = self.clock.now()
        run = SettlementRun(
            id=new_id("stl_"), run_key=key, term=term.value, run_date=run_date.isoformat(),
            capture_before=boundary, status=RunStatus.RUNNING.value, requested_by=actor[:64],
            merchants=0, payments=0, settled_amount=0, d0_fees=0, debt_collected=0,
            debt_carried=0, payouts=0, payout_amount=0, blocked=0, started_at=now,
        )  # fmt: skip
        try:
            with self.database.transaction() as session:
                session.add(run)
        except IntegrityError:  # another process opened it first: join that run
            with self.database.read() as session:
                return session.scalars(
                    select(SettlementRun).where(SettlementRun.run_key == key)
                ).one()
        return run

    def _merchants(self, terms: dict[str, Term], term: Term) -> Iterator[MerchantView]:
        """The run's merchants, a page at a time (bounded memory)."""
        cursor = None
        while True:
            with self.database.read() as session:
                page = list_merchants(session, limit=PAGE, cursor=cursor)
            yield from (m for m in page.items if terms.get(m.fee_plan_code, Term.T1) is term)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _settle_batch(self, run: SettlementRun, merchant_ids: list[str], fees: list[int]) -> int:
        """Up to BATCH merchants in one transaction (one commit), each in its own savepoint:
        a merchant that fails is rolled back alone and the others commit. Returns how many
        failed (a failed commit fails them all: none of them is done, a rerun resumes)."""
        failed = 0
        try:
            with self.database.transaction() as session:
                token = _BATCH.set(session)
                try:
                    views = get_merchants(session, merchant_ids)  # once for the whole batch
                    careful = self._settle_plain(session, run, [
                        views[m] for m, fee in zip(merchant_ids, fees, strict=True)
                        if fee == 0 and m in views
                    ])  # fmt: skip
                    for merchant_id, fee in zip(merchant_ids, fees, strict=True):
                        if fee == 0 and merchant_id in views and merchant_id not in careful:
                            continue  # settled with the batch
                        # (a merchant gone since it was listed fails alone, below: KeyError)
                        try:
                            self._settle_merchant(run, views[merchant_id], fee)
                        except Exception:  # one merchant must not stop the others
                            failed += 1
                            log.exception("settlement %s: merchant %s failed", run.run_key,
                                          merchant_id)  # fmt: skip
                finally:
                    _BATCH.reset(token)
        except DBAPIError:
            log.exception("settlement %s: a batch of %d merchants failed to commit",
                          run.run_key, len(merchant_ids))  # fmt: skip
            return len(merchant_ids)
        return failed

    def _settle_plain(
        self, session: Session, run: SettlementRun, merchants: list[MerchantView]
    ) -> set[str]:
        """The common case for a whole batch at once: merchants without a D0 fee or debt get
        the same entries, rows and payouts as ``_settle_in`` gives them one by one, from one
        grouped payments query, one account lock, one payments ``UPDATE`` and one ledger
        batch. Returns the merchants left for ``_settle_in`` (debt to collect) — all of them
        when anything fails here (rolled back to the savepoint, nothing half done)."""
        # a merchant listed twice would get a second item (unique per run: the whole batch
        # would fall back); one by one, its second turn finds the item and does nothing
        merchants = list({m.merchant_id: m for m in merchants}.values())
        ids = [m.merchant_id for m in merchants]
        if not ids:
            return set()
        try:
            with session.begin_nested():
                return self._settle_plain_in(session, run, merchants)
        except Exception:  # the careful path settles (or isolates) each merchant
            log.warning("settlement %s: batch path failed, settling %d merchants one by one",
                        run.run_key, len(ids), exc_info=True)  # fmt: skip
            return set(ids)

    def _settle_plain_in(
        self, session: Session, run: SettlementRun, merchants: list[MerchantView]
    ) -> set[str]:
        driver = DriverSQL(session)
        ids = [m.merchant_id for m in merchants]
        boundary = _instant(driver, run.capture_before)
        marks = ", ".join("?" * len(ids))
        if not driver.is_sqlite:  # payments first, then accounts (as _settle_in)
            _payments_sql(
                driver, f"SELECT id FROM payments WHERE merchant_id IN ({marks}) AND status = ?"
                " AND settled_at IS NULL AND captured_at < ? ORDER BY id FOR UPDATE",
                (*ids, CAPTURED, boundary),
            )  # fmt: skip
        sums = _batch_sums(driver, ids, boundary)
        states = LedgerRepository.of(session).lock_accounts([
            a for m in ids for a in (chart.merchant_unsettled(m), chart.merchant_settled(m),
                                     chart.merchant_debt(m))
        ])  # fmt: skip
        done = {row[0] for row in driver.execute(
            "SELECT merchant_id FROM settlement_items"
            f" WHERE run_id = ? AND merchant_id IN ({marks})", (run.id, *ids),
        )}  # fmt: skip
        careful: set[str] = set()
        entries: list[Transfer] = []
        paid_ids: list[str] = []
        now = self.clock.now()
        for merchant in merchants:
            merchant_id = merchant.merchant_id
            due, not_due = sums.get(merchant_id, (_Due(), 0))
            unsettled = states[chart.merchant_unsettled(merchant_id)]
            settled = states[chart.merchant_settled(merchant_id)]
            debt = max(0, states[chart.merchant_debt(merchant_id)].balance)
            if merchant_id in done:
                continue
            if debt:
                careful.add(merchant_id)
                continue
            if due.payments == 0 and _available(unsettled) <= not_due and (
                _available(settled) == 0
            ):
                continue  # nothing to settle or pay: no row, no entry
            moved = amount_to_settle(_available(unsettled), not_due)
            if due.payments:
                paid_ids.append(merchant_id)
            if moved:
                entries.append(transfer(
                    f"stl:{run.id}:{merchant_id}:settle", chart.merchant_unsettled(merchant_id),
                    chart.merchant_settled(merchant_id), moved, code="settlement.settle",
                    description=f"{run.term} settlement {run.run_date}",
                ))  # fmt: skip
            payout_amount = max(0, _raw_available(settled) + moved)
            payout, money = open_payout(session, merchant, payout_amount, run.id, self.clock)
            if money is not None:
                entries.append(money)
            paid = payout.amount if payout is not None and money is not None else 0
            driver.insert(SettlementItem, {
                "id": new_id("sti_"), "run_id": run.id, "merchant_id": merchant_id,
                "payments": due.payments, "gross": due.gross, "fees": due.fees, "net": due.net,
                "d0_fee": 0, "moved": moved, "debt_collected": 0, "debt_carried": 0,
                "payout_id": payout.id if payout is not None else None, "payout_amount": paid,
                "created_at": now,
            })  # fmt: skip
        if paid_ids:
            _payments_sql(
                driver, f"UPDATE payments SET settled_at = ? WHERE merchant_id IN"
                f" ({', '.join('?' * len(paid_ids))}) AND status = ? AND settled_at IS NULL"
                " AND captured_at < ?", (_instant(driver, now), *paid_ids, CAPTURED, boundary),
            )  # fmt: skip
        if entries:
            self.ledger.post_all(session, entries)
        return careful

    def _settle_merchant(
        self, run: SettlementRun, merchant: MerchantView, plan_d0_fee: int
    ) -> None:
        """One merchant in a savepoint of the current batch (or in its own transaction
        outside one), tried again when it loses a race."""
        batch = _BATCH.get()
        merchant_id = merchant.merchant_id
        for attempt in range(1, ATTEMPTS + 1):
            try:
                if batch is None:
                    with self.database.transaction() as session:
                        self._settle_in(session, run, merchant, plan_d0_fee)
                else:
                    with batch.begin_nested():
                        self._settle_in(batch, run, merchant, plan_d0_fee)
                return
            except (DBAPIError, self.database.engine.dialect.loaded_dbapi.Error) as error:
                # the ledger locks accounts on the raw driver cursor: its lost races arrive
                # as the driver's own errors, not wrapped by SQLAlchemy
                if self._settled_meanwhile(batch, run.id, merchant_id):
                    return  # a concurrent run of the same key settled it first
                if attempt == ATTEMPTS or not self.database.is_retryable(error):
                    raise
                cause = error.orig if isinstance(error, DBAPIError) else error
                log.warning("settlement %s: merchant %s lost a race (%s), trying again",
                            run.run_key, merchant_id, type(cause).__name__)  # fmt: skip

    def _settled_meanwhile(self, batch: Session | None, run_id: str, merchant_id: str) -> bool:
        if batch is not None:
            return self._item_exists(batch, run_id, merchant_id)
        with self.database.read() as session:
            return self._item_exists(session, run_id, merchant_id)

    @staticmethod
    def _item_exists(session: Session, run_id: str, merchant_id: str) -> bool:
        return bool(DriverSQL(session).execute(
            "SELECT 1 FROM settlement_items WHERE run_id = ? AND merchant_id = ?",
            (run_id, merchant_id),
        ))  # fmt: skip

    def _balances(self, session: Session, merchant_id: str) -> _Balances:
        """The merchant's balances, locked (PostgreSQL) for the rest of the transaction: a
        payment or refund of this merchant waits until the merchant is settled."""
        ids = (
            chart.merchant_unsettled(merchant_id), chart.merchant_settled(merchant_id),
            chart.merchant_debt(merchant_id),
        )  # fmt: skip
        states = LedgerRepository.of(session).lock_accounts(ids)
        unsettled, settled, debt = (states[i] for i in ids)
        return _Balances(_available(unsettled), _available(settled), max(0, debt.balance))

    def _settle_in(
        self, session: Session, run: SettlementRun, merchant: MerchantView, plan_d0_fee: int
    ) -> None:
        merchant_id = merchant.merchant_id
        boundary = run.capture_before
        # payments first, then accounts: the order of a void or refund (no deadlock with them);
        # on SQLite the write transaction is the lock, and the sums read the payments first
        driver = DriverSQL(session)
        if not driver.is_sqlite:
            _payments_sql(
                driver, "SELECT id FROM payments WHERE merchant_id = ? AND status = ?"
                " AND settled_at IS NULL AND captured_at < ? ORDER BY id FOR UPDATE",
                (merchant_id, CAPTURED, _instant(driver, boundary)),
            )  # fmt: skip
        due, not_due = _sums(driver, merchant_id, boundary, plan_d0_fee)
        balances = self._balances(session, merchant_id)
        if self._item_exists(session, run.id, merchant_id):
            return  # done before a crash, or by a concurrent run
        if due.payments == 0 and balances.unsettled <= not_due and balances.debt == 0 and (
            balances.settled == 0
        ):
            return  # nothing to settle, collect or pay: no row, no entry
        now = self.clock.now()
        entry = f"stl:{run.id}:{merchant_id}"
        if due.d0_fee:
            covered, carried = split_charge(due.d0_fee, balances.unsettled)
            legs = [(chart.merchant_unsettled(merchant_id), covered),
                    (chart.merchant_debt(merchant_id), carried),
                    (chart.D0_FEE_REVENUE, -due.d0_fee)]  # fmt: skip
            self.ledger.post(session, Transfer(
                f"{entry}:d0fee", tuple(Posting(a, n) for a, n in legs if n),
                code="settlement.d0_fee", description=f"D0 fee, {due.payments} payments",
            ))  # fmt: skip
            balances = self._balances(session, merchant_id)
        moved = amount_to_settle(balances.unsettled, not_due)
        if due.payments:
            _payments_sql(
                driver, "UPDATE payments SET settled_at = ? WHERE merchant_id = ? AND status = ?"
                " AND settled_at IS NULL AND captured_at < ?",
                (_instant(driver, now), merchant_id, CAPTURED, _instant(driver, boundary)),
            )  # fmt: skip
        if moved:
            self.ledger.post(session, transfer(
                f"{entry}:settle", chart.merchant_unsettled(merchant_id),
                chart.merchant_settled(merchant_id), moved, code="settlement.settle",
                description=f"{run.term} settlement {run.run_date}",
            ))  # fmt: skip
        collected = 0
        if balances.debt:
            collection = collect_merchant_debt(
                session, self.ledger, merchant_id, collection_id=f"{run.id}:{merchant_id}",
                clock=self.clock,
            )  # fmt: skip
            collected = collection.from_unsettled + collection.from_settled
        after = self._balances(session, merchant_id)
        payout = pay_out(session, self.ledger, merchant, after.settled, run.id, self.clock)
        paid = payout.amount if payout is not None and payout.status != "blocked" else 0
        driver.insert(SettlementItem, {
            "id": new_id("sti_"), "run_id": run.id, "merchant_id": merchant_id,
            "payments": due.payments, "gross": due.gross, "fees": due.fees, "net": due.net,
            "d0_fee": due.d0_fee, "moved": moved, "debt_collected": collected,
            "debt_carried": after.debt,
            "payout_id": payout.id if payout is not None else None, "payout_amount": paid,
            "created_at": now,
        })  # fmt: skip

    def _finish(self, run_id: str, *, complete: bool) -> SettlementRun:
        """Sum the run's items; mark it completed unless some merchant failed (it then stays
        running, with the totals so far, until a rerun settles the rest)."""
        with self.database.transaction() as session:
            run = session.get(SettlementRun, run_id, with_for_update=True)
            assert run is not None
            if run.status == RunStatus.COMPLETED.value:
                return run
            totals = session.execute(
                select(
                    func.count(), func.coalesce(func.sum(SettlementItem.payments), 0),
                    func.coalesce(func.sum(SettlementItem.moved), 0),
                    func.coalesce(func.sum(SettlementItem.d0_fee), 0),
                    func.coalesce(func.sum(SettlementItem.debt_collected), 0),
                    func.coalesce(func.sum(SettlementItem.debt_carried), 0),
                    func.coalesce(func.sum(case((SettlementItem.payout_amount > 0, 1))), 0),
                    func.coalesce(func.sum(SettlementItem.payout_amount), 0),
                ).where(SettlementItem.run_id == run_id)
            ).one()  # fmt: skip
            (run.merchants, run.payments, run.settled_amount, run.d0_fees, run.debt_collected,
             run.debt_carried, run.payouts, run.payout_amount) = map(int, totals)  # fmt: skip
            run.blocked = int(session.scalar(
                select(func.count()).select_from(Payout)
                .where(Payout.run_id == run_id, Payout.status == "blocked")
            ) or 0)  # fmt: skip
            if complete:
                run.status = RunStatus.COMPLETED.value
                run.finished_at = self.clock.now()
            return run

    # -- reads --------------------------------------------------------------------------------
    def list_runs(self, principal: Principal, run_date: date | None) -> list[SettlementRun]:
        """Staff: the runs (of a date). Merchants use ``merchant_items``."""
        principal.require_staff(Role.FINANCE, Role.RISK, Role.CS_AGENT)
        query = select(SettlementRun).order_by(SettlementRun.started_at.desc(),
                                               SettlementRun.id.desc()).limit(200)  # fmt: skip
        if run_date is not None:
            query = query.where(SettlementRun.run_date == run_date.isoformat())
        with self.database.read() as session:
            return list(session.scalars(query))

    def merchant_items(
        self, principal: Principal, run_date: date | None
    ) -> list[tuple[SettlementRun, SettlementItem]]:
        """A merchant's own settlements (of a date), newest first."""
        if principal.merchant_id is None:
            raise DomainError(ErrorCode.FORBIDDEN, "a merchant principal is needed")
        query = (
            select(SettlementRun, SettlementItem)
            .join(SettlementItem, SettlementItem.run_id == SettlementRun.id)
            .where(SettlementItem.merchant_id == principal.merchant_id)
            .order_by(SettlementRun.started_at.desc(), SettlementRun.id.desc())
            .limit(200)
        )
        if run_date is not None:
            query = query.where(SettlementRun.run_date == run_date.isoformat())
        with self.database.read() as session:
            return [(run, item) for run, item in session.execute(query).all()]

    def statement(
        self, principal: Principal, merchant_id: str, period: str, fmt: str
    ) -> tuple[str, bytes]:
        """(file name, bytes) of a merchant's statement; another tenant's merchant is 404."""
        if not principal.can_see(merchant_id):
            raise DomainError(ErrorCode.MERCHANT_NOT_FOUND, "merchant not found")
        parsed = parse_period(period)
        with self.database.read() as session:
            built = build_statement(session, merchant_id, parsed)
        return filename(built, fmt), render(built, fmt)

    def statement_summary(self, principal: Principal, merchant_id: str, period: str) -> Statement:
        """The figures of ``statement`` (not rendered): the merchant platform shows them on its
        结算 page; another tenant's merchant is 404."""
        if not principal.can_see(merchant_id):
            raise DomainError(ErrorCode.MERCHANT_NOT_FOUND, "merchant not found")
        parsed = parse_period(period)
        with self.database.read() as session:
            return build_statement(session, merchant_id, parsed)

    def list_payouts(
        self,
        principal: Principal,
        status: str | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Payout]:
        """Newest first; merchants see only their own."""
        query = select(Payout)
        if not principal.is_staff:
            query = query.where(Payout.merchant_id == principal.merchant_id)
        if status is not None:
            query = query.where(Payout.status == status)
        with self.database.read() as session:
            return list(session.scalars(newest_first(query, Payout, limit, after)))


def _available(state: AccountState) -> int:
    """A merchant liability's credit balance less what refunds hold against it."""
    return max(0, _raw_available(state))


def _raw_available(state: AccountState) -> int:
    return state.credits_posted - state.debits_posted - state.debits_pending


# -- payment queries (driver-level: a run makes them once per merchant) ------------------------
def _instant(driver: DriverSQL, moment: datetime) -> Any:
    """An instant as ``UTCDateTime`` stores it on this database."""
    return _TIME.bind_processor(driver.dialect)(moment)  # type: ignore[misc]


_TIME = UTCDateTime()


def _payments_sql(driver: DriverSQL, sql: str, params: tuple[Any, ...]) -> list[Any]:
    """Plain SQL on the payments, through SQLAlchemy's connection (its statement events see
    the order a run takes its locks in) without building a query each time."""
    if not driver.is_sqlite:
        sql = sql.replace("?", "%s")
    result = driver.connection.exec_driver_sql(sql, params)
    return list(result.all()) if result.returns_rows else []


def _batch_sums(
    driver: DriverSQL, merchant_ids: list[str], boundary: Any
) -> dict[str, tuple[_Due, int]]:
    """``_sums`` (without a D0 fee) of many merchants in one grouped pass."""
    rows = _payments_sql(
        driver, "SELECT merchant_id, COUNT(CASE WHEN d THEN 1 END),"
        " SUM(CASE WHEN d THEN captured_amount END), SUM(CASE WHEN d THEN fee END),"
        " SUM(CASE WHEN d THEN net END), SUM(CASE WHEN d THEN 0 ELSE net END)"
        " FROM (SELECT merchant_id, captured_amount, fee, net, captured_at < ? AS d"
        f" FROM payments WHERE merchant_id IN ({', '.join('?' * len(merchant_ids))})"
        " AND status = ? AND settled_at IS NULL) AS unsettled GROUP BY merchant_id",
        (boundary, *merchant_ids, CAPTURED),
    )  # fmt: skip
    return {
        str(row[0]): (_Due(*(int(v or 0) for v in row[1:5])), int(row[5] or 0)) for row in rows
    }


def _sums(
    driver: DriverSQL, merchant_id: str, boundary: datetime, plan_d0_fee: int
) -> tuple[_Due, int]:
    """The merchant's unsettled captured payments in one pass: the sums of those due (captured
    before ``boundary``), and the nets of those not due yet."""
    row = _payments_sql(
        driver, "SELECT COUNT(CASE WHEN d THEN 1 END), SUM(CASE WHEN d THEN captured_amount END),"
        " SUM(CASE WHEN d THEN fee END), SUM(CASE WHEN d THEN net END),"
        " SUM(CASE WHEN d THEN CASE WHEN net < ? THEN net ELSE ? END END),"
        " SUM(CASE WHEN d THEN 0 ELSE net END)"
        " FROM (SELECT captured_amount, fee, net, captured_at < ? AS d FROM payments"
        " WHERE merchant_id = ? AND status = ? AND settled_at IS NULL) AS unsettled",
        (plan_d0_fee, plan_d0_fee, _instant(driver, boundary), merchant_id, CAPTURED),
    )[0]  # fmt: skip
    due = _Due(*(int(v or 0) for v in row[:5]))
    return due, int(row[5] or 0)
