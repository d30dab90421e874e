"""Deposit use cases: charge at activation, record an up-front payment, collect the merchant's
debt (the building block settlement calls), close a deposit on every refund path, and the
merchant's refund requests with their staff review.

Money (signed fen, debit +), account ids from ``ledger.chart``:

=========================  ===========================================================
charge (first settlement)  merchant debt +A; deposit held −A            ``dep:<id>:charge``
paid up front              bank +A; deposit held −A                     ``dep:<id>:upfront``
paid after being charged   bank +A; merchant debt −owed; settled −(A−owed)  ``dep:<id>:upfront``
debt collected             unsettled +u; settled +s; merchant debt −(u+s)  ``debt:<call id>``
close (refund / forfeit)   deposit held +A; merchant debt −offset; settled −to_settled;
                           penalty revenue −p; depreciation revenue −d  ``dep:<id>:close``
=========================  ===========================================================

``offset`` cancels what the merchant still owes of this very deposit (it never paid it, so it
gets nothing back for it); the rest of the refund goes to its settled balance, which payouts pay
only to its verified card in its own name (一清). A deposit is closed in ``blocked_debt`` while
the merchant owes anything else, and paid by itself once that is collected.

Session-level functions run in the caller's transaction (the outbox handlers, settlement);
``DepositService`` wraps each use case in one transaction for the API, CLI and worker.

Lock order: the merchant's ledger accounts first (``lock_merchants``, as the settlement run
does), then deposit rows. Every path that reads the debt to decide, or touches both, keeps it:
no PostgreSQL deadlock, and a decision never reads a debt that a running settlement is about
to change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, func, or_, select
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.auth.domain import Principal, Role
from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault
from shoudan.core.db import Database, newest_first
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.deposits.domain import (
    FINAL,
    OPEN,
    Basis,
    DepositStatus,
    Facts,
    Materials,
    Outcome,
    RequestStatus,
    Terms,
    allocate,
    check_deadline,
    check_materials,
    check_reason,
    decide,
    has_target,
    is_blocked,
    payout,
    target_reached,
    transition,
    window_end,
)
from shoudan.deposits.models import (
    DebtCollection,
    Deposit,
    DepositRefundRequest,
    DepositStatusChange,
)
from shoudan.ledger import chart
from shoudan.ledger.domain import Posting, Transfer, transfer
from shoudan.ledger.repository import LedgerRepository
from shoudan.ledger.service import AccountView, Ledger
from shoudan.merchants.service import contact_phone, get_merchant, settlement_card_number
from shoudan.notifications.service import emit
from shoudan.onboarding.domain import ApplicationStatus
from shoudan.onboarding.models import Application
from shoudan.onboarding.service import ID_CONTEXT, accepted_contract
from shoudan.onboarding.terms import ContractTerms, DepositCollection
from shoudan.payments.domain import PaymentStatus
from shoudan.payments.models import Payment
from shoudan.webhooks.service import publish

log = logging.getLogger(__name__)

NOTIFY_TOPIC = "deposit.notify_merchant"
SYSTEM_ACTOR = "system:deposits"
REVIEW_ROLES = (Role.REVIEWER, Role.APPROVER, Role.FINANCE)
UPFRONT_ROLES = (Role.FINANCE,)
MAX_COLLECTION_ID = 59  # the ledger entry id `debt:<id>` is at most 64
CHECK_BATCH = 500  # rows per page of the periodic check
LAST_LOOK = timedelta(days=1)
# a deposit whose target still matters: open, in review, or waiting for the merchant's debt
UNDECIDED = frozenset({*OPEN, DepositStatus.IN_REVIEW})  # its facts may still change
CHECKABLE = frozenset({*UNDECIDED, DepositStatus.BLOCKED_DEBT})


class ActivationPending(DomainError):
    """A return or termination of an activated device whose deposit is not charged yet: its
    ``terminal.activated`` event is still on the way (the outbox keeps no order per device).
    The outbox retries the event later."""


@dataclass(frozen=True, slots=True)
class DepositDetail:
    deposit: Deposit
    history: list[DepositStatusChange]
    requests: list[DepositRefundRequest]


@dataclass(frozen=True, slots=True)
class RefundRequestInput:
    serial_number: str
    phone: str
    id_number: str
    bank_card_last4: str
    reason: str

    def __repr__(self) -> str:  # personal data stays out of logs
        return f"RefundRequestInput(serial_number={self.serial_number!r})"


@dataclass(frozen=True, slots=True)
class CheckStats:
    target_checked: int = 0
    refunded: int = 0
    resumed: int = 0


# -- reading a deposit's terms and facts ---------------------------------------------------------
def terms_of(deposit: Deposit) -> Terms:
    contract = ContractTerms.from_dict(json.loads(deposit.terms))
    return Terms(
        amount=deposit.amount, activation_target=contract.activation_target,
        activation_window_days=contract.activation_window_days,
        cooling_off_days=contract.cooling_off_days,
        termination_penalty=contract.termination_penalty,
        monthly_depreciation=contract.monthly_depreciation,
        deposit_refund_deadline_days=contract.deposit_refund_deadline_days,
    )  # fmt: skip


def facts_of(deposit: Deposit) -> Facts:
    return Facts(
        activated_at=deposit.activated_at, delivered_at=deposit.delivered_at,
        returned_at=deposit.returned_at, return_condition=deposit.return_condition,
        terminated_at=deposit.terminated_at, target_reached_at=deposit.target_reached_at,
    )  # fmt: skip


def event_data(deposit: Deposit) -> dict[str, Any]:
    """A deposit as webhooks and the event log carry it (no personal data)."""
    return {
        "id": deposit.id, "merchant_id": deposit.merchant_id,
        "serial_number": deposit.serial_number, "terminal_id": deposit.terminal_id,
        "contract_id": deposit.contract_id, "status": deposit.status, "amount": deposit.amount,
        "outstanding": deposit.outstanding, "basis": deposit.basis,
        "refund_amount": deposit.refund_amount, "penalty_amount": deposit.penalty_amount,
        "depreciation_amount": deposit.depreciation_amount,
        "updated_at": deposit.updated_at.isoformat(),
    }  # fmt: skip


# -- notifications and history -------------------------------------------------------------------
def _history(
    session: Session,
    deposit: Deposit,
    before: DepositStatus | None,
    after: DepositStatus,
    actor: str,
    note: str,
    now: datetime,
) -> None:
    session.add(DepositStatusChange(
        deposit_id=deposit.id, from_status=before.value if before else None,
        to_status=after.value, actor=actor, note=note[:500], created_at=now,
    ))  # fmt: skip


def _notify(session: Session, deposit: Deposit, event_type: str, step: str, clock: Clock) -> None:
    """The merchant's webhooks (and event log) and an SMS to its contact phone. The key names
    the step, so a retried use case notifies nothing twice."""
    key = f"{deposit.id}:{event_type}:{step}"
    publish(session, deposit.merchant_id, event_type, event_data(deposit), dedupe_key=key,
            clock=clock)  # fmt: skip
    emit(session, NOTIFY_TOPIC, {"deposit_id": deposit.id, "event": event_type},
         dedupe_key=f"sms:{key}", clock=clock)  # fmt: skip


def _move(
    session: Session,
    deposit: Deposit,
    target: DepositStatus,
    actor: str,
    note: str,
    now: datetime,
) -> None:
    current = DepositStatus(deposit.status)
    deposit.status = transition(current, target).value
    deposit.updated_at = now
    _history(session, deposit, current, target, actor, note, now)


# -- locks -------------------------------------------------------------------------------------
def lock_merchants(session: Session, merchant_ids: Iterable[str]) -> None:
    """Lock the merchants' balances (PostgreSQL; SQLite has one writer at a time), the ones the
    settlement run locks first: a deposit path takes them before any deposit row, and reads the
    merchant's debt only under them."""
    ids = [
        account
        for merchant_id in set(merchant_ids)
        for account in (chart.merchant_unsettled(merchant_id), chart.merchant_settled(merchant_id),
                        chart.merchant_debt(merchant_id))
    ]  # fmt: skip
    LedgerRepository.of(session).lock_accounts(ids)


# -- charge and payment --------------------------------------------------------------------------
def _find(
    session: Session, serial_number: str, contract_id: str, *, for_update: bool = False
) -> Deposit | None:
    query = select(Deposit).where(
        Deposit.serial_number == serial_number, Deposit.contract_id == contract_id
    )
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def _new_deposit(
    merchant_id: str,
    serial_number: str,
    terminal_id: str | None,
    contract_id: str,
    terms: ContractTerms,
    now: datetime,
) -> Deposit:
    if terms.deposit_amount <= 0:
        raise DomainError(ErrorCode.INVALID_INPUT, "the contract has no deposit")
    return Deposit(
        id=new_id("dep_"), merchant_id=merchant_id, serial_number=serial_number,
        terminal_id=terminal_id, contract_id=contract_id, product=terms.product,
        terms=json.dumps(terms.as_dict(), sort_keys=True), amount=terms.deposit_amount,
        collection=terms.deposit_collection.value, outstanding=terms.deposit_amount,
        status=DepositStatus.CHARGED.value, card_volume=0, created_at=now, updated_at=now,
    )  # fmt: skip


def _set_activation(deposit: Deposit, activated_at: datetime) -> None:
    deposit.activated_at = activated_at
    deposit.window_ends_at = window_end(terms_of(deposit), activated_at)


def charge_at_activation(
    session: Session,
    ledger: Ledger,
    *,
    merchant_id: str,
    serial_number: str,
    terminal_id: str,
    contract_id: str,
    terms: ContractTerms,
    activated_at: datetime,
    clock: Clock,
) -> Deposit | None:
    """The deposit of one device activation. Already paid up front: the deposit only learns
    its activation. Otherwise it is charged as merchant debt, which a settlement collects
    (``collect_merchant_debt``) — also for an up-front contract whose payment was never
    recorded. Idempotent: a second call for the same activation changes nothing. None when the
    contract has no deposit. A return or termination handled before this (late) activation
    closes the deposit now; a deposit already decided keeps its facts."""
    if terms.deposit_amount <= 0:
        return None
    now = clock.now()
    lock_merchants(session, [merchant_id])
    deposit = _find(session, serial_number, contract_id, for_update=True)
    if deposit is not None:
        if deposit.activated_at is None and DepositStatus(deposit.status) in UNDECIDED:
            deposit.terminal_id, deposit.updated_at = terminal_id, now
            _set_activation(deposit, activated_at)
        _close_if_due(session, ledger, deposit, SYSTEM_ACTOR, "activated after the fact", clock)
        return deposit
    deposit = _new_deposit(merchant_id, serial_number, terminal_id, contract_id, terms, now)
    _set_activation(deposit, activated_at)
    session.add(deposit)
    session.flush()
    ledger.post(session, transfer(
        f"dep:{deposit.id}:charge", chart.merchant_debt(merchant_id),
        chart.merchant_deposit(merchant_id), deposit.amount, code="deposit.charge",
        description=f"deposit of {serial_number}",
    ))  # fmt: skip
    _history(session, deposit, None, DepositStatus.CHARGED, SYSTEM_ACTOR,
             "charged at activation: owed until a settlement collects it", now)  # fmt: skip
    _notify(session, deposit, "deposit.charged", "new", clock)
    return deposit


def record_upfront_payment(
    session: Session,
    ledger: Ledger,
    *,
    merchant_id: str,
    serial_number: str,
    contract_id: str,
    terms: ContractTerms,
    actor: str,
    clock: Clock,
    terminal_id: str | None = None,
) -> Deposit:
    """The deposit received before shipping (bank → deposit held). A deposit already charged
    as debt (activated first) is paid late (``_book_late_payment``). Recording the same payment
    again changes nothing."""
    now = clock.now()
    lock_merchants(session, [merchant_id])
    deposit = _find(session, serial_number, contract_id, for_update=True)
    if deposit is None:
        deposit = _new_deposit(merchant_id, serial_number, terminal_id, contract_id, terms, now)
        deposit.outstanding, deposit.paid_at = 0, now
        deposit.status = DepositStatus.HELD.value
        session.add(deposit)
        session.flush()
        ledger.post(session, transfer(
            f"dep:{deposit.id}:upfront", chart.BANK_SETTLEMENT,
            chart.merchant_deposit(merchant_id), deposit.amount, code="deposit.upfront",
            description=f"deposit of {serial_number} paid up front",
        ))  # fmt: skip
        _history(session, deposit, None, DepositStatus.HELD, actor, "paid up front", now)
        _notify(session, deposit, "deposit.paid", "upfront", clock)
        return deposit
    if deposit.merchant_id != merchant_id:
        raise DomainError(ErrorCode.DEPOSIT_NOT_FOUND, "deposit not found")
    if deposit.paid_at is None:  # else: this payment was recorded before
        _book_late_payment(session, ledger, deposit, actor, clock)
    return deposit


def _book_late_payment(
    session: Session, ledger: Ledger, deposit: Deposit, actor: str, clock: Clock
) -> None:
    """The whole deposit received after it was charged as debt. What the merchant still owes
    of it pays that debt; the rest (a settlement collected it meanwhile, or a refund cancelled
    it) is the merchant's money received twice: credited to its settled balance, paid back with
    its next payout."""
    now = clock.now()
    mid, owed = deposit.merchant_id, deposit.outstanding
    legs = [(chart.BANK_SETTLEMENT, deposit.amount), (chart.merchant_debt(mid), -owed),
            (chart.merchant_settled(mid), owed - deposit.amount)]  # fmt: skip
    ledger.post(session, Transfer(
        f"dep:{deposit.id}:upfront", tuple(Posting(a, n) for a, n in legs if n),
        code="deposit.upfront", description=f"deposit of {deposit.serial_number} paid",
    ))  # fmt: skip
    deposit.outstanding, deposit.paid_at, deposit.updated_at = 0, now, now
    if deposit.status == DepositStatus.CHARGED.value:
        _move(session, deposit, DepositStatus.HELD, actor, "paid", now)
    _notify(session, deposit, "deposit.paid", "paid", clock)
    resume_blocked(session, ledger, mid, clock=clock)  # it may have paid the last debt


# -- debt ----------------------------------------------------------------------------------------
def _available(account: AccountView) -> int:
    """A merchant liability's credit balance less what refunds hold against it."""
    return max(0, account.credit_balance - account.debits_pending)


def _unpaid_deposits(session: Session, merchant_id: str) -> int:
    """What the merchant owes of its own deposits not closed yet: that part of its debt is
    matched by the deposit itself and never blocks a refund."""
    total = session.scalar(
        select(func.coalesce(func.sum(Deposit.outstanding), 0)).where(
            Deposit.merchant_id == merchant_id,
            Deposit.status.not_in([s.value for s in FINAL]),
        )
    )
    return int(total or 0)


def owes_money(session: Session, ledger: Ledger, merchant_id: str) -> bool:
    """True while the merchant owes more than the unpaid parts of its open deposits. The
    caller holds ``lock_merchants``: the answer stays true until it commits."""
    debt = ledger.get_account(session, chart.merchant_debt(merchant_id)).balance
    return is_blocked(debt, _unpaid_deposits(session, merchant_id))


def collect_merchant_debt(
    session: Session, ledger: Ledger, merchant_id: str, *, collection_id: str, clock: Clock
) -> DebtCollection:
    """Pay what the merchant owes (``merchant_debt``) from its unsettled, then its settled
    balance, as far as they go; then resume its deposits blocked by debt. Settlement (#7)
    calls it in its run with ``collection_id`` = its own id: the same id again returns the
    first result and moves nothing. What it collects pays the merchant's unpaid deposits
    first, oldest first (a charged deposit becomes held)."""
    if not 0 < len(collection_id) <= MAX_COLLECTION_ID:
        raise DomainError(ErrorCode.INVALID_INPUT, f"collection_id is 1-{MAX_COLLECTION_ID} chars")
    lock_merchants(session, [merchant_id])  # the settlement run holds them already
    done = session.get(DebtCollection, collection_id)
    if done is not None:
        return done
    now = clock.now()
    debt = ledger.get_account(session, chart.merchant_debt(merchant_id)).balance
    unsettled = ledger.get_account(session, chart.merchant_unsettled(merchant_id))
    settled = ledger.get_account(session, chart.merchant_settled(merchant_id))
    from_unsettled = min(max(0, debt), _available(unsettled))
    from_settled = min(max(0, debt) - from_unsettled, _available(settled))
    row = DebtCollection(
        id=collection_id, merchant_id=merchant_id, from_unsettled=from_unsettled,
        from_settled=from_settled, created_at=now,
    )  # fmt: skip
    session.add(row)
    session.flush()
    collected = from_unsettled + from_settled
    if collected:
        legs = [(chart.merchant_unsettled(merchant_id), from_unsettled),
                (chart.merchant_settled(merchant_id), from_settled),
                (chart.merchant_debt(merchant_id), -collected)]  # fmt: skip
        ledger.post(session, Transfer(
            f"debt:{collection_id}", tuple(Posting(a, n) for a, n in legs if n),
            code="debt.collect", description="merchant debt collected from its balance",
        ))  # fmt: skip
        _pay_deposits(session, merchant_id, collected, now, clock)
    resume_blocked(session, ledger, merchant_id, clock=clock)
    return row


def _pay_deposits(
    session: Session, merchant_id: str, collected: int, now: datetime, clock: Clock
) -> None:
    owing = list(session.scalars(
        select(Deposit)
        .where(Deposit.merchant_id == merchant_id, Deposit.outstanding > 0)
        .order_by(Deposit.created_at, Deposit.id)
        .with_for_update().execution_options(populate_existing=True)
    ))  # fmt: skip
    by_id = {d.id: d for d in owing}
    for deposit_id, share in allocate(collected, [(d.id, d.outstanding) for d in owing]):
        deposit = by_id[deposit_id]
        deposit.outstanding -= share
        deposit.updated_at = now
        if deposit.outstanding == 0 and deposit.status == DepositStatus.CHARGED.value:
            _move(session, deposit, DepositStatus.HELD, SYSTEM_ACTOR, "collected", now)
            _notify(session, deposit, "deposit.collected", "collected", clock)


# -- closing: every refund path --------------------------------------------------------------
def _close(
    session: Session, ledger: Ledger, deposit: Deposit, actor: str, note: str, clock: Clock
) -> None:
    """Decide the refund from the recorded facts and pay it, or wait in ``blocked_debt``."""
    now = clock.now()
    outcome = _best_outcome(deposit, now)
    _record_decision(deposit, outcome, now)
    if owes_money(session, ledger, deposit.merchant_id):
        _move(session, deposit, DepositStatus.BLOCKED_DEBT, actor,
              f"{note}; blocked: the merchant owes money", now)  # fmt: skip
        _notify(session, deposit, "deposit.blocked", "blocked", clock)
        return
    _pay(session, ledger, deposit, outcome, actor, note, clock)


def _pay(
    session: Session,
    ledger: Ledger,
    deposit: Deposit,
    outcome: Outcome,
    actor: str,
    note: str,
    clock: Clock,
) -> None:
    now = clock.now()
    split = payout(outcome, deposit.outstanding)
    mid = deposit.merchant_id
    legs = [
        (chart.merchant_deposit(mid), deposit.amount),
        (chart.merchant_debt(mid), -split.debt_offset),
        (chart.merchant_settled(mid), -split.to_settled),
        (chart.DEPOSIT_PENALTY_REVENUE, -split.penalty),
        (chart.DEPOSIT_DEPRECIATION_REVENUE, -split.depreciation),
    ]
    ledger.post(session, Transfer(
        f"dep:{deposit.id}:close", tuple(Posting(a, n) for a, n in legs if n),
        code=f"deposit.{outcome.basis.value}", description=f"deposit of {deposit.serial_number}",
    ))  # fmt: skip
    deposit.outstanding -= split.debt_offset
    deposit.closed_at = now
    target = DepositStatus.REFUNDED if outcome.refund > 0 else DepositStatus.FORFEITED
    _move(session, deposit, target, actor, f"{note}: {outcome.basis.value}", now)
    _notify(session, deposit, f"deposit.{target.value}", "closed", clock)


def _decided(deposit: Deposit) -> Outcome | None:
    if deposit.basis is None or deposit.refund_amount is None:
        return None
    return Outcome(Basis(deposit.basis), deposit.refund_amount, deposit.penalty_amount or 0,
                   deposit.depreciation_amount or 0)  # fmt: skip


def _best_outcome(deposit: Deposit, now: datetime) -> Outcome:
    """The refund the facts give now (a request: as of its first decision). A deposit decided
    before keeps that outcome when it gives the merchant more: waiting for its debt to clear
    never costs the merchant, and a later return or target can only add to it."""
    fresh = decide(terms_of(deposit), facts_of(deposit), deposit.decided_at or now)
    earlier = _decided(deposit)
    return earlier if earlier is not None and earlier.refund >= fresh.refund else fresh


def _record_decision(deposit: Deposit, outcome: Outcome, now: datetime) -> None:
    deposit.basis = outcome.basis.value
    deposit.refund_amount = outcome.refund
    deposit.penalty_amount, deposit.depreciation_amount = outcome.penalty, outcome.depreciation
    deposit.decided_at = deposit.decided_at or now


def _reconsider_blocked(
    session: Session, ledger: Ledger, deposit: Deposit, actor: str, note: str, clock: Clock
) -> None:
    """A fact (return, termination, target) that came while the deposit waited for the
    merchant's debt: decide again, and pay at once if the debt is gone meanwhile."""
    now = clock.now()
    outcome = _best_outcome(deposit, now)
    if outcome != _decided(deposit):
        log.info("deposit %s: %s while blocked, now %s", deposit.id, note, outcome.basis.value)
        _record_decision(deposit, outcome, now)
        deposit.updated_at = now
    if not owes_money(session, ledger, deposit.merchant_id):
        _pay(session, ledger, deposit, outcome, actor, note, clock)


def resume_blocked(session: Session, ledger: Ledger, merchant_id: str, *, clock: Clock) -> int:
    """Pay the merchant's deposits blocked by debt once it owes nothing else, each on the best
    outcome the facts give now."""
    lock_merchants(session, [merchant_id])  # before the deposit rows, as everywhere
    blocked = list(session.scalars(
        select(Deposit)
        .where(Deposit.merchant_id == merchant_id,
               Deposit.status == DepositStatus.BLOCKED_DEBT.value)
        .order_by(Deposit.created_at, Deposit.id)
        .with_for_update().execution_options(populate_existing=True)
    ))  # fmt: skip
    if not blocked or owes_money(session, ledger, merchant_id):
        return 0
    now = clock.now()
    for deposit in blocked:
        outcome = _best_outcome(deposit, now)
        _record_decision(deposit, outcome, now)
        _pay(session, ledger, deposit, outcome, SYSTEM_ACTOR, "debt cleared", clock)
    return len(blocked)


def _close_if_due(
    session: Session, ledger: Ledger, deposit: Deposit, actor: str, note: str, clock: Clock
) -> bool:
    """Open deposits close as soon as a fact calls for it (target, return, termination); one
    in review waits for the staff decision, which reads the same facts; one blocked by debt is
    decided again."""
    status = DepositStatus(deposit.status)
    if status is DepositStatus.BLOCKED_DEBT:
        _reconsider_blocked(session, ledger, deposit, actor, note, clock)
        return False
    if status not in OPEN:
        return False
    if deposit.target_reached_at or deposit.returned_at or deposit.terminated_at:
        _close(session, ledger, deposit, actor, note, clock)
        return True
    return False


def _deposit_of_event(
    session: Session,
    serial_number: str,
    contract_id: str,
    merchant_id: str | None,
    activated_at: datetime | None,
) -> Deposit | None:
    """The deposit a return or termination event is about, locked after its merchant's
    accounts. Events come in any order: the device's activation (``activated_at`` of the
    event) is filled in when that event is not handled yet, and an activated device whose
    contract has a deposit but no deposit row yet raises ``ActivationPending`` (retried)."""
    owner = merchant_id
    if owner is None:
        found = _find(session, serial_number, contract_id)
        owner = found.merchant_id if found is not None else None
    if owner is not None:
        lock_merchants(session, [owner])
    deposit = _find(session, serial_number, contract_id, for_update=True)
    if deposit is None:
        if activated_at is not None and merchant_id is not None and _contract_has_deposit(
            session, contract_id, merchant_id
        ):
            raise ActivationPending(
                ErrorCode.DEPOSIT_NOT_FOUND,
                f"the activation of {serial_number} is not handled yet: retry later",
                serial_number=serial_number,
            )
        return None
    if deposit.activated_at is None and activated_at is not None and (
        DepositStatus(deposit.status) in UNDECIDED
    ):
        _set_activation(deposit, activated_at)
    return deposit


def _contract_has_deposit(session: Session, contract_id: str, merchant_id: str) -> bool:
    try:
        contract = accepted_contract(session, contract_id, merchant_id=merchant_id)
    except DomainError:  # no accepted contract: its activation charges nothing either
        return False
    return contract.terms.deposit_amount > 0


def terminal_returned(
    session: Session,
    ledger: Ledger,
    *,
    serial_number: str,
    contract_id: str,
    condition: str,
    delivered_at: datetime | None,
    returned_at: datetime,
    clock: Clock,
    merchant_id: str | None = None,
    activated_at: datetime | None = None,
) -> Deposit | None:
    """``terminal.returned``: unused within the cooling-off days of delivery → full refund;
    otherwise the termination terms. None when the device has no deposit; ``ActivationPending``
    when its activation is not handled yet (see ``_deposit_of_event``)."""
    deposit = _deposit_of_event(session, serial_number, contract_id, merchant_id, activated_at)
    if deposit is None:
        return None
    if deposit.returned_at is None:
        deposit.returned_at, deposit.return_condition = returned_at, condition
        deposit.delivered_at = deposit.delivered_at or delivered_at
        deposit.updated_at = clock.now()
    _close_if_due(session, ledger, deposit, SYSTEM_ACTOR, f"returned {condition}", clock)
    return deposit


def terminal_terminated(
    session: Session,
    ledger: Ledger,
    *,
    serial_number: str,
    contract_id: str,
    terminated_at: datetime,
    clock: Clock,
    merchant_id: str | None = None,
    activated_at: datetime | None = None,
) -> Deposit | None:
    """``terminal.terminated``: deposit − penalty − depreciation (unless already closed)."""
    deposit = _deposit_of_event(session, serial_number, contract_id, merchant_id, activated_at)
    if deposit is None:
        return None
    if deposit.terminated_at is None:
        deposit.terminated_at, deposit.updated_at = terminated_at, clock.now()
    _close_if_due(session, ledger, deposit, SYSTEM_ACTOR, "terminated", clock)
    return deposit


def card_volume(session: Session, deposit: Deposit) -> int:
    """Card payments captured on the terminal within the activation window, net of refunds
    (a voided or reversed payment is no longer captured: it counts nothing)."""
    if deposit.activated_at is None or deposit.terminal_id is None:
        return 0
    end = deposit.window_ends_at or window_end(terms_of(deposit), deposit.activated_at)
    total = session.scalar(
        select(func.coalesce(func.sum(Payment.captured_amount - Payment.refunded_amount), 0))
        .where(
            Payment.terminal_id == deposit.terminal_id,
            Payment.method == "card",
            Payment.status == PaymentStatus.CAPTURED.value,
            Payment.captured_at >= deposit.activated_at,
            Payment.captured_at < end,
        )
    )  # fmt: skip
    return int(total or 0)


def check_target(session: Session, ledger: Ledger, deposit: Deposit, *, clock: Clock) -> bool:
    """Recompute the card volume; at the target (exactly or more), a full refund. True when
    the target was reached by this check."""
    terms = terms_of(deposit)
    if deposit.target_reached_at is not None or not has_target(terms):
        return False
    if DepositStatus(deposit.status) not in CHECKABLE:
        return False
    deposit.card_volume = card_volume(session, deposit)
    if not target_reached(terms, deposit.card_volume):
        return False
    deposit.target_reached_at = deposit.updated_at = clock.now()
    _close_if_due(session, ledger, deposit, SYSTEM_ACTOR, "activation target reached", clock)
    return True


def _locked_for_terminal(session: Session, terminal_id: str) -> list[Deposit]:
    """The terminal's deposits whose target still matters, locked after their merchants'
    accounts."""
    where = (Deposit.terminal_id == terminal_id,
             Deposit.status.in_([s.value for s in CHECKABLE]))  # fmt: skip
    lock_merchants(session, session.scalars(select(Deposit.merchant_id).distinct().where(*where)))
    return list(session.scalars(
        select(Deposit).where(*where)
        .with_for_update().execution_options(populate_existing=True)
    ))  # fmt: skip


# -- the service ------------------------------------------------------------------------------
class DepositService:
    def __init__(self, database: Database, ledger: Ledger, vault: Vault, clock: Clock) -> None:
        self.database = database
        self.ledger = ledger
        self.vault = vault
        self.clock = clock

    # -- events (outbox handlers) and the periodic check ---------------------------------------
    def activated(
        self,
        *,
        merchant_id: str,
        serial_number: str,
        terminal_id: str,
        contract_id: str,
        terms: ContractTerms,
        activated_at: datetime,
    ) -> Deposit | None:
        with self.database.transaction() as session:
            return charge_at_activation(
                session, self.ledger, merchant_id=merchant_id, serial_number=serial_number,
                terminal_id=terminal_id, contract_id=contract_id, terms=terms,
                activated_at=activated_at, clock=self.clock,
            )  # fmt: skip

    def activated_under_contract(
        self,
        *,
        merchant_id: str,
        serial_number: str,
        terminal_id: str,
        contract_id: str,
        activated_at: datetime,
    ) -> Deposit | None:
        """``terminal.activated``: the deposit on the terms of the merchant's accepted contract
        (frozen into the deposit)."""
        with self.database.transaction() as session:
            contract = accepted_contract(session, contract_id, merchant_id=merchant_id)
            return charge_at_activation(
                session, self.ledger, merchant_id=merchant_id, serial_number=serial_number,
                terminal_id=terminal_id, contract_id=contract_id, terms=contract.terms,
                activated_at=activated_at, clock=self.clock,
            )  # fmt: skip

    def returned(
        self,
        *,
        serial_number: str,
        contract_id: str,
        condition: str,
        delivered_at: datetime | None,
        returned_at: datetime,
        merchant_id: str | None = None,
        activated_at: datetime | None = None,
    ) -> Deposit | None:
        with self.database.transaction() as session:
            return terminal_returned(
                session, self.ledger, serial_number=serial_number, contract_id=contract_id,
                condition=condition, delivered_at=delivered_at, returned_at=returned_at,
                clock=self.clock, merchant_id=merchant_id, activated_at=activated_at,
            )  # fmt: skip

    def terminated(
        self,
        *,
        serial_number: str,
        contract_id: str,
        terminated_at: datetime,
        merchant_id: str | None = None,
        activated_at: datetime | None = None,
    ) -> Deposit | None:
        with self.database.transaction() as session:
            return terminal_terminated(
                session, self.ledger, serial_number=serial_number, contract_id=contract_id,
                terminated_at=terminated_at, clock=self.clock, merchant_id=merchant_id,
                activated_at=activated_at,
            )  # fmt: skip

    def payment_captured(self, terminal_id: str) -> int:
        """After a card payment on the terminal: how many deposits reached their target."""
        with self.database.transaction() as session:
            deposits = _locked_for_terminal(session, terminal_id)
            return sum(check_target(session, self.ledger, d, clock=self.clock) for d in deposits)

    def collect_merchant_debt(self, merchant_id: str, collection_id: str) -> DebtCollection:
        with self.database.transaction() as session:
            return collect_merchant_debt(
                session, self.ledger, merchant_id, collection_id=collection_id, clock=self.clock
            )

    def run_checks(self) -> CheckStats:
        """The worker's periodic job: targets of deposits whose window is open (or closed less
        than a day ago: a last look), and deposits blocked by debt — all of them, page by page."""
        since = self.clock.now() - LAST_LOOK
        terminals: set[str] = set()
        refunded = 0
        for row in self._every(
            Deposit.status.in_([s.value for s in CHECKABLE]), Deposit.window_ends_at > since,
            Deposit.target_reached_at.is_(None), Deposit.terminal_id.is_not(None),
        ):  # fmt: skip
            if row.terminal_id is not None and row.terminal_id not in terminals:
                terminals.add(row.terminal_id)
                refunded += self.payment_captured(row.terminal_id)
        merchants: set[str] = set()
        resumed = 0
        for row in self._every(Deposit.status == DepositStatus.BLOCKED_DEBT.value):
            if row.merchant_id not in merchants:
                merchants.add(row.merchant_id)
                with self.database.transaction() as session:
                    resumed += resume_blocked(session, self.ledger, row.merchant_id,
                                              clock=self.clock)  # fmt: skip
        return CheckStats(len(terminals), refunded, resumed)

    def _every(self, *where: Any) -> Iterator[Row[str, datetime, str | None, str]]:
        """Every deposit matching ``where``, read a page at a time in (updated_at, id) order
        after a cursor: none is left out however many there are (a row changed meanwhile
        moves to the end and may come again: the checks are idempotent)."""
        after: tuple[datetime, str] | None = None
        while True:
            query = select(Deposit.id, Deposit.updated_at, Deposit.terminal_id,
                           Deposit.merchant_id).where(*where)  # fmt: skip
            if after is not None:
                moment, last_id = after
                query = query.where(or_(Deposit.updated_at > moment,
                                        and_(Deposit.updated_at == moment, Deposit.id > last_id)))
            with self.database.read() as session:
                page = list(session.execute(
                    query.order_by(Deposit.updated_at, Deposit.id).limit(CHECK_BATCH)
                ))  # fmt: skip
            yield from page
            if len(page) < CHECK_BATCH:
                return
            after = (page[-1].updated_at, page[-1].id)

    # -- staff: up-front payments ------------------------------------------------------------
    def record_upfront(
        self,
        principal: Principal,
        *,
        merchant_id: str,
        serial_number: str,
        contract_id: str,
        terms: ContractTerms | None = None,
        terminal_id: str | None = None,
    ) -> Deposit:
        """Staff (finance): the deposit of a device received before shipping, on the terms of
        the merchant's accepted contract (or ``terms`` given)."""
        principal.require_staff(*UPFRONT_ROLES)
        with self.database.transaction() as session:
            get_merchant(session, merchant_id)
            if terms is None:
                terms = accepted_contract(session, contract_id, merchant_id=merchant_id).terms
            if terms.deposit_collection is not DepositCollection.UPFRONT:
                log.info("up-front payment recorded for a %s contract", terms.deposit_collection)
            deposit = record_upfront_payment(
                session, self.ledger, merchant_id=merchant_id, serial_number=serial_number,
                contract_id=contract_id, terms=terms, actor=principal.id, clock=self.clock,
                terminal_id=terminal_id,
            )  # fmt: skip
            record(session, actor=principal.id, action="deposit.upfront", subject_type="deposit",
                   subject_id=deposit.id, after={"amount": deposit.amount,
                                                 "serial_number": serial_number},
                   clock=self.clock)  # fmt: skip
            return deposit

    # -- merchant requests and review ---------------------------------------------------------
    def request_refund(
        self, principal: Principal, data: RefundRequestInput
    ) -> DepositRefundRequest:
        reason = check_reason(data.reason)
        with self.database.transaction() as session:
            now = self.clock.now()
            deposit = self._latest(session, principal, data.serial_number, for_update=True)
            status = DepositStatus(deposit.status)
            if status is DepositStatus.IN_REVIEW:
                raise DomainError(ErrorCode.DEPOSIT_REFUND_IN_PROGRESS,
                                  "a refund request for this deposit is already in review")
            if status not in OPEN:
                raise DomainError(ErrorCode.DEPOSIT_NOT_REFUNDABLE,
                                  f"the deposit is {status.value}", status=status.value)
            given = Materials(data.phone, data.id_number, data.bank_card_last4)
            check_materials(given, self._on_record(session, deposit.merchant_id))
            start = deposit.activated_at or deposit.paid_at or deposit.created_at
            check_deadline(terms_of(deposit), start, now)
            request = DepositRefundRequest(
                id=new_id("dr_"), deposit_id=deposit.id, merchant_id=deposit.merchant_id,
                serial_number=deposit.serial_number, status=RequestStatus.IN_REVIEW.value,
                reason=reason, requested_by=principal.who, created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(request)
            _move(session, deposit, DepositStatus.IN_REVIEW, principal.id,
                  f"refund requested ({request.id}): {reason}", now)  # fmt: skip
            session.flush()
            _notify(session, deposit, "deposit.refund_requested", request.id, self.clock)
            return request

    def approve(
        self, principal: Principal, request_id: str, note: str = ""
    ) -> DepositRefundRequest:
        principal.require_staff(*REVIEW_ROLES)
        with self.database.transaction() as session:
            request, deposit = self._open_request(session, request_id)
            if request.requested_by == principal.who:  # the person, whatever their login
                raise DomainError(ErrorCode.SELF_APPROVAL, "nobody approves their own request")
            try:  # paid only to the merchant's own verified card (一清)
                settlement_card_number(session, self.vault, deposit.merchant_id)
            except DomainError:
                raise DomainError(
                    ErrorCode.SETTLEMENT_ACCOUNT_NOT_VERIFIED,
                    "the merchant's settlement card is not verified: verify it first",
                ) from None
            self._review(session, principal, request, RequestStatus.APPROVED, note)
            _close(session, self.ledger, deposit, principal.id, "request approved", self.clock)
            return request

    def reject(self, principal: Principal, request_id: str, note: str) -> DepositRefundRequest:
        principal.require_staff(*REVIEW_ROLES)
        if not note.strip():
            raise DomainError(ErrorCode.INVALID_INPUT, "a rejection needs a reason", field="note")
        with self.database.transaction() as session:
            request, deposit = self._open_request(session, request_id)
            self._review(session, principal, request, RequestStatus.REJECTED, note)
            back = DepositStatus.HELD if deposit.outstanding == 0 else DepositStatus.CHARGED
            _move(session, deposit, back, principal.id, f"request rejected: {note}",
                  self.clock.now())  # fmt: skip
            _notify(session, deposit, "deposit.refund_rejected", request.id, self.clock)
            # a return, termination or target that came during the review closes it now
            _close_if_due(session, self.ledger, deposit, SYSTEM_ACTOR, "after review", self.clock)
            return request

    # -- reads -------------------------------------------------------------------------------------
    def for_terminal(self, principal: Principal, serial_number: str) -> DepositDetail:
        with self.database.read() as session:
            return _detail(session, self._latest(session, principal, serial_number))

    def get(self, principal: Principal, deposit_id: str) -> DepositDetail:
        with self.database.read() as session:
            deposit = session.get(Deposit, deposit_id)
            if deposit is None or not principal.can_see(deposit.merchant_id):
                raise DomainError(ErrorCode.DEPOSIT_NOT_FOUND, "deposit not found")
            return _detail(session, deposit)

    def get_request(
        self, principal: Principal, request_id: str
    ) -> tuple[DepositRefundRequest, DepositDetail]:
        with self.database.read() as session:
            request = session.get(DepositRefundRequest, request_id)
            if request is None or not principal.can_see(request.merchant_id):
                raise DomainError(ErrorCode.DEPOSIT_REFUND_NOT_FOUND, "deposit refund not found")
            deposit = session.get(Deposit, request.deposit_id)
            assert deposit is not None
            return request, _detail(session, deposit)

    def list_requests(
        self,
        principal: Principal,
        status: RequestStatus | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[DepositRefundRequest]:
        """Refund requests, newest first (the review queue: ``in_review``); a merchant sees
        only its own."""
        query = select(DepositRefundRequest)
        if not principal.is_staff:
            query = query.where(DepositRefundRequest.merchant_id == principal.merchant_id)
        if status is not None:
            query = query.where(DepositRefundRequest.status == status.value)
        with self.database.read() as session:
            return list(session.scalars(newest_first(query, DepositRefundRequest, limit, after)))

    def settlement_card_verified(self, principal: Principal, merchant_id: str) -> bool:
        """Staff: whether an approval could pay the merchant (its settlement card verified)."""
        principal.require_staff()
        with self.database.read() as session:
            try:
                settlement_card_number(session, self.vault, merchant_id)
            except DomainError:
                return False
            return True

    def merchant_deposits(self, principal: Principal) -> dict[str, DepositDetail]:
        """A merchant's own deposits, the latest one per serial number (the merchant platform's
        我的设备 list)."""
        if principal.merchant_id is None:
            raise DomainError(ErrorCode.FORBIDDEN, "a merchant principal is needed")
        query = (select(Deposit).where(Deposit.merchant_id == principal.merchant_id)
                 .order_by(Deposit.created_at, Deposit.id))  # fmt: skip
        with self.database.read() as session:  # later rows replace earlier ones: the latest
            return {d.serial_number: _detail(session, d) for d in session.scalars(query)}

    # -- helpers -----------------------------------------------------------------------------------
    def _latest(
        self, session: Session, principal: Principal, serial_number: str, for_update: bool = False
    ) -> Deposit:
        query = select(Deposit).where(Deposit.serial_number == serial_number)
        if principal.merchant_id is not None:  # a reused serial: the merchant's own deposit
            query = query.where(Deposit.merchant_id == principal.merchant_id)
        query = query.order_by(Deposit.created_at.desc(), Deposit.id.desc()).limit(1)
        if for_update:
            query = query.with_for_update().execution_options(populate_existing=True)
        deposit = session.scalars(query).one_or_none()
        if deposit is None or not principal.can_see(deposit.merchant_id):
            raise DomainError(ErrorCode.DEPOSIT_NOT_FOUND, "no deposit for this terminal")
        return deposit

    def _on_record(self, session: Session, merchant_id: str) -> Materials:
        merchant = get_merchant(session, merchant_id)
        account = merchant.settlement_account
        last4 = account.card_number[-4:] if account is not None else ""
        phone = contact_phone(session, self.vault, merchant_id)
        return Materials(phone, _id_number_on_record(session, self.vault, merchant_id), last4)

    def _open_request(
        self, session: Session, request_id: str
    ) -> tuple[DepositRefundRequest, Deposit]:
        """The request in review and its deposit, locked after the merchant's accounts (the
        decision reads its debt)."""
        merchant_id = session.scalar(
            select(DepositRefundRequest.merchant_id).where(DepositRefundRequest.id == request_id)
        )
        if merchant_id is not None:
            lock_merchants(session, [merchant_id])
        request = session.scalars(
            select(DepositRefundRequest).where(DepositRefundRequest.id == request_id)
            .with_for_update().execution_options(populate_existing=True)
        ).one_or_none()  # fmt: skip
        if request is None:
            raise DomainError(ErrorCode.DEPOSIT_REFUND_NOT_FOUND, "deposit refund not found")
        if request.status != RequestStatus.IN_REVIEW.value:
            raise DomainError(ErrorCode.INVALID_TRANSITION,
                              f"the request is already {request.status}", status=request.status)
        deposit = session.scalars(
            select(Deposit).where(Deposit.id == request.deposit_id)
            .with_for_update().execution_options(populate_existing=True)
        ).one()  # fmt: skip
        return request, deposit

    def _review(
        self,
        session: Session,
        principal: Principal,
        request: DepositRefundRequest,
        status: RequestStatus,
        note: str,
    ) -> None:
        now = self.clock.now()
        request.status, request.reviewed_by = status.value, principal.id
        request.review_note = " ".join(note.split())[:500] or None
        request.reviewed_at = request.updated_at = now
        record(session, actor=principal.id, action=f"deposit_refund.{status.value}",
               subject_type="deposit_refund", subject_id=request.id,
               after={"deposit_id": request.deposit_id, "note": request.review_note},
               clock=self.clock)  # fmt: skip


def _id_number_on_record(session: Session, vault: Vault, merchant_id: str) -> str:
    """The ID number of the merchant's approved application; "" when there is none (a merchant
    created without an application): then no request can match, and the error names it."""
    encrypted = session.scalars(
        select(Application.id_number_enc)
        .where(Application.merchant_id == merchant_id,
               Application.status == ApplicationStatus.APPROVED.value)
        .order_by(Application.created_at.desc()).limit(1)
    ).one_or_none()  # fmt: skip
    return "" if encrypted is None else vault.decrypt(encrypted, ID_CONTEXT)


def _detail(session: Session, deposit: Deposit) -> DepositDetail:
    history = list(session.scalars(
        select(DepositStatusChange).where(DepositStatusChange.deposit_id == deposit.id)
        .order_by(DepositStatusChange.created_at, DepositStatusChange.id)
    ))  # fmt: skip
    requests = list(session.scalars(
        select(DepositRefundRequest).where(DepositRefundRequest.deposit_id == deposit.id)
        .order_by(DepositRefundRequest.created_at, DepositRefundRequest.id)
    ))  # fmt: skip
    return DepositDetail(deposit, history, requests)

