"""Refund use cases: request, review (approve / reject / ask for information / add evidence),
cancel, execute (the worker), re-route, sync, redeem a prepayment, read, track.

Money: a refund takes two ledger holds when it is requested, in the same transaction as its
row — one on the payment's refund-capacity memo account (``max_debit_balance`` = captured,
so concurrent refunds can never exceed the payment) and one on the merchant's balance
(merchant → channel payable, with the fee returned from fee revenue). Success posts both;
reject, cancel and failure void both. A refund that the network cannot return (card closed)
keeps its holds until staff re-route it to a bank transfer, which voids the channel hold and
posts the same debits against our settlement bank account instead.

Every state change writes the status history, an audit record for staff actions, a public
event (webhooks) and, when the consumer gave a phone number, an SMS — all in the use case's
one transaction. The network is only ever called with no transaction open.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.auth.domain import Principal, Role
from shoudan.channels.domain import (
    BankTransfer,
    Channel,
    ChannelError,
    RefundResult,
    TransferResult,
)
from shoudan.channels.domain import (
    RefundStatus as UpstreamStatus,
)
from shoudan.core.clock import Clock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault, mask_phone
from shoudan.core.db import Database, DriverSQL, newest_first
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.identifiers import luhn_valid
from shoudan.core.ids import new_id
from shoudan.files.service import check_attachable
from shoudan.ledger import chart
from shoudan.ledger.domain import Hold, Linked, PostHold, Posting, Transfer, VoidHold
from shoudan.ledger.service import AccountView, Ledger
from shoudan.merchants.domain import validate_phone
from shoudan.notifications.service import emit
from shoudan.payments.domain import PaymentStatus, business_date
from shoudan.payments.models import Payment
from shoudan.payments.service import locked_payment, upstream_reference_of
from shoudan.payments.store import PlanCache, lock_payment
from shoudan.refunds.domain import (
    LIVE,
    MAX_REASON_TEXT,
    ArrivalRules,
    PaymentForRefund,
    Policy,
    RefundReason,
    RefundStatus,
    RequesterKind,
    ReviewThresholds,
    RiskAssessment,
    RiskFacts,
    RiskRules,
    Route,
    approvals_required,
    assess,
    card_refunds_bound,
    check_approval,
    check_out_refund_no,
    check_request,
    check_text,
    expected_arrival,
    fee_returned,
    parse_business_hours,
    refundable,
    retry_delay,
    transition,
)
from shoudan.refunds.models import (
    Redemption,
    Refund,
    RefundApproval,
    RefundEvidence,
    RefundStatusChange,
)
from shoudan.webhooks.service import publish

log = logging.getLogger(__name__)

PHONE_CONTEXT = "refund:consumer_phone"
ACCOUNT_CONTEXT = "refund:reroute_account"
EXECUTE_TOPIC = "refund.execute"
NOTIFY_TOPIC = "refund.notify_consumer"
AVERAGE_TICKET_SAMPLE = 500  # the merchant's latest captured payments
STAFF_REVIEW_ROLES = (Role.REVIEWER, Role.APPROVER, Role.RISK)
STAFF_REROUTE_ROLES = (Role.APPROVER, Role.FINANCE, Role.CS_AGENT)
STAFF_CANCEL_ROLES = (Role.REVIEWER, Role.APPROVER, Role.CS_AGENT)
# statuses whose events go to merchants' webhooks and consumers' phones
NOTIFIED = {
    RefundStatus.IN_REVIEW: "refund.review_required",
    RefundStatus.NEEDS_INFO: "refund.needs_info",
    RefundStatus.PENDING_FUNDS: "refund.pending_funds",
    RefundStatus.APPROVED: "refund.approved",
    RefundStatus.PROCESSING: "refund.processing",
    RefundStatus.SUCCEEDED: "refund.succeeded",
    RefundStatus.FAILED: "refund.failed",
    RefundStatus.ABNORMAL: "refund.abnormal",
    RefundStatus.REJECTED: "refund.rejected",
    RefundStatus.CANCELED: "refund.canceled",
}


@dataclass(frozen=True, slots=True)
class RefundRequest:
    payment_id: str
    amount: int
    reason: str
    reason_text: str = ""
    out_refund_no: str | None = None
    consumer_phone: str | None = None
    evidence_ids: tuple[str, ...] = ()
    requester_kind: RequesterKind | None = None  # None: from the principal

    def __repr__(self) -> str:  # a consumer's phone number stays out of logs
        return (
            f"RefundRequest(payment_id={self.payment_id!r}, amount={self.amount}, "
            f"reason={self.reason!r}, out_refund_no={self.out_refund_no!r})"
        )


@dataclass(frozen=True, slots=True)
class RefundFilters:
    payment_id: str | None = None
    status: RefundStatus | None = None
    merchant_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reroute:
    account_number: str
    holder_name: str
    bank_name: str

    def __repr__(self) -> str:
        return f"Reroute(account=****{self.account_number[-4:]}, bank={self.bank_name!r})"


@dataclass(frozen=True, slots=True)
class RefundDetail:
    """A refund with its timeline, approvals and evidence (what a screen shows)."""

    refund: Refund
    history: list[RefundStatusChange]
    approvals: list[RefundApproval]
    evidence: list[RefundEvidence]


@dataclass(frozen=True, slots=True)
class Tracking:
    payment: Payment
    refunds: list[RefundDetail] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What the worker needs, read in the claim transaction, for the network call."""

    refund_id: str
    payment_reference: str  # the upstream reference of the refunded payment
    amount: int
    route: Route
    check_first: bool  # the last attempt's outcome is unknown: ask before trying again
    account: Reroute | None


def settings_rules(
    settings: Settings,
) -> tuple[Policy, RiskRules, ReviewThresholds, ArrivalRules]:
    """The refund rules as configured (DESIGN.md §4 defaults)."""
    policy = Policy(settings.refund_window_days, settings.refund_max_per_payment)
    rules = RiskRules(
        settings.risk_weight_quick_refund, settings.risk_quick_refund_minutes,
        settings.risk_weight_refund_ratio, settings.risk_refund_ratio_percent,
        settings.risk_weight_large_ticket, settings.risk_large_ticket_multiple,
        settings.risk_weight_card_velocity, settings.risk_card_velocity_count,
        settings.risk_weight_off_hours, parse_business_hours(settings.risk_business_hours),
        settings.risk_weight_round_amount, settings.risk_round_amount_min,
        settings.risk_round_amount_unit,
    )  # fmt: skip
    thresholds = ReviewThresholds(
        settings.refund_review_amount,
        settings.refund_review_score,
        settings.refund_two_approvals_amount,
    )
    arrival = ArrivalRules(settings.refund_arrival_debit_days, settings.refund_arrival_credit_days)
    return policy, rules, thresholds, arrival


class RefundService:
    def __init__(
        self,
        database: Database,
        ledger: Ledger,
        vault: Vault,
        channel: Channel,
        bank: BankTransfer,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self.database = database
        self.ledger = ledger
        self.vault = vault
        self.channel = channel
        self.bank = bank
        self.clock = clock
        self.retry_schedule = tuple(settings.refund_retry_seconds)
        self.pending_funds_limit = timedelta(days=settings.refund_pending_funds_days)
        self.policy, self.rules, self.thresholds, self.arrival = settings_rules(settings)
        self._plans = PlanCache()
        # history rows of the refunds being requested now, by refund id (``_history``)
        self._unsaved: dict[str, list[dict[str, Any]]] = {}

    # -- request ------------------------------------------------------------------------------
    def request(self, principal: Principal, req: RefundRequest) -> Refund:
        reason, text, out_refund_no, phone = _checked(req)
        fingerprint = _fingerprint(req)
        if out_refund_no is not None:
            with self.database.read() as session:
                payment = self._visible_payment(session, principal, req.payment_id)
                existing = _by_out_refund_no(session, payment.merchant_id, out_refund_no)
            if existing is not None:
                return _same_request(existing, fingerprint)
        try:
            with self.database.transaction() as session:
                return self._request(
                    session, principal, req, reason, text, out_refund_no, phone, fingerprint
                )
        except IntegrityError:
            if out_refund_no is None:
                raise
            # a concurrent request with the same out_refund_no committed first: answer it
            with self.database.read() as session:
                payment = self._visible_payment(session, principal, req.payment_id)
                winner = _by_out_refund_no(session, payment.merchant_id, out_refund_no)
            if winner is None:
                raise
            return _same_request(winner, fingerprint)

    def _request(
        self,
        session: Session,
        principal: Principal,
        req: RefundRequest,
        reason: RefundReason,
        text: str,
        out_refund_no: str | None,
        phone: str | None,
        fingerprint: str,
    ) -> Refund:
        now = self.clock.now()
        # a detached copy on the driver: the request reads the payment, never changes it
        payment = lock_payment(DriverSQL(session), req.payment_id)
        if not principal.can_see(payment.merchant_id):
            raise DomainError(ErrorCode.PAYMENT_NOT_FOUND, "payment not found")
        live_total, live_count, returned_before = _live_refunds(session, payment.id)
        facts = _facts(payment, live_total, live_count)
        check_request(facts, req.amount, now, business_date(now), self.policy)
        if req.evidence_ids:
            check_attachable(session, payment.merchant_id, list(req.evidence_ids))
        plan = self._plans.get(session, payment.fee_plan_code)
        fee_back = fee_returned(
            plan.refund_fee_policy, payment.fee, payment.captured_amount, req.amount,
            live_total, returned_before,
        )  # fmt: skip
        risk = assess(self._risk_facts(session, payment, req.amount, now), self.rules)
        refund_id = new_id("rf_")
        self.ledger.ensure_accounts(
            session, [chart.refund_capacity_account(payment.id, payment.captured_amount)]
        )
        try:
            self.ledger.post(session, _capacity_hold(refund_id, payment.id, req.amount))
        except DomainError as error:
            if error.code is not ErrorCode.LIMIT_EXCEEDED:
                raise
            remainder = refundable(facts)  # a concurrent refund took it first
            raise DomainError(
                ErrorCode.REFUND_EXCEEDS_REFUNDABLE,
                f"at most {remainder} fen of this payment can still be refunded",
                refundable=remainder,
            ) from None
        arrival = expected_arrival(
            payment.method, payment.card_funding, Route.ORIGINAL, now, self.arrival
        )
        refund = Refund(
            id=refund_id, merchant_id=payment.merchant_id, payment_id=payment.id,
            out_refund_no=out_refund_no, request_hash=fingerprint,
            status=RefundStatus.REQUESTED.value, currency=payment.currency, amount=req.amount,
            fee_returned=fee_back, charge_unsettled=0, charge_settled=0, funded=False,
            reason=reason.value, reason_text=text, requested_by=principal.who,
            requester_kind=(req.requester_kind or _kind_of(principal)).value,
            consumer_phone_enc=self.vault.encrypt(phone, PHONE_CONTEXT) if phone else None,
            consumer_phone_hash=self.vault.lookup_hash(phone, PHONE_CONTEXT) if phone else None,
            consumer_phone_masked=mask_phone(phone) if phone else None,
            risk_score=risk.score, risk_reasons=_reasons_json(risk),
            approvals_required=approvals_required(req.amount, risk.score, self.thresholds),
            method=payment.method, network=payment.network, card_funding=payment.card_funding,
            card_token=payment.card_token, business_date=business_date(now).isoformat(),
            route=Route.ORIGINAL.value, attempts=0, outcome_unknown=False,
            expected_earliest=arrival.earliest.isoformat(),
            expected_latest=arrival.latest.isoformat(), expected_basis=arrival.basis,
            created_at=now, updated_at=now,
        )  # fmt: skip
        # Not in the session: the row is inserted once, at the end, in its final state for
        # this request (funded, approved or sent to review) — one INSERT, not an INSERT and
        # an UPDATE — with its history and evidence rows after it, by driver statements (the
        # unit of work's flush was a fifth of a refund request's CPU: docs/benchmarks.md).
        count_live(DriverSQL(session), refund, refund.amount)  # a new refund is live
        history = self._unsaved[refund.id] = []
        try:
            self._history(session, refund, None, RefundStatus.REQUESTED, principal.id, text, now)
            self._publish(session, refund, "refund.created", "new")
            if principal.is_staff:
                self._audit(session, principal, refund, "refund.request", None, now)
            if self._fund(session, refund, now):
                self._after_funding(session, refund, principal.id, now)
            else:
                self._move(session, refund, RefundStatus.PENDING_FUNDS, principal.id,
                           "the merchant's balance is short: waiting for funds", now)  # fmt: skip
        finally:
            del self._unsaved[refund.id]
        evidence = [
            {"refund_id": refund.id, "file_id": file_id, "added_by": principal.id, "note": "",
             "created_at": now}
            for file_id in dict.fromkeys(req.evidence_ids)
        ]  # fmt: skip
        insert_new_refund(DriverSQL(session), refund, history, evidence)
        return refund

    def _fund(self, session: Session, refund: Refund, now: datetime) -> bool:
        """Hold the merchant's money for the refund: from its unsettled balance first, then its
        settled balance. False (nothing written) when the two together are short."""
        charge = refund.amount - refund.fee_returned
        unsettled_id = chart.merchant_unsettled(refund.merchant_id)
        settled_id = chart.merchant_settled(refund.merchant_id)
        accounts = self.ledger.get_accounts(session, [unsettled_id, settled_id])
        unsettled, settled = accounts[unsettled_id], accounts[settled_id]
        from_unsettled = min(charge, _available(unsettled))
        from_settled = charge - from_unsettled
        if from_settled > _available(settled):
            return False
        refund.charge_unsettled, refund.charge_settled = from_unsettled, from_settled
        (result,) = self.ledger.apply(session, [_funds_hold(refund)])
        if result.error is ErrorCode.LIMIT_EXCEEDED:  # a concurrent debit got there first
            refund.charge_unsettled = refund.charge_settled = 0
            return False
        result.raise_for_error()
        refund.funded = True
        refund.updated_at = now
        return True

    def _after_funding(self, session: Session, refund: Refund, actor: str, now: datetime) -> None:
        if refund.approvals_required:
            needed = refund.approvals_required
            note = f"review: risk score {refund.risk_score}, {needed} approval(s) needed"
            self._move(session, refund, RefundStatus.IN_REVIEW, actor, note, now)
        else:
            self._approve(session, refund, actor, "approved automatically", now)

    def _approve(
        self, session: Session, refund: Refund, actor: str, note: str, now: datetime
    ) -> None:
        refund.approved_at = now  # before the move: written with it, one UPDATE
        self._move(session, refund, RefundStatus.APPROVED, actor, note, now)
        emit(session, EXECUTE_TOPIC, {"refund_id": refund.id},
             dedupe_key=f"{refund.id}:execute:0", clock=self.clock)  # fmt: skip

    def _risk_facts(
        self, session: Session, payment: Payment, amount: int, now: datetime
    ) -> RiskFacts:
        today = business_date(now).isoformat()
        driver = DriverSQL(session)
        live = [s.value for s in LIVE]
        marks = ", ".join("?" * len(live))
        # one hand-written statement for the four figures: the request path's CPU is per
        # statement, and SQLAlchemy's own work on this one cost more than running it
        ((refunds_today_total, sales_today_total, average, card_count),) = driver.execute(
            "SELECT (SELECT amount FROM refund_day_totals"
            "  WHERE business_date = ? AND merchant_id = ?),"
            " (SELECT amount FROM payment_day_totals"
            "  WHERE business_date = ? AND scope = 'merchant' AND scope_key = ?),"
            " (SELECT avg(captured_amount) FROM (SELECT captured_amount FROM payments"
            "   WHERE merchant_id = ? AND status = ? AND id <> ?"
            "   ORDER BY created_at DESC LIMIT ?) recent),"
            # counted up to a bound: past it the rule's answer cannot change, and a card with
            # thousands of refunds must not make each of its requests slower than the last
            " (SELECT count(*) FROM (SELECT 1 FROM refunds"
            f"  WHERE card_token = ? AND created_at >= ? AND status IN ({marks}) LIMIT ?) counted)",
            (
                today, payment.merchant_id,
                today, payment.merchant_id,
                payment.merchant_id, PaymentStatus.CAPTURED.value, payment.id,
                AVERAGE_TICKET_SAMPLE,
                payment.card_token, driver.bind(Refund.created_at, now - timedelta(hours=24)),
                *live, card_refunds_bound(self.rules) - 1,
            ),
        )  # fmt: skip
        card_refunds = 1 + int(card_count or 0) if payment.card_token else None
        assert payment.captured_at is not None
        return RiskFacts(
            amount=amount, payment_captured_at=payment.captured_at, requested_at=now,
            merchant_refunds_today=int(refunds_today_total or 0) + amount,
            merchant_sales_today=int(sales_today_total or 0),
            merchant_average_ticket=None if average is None else int(average),
            card_refunds_24h=card_refunds,
        )  # fmt: skip

    # -- review -------------------------------------------------------------------------------
    def approve(self, principal: Principal, refund_id: str, note: str = "") -> Refund:
        note = check_text(note, MAX_REASON_TEXT, "note")
        principal.require_staff(*STAFF_REVIEW_ROLES)
        with self.database.transaction() as session:
            now = self.clock.now()
            refund = self._locked(session, principal, refund_id)
            # staff approve what is in review; a refund waiting for funds is approved by the
            # funding worker once the money is held, never by hand without it
            _require_status(refund, RefundStatus.IN_REVIEW, "approved")
            approved_by = tuple(
                session.scalars(
                    select(RefundApproval.approver).where(RefundApproval.refund_id == refund.id)
                )
            )
            check_approval(  # people, not credentials: a console login and a key of one person
                requested_by=refund.requested_by, approver=principal.who,
                role=principal.role.value, approved_by=approved_by,
                required=refund.approvals_required,
            )  # fmt: skip
            session.add(RefundApproval(
                refund_id=refund.id, approver=principal.who, role=principal.role.value,
                note=note, created_at=now,
            ))  # fmt: skip
            self._audit(session, principal, refund, "refund.approve", note, now)
            count = len(approved_by) + 1
            if count >= refund.approvals_required:
                self._approve(session, refund, principal.id, note or "approved", now)
            else:
                refund.updated_at = now
                self._history(session, refund, RefundStatus.IN_REVIEW, RefundStatus.IN_REVIEW,
                              principal.id, f"approval {count} of {refund.approvals_required}",
                              now)  # fmt: skip
            return refund

    def reject(self, principal: Principal, refund_id: str, note: str) -> Refund:
        principal.require_staff(*STAFF_REVIEW_ROLES)
        note = _required_text(note, "a rejection needs a reason")
        return self._close(principal, refund_id, RefundStatus.REJECTED, note, "refund.reject")

    def cancel(self, principal: Principal, refund_id: str, note: str = "") -> Refund:
        if principal.is_staff:
            principal.require_staff(*STAFF_CANCEL_ROLES)
        note = check_text(note, MAX_REASON_TEXT, "note") or "canceled"
        return self._close(principal, refund_id, RefundStatus.CANCELED, note, "refund.cancel")

    def _close(
        self, principal: Principal, refund_id: str, target: RefundStatus, note: str, action: str
    ) -> Refund:
        with self.database.transaction() as session:
            now = self.clock.now()
            refund = self._locked(session, principal, refund_id)
            transition(RefundStatus(refund.status), target)
            self._release(session, refund)
            self._move(session, refund, target, principal.id, note, now)
            refund.completed_at = now
            if principal.is_staff:
                self._audit(session, principal, refund, action, note, now)
            return refund

    def request_info(self, principal: Principal, refund_id: str, message: str) -> Refund:
        principal.require_staff(*STAFF_REVIEW_ROLES)
        message = _required_text(message, "say what is needed")
        with self.database.transaction() as session:
            now = self.clock.now()
            refund = self._locked(session, principal, refund_id)
            transition(RefundStatus(refund.status), RefundStatus.NEEDS_INFO)
            refund.info_request = message
            self._move(session, refund, RefundStatus.NEEDS_INFO, principal.id, message, now)
            self._audit(session, principal, refund, "refund.request_info", message, now)
            return refund

    def add_evidence(
        self, principal: Principal, refund_id: str, file_ids: Sequence[str], note: str = ""
    ) -> Refund:
        """The merchant's answer to a request for information (or extra material at any time
        before the refund is final): files, and a note. A refund waiting for information goes
        back to review."""
        note = check_text(note, MAX_REASON_TEXT, "note")
        if not file_ids and not note:
            raise DomainError(ErrorCode.INVALID_INPUT, "add at least one file or a note")
        with self.database.transaction() as session:
            now = self.clock.now()
            refund = self._locked(session, principal, refund_id)
            status = RefundStatus(refund.status)
            if status not in (RefundStatus.IN_REVIEW, RefundStatus.NEEDS_INFO,
                              RefundStatus.PENDING_FUNDS):  # fmt: skip
                raise DomainError(
                    ErrorCode.INVALID_TRANSITION,
                    f"evidence is added while a refund is reviewed, not when {status.value}",
                    status=status.value,
                )
            new_ids = _new_evidence(session, refund.id, file_ids)
            check_attachable(session, refund.merchant_id, new_ids)
            for file_id in new_ids:
                session.add(RefundEvidence(
                    refund_id=refund.id, file_id=file_id, added_by=principal.id, note=note,
                    created_at=now,
                ))  # fmt: skip
            if status is RefundStatus.NEEDS_INFO:
                refund.info_request = None
                self._move(session, refund, RefundStatus.IN_REVIEW, principal.id,
                           note or "evidence added", now)  # fmt: skip
            else:
                refund.updated_at = now
                self._history(session, refund, status, status, principal.id,
                              note or "evidence added", now)  # fmt: skip
            return refund

    # -- execution (the worker) ------------------------------------------------------------------
    def execute(self, refund_id: str) -> Refund | None:
        """One attempt to send an approved refund (idempotent: anything but approved or
        processing is left alone). Called by the worker for each ``refund.execute`` event."""
        attempt = self._claim(refund_id)
        if attempt is None:
            with self.database.read() as session:
                return session.get(Refund, refund_id)
        outcome = self._attempt(attempt)
        with self.database.transaction() as session:
            refund = _locked_refund(session, refund_id)
            if refund.status != RefundStatus.PROCESSING.value:
                return refund
            self._settle_attempt(session, refund, outcome, self.clock.now())
            return refund

    def _claim(self, refund_id: str) -> _Attempt | None:
        """Mark an attempt as started before calling anyone: a crash mid-call leaves
        ``outcome_unknown`` set, and the next attempt asks the network first."""
        with self.database.transaction() as session:
            now = self.clock.now()
            refund = session.get(Refund, refund_id, with_for_update=True)
            if refund is None:
                log.warning("refund %s to execute does not exist", refund_id)
                return None
            if refund.status == RefundStatus.APPROVED.value:
                arrival = expected_arrival(
                    refund.method, refund.card_funding, Route(refund.route), now, self.arrival
                )
                _set_arrival(refund, arrival.earliest.isoformat(), arrival.latest.isoformat(),
                             arrival.basis)  # fmt: skip
                self._move(session, refund, RefundStatus.PROCESSING, "system:refunds",
                           "sent to the network", now)  # fmt: skip
            if refund.status != RefundStatus.PROCESSING.value:
                return None
            if refund.next_attempt_at is not None and refund.next_attempt_at > now:
                return None  # an early duplicate of a scheduled retry
            check_first = refund.outcome_unknown
            refund.attempts += 1
            refund.outcome_unknown = True
            refund.last_attempt_at = now
            refund.next_attempt_at = None
            account = None
            if refund.route == Route.BANK_TRANSFER.value:
                assert refund.reroute_account_enc is not None
                account = Reroute(
                    self.vault.decrypt(refund.reroute_account_enc, ACCOUNT_CONTEXT),
                    refund.reroute_holder_name or "", refund.reroute_bank_name or "",
                )  # fmt: skip
            payment = session.get(Payment, refund.payment_id)
            assert payment is not None  # a refund's payment is never deleted (RESTRICT)
            return _Attempt(refund.id, upstream_reference_of(payment), refund.amount,
                            Route(refund.route), check_first, account)  # fmt: skip

    def _attempt(self, attempt: _Attempt) -> RefundResult | None:
        """Ask first when the last outcome is unknown; then (re)send with the same reference.
        None: no usable answer (timeout, network error) — the outcome is unknown."""
        try:
            if attempt.check_first:
                known = self._query(attempt.payment_reference, attempt.refund_id, attempt.route)
                if known is not None and known.status is not UpstreamStatus.FAILED_TRANSIENT:
                    return known
            if attempt.route is Route.BANK_TRANSFER:
                assert attempt.account is not None
                account = attempt.account
                return _as_refund_result(self.bank.transfer(
                    attempt.refund_id, account.account_number, account.holder_name,
                    account.bank_name, attempt.amount,
                ))  # fmt: skip
            return self.channel.refund(
                attempt.payment_reference, attempt.refund_id, attempt.amount
            )
        except ChannelError as error:
            log.warning("refund %s: no usable answer upstream: %s", attempt.refund_id, error)
            return None

    def _query(
        self, payment_reference: str, refund_id: str, route: Route
    ) -> RefundResult | None:
        if route is Route.BANK_TRANSFER:
            found = self.bank.query_transfer(refund_id)
            return None if found is None else _as_refund_result(found)
        return self.channel.query_refund(payment_reference, refund_id)

    def _settle_attempt(
        self, session: Session, refund: Refund, outcome: RefundResult | None, now: datetime
    ) -> None:
        actor = "system:refunds"
        if outcome is not None and outcome.succeeded:
            self._complete(session, refund, now)
            return
        if outcome is not None and outcome.status is UpstreamStatus.FAILED_PERMANENT:
            refund.outcome_unknown = False
            refund.failure_reason = (outcome.reason or "failed")[:64]
            refund.failure_message = outcome.message[:255]
            if outcome.reason == "card_closed" or refund.route == Route.BANK_TRANSFER.value:
                # the money cannot go back this way: staff re-route it (holds stay in place)
                self._move(session, refund, RefundStatus.ABNORMAL, actor, outcome.message, now)
            else:
                self._release(session, refund)
                self._move(session, refund, RefundStatus.FAILED, actor, outcome.message, now)
                refund.completed_at = now
            return
        # transient failure, or unknown outcome: retry on the schedule
        if outcome is not None:
            refund.outcome_unknown = False
            refund.failure_reason = (outcome.reason or "transient")[:64]
            refund.failure_message = outcome.message[:255]
        delay = retry_delay(refund.attempts, self.retry_schedule)
        if delay is None:
            if refund.outcome_unknown:
                message = "no answer from the network after every retry: check with it (sync)"
                self._move(session, refund, RefundStatus.ABNORMAL, actor, message, now)
                return
            self._release(session, refund)
            self._move(session, refund, RefundStatus.FAILED, actor,
                       f"failed after {refund.attempts} attempts", now)  # fmt: skip
            refund.completed_at = now
            return
        refund.next_attempt_at = now + delay
        refund.updated_at = now
        self._history(session, refund, RefundStatus.PROCESSING, RefundStatus.PROCESSING, actor,
                      f"attempt {refund.attempts} failed ({refund.failure_reason or 'no answer'});"
                      f" retry in {int(delay.total_seconds())} s", now)  # fmt: skip
        emit(session, EXECUTE_TOPIC, {"refund_id": refund.id},
             dedupe_key=f"{refund.id}:execute:{refund.attempts}", clock=self.clock,
             not_before=refund.next_attempt_at)  # fmt: skip

    def _complete(self, session: Session, refund: Refund, now: datetime) -> None:
        if refund.route == Route.BANK_TRANSFER.value:
            # the network never paid it: drop the channel hold, pay from our bank instead
            entries: tuple[Transfer | PostHold | VoidHold, ...] = (
                VoidHold(f"refund:{refund.id}:funds:void", f"refund:{refund.id}:funds"),
                _bank_transfer(refund),
                PostHold(f"refund:{refund.id}:capacity:post", f"refund:{refund.id}:capacity"),
            )
        else:
            entries = (
                PostHold(f"refund:{refund.id}:funds:post", f"refund:{refund.id}:funds"),
                PostHold(f"refund:{refund.id}:capacity:post", f"refund:{refund.id}:capacity"),
            )
        self.ledger.post(session, Linked(entries))
        payment = locked_payment(session, refund.payment_id)
        payment.refunded_amount += refund.amount
        payment.updated_at = now
        refund.outcome_unknown = False
        refund.failure_reason = refund.failure_message = None
        self._move(session, refund, RefundStatus.SUCCEEDED, "system:refunds", "refunded", now)
        refund.completed_at = now

    def _release(self, session: Session, refund: Refund) -> None:
        """Void the refund's holds (reject, cancel, failure): the money stays where it was."""
        entries = [VoidHold(f"refund:{refund.id}:capacity:void", f"refund:{refund.id}:capacity")]
        if refund.funded:
            entries.append(VoidHold(f"refund:{refund.id}:funds:void", f"refund:{refund.id}:funds"))
        self.ledger.post(session, Linked(tuple(entries)))

    # -- staff: re-route, sync; worker: pending funds ----------------------------------------------
    def reroute(self, principal: Principal, refund_id: str, target: Reroute) -> Refund:
        """Send an abnormal refund to the consumer's bank account instead (card closed)."""
        principal.require_staff(*STAFF_REROUTE_ROLES)
        account = _checked_account(target)
        with self.database.transaction() as session:
            now = self.clock.now()
            refund = self._locked(session, principal, refund_id)
            _require_status(refund, RefundStatus.ABNORMAL, "re-routed")
            if refund.outcome_unknown:
                # the network may have refunded the card after all: paying again by bank
                # transfer could pay twice — ask it first (sync)
                raise DomainError(
                    ErrorCode.INVALID_TRANSITION,
                    "the network's answer to this refund is unknown: sync it before re-routing",
                    status=refund.status,
                )
            transition(RefundStatus(refund.status), RefundStatus.PROCESSING)
            refund.route = Route.BANK_TRANSFER.value
            refund.reroute_account_enc = self.vault.encrypt(account.account_number,
                                                            ACCOUNT_CONTEXT)  # fmt: skip
            refund.reroute_account_last4 = account.account_number[-4:]
            refund.reroute_holder_name = account.holder_name
            refund.reroute_bank_name = account.bank_name
            refund.attempts = 0
            refund.outcome_unknown = False
            refund.next_attempt_at = None
            arrival = expected_arrival(refund.method, refund.card_funding, Route.BANK_TRANSFER,
                                       now, self.arrival)  # fmt: skip
            _set_arrival(refund, arrival.earliest.isoformat(), arrival.latest.isoformat(),
                         arrival.basis)  # fmt: skip
            note = f"re-routed to {account.bank_name} account ****{account.account_number[-4:]}"
            self._move(session, refund, RefundStatus.PROCESSING, principal.id, note, now)
            self._audit(session, principal, refund, "refund.reroute", note, now)
            emit(session, EXECUTE_TOPIC, {"refund_id": refund.id},
                 dedupe_key=f"{refund.id}:reroute:{now.isoformat()}", clock=self.clock)  # fmt: skip
            return refund

    def sync(self, principal: Principal, refund_id: str) -> Refund:
        """Ask the network (or the bank) where a refund in flight stands, and record a final
        answer now instead of waiting for the next scheduled attempt."""
        with self.database.read() as session:
            refund = self._visible(session, principal, refund_id)
            payment = session.get(Payment, refund.payment_id)
        if refund.status not in (RefundStatus.PROCESSING.value, RefundStatus.ABNORMAL.value):
            return refund
        assert payment is not None  # a refund's payment is never deleted (RESTRICT)
        try:
            known = self._query(upstream_reference_of(payment), refund.id, Route(refund.route))
        except ChannelError as error:
            raise DomainError(
                ErrorCode.CHANNEL_UNAVAILABLE, f"the network did not answer: {error}"
            ) from error
        settled_answer = known is not None and known.status is not UpstreamStatus.FAILED_TRANSIENT
        if not settled_answer and not (
            refund.status == RefundStatus.ABNORMAL.value and refund.outcome_unknown
        ):
            return refund
        with self.database.transaction() as session:
            locked = _locked_refund(session, refund_id)
            now = self.clock.now()
            if known is None or not (known.succeeded or settled_answer):
                # abnormal for want of an answer, and the network says the money did not
                # move (never seen, or failed): the outcome is known now — staff may re-route
                if locked.status == RefundStatus.ABNORMAL.value and locked.outcome_unknown:
                    locked.outcome_unknown = False
                    locked.failure_reason = "not_refunded_upstream"
                    self._history(session, locked, RefundStatus.ABNORMAL, RefundStatus.ABNORMAL,
                                  principal.id, "the network has not refunded it", now)  # fmt: skip
                return locked
            if known.succeeded and locked.status in (RefundStatus.PROCESSING.value,
                                                     RefundStatus.ABNORMAL.value):  # fmt: skip
                if locked.status == RefundStatus.ABNORMAL.value:
                    self._move(session, locked, RefundStatus.PROCESSING, principal.id,
                               "the network reports it refunded", now)  # fmt: skip
                self._complete(session, locked, now)
            elif locked.status == RefundStatus.PROCESSING.value:
                self._settle_attempt(session, locked, known, now)
            elif locked.outcome_unknown:  # abnormal, and the network says it failed for good
                locked.outcome_unknown = False
                locked.failure_reason = (known.reason or "failed")[:64]
            if principal.is_staff:
                self._audit(session, principal, locked, "refund.sync", known.status.value, now)
            return locked

    def retry_pending_funds(self, limit: int = 100) -> int:
        """Worker: fund refunds that were waiting for the merchant's balance, or fail those
        that waited too long. Returns how many changed."""
        with self.database.read() as session:
            ids = list(session.scalars(
                select(Refund.id)
                .where(Refund.status == RefundStatus.PENDING_FUNDS.value)
                .order_by(Refund.created_at)
                .limit(limit)
            ))  # fmt: skip
        changed = 0
        for refund_id in ids:
            with self.database.transaction() as session:
                now = self.clock.now()
                refund = _locked_refund(session, refund_id)
                if refund.status != RefundStatus.PENDING_FUNDS.value:
                    continue
                if now - refund.created_at >= self.pending_funds_limit:
                    self._release(session, refund)
                    refund.failure_reason = "insufficient_funds"
                    self._move(session, refund, RefundStatus.FAILED, "system:refunds",
                               "the merchant's balance stayed short", now)  # fmt: skip
                    refund.completed_at = now
                    changed += 1
                elif self._fund(session, refund, now):
                    self._after_funding(session, refund, "system:refunds", now)
                    changed += 1
        return changed

    # -- prepayments ------------------------------------------------------------------------------
    def redeem(
        self, principal: Principal, payment_id: str, amount: int, note: str = ""
    ) -> Redemption:
        """Use up part of a prepayment; what is redeemed can no longer be refunded. It takes
        the same refund-capacity account as refunds, so the two can never overlap."""
        note = check_text(note, 255, "note")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise DomainError(ErrorCode.INVALID_AMOUNT, "amount is a positive integer of fen")
        with self.database.transaction() as session:
            now = self.clock.now()
            payment = locked_payment(session, payment_id)
            if not principal.can_see(payment.merchant_id):
                raise DomainError(ErrorCode.PAYMENT_NOT_FOUND, "payment not found")
            if not payment.prepayment:
                raise DomainError(ErrorCode.NOT_A_PREPAYMENT, "only a prepayment is redeemed")
            if payment.status != PaymentStatus.CAPTURED.value:
                raise DomainError(
                    ErrorCode.REFUND_NOT_ALLOWED, f"a {payment.status} payment cannot be redeemed"
                )
            redemption = Redemption(
                id=new_id("rdm_"), payment_id=payment.id, amount=amount, note=note,
                created_by=principal.id, created_at=now,
            )  # fmt: skip
            self.ledger.ensure_accounts(
                session, [chart.refund_capacity_account(payment.id, payment.captured_amount)]
            )
            try:
                self.ledger.post(session, Transfer(
                    f"redeem:{redemption.id}",
                    (Posting(chart.refund_capacity(payment.id), amount),
                     Posting(chart.REFUND_CAPACITY_CONTROL, -amount)),
                    code="refund.redeem",
                ))  # fmt: skip
            except DomainError as error:
                if error.code is not ErrorCode.LIMIT_EXCEEDED:
                    raise
                live_total, _, _ = _live_refunds(session, payment.id)
                left = payment.captured_amount - payment.redeemed_amount - live_total
                raise DomainError(
                    ErrorCode.REDEMPTION_EXCEEDS_REMAINDER,
                    f"only {max(0, left)} fen of this prepayment is neither redeemed nor refunded",
                    remainder=max(0, left),
                ) from None
            session.add(redemption)
            payment.redeemed_amount += amount
            payment.updated_at = now
            if principal.is_staff:
                record(session, actor=principal.id, action="payment.redeem",
                       subject_type="payment", subject_id=payment.id,
                       after={"amount": amount, "note": note}, clock=self.clock)  # fmt: skip
            return redemption

    # -- reads ------------------------------------------------------------------------------------
    def awaiting_second_approval(
        self, principal: Principal, limit: int, after: tuple[datetime, str] | None
    ) -> list[Refund]:
        """Staff: refunds in review that need two approvals and have one (newest first)."""
        principal.require_staff()
        approved = select(RefundApproval.refund_id)
        query = select(Refund).where(
            Refund.status == RefundStatus.IN_REVIEW.value,
            Refund.approvals_required >= 2,
            Refund.id.in_(approved),
        )
        with self.database.read() as session:
            return list(session.scalars(newest_first(query, Refund, limit, after)))

    def approvals_given(self, principal: Principal, refund_ids: Sequence[str]) -> dict[str, int]:
        """Staff: how many approvals each of ``refund_ids`` has (a queue's column)."""
        principal.require_staff()
        if not refund_ids:
            return {}
        query = (
            select(RefundApproval.refund_id, func.count())
            .where(RefundApproval.refund_id.in_(list(refund_ids)))
            .group_by(RefundApproval.refund_id)
        )
        with self.database.read() as session:
            return {refund_id: int(count) for refund_id, count in session.execute(query)}

    def refundable_amount(self, principal: Principal, payment_id: str) -> int:
        """What may still be refunded of a visible payment (captured − redeemed − live
        refunds); 0 for a payment that is not captured. The policy's other rules (window,
        void on the day) are checked when the refund is requested."""
        with self.database.read() as session:
            payment = self._visible_payment(session, principal, payment_id)
            if payment.status != PaymentStatus.CAPTURED.value:
                return 0
            live_total, live_count, _returned = _live_refunds(session, payment.id)
            return refundable(_facts(payment, live_total, live_count))

    def find_by_out_refund_no(self, principal: Principal, out_refund_no: str) -> Refund | None:
        """A merchant's own refund by its ``out_refund_no`` (a form submitted twice finds the
        refund the first submission created)."""
        if principal.merchant_id is None:
            return None
        with self.database.read() as session:
            return _by_out_refund_no(session, principal.merchant_id, out_refund_no)

    def get(self, principal: Principal, refund_id: str) -> Refund:
        with self.database.read() as session:
            return self._visible(session, principal, refund_id)

    def detail(self, principal: Principal, refund_id: str) -> RefundDetail:
        with self.database.read() as session:
            return _detail(session, self._visible(session, principal, refund_id))

    def list(
        self,
        principal: Principal,
        filters: RefundFilters,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Refund]:
        """Newest first; merchants only ever see their own refunds."""
        query = select(Refund)
        if not principal.is_staff:
            query = query.where(Refund.merchant_id == principal.merchant_id)
        elif filters.merchant_id:
            query = query.where(Refund.merchant_id == filters.merchant_id)
        if filters.payment_id:
            query = query.where(Refund.payment_id == filters.payment_id)
        if filters.status:
            query = query.where(Refund.status == filters.status.value)
        with self.database.read() as session:
            return list(session.scalars(newest_first(query, Refund, limit, after)))

    def track(self, rrn: str, last4: str, amount: int) -> Tracking:
        """Consumer tracking without login: the payment's RRN, the last four digits of the
        card (or payment code) and the amount paid must all match; anything else is the same
        not-found, so the endpoint cannot be used to probe which part was wrong."""
        not_found = DomainError(ErrorCode.REFUND_NOT_FOUND, "no refund matches these details")
        if not (rrn.isdigit() and len(rrn) == 12 and last4.isdigit() and len(last4) == 4):
            raise not_found
        with self.database.read() as session:
            for payment in session.scalars(select(Payment).where(Payment.rrn == rrn)):
                if payment.amount != amount or last4 not in (
                    payment.card_last4,
                    payment.qr_code_last4,
                ):
                    continue
                refunds = session.scalars(
                    select(Refund)
                    .where(Refund.payment_id == payment.id)
                    .order_by(Refund.created_at, Refund.id)
                )
                details = [_detail(session, refund) for refund in refunds]
                if details:
                    return Tracking(payment, details)
        raise not_found

    # -- helpers ----------------------------------------------------------------------------------
    def _visible_payment(self, session: Session, principal: Principal, payment_id: str) -> Payment:
        payment = session.get(Payment, payment_id)
        if payment is None or not principal.can_see(payment.merchant_id):
            raise DomainError(ErrorCode.PAYMENT_NOT_FOUND, "payment not found")
        return payment

    def _visible(self, session: Session, principal: Principal, refund_id: str) -> Refund:
        refund = session.get(Refund, refund_id)
        if refund is None or not principal.can_see(refund.merchant_id):
            raise DomainError(ErrorCode.REFUND_NOT_FOUND, "refund not found")
        return refund

    def _locked(self, session: Session, principal: Principal, refund_id: str) -> Refund:
        refund = _locked_refund(session, refund_id)
        if not principal.can_see(refund.merchant_id):
            raise DomainError(ErrorCode.REFUND_NOT_FOUND, "refund not found")
        return refund

    def _move(
        self,
        session: Session,
        refund: Refund,
        target: RefundStatus,
        actor: str,
        note: str,
        now: datetime,
    ) -> None:
        current = RefundStatus(refund.status)
        refund.status = transition(current, target).value
        refund.updated_at = now
        if (current in LIVE) != (target in LIVE):  # the merchant's live refunds of the day
            delta = refund.amount if target in LIVE else -refund.amount
            count_live(DriverSQL(session), refund, delta)
        self._history(session, refund, current, target, actor, note, now)
        event_type = NOTIFIED.get(target)
        if event_type is not None:
            self._publish(session, refund, event_type, current.value)

    def _history(
        self,
        session: Session,
        refund: Refund,
        from_status: RefundStatus | None,
        to_status: RefundStatus,
        actor: str,
        note: str,
        now: datetime,
    ) -> None:
        row = {
            "refund_id": refund.id, "from_status": from_status.value if from_status else None,
            "to_status": to_status.value, "actor": actor, "note": note[:500], "created_at": now,
        }  # fmt: skip
        unsaved = self._unsaved.get(refund.id)
        if unsaved is not None:  # a refund being requested: written with it (_request)
            unsaved.append(row)
        else:
            session.add(RefundStatusChange(**row))

    def _publish(self, session: Session, refund: Refund, event_type: str, came_from: str) -> None:
        """The merchant's webhooks (and event log) and, if given, the consumer's phone. The
        key names the step (from where, when): a retried use case publishes nothing twice,
        a refund that passes a status twice (re-routed) publishes both."""
        step = f"{came_from}:{refund.updated_at.isoformat()}"
        publish(session, refund.merchant_id, event_type, event_data(refund),
                dedupe_key=f"{refund.id}:{event_type}:{step}", clock=self.clock)  # fmt: skip
        if refund.consumer_phone_enc is not None and event_type in CONSUMER_EVENTS:
            emit(session, NOTIFY_TOPIC, {"refund_id": refund.id, "event": event_type},
                 dedupe_key=f"{refund.id}:sms:{event_type}", clock=self.clock)  # fmt: skip

    def _audit(
        self,
        session: Session,
        principal: Principal,
        refund: Refund,
        action: str,
        note: str | None,
        now: datetime,
    ) -> None:
        record(session, actor=principal.id, action=action, subject_type="refund",
               subject_id=refund.id,
               after={"status": refund.status, "amount": refund.amount, "note": note},
               clock=self.clock)  # fmt: skip


REFUND_COLUMNS = tuple(column.key for column in Refund.__table__.columns)


def count_live(driver: DriverSQL, refund: Refund, delta: int) -> None:
    """Add ``delta`` fen to the merchant's live refunds of the refund's business day (the
    running total the risk rules read): at a request, and whenever a refund stops or starts
    holding capacity."""
    driver.execute(
        "INSERT INTO refund_day_totals (business_date, merchant_id, amount) VALUES (?, ?, ?)"
        " ON CONFLICT (business_date, merchant_id) DO UPDATE"
        " SET amount = refund_day_totals.amount + excluded.amount",
        (refund.business_date, refund.merchant_id, delta),
    )


def insert_new_refund(
    driver: DriverSQL,
    refund: Refund,
    history: Sequence[dict[str, Any]],
    evidence: Sequence[dict[str, Any]],
) -> None:
    """A new refund (a transient object: every column is set or None) as one row, then the
    rows that refer to it."""
    driver.insert(Refund, {column: getattr(refund, column) for column in REFUND_COLUMNS})
    for row in history:
        driver.insert(RefundStatusChange, row)
    for row in evidence:
        driver.insert(RefundEvidence, row)


# Consumers hear about the steps that change what they should expect.
CONSUMER_EVENTS = frozenset({
    "refund.created", "refund.approved", "refund.rejected", "refund.succeeded",
    "refund.failed", "refund.abnormal",
})  # fmt: skip


def event_data(refund: Refund) -> dict[str, Any]:
    """A refund as webhooks and the event log carry it (no personal data)."""
    return {
        "id": refund.id, "payment_id": refund.payment_id, "merchant_id": refund.merchant_id,
        "out_refund_no": refund.out_refund_no, "status": refund.status, "amount": refund.amount,
        "currency": refund.currency, "fee_returned": refund.fee_returned,
        "reason": refund.reason, "risk_score": refund.risk_score,
        "expected_arrival": {"earliest": refund.expected_earliest,
                             "latest": refund.expected_latest},
        "failure_reason": refund.failure_reason, "updated_at": refund.updated_at.isoformat(),
    }  # fmt: skip


def _checked(req: RefundRequest) -> tuple[RefundReason, str, str | None, str | None]:
    try:
        reason = RefundReason(req.reason)
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"reason is one of {', '.join(r.value for r in RefundReason)}",
            field="reason",
        ) from None
    text = check_text(req.reason_text, MAX_REASON_TEXT, "reason_text")
    if reason is RefundReason.OTHER and not text:
        raise DomainError(ErrorCode.INVALID_INPUT, "reason `other` needs a reason_text")
    phone = None if req.consumer_phone is None else validate_phone(req.consumer_phone)
    if isinstance(req.amount, bool) or not isinstance(req.amount, int) or req.amount <= 0:
        raise DomainError(ErrorCode.INVALID_AMOUNT, "amount is a positive integer number of fen")
    return reason, text, check_out_refund_no(req.out_refund_no), phone


def _fingerprint(req: RefundRequest) -> str:
    parts = [req.payment_id, str(req.amount), req.reason, req.reason_text,
             req.out_refund_no or "", ",".join(sorted(req.evidence_ids))]  # fmt: skip
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _same_request(refund: Refund, fingerprint: str) -> Refund:
    if refund.request_hash != fingerprint:
        raise DomainError(
            ErrorCode.OUT_REFUND_NO_REUSED,
            "this out_refund_no was used for a different refund request",
            refund_id=refund.id,
        )
    return refund


def _by_out_refund_no(session: Session, merchant_id: str, out_refund_no: str) -> Refund | None:
    return session.scalars(
        select(Refund).where(
            Refund.merchant_id == merchant_id, Refund.out_refund_no == out_refund_no
        )
    ).one_or_none()


def _kind_of(principal: Principal) -> RequesterKind:
    return RequesterKind.STAFF if principal.is_staff else RequesterKind.MERCHANT


def _require_status(refund: Refund, status: RefundStatus, verb: str) -> None:
    if refund.status != status.value:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION,
            f"only a refund that is {status.value} can be {verb}; this one is {refund.status}",
            status=refund.status,
        )


def _required_text(value: str, message: str) -> str:
    text = check_text(value, MAX_REASON_TEXT, "note")
    if not text:
        raise DomainError(ErrorCode.INVALID_INPUT, message)
    return text


def _checked_account(target: Reroute) -> Reroute:
    number = target.account_number.replace(" ", "")
    if not (number.isdigit() and 12 <= len(number) <= 19 and luhn_valid(number)):
        raise DomainError(
            ErrorCode.INVALID_BANK_ACCOUNT, "the bank account must be a valid 12-19 digit card"
        )
    holder = check_text(target.holder_name, 100, "holder_name")
    bank = check_text(target.bank_name, 100, "bank_name")
    if not holder or not bank:
        raise DomainError(ErrorCode.INVALID_INPUT, "holder_name and bank_name are required")
    return Reroute(number, holder, bank)


def _locked_refund(session: Session, refund_id: str) -> Refund:
    refund = session.scalars(
        select(Refund)
        .where(Refund.id == refund_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if refund is None:
        raise DomainError(ErrorCode.REFUND_NOT_FOUND, "refund not found")
    return refund


def _live_refunds(session: Session, payment_id: str) -> tuple[int, int, int]:
    """(amount, count, fee returned) of the payment's live refunds."""
    live = [s.value for s in LIVE]
    ((total, count, returned),) = DriverSQL(session).execute(
        "SELECT coalesce(sum(amount), 0), count(*), coalesce(sum(fee_returned), 0)"
        f" FROM refunds WHERE payment_id = ? AND status IN ({', '.join('?' * len(live))})",
        (payment_id, *live),
    )
    return int(total), int(count), int(returned)


def _facts(payment: Payment, live_total: int, live_count: int) -> PaymentForRefund:
    return PaymentForRefund(
        status=payment.status, captured_amount=payment.captured_amount,
        captured_at=payment.captured_at,
        business_date=date.fromisoformat(payment.business_date),
        settled=payment.settled_at is not None, redeemed=payment.redeemed_amount,
        live_refunded=live_total, live_count=live_count,
    )  # fmt: skip


def _available(account: AccountView) -> int:
    """What a merchant liability account can still give: its credit balance less what is
    already held from it."""
    return max(0, account.credits_posted - account.debits_posted - account.debits_pending)


def _capacity_hold(refund_id: str, payment_id: str, amount: int) -> Hold:
    return Hold(
        f"refund:{refund_id}:capacity",
        (Posting(chart.refund_capacity(payment_id), amount),
         Posting(chart.REFUND_CAPACITY_CONTROL, -amount)),
        code="refund.capacity",
    )  # fmt: skip


def _merchant_debits(refund: Refund) -> list[Posting]:
    """The refund's debits: the merchant's balances and, if returned, our fee revenue."""
    legs = [
        (chart.merchant_unsettled(refund.merchant_id), refund.charge_unsettled),
        (chart.merchant_settled(refund.merchant_id), refund.charge_settled),
        (chart.fee_revenue(refund.method), refund.fee_returned),
    ]
    return [Posting(account, amount) for account, amount in legs if amount]


def _funds_hold(refund: Refund) -> Hold:
    postings = [*_merchant_debits(refund),
                Posting(chart.channel_payable(refund.network), -refund.amount)]  # fmt: skip
    return Hold(f"refund:{refund.id}:funds", tuple(postings), code="refund.funds")


def _bank_transfer(refund: Refund) -> Transfer:
    postings = [*_merchant_debits(refund), Posting(chart.BANK_SETTLEMENT, -refund.amount)]
    return Transfer(f"refund:{refund.id}:bank", tuple(postings), code="refund.bank_transfer")


def _as_refund_result(result: TransferResult) -> RefundResult:
    """A bank transfer's answer in the refund's terms (same reference; the bank's two
    statuses are two of the network's)."""
    return RefundResult(UpstreamStatus(result.status.value), result.reference, result.amount,
                        result.reason, result.message)  # fmt: skip


def _set_arrival(refund: Refund, earliest: str, latest: str, basis: str) -> None:
    refund.expected_earliest, refund.expected_latest, refund.expected_basis = (
        earliest, latest, basis,
    )  # fmt: skip


def _reasons_json(risk: RiskAssessment) -> str:
    return json.dumps(
        [{"rule": r.rule, "weight": r.weight, "fact": r.fact} for r in risk.reasons],
        ensure_ascii=False,
    )


def _new_evidence(session: Session, refund_id: str, file_ids: Sequence[str]) -> list[str]:
    have = set(
        session.scalars(select(RefundEvidence.file_id).where(RefundEvidence.refund_id == refund_id))
    )
    return [f for f in dict.fromkeys(file_ids) if f not in have]


def _detail(session: Session, refund: Refund) -> RefundDetail:
    history = list(session.scalars(
        select(RefundStatusChange)
        .where(RefundStatusChange.refund_id == refund.id)
        .order_by(RefundStatusChange.id)
    ))  # fmt: skip
    approvals = list(session.scalars(
        select(RefundApproval)
        .where(RefundApproval.refund_id == refund.id)
        .order_by(RefundApproval.created_at)
    ))  # fmt: skip
    evidence = list(session.scalars(
        select(RefundEvidence)
        .where(RefundEvidence.refund_id == refund.id)
        .order_by(RefundEvidence.created_at)
    ))  # fmt: skip
    return RefundDetail(refund, history, approvals, evidence)
