"""Payouts (一清): create one for what a merchant's settled balance holds, or block it with a
reason for staff; export pending payouts as a bank batch file; import the bank's confirmation.

Money (signed fen, debit +), account ids from ``ledger.chart``:

=================  =====================================================  ======================
payout created     merchant settled +A; payouts in flight −A              ``payout:<id>``
bank confirmed     payouts in flight +A; bank −A                          ``payout:<id>:paid``
bank rejected      payouts in flight +A; merchant settled −A              ``payout:<id>:returned``
cancelled          payouts in flight +A; merchant settled −A              ``payout:<id>:cancelled``
=================  =====================================================  ======================

A blocked payout moves no money: the balance stays settled (and visible to the merchant) until
a run finds the account in order and turns the same payout into a pending one. A pending payout
whose account no longer passes the check, or is no longer the merchant's current one, when the
batch is exported is cancelled: its money goes back to the settled balance, and the next run
pays it to the current verified account (or blocks it with the reason).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault
from shoudan.core.db import Database, DriverSQL
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.ledger import chart
from shoudan.ledger.domain import Transfer, transfer
from shoudan.ledger.service import Ledger
from shoudan.merchants.service import (
    MerchantView,
    SettlementAccountView,
    get_merchant,
    settlement_card_number,
)
from shoudan.notifications.service import emit
from shoudan.settlement.bankfile import BatchLine, Confirmation, Problem, invalid, yuan
from shoudan.settlement.domain import (
    AccountFacts,
    PayoutStatus,
    payout_block_reason,
    transition,
)
from shoudan.settlement.models import Payout, PayoutBatch, PayoutStatusChange
from shoudan.webhooks.service import publish

log = logging.getLogger(__name__)

NOTIFY_TOPIC = "settlement.payout_notify"
SYSTEM_ACTOR = "system:settlement"


def move(
    session: Session, payout: Payout, target: PayoutStatus, actor: str, note: str, now: datetime
) -> None:
    current = PayoutStatus(payout.status)
    payout.status = transition(current, target).value
    payout.updated_at = now
    _history(session, payout, current, target, actor, note, now)


def _history(
    session: Session,
    payout: Payout,
    source: PayoutStatus | None,
    target: PayoutStatus,
    actor: str,
    note: str,
    now: datetime,
) -> None:
    # driver-level: a run writes one per merchant, where the ORM's flush costs more than it
    DriverSQL(session).insert(PayoutStatusChange, {
        "payout_id": payout.id, "from_status": source.value if source else None,
        "to_status": target.value, "actor": actor[:64], "note": note[:255], "created_at": now,
    })  # fmt: skip


def event_data(payout: Payout) -> dict[str, object]:
    """What the merchant sees of a payout (webhooks, SMS): the masked account only."""
    return {
        "payout_id": payout.id, "merchant_id": payout.merchant_id, "status": payout.status,
        "amount": payout.amount, "currency": payout.currency,
        "account": payout.account_masked, "reason": payout.block_reason or payout.bank_reason,
    }  # fmt: skip


def block_reason(session: Session, merchant: MerchantView) -> str | None:
    """Why the merchant cannot be paid now (一清), or None."""
    account = merchant.settlement_account
    facts = None
    if account is not None:
        last = DriverSQL(session).execute(
            "SELECT status, bank_reason FROM payouts WHERE account_id = ?"
            " AND status IN (?, ?) ORDER BY updated_at DESC, id DESC LIMIT 1",
            (account.id, PayoutStatus.PAID.value, PayoutStatus.REJECTED.value),
        )
        status, bank_reason = last[0] if last else (None, None)
        rejected = bank_reason if status == PayoutStatus.REJECTED.value else None
        facts = AccountFacts(account.holder_name, account.verified, rejected)
    return payout_block_reason(merchant.legal_name, facts)


def send_block_reason(session: Session, merchant: MerchantView, payout: Payout) -> str | None:
    """Why a pending payout may not go in a batch: the account it was made for fails the check
    now, or is no longer the merchant's current one (None when it may go)."""
    reason = block_reason(session, merchant)
    account = merchant.settlement_account
    if reason is None and (account is None or account.id != payout.account_id):
        reason = "the settlement account was replaced since the payout was created"
    return reason


def _blocked_payout(session: Session, merchant_id: str) -> Payout | None:
    """The merchant's open blocked payout, locked (at most one). Looked for on the driver
    first: almost every merchant has none, and the ORM query costs more than the answer."""
    lock = "" if DriverSQL(session).is_sqlite else " FOR UPDATE"
    found = DriverSQL(session).execute(
        f"SELECT id FROM payouts WHERE merchant_id = ? AND status = ?{lock}",
        (merchant_id, PayoutStatus.BLOCKED.value),
    )
    if not found:
        return None
    return session.get(Payout, found[0][0], with_for_update=True, populate_existing=True)


_PAYOUT_COLUMNS = (
    "id", "merchant_id", "run_id", "status", "currency", "amount", "account_id",
    "account_masked", "holder_name", "block_reason", "batch_id", "batch_line", "bank_reason",
    "created_at", "updated_at", "completed_at",
)  # fmt: skip


def _insert(session: Session, payout: Payout) -> None:
    """A new payout, written at once (its history row and ledger entry name it)."""
    DriverSQL(session).insert(Payout, {c: getattr(payout, c) for c in _PAYOUT_COLUMNS})


def pay_out(
    session: Session,
    ledger: Ledger,
    merchant: MerchantView,
    amount: int,
    run_id: str,
    clock: Clock,
) -> Payout | None:
    """Pay ``amount`` (the merchant's settled balance) out, or record why it cannot go: the
    merchant's one open blocked payout is updated, or turned pending once the account is in
    order. Returns the payout (None when there is nothing to pay)."""
    payout, money = open_payout(session, merchant, amount, run_id, clock)
    if money is not None:
        ledger.post(session, money)
    return payout


def open_payout(
    session: Session,
    merchant: MerchantView,
    amount: int,
    run_id: str,
    clock: Clock,
) -> tuple[Payout | None, Transfer | None]:
    """``pay_out`` without posting: the payout rows are written and the ledger transfer that
    moves its money is returned (None when blocked or nothing to pay) for the caller to post
    in this transaction — a settlement batch posts all of its merchants' entries at once."""
    blocked = _blocked_payout(session, merchant.merchant_id)
    if amount <= 0:
        return None, None
    now = clock.now()
    reason = block_reason(session, merchant)
    account = merchant.settlement_account
    payout = blocked or Payout(
        id=new_id("po_"), merchant_id=merchant.merchant_id, currency="CNY", created_at=now,
    )  # fmt: skip
    changed = blocked is None or (blocked.amount, blocked.block_reason) != (amount, reason)
    payout.run_id, payout.amount, payout.updated_at = run_id, amount, now
    payout.account_id = account.id if account else None
    payout.account_masked = account.card_number if account else None
    payout.holder_name = account.holder_name if account else None
    if reason is not None:
        payout.block_reason = reason
        if blocked is None:
            payout.status = PayoutStatus.BLOCKED.value
            _insert(session, payout)
            _history(session, payout, None, PayoutStatus.BLOCKED, SYSTEM_ACTOR, reason, now)
        if changed:
            publish(session, merchant.merchant_id, "payout.blocked", event_data(payout),
                    dedupe_key=f"payout:{payout.id}:blocked:{amount}", clock=clock)  # fmt: skip
        return payout, None
    payout.block_reason = None
    if blocked is None:
        payout.status = PayoutStatus.PENDING.value
        _insert(session, payout)
        _history(session, payout, None, PayoutStatus.PENDING, SYSTEM_ACTOR, "created", now)
    else:
        move(session, payout, PayoutStatus.PENDING, SYSTEM_ACTOR, "account in order", now)
    return payout, transfer(
        f"payout:{payout.id}", chart.merchant_settled(merchant.merchant_id),
        chart.PAYOUTS_IN_FLIGHT, amount, code="payout.create",
        description=f"payout {payout.id} to {payout.account_masked}",
    )  # fmt: skip


# -- bank batches --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BatchFile:
    batch_id: str
    lines: list[BatchLine]
    cancelled: list[tuple[str, str]]  # (payout id, why it could not go)

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)


@dataclass(frozen=True, slots=True)
class ImportSummary:
    file: str
    lines: int
    paid: int
    rejected: int
    unchanged: int  # lines imported before (a re-import changes nothing)
    returned_amount: int  # fen back in merchants' settled balances


class PayoutService:
    def __init__(self, database: Database, ledger: Ledger, vault: Vault, clock: Clock) -> None:
        self.database = database
        self.ledger = ledger
        self.vault = vault
        self.clock = clock

    def export_batch(self, actor: str) -> BatchFile | None:
        """Put every pending payout that may still go out in a new batch (None when none may).
        The account is checked again: a payout whose account no longer passes, or was replaced,
        is cancelled (its money back in the merchant's settled balance; the next run pays it to
        the current verified account). The cancellations are kept even when no batch is made."""
        now = self.clock.now()
        with self.database.transaction() as session:
            pending = list(session.scalars(
                select(Payout).where(Payout.status == PayoutStatus.PENDING.value)
                .order_by(Payout.created_at, Payout.id).with_for_update()
            ))  # fmt: skip
            sendable: list[tuple[Payout, SettlementAccountView]] = []
            cancelled: list[tuple[str, str]] = []
            for payout in pending:
                merchant = get_merchant(session, payout.merchant_id)
                reason = send_block_reason(session, merchant, payout)
                if reason is None and merchant.settlement_account is not None:
                    sendable.append((payout, merchant.settlement_account))
                    continue
                why = reason or "no settlement account"
                self._cancel(session, payout, why, actor, now)
                cancelled.append((payout.id, why))
            if not sendable:
                return None
            batch = PayoutBatch(id=new_id("pb_"), status="exported", lines=0, total=0, paid=0,
                                rejected=0, created_by=actor[:64], created_at=now)  # fmt: skip
            session.add(batch)
            session.flush()
            lines: list[BatchLine] = []
            for number, (payout, account) in enumerate(sendable, 1):
                lines.append(self._line(session, batch.id, number, payout, account))
                payout.batch_id, payout.batch_line = batch.id, number
                move(session, payout, PayoutStatus.EXPORTED, actor, f"batch {batch.id}", now)
            batch.lines, batch.total = len(lines), sum(line.amount for line in lines)
        return BatchFile(batch.id, lines, cancelled)

    def batch_file(self, batch_id: str) -> BatchFile:
        """An exported batch's lines again, from the database (to write its file again when the
        first write failed). Each line goes to the account its payout was made for: a batch
        with an account replaced since is refused (its payouts must be answered by the bank
        or cancelled, not sent elsewhere)."""
        with self.database.read() as session:
            batch = session.get(PayoutBatch, batch_id)
            if batch is None:
                raise DomainError(ErrorCode.NOT_FOUND, f"batch {batch_id} not found")
            payouts = session.scalars(
                select(Payout).where(Payout.batch_id == batch_id).order_by(Payout.batch_line)
            )
            lines: list[BatchLine] = []
            for payout in payouts:
                account = get_merchant(session, payout.merchant_id).settlement_account
                if account is None or account.id != payout.account_id:
                    raise DomainError(
                        ErrorCode.INVALID_INPUT,
                        f"payout {payout.id} of batch {batch_id}: the settlement account was "
                        "replaced since the export; the file cannot be written again",
                    )
                assert payout.batch_line is not None
                lines.append(self._line(session, batch_id, payout.batch_line, payout, account))
        return BatchFile(batch_id, lines, [])

    def _line(
        self,
        session: Session,
        batch_id: str,
        number: int,
        payout: Payout,
        account: SettlementAccountView,
    ) -> BatchLine:
        card = settlement_card_number(session, self.vault, payout.merchant_id)
        return BatchLine(batch_id, number, payout.id, payout.merchant_id, account.holder_name,
                         account.bank_name, card, payout.amount)  # fmt: skip

    def _cancel(
        self, session: Session, payout: Payout, reason: str, actor: str, now: datetime
    ) -> None:
        """The payout never goes out: its money is back in the merchant's settled balance."""
        payout.block_reason = reason[:255]
        payout.completed_at = now
        move(session, payout, PayoutStatus.CANCELLED, actor, reason, now)
        self.ledger.post(session, transfer(
            f"payout:{payout.id}:cancelled", chart.PAYOUTS_IN_FLIGHT,
            chart.merchant_settled(payout.merchant_id), payout.amount, code="payout.cancelled",
            description=f"payout {payout.id} cancelled: {reason}"[:255],
        ))  # fmt: skip
        publish(session, payout.merchant_id, "payout.cancelled", event_data(payout),
                dedupe_key=f"payout:{payout.id}:cancelled", clock=self.clock)  # fmt: skip
        log.warning("payout %s cancelled: %s", payout.id, reason)

    def import_confirmations(
        self, name: str, rows: list[Confirmation], actor: str
    ) -> ImportSummary:
        """Apply the bank's answers, all or nothing: a line naming an unknown payout, another
        batch or line, another amount, or a payout not sent, refuses the whole file."""
        now = self.clock.now()
        paid = rejected = unchanged = returned = 0
        with self.database.transaction() as session:
            wanted = [row.payout_id for row in rows]
            payouts: dict[str, Payout] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                payouts.update({p.id: p for p in session.scalars(
                    select(Payout).where(Payout.id.in_(chunk)).with_for_update()
                )})  # fmt: skip
            problems = [p for row in rows if (p := _check(row, payouts.get(row.payout_id)))]
            if problems:
                raise invalid(name, problems)
            for row in rows:
                payout = payouts[row.payout_id]
                if payout.status == row.status:
                    unchanged += 1
                    continue
                self._resolve(session, payout, row, actor, now)
                if row.status == PayoutStatus.PAID.value:
                    paid += 1
                else:
                    rejected += 1
                    returned += payout.amount
            self._close_batches(session, {row.batch_id for row in rows}, now)
        return ImportSummary(name, len(rows), paid, rejected, unchanged, returned)

    def _resolve(
        self, session: Session, payout: Payout, row: Confirmation, actor: str, now: datetime
    ) -> None:
        if row.status == PayoutStatus.PAID.value:
            move(session, payout, PayoutStatus.PAID, actor, "confirmed by the bank", now)
            entry = transfer(f"payout:{payout.id}:paid", chart.PAYOUTS_IN_FLIGHT,
                             chart.BANK_SETTLEMENT, payout.amount, code="payout.paid")
        else:
            payout.bank_reason = row.reason
            move(session, payout, PayoutStatus.REJECTED, actor, f"bank: {row.reason}", now)
            entry = transfer(f"payout:{payout.id}:returned", chart.PAYOUTS_IN_FLIGHT,
                             chart.merchant_settled(payout.merchant_id), payout.amount,
                             code="payout.returned")  # fmt: skip
            emit(session, NOTIFY_TOPIC, {"payout_id": payout.id},
                 dedupe_key=f"payout:{payout.id}:rejected", clock=self.clock)  # fmt: skip
        payout.completed_at = now
        self.ledger.post(session, entry)
        publish(session, payout.merchant_id, f"payout.{payout.status}", event_data(payout),
                dedupe_key=f"payout:{payout.id}:{payout.status}", clock=self.clock)  # fmt: skip

    def _close_batches(self, session: Session, batch_ids: set[str], now: datetime) -> None:
        for batch in session.scalars(select(PayoutBatch).where(PayoutBatch.id.in_(batch_ids))):
            statuses = list(session.scalars(
                select(Payout.status).where(Payout.batch_id == batch.id)
            ))  # fmt: skip
            batch.paid = statuses.count(PayoutStatus.PAID.value)
            batch.rejected = statuses.count(PayoutStatus.REJECTED.value)
            if batch.paid + batch.rejected == batch.lines and batch.confirmed_at is None:
                batch.status, batch.confirmed_at = "confirmed", now


def _check(row: Confirmation, payout: Payout | None) -> Problem | None:
    line = row.file_line
    if payout is None:
        return Problem(line, "payout_id", f"unknown payout {row.payout_id!r}")
    if payout.batch_id != row.batch_id:
        return Problem(line, "batch_id", f"payout {payout.id} is not in batch {row.batch_id!r}")
    if payout.batch_line != row.line:
        return Problem(line, "line", f"payout {payout.id} is line {payout.batch_line}")
    if payout.amount != row.amount:
        return Problem(line, "amount", f"payout {payout.id} is {yuan(payout.amount)}")
    done = {PayoutStatus.PAID.value, PayoutStatus.REJECTED.value}
    if payout.status in done and payout.status != row.status:
        return Problem(line, "status", f"payout {payout.id} was already {payout.status}")
    if payout.status not in done and payout.status != PayoutStatus.EXPORTED.value:
        return Problem(line, "payout_id", f"payout {payout.id} was never sent ({payout.status})")
    return None


def get_payout(session: Session, payout_id: str) -> Payout:
    payout = session.get(Payout, payout_id)
    if payout is None:
        raise DomainError(ErrorCode.PAYOUT_NOT_FOUND, f"payout {payout_id} not found")
    return payout
