"""Payment use cases: create (sale or pre-auth), capture, void, reverse, read, list.

Every use case is: read and check in one short transaction, talk to the network with no
transaction open (no network I/O while rows are locked), then write the outcome — the payment
row, its status history, its ledger entries and an outbox event — in one transaction.

Ledger entries have stable ids derived from the payment id (``pay:<id>:capture`` …), so a
retried use case can never post twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.auth.domain import Principal
from shoudan.channels.domain import (
    AuthorizeRequest,
    CardData,
    Channel,
    ChannelResult,
    ChannelTimeout,
    Network,
    card_funding,
    qr_method,
    qr_network,
)
from shoudan.core.batching import BatchWriter
from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault
from shoudan.core.db import Base, Database, DriverSQL, newest_first, transient
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.ledger import chart
from shoudan.ledger.domain import Hold, Linked, Posting, Transfer, VoidHold
from shoudan.ledger.service import Ledger
from shoudan.notifications.service import emit, emit_many
from shoudan.payments import store
from shoudan.payments.domain import (
    DEFAULT_COMPLETION_LIMIT_PERCENT,
    EntryMode,
    Method,
    PaymentFacts,
    PaymentStatus,
    business_date,
    check_capture,
    check_completion_reversal,
    check_void,
    check_void_reversal,
    compose_rrn,
    keyed_reference,
    transition,
)
from shoudan.payments.models import Payment
from shoudan.payments.store import PaymentPoint
from shoudan.pricing.domain import FeePlan, FeeQuote, Limits, Product, check_limits, quote

log = logging.getLogger(__name__)

PAN_LENGTHS = range(12, 20)
# the network's reply when we gave up waiting (ISO 8583 field 39)
NO_RESPONSE = "98"
LIMIT_DECLINE = "61"


@dataclass(frozen=True, slots=True)
class CardInput:
    pan: str
    expiry: str  # YYMM
    entry_mode: EntryMode
    pin: str | None = None

    def __repr__(self) -> str:  # a card number or PIN must never reach a log
        return f"CardInput(pan=****{self.pan[-4:]}, entry_mode={self.entry_mode})"


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    terminal_id: str
    amount: int
    method: Method
    currency: str = "CNY"
    card: CardInput | None = None
    auth_code: str | None = None
    capture: bool = True
    prepayment: bool = False
    description: str = ""
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentFilters:
    status: PaymentStatus | None = None
    rrn: str | None = None
    merchant_id: str | None = None
    terminal_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class PaymentSearch:
    """A merchant's transaction search (交易查询): every filter optional, all must match.
    Days are business days (Asia/Shanghai), both ends included."""

    status: PaymentStatus | None = None
    method: Method | None = None
    amount: int | None = None  # fen, exact
    rrn: str | None = None
    card_last4: str | None = None  # the card's or the payment code's last four
    day_from: date | None = None
    day_to: date | None = None


# A row to write with a payment's change (the gateway's journal row): called with the payment as
# it will be recorded, it prepares what it needs and returns the row — its model and its values
# — which is inserted in the transaction that records the change (for new payments, with the
# rows of the same model of the whole batch, in one statement): it commits or rolls back with
# the payment. For a new payment it is called before the write turn; for a completion or a
# void, inside it.
AlsoRow = tuple[type[Base], dict[str, Any]]
AlsoRecord = Callable[[Payment], AlsoRow]
# What to write with a completion or a void, in the transaction that records it, after it (the
# gateway's journal row). The network has made the change by then, so our books must follow it:
# the hook must not fail for a reason of its own (the gateway's row is written unless its
# identity is taken).
AlsoWrite = Callable[[DriverSQL, Payment], None]

# SQLite: RRN numbers a process draws from the business day's counter at a time (_RrnNumbers)
RRN_BLOCK = 1000


class _RrnNumbers:
    """RRN sequence numbers drawn ahead, ``RRN_BLOCK`` at a time, per business day: a new
    payment's RRN is known before its write turn, so the payment row and whatever prints its
    RRN (the terminal's answer, MACed) are made before it, and the write turn — on SQLite one
    writer for all processes — holds only the writes. A block is drawn in a transaction of
    its own, committed before any of its numbers is used; numbers a process had not used when
    it stopped are never used (the day's RRNs have gaps, never repeats). Processes draw
    blocks in turn, so RRNs are distinct but not in order of time across processes."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._lock = threading.Lock()  # held for memory only, never across I/O
        self._drawing = threading.Lock()  # one draw at a time: the others wait for it
        self._numbers: dict[str, deque[int]] = {}

    def next(self, day: str) -> int:
        number = self._take(day)
        if number is not None:
            return number
        # waited for with the baton down: the thread drawing needs it back to commit
        self._database.baton.acquire(self._drawing)
        try:
            while (number := self._take(day)) is None:  # the draw we waited for may suffice
                with self._database.transaction() as session:
                    drawn = store.draw_rrn_numbers(DriverSQL(session), day, RRN_BLOCK)
                with self._lock:
                    if day not in self._numbers:  # a new business day: the old one's are done
                        self._numbers = {day: deque()}
                    self._numbers[day].extend(drawn)
            return number
        finally:
            self._drawing.release()

    def _take(self, day: str) -> int | None:
        with self._lock:
            numbers = self._numbers.get(day)
            return numbers.popleft() if numbers else None


@dataclass(frozen=True, slots=True)
class _Draft:
    """A new payment as it will be recorded, and what is written with it (``_draft``)."""

    payment: Payment
    status: PaymentStatus
    actor: str
    note: str  # the network's message, for the status history
    entry: Transfer | Hold | None  # the ledger entry: a capture or a pre-auth's hold
    event: dict[str, object]
    also: AlsoRow | None
    limits: Limits  # checked again in the write turn, where concurrent payments count


@dataclass(frozen=True, slots=True)
class _Prepared:
    point: PaymentPoint
    merchant_id: str
    plan_code: str
    quote: FeeQuote | None  # None for a pre-auth: the fee is taken on the captured amount
    network: str
    funding: str | None
    card_token: str | None
    limits: Limits


# what ``_draft`` takes after the payment id and the network's answer
_Record = tuple[str | None, Principal, PaymentRequest, _Prepared, str]


@dataclass(frozen=True, slots=True)
class _Pending:
    """A payment drafted and not yet written: what its write, and a refused write's
    handling, need."""

    payment_id: str
    reference: str  # what the network was sent
    result: ChannelResult
    record: _Record
    also: AlsoRecord | None
    draft: _Draft


class PaymentService:
    def __init__(
        self,
        database: Database,
        ledger: Ledger,
        vault: Vault,
        channel: Channel,
        clock: Clock,
        completion_limit_percent: Decimal = DEFAULT_COMPLETION_LIMIT_PERCENT,
    ) -> None:
        self.database = database
        self.ledger = ledger
        self.vault = vault
        self.channel = channel
        self.clock = clock
        self.completion_limit_percent = completion_limit_percent
        self._plans = store.PlanCache()
        self._rrn_numbers = _RrnNumbers(database)
        # SQLite with group commit: concurrent payments written in one batch (core/batching.py)
        self._writer: BatchWriter[_Draft, Payment] = BatchWriter(database, self._record)

    # -- create ---------------------------------------------------------------------------
    def create(
        self,
        principal: Principal,
        request: PaymentRequest,
        *,
        also: AlsoRecord | None = None,
        point: PaymentPoint | None = None,
    ) -> Payment:
        """Take a payment. ``also`` runs in the transaction that records it (not for a retry
        answered with the payment recorded before). ``point``: the request's terminal and
        merchant as its caller has just read them (the gateway's checks do), not read
        again."""
        drafted = self._drafted(principal, request, also, point)
        if isinstance(drafted, Payment):  # a retry, answered with the payment recorded before
            return drafted
        return self._write(drafted)

    def _drafted(
        self,
        principal: Principal,
        request: PaymentRequest,
        also: AlsoRecord | None,
        point: PaymentPoint | None,
    ) -> Payment | _Pending:
        """A payment's first step, before any write: its reads and rules, the network's
        answer, and the draft of all that is written with it; or the payment recorded before
        for a retry. An approval that cannot be drafted is reversed upstream."""
        _check_shape(request)
        fingerprint = self._fingerprint(request)
        # driver statements on a pooled connection: no ORM session for the reads of every
        # payment (docs/benchmarks.md); the rare retry loads its payment through the ORM
        with self.database.driver_read() as driver:
            # A retry is answered first, before any rule that its own payment now affects
            # (limits count it; the terminal may have been suspended since).
            if point is None or point.terminal_id != request.terminal_id:
                point = store.load_point(driver, request.terminal_id)
            if not principal.can_see(point.merchant_id):
                raise DomainError(ErrorCode.TERMINAL_NOT_FOUND, "terminal not found")
            retry = request.idempotency_key is not None and store.has_idempotency_key(
                driver, point.merchant_id, request.idempotency_key
            )
            prepared = None if retry else self._prepare(driver, point, request)
        if prepared is None:
            assert request.idempotency_key is not None
            with self.database.read() as session:
                existing = _by_idempotency_key(session, point.merchant_id, request.idempotency_key)
            if existing is not None:
                return _same_request(existing, fingerprint)
            with self.database.driver_read() as driver:  # gone meanwhile (a failed write)
                prepared = self._prepare(driver, point, request)
        payment_id = new_id("pay_")  # time-ordered; the network is sent `reference`
        key = request.idempotency_key
        upstream = keyed_reference(prepared.merchant_id, key) if key is not None else None
        reference = upstream or payment_id
        result = self._authorize(reference, request)
        record = (upstream, principal, request, prepared, fingerprint)
        try:
            draft = self._draft(payment_id, result, *record, also)
        except BaseException:
            if result.approved:  # nothing will be recorded: nothing may stay charged
                self.channel.reverse(reference)
            raise
        return _Pending(payment_id, reference, result, record, also, draft)

    def _write(self, pending: _Pending) -> Payment:
        """A payment's second step: its write, committed (with the group's, on SQLite), and
        what is done when the write is refused."""
        payment_id, reference, result, record, also = (
            pending.payment_id, pending.reference, pending.result, pending.record, pending.also,
        )  # fmt: skip
        _upstream, _principal, request, prepared, fingerprint = record
        try:
            return self._writer.write(pending.draft)
        except DomainError as error:
            if result.approved and error.code is ErrorCode.LIMIT_EXCEEDED:
                # A concurrent payment used the limit while we were at the network: give the
                # money back upstream and record the payment as declined (61).
                self.channel.reverse(reference)
                refused = ChannelResult(
                    approved=False, response_code=LIMIT_DECLINE, network=result.network,
                    channel_reference=result.channel_reference, auth_code=None,
                    message=error.message,
                )  # fmt: skip
                draft = self._draft(payment_id, refused, *record, also)
                with self.database.transaction() as session:
                    return self._record(session, [draft])[0]
            if result.approved:
                self.channel.reverse(reference)  # nothing recorded: nothing may stay charged
            raise
        except IntegrityError:
            if request.idempotency_key is None:
                if result.approved:
                    self.channel.reverse(reference)
                raise
            # Another request with this Idempotency-Key recorded its payment first (they raced
            # past the middleware, e.g. after a lock takeover). Same key, same upstream
            # reference: the network answered both as one, so nothing is reversed
            # (that would undo theirs); answer the recorded one.
            with self.database.read() as session:
                winner = _by_idempotency_key(session, prepared.merchant_id, request.idempotency_key)
            if winner is None:
                if result.approved:  # nothing recorded: nothing may stay charged
                    self.channel.reverse(reference)
                raise
            return _same_request(winner, fingerprint)
        except BaseException:
            if result.approved:
                self.channel.reverse(reference)
            raise

    def _fingerprint(self, request: PaymentRequest) -> str:
        """What the request asks for (the card as its token, never the PAN or PIN), to tell
        a retry with an Idempotency-Key from a different request reusing it."""
        card = request.card
        parts = [
            request.terminal_id, str(request.amount), request.currency, request.method.value,
            self.vault.pan_token(card.pan) if card else "", card.expiry if card else "",
            card.entry_mode.value if card else "", request.auth_code or "",
            str(request.capture), str(request.prepayment), request.description,
        ]  # fmt: skip
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def _limits(self, plan: FeePlan, point: PaymentPoint) -> Limits:
        if point.daily_limit is None:
            return plan.limits
        # the merchant's own daily limit overrides the plan's
        return replace(plan.limits, per_merchant_daily=point.daily_limit)

    def _plan(self, code: str) -> FeePlan:
        plan = self._plans.cached(code)
        if plan is None:
            with self.database.read() as session:
                plan = self._plans.get(session, code)
        return plan

    def _prepare(
        self, driver: DriverSQL, point: PaymentPoint, request: PaymentRequest
    ) -> _Prepared:
        point.check_can_pay()
        plan = self._plan(point.fee_plan_code)
        now = self.clock.now()
        funding: str | None = None
        token: str | None = None
        if request.method is Method.CARD:
            assert request.card is not None
            funding = card_funding(request.card.pan)
            network = Network.UNIONPAY.value
            token = self.vault.pan_token(request.card.pan)
        else:
            assert request.auth_code is not None
            network = _qr_network_name(request.auth_code, request.method)
        category = _category(request, funding)
        fee_quote = (
            quote(plan, Product(point.product), category, request.amount, now)
            if request.capture
            else None
        )
        limits = self._limits(plan, point)
        day = business_date(now).isoformat()
        check_limits(
            limits, request.amount, *store.day_totals(driver, token, point.merchant_id, day)
        )
        return _Prepared(
            point, point.merchant_id, plan.code, fee_quote, network, funding, token, limits
        )

    def _authorize(self, reference: str, request: PaymentRequest) -> ChannelResult:
        card = None
        if request.card is not None:
            card = CardData(
                pan=request.card.pan, expiry=request.card.expiry, pin=request.card.pin,
                entry_mode=request.card.entry_mode,
            )  # fmt: skip
        upstream = AuthorizeRequest(
            reference=reference, amount=request.amount, currency=request.currency, card=card,
            auth_code=request.auth_code, capture=request.capture,
        )  # fmt: skip
        try:
            return self.channel.authorize(upstream)
        except ChannelTimeout:
            # No answer in time: undo whatever the network may have done, answer 98.
            self.channel.reverse(reference)
            return ChannelResult(
                approved=False, response_code=NO_RESPONSE, network=Network(_network_of(request)),
                channel_reference=reference, auth_code=None,
                message="no response from the issuer in time; reversed upstream",
            )  # fmt: skip

    def _draft(
        self,
        payment_id: str,
        result: ChannelResult,
        upstream: str | None,
        principal: Principal,
        request: PaymentRequest,
        prepared: _Prepared,
        fingerprint: str,
        also: AlsoRecord | None,
    ) -> _Draft:
        """The new payment and all that is written with it, made before the write turn."""
        now = self.clock.now()
        day = business_date(now)
        rrn = compose_rrn(day, self._rrn_numbers.next(day.isoformat()))
        status = (
            (PaymentStatus.CAPTURED if request.capture else PaymentStatus.AUTHORIZED)
            if result.approved
            else PaymentStatus.DECLINED
        )
        card = request.card
        payment = transient(
            Payment,
            {
                "id": payment_id,
                "merchant_id": prepared.merchant_id,
                "terminal_id": prepared.point.terminal_id,
                "method": request.method.value,
                "status": status.value,
                "currency": request.currency,
                "amount": request.amount,
                "captured_amount": 0,
                "fee": 0,
                "net": 0,
                "refunded_amount": 0,
                "fee_plan_code": prepared.plan_code,
                "fee_category": None,
                "rate_bp": None,
                "business_date": day.isoformat(),
                "rrn": rrn,
                "auth_code": result.auth_code if result.approved else None,
                "decline_code": None if result.approved else result.response_code,
                "decline_message": None if result.approved else result.message[:255],
                "network": result.network,
                "channel_reference": result.channel_reference,
                "upstream_reference": upstream,
                "card_bin": card.pan[:6] if card else None,
                "card_last4": card.pan[-4:] if card else None,
                "card_length": len(card.pan) if card else None,
                "card_token": prepared.card_token,
                "card_funding": prepared.funding,
                "entry_mode": card.entry_mode.value if card else None,
                "qr_code_last4": request.auth_code[-4:] if request.auth_code else None,
                "prepayment": request.prepayment,
                "description": request.description,
                "idempotency_key": request.idempotency_key,
                "request_hash": fingerprint,
                "redeemed_amount": 0,
                "settled_at": None,
                "created_at": now,
                "updated_at": now,
                "captured_at": None,
                "voided_at": None,
                "reversed_at": None,
            },
        )  # every column set: it is inserted as one row, and returned as it is stored
        entry: Transfer | Hold | None = None
        if status is PaymentStatus.CAPTURED:
            assert prepared.quote is not None
            _apply_capture(payment, prepared.quote, now)
            entry = _capture_entry(payment)
        elif status is PaymentStatus.AUTHORIZED:
            entry = _hold_entry(payment)
        return _Draft(
            payment, status, principal.id, result.message, entry, _event(payment),
            also(payment) if also is not None else None, prepared.limits,
        )  # fmt: skip

    def _record(self, session: Session, drafts: Sequence[_Draft]) -> list[Payment]:
        """The write turn of new payments (one, or a batch from ``_DraftWriter``): their rows,
        their limits checked again, their ledger entries, their events, and what ``also``
        writes. Any refusal raises, and the caller's transaction undoes all of them."""
        driver = DriverSQL(session)
        payments = [draft.payment for draft in drafts]
        store.insert_payments(driver, payments)
        for draft in drafts:
            # No day-wide lock: the limits are checked on the running totals' own rows, which
            # the upsert locks (a concurrent payment of this merchant or card waits for ours).
            payment = draft.payment
            counted = counted_amount(payment)  # an approval: the limits again, now under the
            if counted:  # write lock, where concurrent payments count
                card_total, merchant_total = store.count(driver, payment, counted)
                check_limits(
                    draft.limits, payment.amount,
                    card_total - counted if payment.card_token else 0, merchant_total - counted,
                )  # fmt: skip
        store.insert_history(driver, [
            _history_row(d.payment, None, d.status, d.actor, d.note, d.payment.created_at)
            for d in drafts
        ])  # fmt: skip
        entries = [draft.entry for draft in drafts if draft.entry is not None]
        if entries:
            self.ledger.post_all(session, entries)
        emit_many(session, [
            (f"payment.{d.payment.status}", d.event, f"{d.payment.id}:new") for d in drafts
        ], self.clock)  # fmt: skip
        also: dict[type[Base], list[dict[str, Any]]] = {}
        for draft in drafts:
            if draft.also is not None:
                model, row = draft.also
                also.setdefault(model, []).append(row)
        for model, rows in also.items():
            driver.insert_many(model, rows)
        return payments

    def reverse_unrecorded(self, merchant_id: str, idempotency_key: str) -> None:
        """Undo at the network a payment we may have sent but never recorded (the process
        died between the network's answer and the commit): its reference is derived from the
        Idempotency-Key, so it can be named again. Idempotent; a no-op if it never arrived."""
        self.channel.reverse(keyed_reference(merchant_id, idempotency_key))

    # -- capture (completion) -------------------------------------------------------------
    def capture(
        self, principal: Principal, payment_id: str, amount: int, *, also: AlsoWrite | None = None
    ) -> Payment:
        """Capture an authorised payment (预授权完成). ``also`` runs in the transaction that
        records the capture."""
        with self.database.read() as session:
            payment = self._visible(session, principal, payment_id)
            check_capture(_facts(payment), amount, self.completion_limit_percent)
            driver = DriverSQL(session)
            point = store.load_point(driver, payment.terminal_id)
            point.check_can_pay()
            plan = self._plans.get(session, payment.fee_plan_code)
            limits = self._limits(plan, point)
            category = _category_of(payment, amount)
            fee_quote = quote(plan, Product(point.product), category, amount, self.clock.now())
            _check_completion_limits(driver, payment, amount, limits)  # before the network
        result = self.channel.capture(upstream_reference_of(payment), amount)
        if not result.approved:
            raise DomainError(
                ErrorCode.CAPTURE_NOT_ALLOWED,
                f"the network refused the completion ({result.response_code}): {result.message}",
                network_response_code=result.response_code,
            )
        with self.database.transaction() as session:
            driver = DriverSQL(session)
            payment = locked_payment(session, payment_id)
            check_capture(_facts(payment), amount, self.completion_limit_percent)
            now = self.clock.now()
            # the day's totals held the authorised amount; from now on, the captured one —
            # and the limits again on the totals this upsert returns, under its row locks
            card_total, merchant_total = store.count(
                driver, payment, fee_quote.amount - payment.amount
            )
            check_limits(
                limits, amount, card_total - amount if payment.card_token else 0,
                merchant_total - amount,
            )  # fmt: skip
            _apply_capture(payment, fee_quote, now)
            hold = _hold_id(driver, payment)  # the pre-auth's, or a restored one's
            capture_id = hold.replace(":auth", ":capture")
            again = capture_id.removeprefix(f"pay:{payment.id}:")  # capture-2 …: its own event
            self._move(
                session, payment, PaymentStatus.CAPTURED, principal, "completion", now,
                event_key=None if again == "capture" else again,
            )  # fmt: skip
            self.ledger.post(session, Linked((
                VoidHold(f"{hold}-release", hold),
                replace(_capture_entry(payment), id=capture_id),
            )))  # fmt: skip
            if also is not None:
                also(driver, payment)
            return payment

    # -- void -------------------------------------------------------------------------------
    def void(
        self, principal: Principal, payment_id: str, *, also: AlsoWrite | None = None
    ) -> Payment:
        """Void a payment in full (撤销). ``also`` runs in the transaction that records the
        void."""
        with self.database.read() as session:
            payment = self._visible(session, principal, payment_id)
            check_void(_facts(payment), self.clock.now())
            # before the network: once it has voided, our books must follow it
            self._refuse_if_refunded(session, payment, ErrorCode.VOID_NOT_ALLOWED)
        result = self.channel.void(upstream_reference_of(payment))
        if not result.approved:
            raise DomainError(
                ErrorCode.VOID_NOT_ALLOWED,
                f"the network refused the void ({result.response_code}): {result.message}",
                network_response_code=result.response_code,
            )
        with self.database.transaction() as session:
            payment = locked_payment(session, payment_id)
            now = self.clock.now()
            check_void(_facts(payment), now)
            # A refund requested since our check is not sent yet: the network now refuses it
            # (the payment is voided there), and its holds are released when it fails.
            self._undo(session, payment, PaymentStatus.VOIDED, principal, now)
            if also is not None:
                also(DriverSQL(session), payment)
            return payment

    def reverse_void(
        self, principal: Principal, payment_id: str, *, also: AlsoWrite | None = None
    ) -> Payment:
        """Undo a void whose answer the terminal never saw (撤销冲正): the payment is captured
        (or, a pre-auth's, authorised) again, as it was — upstream first, then the books (the
        capture entry again, or a new hold; the day's totals, the history, an event). On the
        payment's business day, within the day's limits (what the void freed may have been
        spent since). ``also`` runs in the transaction that records it. Idempotent: a payment
        restored is returned as it is."""
        with self.database.read() as session:
            payment = self._visible(session, principal, payment_id)
            if payment.status in (PaymentStatus.CAPTURED.value, PaymentStatus.AUTHORIZED.value):
                return payment  # restored already
            check_void_reversal(_facts(payment), self.clock.now())
            limits = self._check_limits_for(session, payment, _restored_amount(payment))
        reference = upstream_reference_of(payment)
        _refused_upstream(self.channel.reverse_void(reference), "the void")
        try:
            return self._restore(principal, payment_id, limits, also)
        except DomainError:  # refused at the write (limits spent, the day over): void it there
            _put_back(self.channel.void(reference), reference, "voided")
            raise

    def _restore(
        self, principal: Principal, payment_id: str, limits: Limits, also: AlsoWrite | None
    ) -> Payment:
        """``reverse_void``'s write, the network having restored the payment."""
        with self.database.transaction() as session:
            driver = DriverSQL(session)
            payment = locked_payment(session, payment_id)
            if payment.status != PaymentStatus.VOIDED.value:
                return payment  # restored meanwhile
            check_void_reversal(_facts(payment), self.clock.now())
            voided = store.times_in(driver, payment.id, PaymentStatus.VOIDED.value)
            key = f"void-reversal{_generation(voided - 1)}"
            target = PaymentStatus.CAPTURED if payment.captured_amount else PaymentStatus.AUTHORIZED
            if target is PaymentStatus.AUTHORIZED:  # a new hold: the void released the old one
                entry: Transfer | Hold = _restored_hold(driver, payment)
            else:
                entry = replace(_capture_entry(payment), id=f"pay:{payment.id}:{key}")
            self._move(
                session, payment, target, principal, "void reversed", self.clock.now(),
                event_key=key,
            )  # fmt: skip
            payment.voided_at = None
            _count_within(driver, payment, counted_amount(payment), limits)
            self.ledger.post(session, entry)
            if also is not None:
                also(driver, payment)
            return payment

    def reverse_completion(
        self, principal: Principal, payment_id: str, *, also: AlsoWrite | None = None
    ) -> Payment:
        """Undo a completion whose answer the terminal never saw (完成冲正): the pre-auth stands
        authorised again, as before it — upstream first, then the books (the capture's
        opposite and a new hold, linked; the day's totals back to the authorised amount; the
        history; a ``payment.authorized`` event). Before settlement, on the completion's
        business day, never once refunded. ``also`` runs in the transaction that records it.
        Idempotent: an authorised payment is returned as it is."""
        with self.database.read() as session:
            payment = self._visible(session, principal, payment_id)
            if payment.status == PaymentStatus.AUTHORIZED.value:
                return payment
            self._check_completion_reversal(session, payment)
            limits = self._check_limits_for(session, payment, payment.amount, counted=True)
        reference, captured = upstream_reference_of(payment), payment.captured_amount
        _refused_upstream(self.channel.reverse_completion(reference), "the completion")
        try:
            return self._reauthorize(principal, payment_id, limits, also)
        except DomainError:  # refused at the write (a refund meanwhile…): complete it there
            _put_back(self.channel.capture(reference, captured), reference, "captured")
            raise

    def _reauthorize(
        self, principal: Principal, payment_id: str, limits: Limits, also: AlsoWrite | None
    ) -> Payment:
        """``reverse_completion``'s write, the network having undone the completion."""
        with self.database.transaction() as session:
            driver = DriverSQL(session)
            payment = locked_payment(session, payment_id)
            if payment.status == PaymentStatus.AUTHORIZED.value:
                return payment
            self._check_completion_reversal(session, payment)
            undone = _opposite(
                _capture_entry(payment),
                _hold_id(driver, payment).replace(":auth", ":completion-reversal"),
            )
            hold = _restored_hold(driver, payment)
            counted = counted_amount(payment)
            self._move(
                session, payment, PaymentStatus.AUTHORIZED, principal, "completion reversed",
                self.clock.now(), event_key=hold.id.removeprefix(f"pay:{payment.id}:"),
            )  # fmt: skip
            payment.captured_amount, payment.fee, payment.net = 0, 0, 0
            payment.rate_bp, payment.captured_at = None, None
            _count_within(driver, payment, payment.amount - counted, limits)
            self.ledger.post(session, Linked((undone, hold)))
            if also is not None:
                also(driver, payment)
            return payment

    def _check_completion_reversal(self, session: Session, payment: Payment) -> None:
        preauthorised = bool(
            store.times_in(DriverSQL(session), payment.id, PaymentStatus.AUTHORIZED.value)
        )
        check_completion_reversal(
            _facts(payment), preauthorised, payment.captured_at, self.clock.now()
        )
        # never a refund, even one refused since: its capacity account is sized to this
        # completion's amount, which a new completion may not match
        try:
            self.ledger.get_account(session, chart.refund_capacity(payment.id))
        except DomainError as error:
            if error.code is ErrorCode.ACCOUNT_NOT_FOUND:
                return
            raise
        raise DomainError(
            ErrorCode.INVALID_TRANSITION, "the payment has had refunds: refund it instead"
        )

    def _check_limits_for(
        self, session: Session, payment: Payment, amount: int, *, counted: bool = False
    ) -> Limits:
        """The payment's limits, checked for ``amount`` coming back into the day's totals
        (``counted``: in place of what the payment counts now); returned for the write's
        second check."""
        driver = DriverSQL(session)
        point = store.load_point(driver, payment.terminal_id)
        limits = self._limits(self._plans.get(session, payment.fee_plan_code), point)
        card_total, merchant_total = store.day_totals(
            driver, payment.card_token, payment.merchant_id, payment.business_date
        )
        already = counted_amount(payment) if counted else 0
        check_limits(
            limits, amount, card_total - already if payment.card_token else 0,
            merchant_total - already,
        )  # fmt: skip
        return limits

    # -- reverse ----------------------------------------------------------------------------
    def reverse(self, principal: Principal, payment_id: str) -> Payment:
        """Undo a payment whose outcome was never seen. Idempotent: reversing a payment that
        is already reversed, voided or declined acknowledges it and changes nothing."""
        with self.database.read() as session:
            payment = self._visible(session, principal, payment_id)
            if payment.status not in (PaymentStatus.CAPTURED, PaymentStatus.AUTHORIZED):
                return payment
            if payment.settled_at is not None:
                raise DomainError(
                    ErrorCode.INVALID_TRANSITION,
                    "the payment is settled: a reversal needs manual handling, refund instead",
                )
        with self.database.read() as session:
            self._refuse_if_refunded(session, payment, ErrorCode.INVALID_TRANSITION)
        # idempotent upstream, and it succeeds for a reference the network never saw
        self.channel.reverse(upstream_reference_of(payment))
        with self.database.transaction() as session:
            payment = locked_payment(session, payment_id)  # reversed upstream: the books follow
            if payment.status not in (PaymentStatus.CAPTURED, PaymentStatus.AUTHORIZED):
                return payment
            self._undo(session, payment, PaymentStatus.REVERSED, principal, self.clock.now())
            return payment

    def _refuse_if_refunded(self, session: Session, payment: Payment, code: ErrorCode) -> None:
        """A payment with refunds or prepayment redemptions (live or done) was seen and used:
        undoing it whole would give the money back twice. Its refund-capacity memo account
        says so (debited by every refund and redemption); the caller holds the payment's
        lock, which refunds take too, so none can slip in meanwhile."""
        try:
            capacity = self.ledger.get_account(session, chart.refund_capacity(payment.id))
        except DomainError as error:
            if error.code is ErrorCode.ACCOUNT_NOT_FOUND:
                return  # never refunded nor redeemed
            raise
        if capacity.debits_posted + capacity.debits_pending - capacity.credits_posted > 0:
            raise DomainError(
                code, "the payment has refunds or redemptions: it can only be refunded further"
            )

    def _undo(
        self,
        session: Session,
        payment: Payment,
        target: PaymentStatus,
        principal: Principal,
        now: datetime,
    ) -> None:
        was = PaymentStatus(payment.status)
        driver = DriverSQL(session)
        _count(driver, payment, -counted_amount(payment))
        verb = "void" if target is PaymentStatus.VOIDED else "reverse"
        if target is PaymentStatus.VOIDED:  # a void reversed before: this is another one
            verb += _generation(store.times_in(driver, payment.id, target.value))
        self._move(session, payment, target, principal, target.value, now, event_key=verb)
        if was is PaymentStatus.AUTHORIZED:
            hold = _hold_id(driver, payment)
            self.ledger.post(session, VoidHold(f"pay:{payment.id}:{verb}", hold))
        else:
            self.ledger.post(
                session, _opposite(_capture_entry(payment), f"pay:{payment.id}:{verb}")
            )
        if target is PaymentStatus.VOIDED:
            payment.voided_at = now
        else:
            payment.reversed_at = now

    def _move(
        self,
        session: Session,
        payment: Payment,
        target: PaymentStatus,
        principal: Principal,
        note: str,
        now: datetime,
        *,
        event_key: str | None = None,
    ) -> None:
        """``event_key``: what tells this change's event from an earlier one to the same
        status (a second void after a reversed one); the status by default."""
        current = PaymentStatus(payment.status)
        payment.status = transition(current, target).value
        payment.updated_at = now
        store.insert_history(
            DriverSQL(session), [_history_row(payment, current, target, principal.id, note, now)]
        )
        if principal.is_staff:  # every staff action is audited (merchants': history only)
            record(
                session, actor=principal.id, action=f"payment.{target.value}",
                subject_type="payment", subject_id=payment.id,
                before={"status": current.value}, after={"status": target.value, "note": note},
                clock=self.clock,
            )  # fmt: skip
        emit(
            session, f"payment.{target.value}", _event(payment),
            dedupe_key=f"{payment.id}:{event_key or target.value}", clock=self.clock,
        )  # fmt: skip

    # -- reads ------------------------------------------------------------------------------
    def get(self, principal: Principal, payment_id: str) -> Payment:
        with self.database.read() as session:
            return self._visible(session, principal, payment_id)

    def search(
        self,
        principal: Principal,
        search: PaymentSearch,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Payment]:
        """Newest first, keyset-paginated like ``list``; merchants only see their own."""
        query = select(Payment)
        if not principal.is_staff:
            query = query.where(Payment.merchant_id == principal.merchant_id)
        if search.status:
            query = query.where(Payment.status == search.status.value)
        if search.method:
            query = query.where(Payment.method == search.method.value)
        if search.amount is not None:
            query = query.where(Payment.amount == search.amount)
        if search.rrn:
            query = query.where(Payment.rrn == search.rrn)
        if search.card_last4:
            last4 = search.card_last4
            query = query.where((Payment.card_last4 == last4) | (Payment.qr_code_last4 == last4))
        if search.day_from:
            query = query.where(Payment.business_date >= search.day_from.isoformat())
        if search.day_to:
            query = query.where(Payment.business_date <= search.day_to.isoformat())
        with self.database.read() as session:
            return list(session.scalars(newest_first(query, Payment, limit, after)))

    def list(
        self,
        principal: Principal,
        filters: PaymentFilters,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Payment]:
        """Newest first; ``after`` is the (created_at, id) of the last row of the previous
        page. Merchants only ever see their own payments."""
        query = select(Payment)
        if not principal.is_staff:
            query = query.where(Payment.merchant_id == principal.merchant_id)
        elif filters.merchant_id:
            query = query.where(Payment.merchant_id == filters.merchant_id)
        if filters.status:
            query = query.where(Payment.status == filters.status.value)
        if filters.rrn:
            query = query.where(Payment.rrn == filters.rrn)
        if filters.terminal_id:
            query = query.where(Payment.terminal_id == filters.terminal_id)
        if filters.created_from:
            query = query.where(Payment.created_at >= filters.created_from)
        if filters.created_to:
            query = query.where(Payment.created_at < filters.created_to)
        with self.database.read() as session:
            return list(session.scalars(newest_first(query, Payment, limit, after)))

    def _visible(self, session: Session, principal: Principal, payment_id: str) -> Payment:
        payment = session.get(Payment, payment_id)
        if payment is None or not principal.can_see(payment.merchant_id):
            raise DomainError(ErrorCode.PAYMENT_NOT_FOUND, "payment not found")
        return payment


# -- helpers ------------------------------------------------------------------------------------


def upstream_reference_of(payment: Payment) -> str:
    """The reference the network knows ``payment`` by: the one derived from its
    Idempotency-Key (``domain.keyed_reference``), else its id. Stored, not recomputed: payments
    made before the ids were ULIDs were sent their id, with a key or without (NULL here)."""
    return payment.upstream_reference or payment.id


def _check_shape(request: PaymentRequest) -> None:
    if isinstance(request.amount, bool) or not isinstance(request.amount, int):
        raise DomainError(ErrorCode.INVALID_AMOUNT, "amount is an integer number of fen")
    if request.amount <= 0:
        raise DomainError(ErrorCode.INVALID_AMOUNT, "amount must be positive")
    if request.currency != "CNY":
        raise DomainError(ErrorCode.INVALID_CURRENCY, f"unsupported currency {request.currency}")
    if request.method is Method.CARD:
        card = request.card
        if card is None or request.auth_code is not None:
            raise DomainError(ErrorCode.INVALID_CARD, "a card payment needs `card` (only)")
        if not card.pan.isdigit() or len(card.pan) not in PAN_LENGTHS:
            raise DomainError(ErrorCode.INVALID_CARD, "the card number must be 12 to 19 digits")
        if (
            len(card.expiry) != 4
            or not card.expiry.isdigit()
            or not 1 <= int(card.expiry[2:]) <= 12
        ):
            raise DomainError(ErrorCode.INVALID_CARD, "expiry must be YYMM")
        if card.pin is not None and not (card.pin.isdigit() and 4 <= len(card.pin) <= 12):
            raise DomainError(ErrorCode.INVALID_CARD, "a PIN is 4 to 12 digits")
    else:
        if request.auth_code is None or request.card is not None:
            raise DomainError(
                ErrorCode.INVALID_AUTH_CODE, "a QR payment needs the customer's `auth_code`"
            )
        _qr_network_name(request.auth_code, request.method)
    if not request.capture and request.method is not Method.CARD:
        raise DomainError(ErrorCode.UNSUPPORTED_METHOD, "pre-authorisation is for cards only")
    if len(request.description) > 255:
        raise DomainError(ErrorCode.INVALID_INPUT, "description is longer than 255 characters")


def _qr_network_name(auth_code: str, method: Method) -> str:
    wallet = qr_method(auth_code)
    if wallet.value != method.value:
        raise DomainError(
            ErrorCode.INVALID_AUTH_CODE,
            f"this payment code belongs to {wallet.value}, not {method.value}",
        )
    return qr_network(auth_code).value


def _network_of(request: PaymentRequest) -> str:
    if request.method is Method.CARD or request.auth_code is None:
        return Network.UNIONPAY.value
    return qr_network(request.auth_code).value


def _category(request: PaymentRequest, funding: str | None) -> str:
    from shoudan.pricing.domain import category_for

    entry_mode = request.card.entry_mode.value if request.card else None
    return category_for(request.method.value, funding, entry_mode, request.amount)


def _category_of(payment: Payment, amount: int) -> str:
    from shoudan.pricing.domain import category_for

    return category_for(payment.method, payment.card_funding, payment.entry_mode, amount)


def _apply_capture(payment: Payment, fee_quote: FeeQuote, now: datetime) -> None:
    payment.captured_amount = fee_quote.amount
    payment.fee = fee_quote.fee
    payment.net = fee_quote.net
    payment.rate_bp = str(fee_quote.rate_bp)
    payment.captured_at = now


def _capture_entry(payment: Payment) -> Transfer:
    """Captured money: the network owes us the amount; the merchant is owed the net; the
    fee is our revenue. ``net + fee == amount``, so the entry balances to the fen."""
    postings = [
        Posting(chart.channel_receivable(payment.network), payment.captured_amount),
        Posting(chart.merchant_unsettled(payment.merchant_id), -payment.net),
    ]
    if payment.fee:
        postings.append(Posting(chart.fee_revenue(payment.method), -payment.fee))
    return Transfer(f"pay:{payment.id}:capture", tuple(postings), code="payment.capture")


def _hold_entry(payment: Payment) -> Hold:
    """An authorised pre-auth reserves the amount: receivable and merchant, pending."""
    return Hold(
        f"pay:{payment.id}:auth",
        (
            Posting(chart.channel_receivable(payment.network), payment.amount),
            Posting(chart.merchant_unsettled(payment.merchant_id), -payment.amount),
        ),
        code="payment.preauth",
    )


def _put_back(result: ChannelResult, reference: str, state: str) -> None:
    """The network made as our books stayed, after a write refused what it had done; when it
    refuses, the two disagree until staff look (reconciliation shows it too)."""
    if not result.approved:
        log.error(
            "payments: the network did not put %s back to %s (%s): our books and the network"
            " disagree", reference, state, result.response_code,
        )  # fmt: skip


def _refused_upstream(result: ChannelResult, what: str) -> None:
    if not result.approved:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION,
            f"the network refused to undo {what} ({result.response_code}): {result.message}",
            network_response_code=result.response_code,
        )


def _hold_id(driver: DriverSQL, payment: Payment) -> str:
    """The ledger id of the payment's current hold: ``pay:<id>:auth``, or ``auth-2`` … once
    a reversed completion or void restored the pre-auth with a new one."""
    times = store.times_in(driver, payment.id, PaymentStatus.AUTHORIZED.value)
    return f"pay:{payment.id}:auth{_generation(times - 1)}"


def _restored_hold(driver: DriverSQL, payment: Payment) -> Hold:
    """A new hold for a pre-auth that stands again (the one before is voided or captured);
    read before the history row of its return to authorised is written."""
    times = store.times_in(driver, payment.id, PaymentStatus.AUTHORIZED.value)
    return replace(_hold_entry(payment), id=f"pay:{payment.id}:auth{_generation(times)}")


def _restored_amount(payment: Payment) -> int:
    """What a voided payment counts again once its void is undone."""
    return payment.captured_amount or payment.amount


def _count_within(driver: DriverSQL, payment: Payment, delta: int, limits: Limits) -> None:
    """Add ``delta`` to the day's totals and, when it adds, check the limits again on the
    totals the upsert returns, under their row locks (what was freed may be spent since)."""
    if delta <= 0:
        _count(driver, payment, delta)
        return
    card_total, merchant_total = store.count(driver, payment, delta)
    check_limits(
        limits, delta, card_total - delta if payment.card_token else 0, merchant_total - delta
    )


def _generation(earlier: int) -> str:
    """The suffix of a repeated change's ledger id and event (``void``, ``void-2`` …): the
    ledger takes an entry with a known id as a replay, so a second void needs its own."""
    return f"-{earlier + 1}" if earlier else ""


def _opposite(entry: Transfer, entry_id: str) -> Transfer:
    """The exact opposite entry (void, reversal): every posting with its sign flipped."""
    return Transfer(
        entry_id,
        tuple(Posting(p.account_id, -p.amount, p.currency) for p in entry.postings),
        code="payment.undo",
    )


def _history_row(
    payment: Payment,
    from_status: PaymentStatus | None,
    to_status: PaymentStatus,
    actor: str,
    note: str,
    now: datetime,
) -> dict[str, object]:
    return {
        "payment_id": payment.id, "from_status": from_status.value if from_status else None,
        "to_status": to_status.value, "actor": actor, "note": note[:255], "created_at": now,
    }  # fmt: skip


def _event(payment: Payment) -> dict[str, object]:
    return {
        "payment_id": payment.id,
        "merchant_id": payment.merchant_id,
        "terminal_id": payment.terminal_id,
        "method": payment.method,
        "status": payment.status,
        "amount": payment.amount,
        "captured_amount": payment.captured_amount,
        "currency": payment.currency,
        "rrn": payment.rrn,
    }


def _facts(payment: Payment) -> PaymentFacts:
    return PaymentFacts(
        PaymentStatus(payment.status), payment.amount, payment.created_at,
        settled=payment.settled_at is not None,
    )  # fmt: skip


def locked_payment(session: Session, payment_id: str) -> Payment:
    """The payment, row-locked for the rest of the transaction (refunds lock it too)."""
    payment = session.scalars(
        select(Payment).where(Payment.id == payment_id).with_for_update()
    ).one_or_none()
    if payment is None:
        raise DomainError(ErrorCode.PAYMENT_NOT_FOUND, "payment not found")
    return payment


def _by_idempotency_key(session: Session, merchant_id: str, key: str) -> Payment | None:
    # Every terminal sale carries a key and almost never finds a payment: ask the index with
    # a driver statement first, and load the row through the ORM only when there is one.
    if not store.has_idempotency_key(DriverSQL(session), merchant_id, key):
        return None
    return session.scalars(
        select(Payment).where(Payment.merchant_id == merchant_id, Payment.idempotency_key == key)
    ).one_or_none()


def _count(driver: DriverSQL, payment: Payment, delta: int) -> None:
    """Add ``delta`` fen to the running totals of the payment's business day (an approval
    adds, a void or reversal takes back, a completion adjusts to the captured amount)."""
    if delta:
        store.count(driver, payment, delta)


def counted_amount(payment: Payment) -> int:
    """What a payment counts against the day's limits: its captured amount once captured,
    its authorised amount while authorised, nothing once declined, voided or reversed."""
    if payment.status == PaymentStatus.CAPTURED.value:
        return payment.captured_amount
    if payment.status == PaymentStatus.AUTHORIZED.value:
        return payment.amount
    return 0


def _check_completion_limits(
    driver: DriverSQL, payment: Payment, amount: int, limits: Limits
) -> None:
    """The completion is what the card really pays, so the limits apply to it. The day's
    totals hold this pre-auth at its authorised amount: take it out, then check the captured
    amount as if it were a new payment."""
    card_total, merchant_total = store.day_totals(
        driver, payment.card_token, payment.merchant_id, payment.business_date
    )
    check_limits(
        limits,
        amount,
        card_total - payment.amount if payment.card_token else 0,
        merchant_total - payment.amount,
    )


def _same_request(payment: Payment, fingerprint: str) -> Payment:
    if payment.request_hash != fingerprint:
        raise DomainError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was used for a different payment request",
        )
    return payment
