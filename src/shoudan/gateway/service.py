"""The ISO 8583 gateway's use cases: decode, check, call the payment services, answer.

One entry point, ``GatewayService.handle(payload) -> Outcome``, takes a frame's payload (TPDU,
header, body) and returns the reply's payload, or None to close the connection. It blocks
(database, network): the TCP server runs it on worker threads, and concurrent requests share
database transactions below it (group commit, core/db.py). Checks, in this order, each
answered without any effect:

1. envelope and format (``30``; ``UnreadableMessage``: close), unknown MTI (``30``), unknown
   processing code (``12``), missing mandatory fields (``30``);
2. terminal unknown or not active (``97``), terminal/merchant pair not ours (``03``);
3. no working keys yet (``22``), wrong or missing MAC (``A0``);
4. exactly-once: the journal replays a repeat byte for byte, ``94`` for a different request
   with the same identity; then the open batch (``22`` when 60.2 is not it).

Then one handler per transaction of the spec's section 3, each mapping to ``PaymentService``
or, for a refund advice, ``RefundService`` (the HTTP API's use cases); ``DomainError`` codes
become field 39 in ``response_codes``.
Responses to MACed requests that passed the MAC check carry a MAC; refusals before it do not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.auth.domain import Principal, Role
from shoudan.channels.domain import CardData, Channel, ChannelResult, ChannelTimeout
from shoudan.core.baton import Baton
from shoudan.core.clock import SHANGHAI, Clock
from shoudan.core.crypto import Vault
from shoudan.core.db import Database, DriverSQL
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.gateway import repository
from shoudan.gateway.codec import (
    BALANCED,
    MAC_BYTES,
    MAC_FIELD,
    NOT_BALANCED,
    CodecError,
    Field60,
    FieldError,
    FieldValue,
    FormatError,
    Message,
    UnreadableMessage,
    bitmap_fields,
    decode,
    encode,
    mac_input,
    parse_48,
    parse_60,
    parse_61,
    parse_track2,
    read_mti,
)
from shoudan.gateway.domain import (
    AWAITING_REVIEW,
    CARD_KINDS,
    COMMON_FIELDS,
    ENTRY_MODES,
    IDEMPOTENT_PAYMENT_KINDS,
    NOT_JOURNALED,
    PENDING_REVIEW,
    REQUEST_MTIS,
    REQUIRED,
    REVERSAL_REASONS,
    Identity,
    Kind,
    Transaction,
    classify,
    next_batch,
    opening_batch,
    refund_accepted,
    response_mti,
    reversed_kind,
)
from shoudan.gateway.framing import Frame, envelope_problem, reply_payload, split
from shoudan.gateway.keys import (
    SECURITY_CONTROL,
    PinBlockError,
    WorkingKeys,
    check_value,
    decrypt_pin,
    issue_working_keys,
    key_data,
    mac_matches,
    retail_mac,
)
from shoudan.gateway.models import IDENTITY_COLUMNS, GatewayRequest, TerminalSession
from shoudan.gateway.response_codes import (
    APPROVED,
    DUPLICATE,
    FORMAT_ERROR,
    INCORRECT_PIN,
    INVALID_AMOUNT,
    INVALID_MERCHANT,
    INVALID_TRANSACTION,
    MAC_FAILED,
    ORIGINAL_NOT_FOUND,
    SIGN_ON_REQUIRED,
    SYSTEM_MALFUNCTION,
    TRANSIENT_ERRORS,
    field_39,
)
from shoudan.payments.domain import Method, PaymentStatus
from shoudan.payments.models import Payment
from shoudan.payments.service import (
    AlsoRecord,
    AlsoRow,
    AlsoWrite,
    CardInput,
    PaymentFilters,
    PaymentRequest,
    PaymentService,
)
from shoudan.payments.store import PaymentPoint, load_point
from shoudan.refunds.domain import RefundReason, RefundStatus, RequesterKind
from shoudan.refunds.service import RefundRequest, RefundService
from shoudan.terminals.service import activate_on_sign_on, load_master_key, payment_point

log = logging.getLogger(__name__)

CURRENCY: Final = "156"  # field 49, always CNY
ECHOED: Final[tuple[int, ...]] = (3, 4, 11, 41, 42, 60)  # spec §3: the host echoes these
NO_RESPONSE: Final = "98"
PIK_CONTEXT, MAK_CONTEXT, REQUEST_CONTEXT = "gateway:pik", "gateway:mak", "gateway:request"
SETTLED_REVERSAL, REFUNDED_REVERSAL, VOID_REVERSAL, REVERSAL_MISMATCH, UNBALANCED_BATCH = (
    "settled_reversal", "refunded_reversal", "void_reversal", "reversal_mismatch",
    "unbalanced_batch",
)  # fmt: skip
# a completion or void applied whose identity another request took meanwhile (another process)
ANSWERED_ELSEWHERE: Final = "answered_elsewhere"
COMPLETION_REVERSAL: Final = "completion_reversal"  # a completion the host could not undo
# field 54: account type, amount type (02 available), currency, sign, amount n12
BALANCE_PREFIX: Final = "0002156"
# a refund advice's original: payments with its RRN made by the terminal (one per day at most)
ORIGINAL_CANDIDATES: Final = 10
KEY_CACHE_SIZE: Final = 10_000  # signed-on terminals whose keys stay decrypted


@runtime_checkable
class BalanceInquiry(Protocol):
    """A channel that can ask the issuer for a card's available balance (查询), as the
    sandbox does. Balance inquiries through a channel without it are answered ``12``."""

    def balance(self, card: CardData) -> tuple[ChannelResult, int | None]: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``handle`` decided: the reply payload (None: close the connection) and what the
    metrics and the log line need."""

    reply: bytes | None
    mti: str | None = None
    code: str | None = None
    kind: str | None = None
    terminal_id: str | None = None
    batch: str | None = None
    stan: str | None = None
    rrn: str | None = None
    replayed: bool = False


class _Answer(Exception):
    """Stop and answer ``code``. ``journal``: the answer is final for this request's identity
    (a business refusal after the checks), not a refusal of the message itself."""

    def __init__(self, code: str, reason: str, *, journal: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.journal = journal


@dataclass(slots=True)
class _Context:
    frame: Frame
    message: Message
    txn: Transaction
    f60: Field60
    identity: Identity
    principal: Principal
    keys: WorkingKeys | None = None
    open_batch: str | None = None
    fingerprint: str = ""
    point: PaymentPoint | None = None  # the terminal and merchant, as checked
    stored: GatewayRequest | None = None  # the journal's row of this identity …
    reversal: GatewayRequest | None = None  # … and of its reversal


@dataclass(slots=True)
class _Result:
    code: str
    fields: dict[int, FieldValue] = field(default_factory=dict)
    payment_id: str | None = None
    amount: int | None = None
    rrn: str | None = None
    journal: bool = True
    body: bytes | None = None  # the reply, already journaled (in its payment's transaction)
    taken: bool = False  # applied, but its journal row was not written: the identity was taken


@dataclass(slots=True)
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class _KeyedLocks:
    """One lock per key, alive while someone holds or waits for it."""

    def __init__(self, baton: Baton) -> None:
        self._guard = threading.Lock()
        self._slots: dict[tuple[str, ...], _Slot] = {}
        self._baton = baton  # a holder of the key may be waiting for the baton

    @contextmanager
    def hold(self, key: tuple[str, ...]) -> Iterator[None]:
        with self._guard:
            slot = self._slots.setdefault(key, _Slot())
            slot.users += 1
        try:
            self._baton.acquire(slot.lock)
            try:
                yield
            finally:
                slot.lock.release()
        finally:
            with self._guard:
                slot.users -= 1
                if not slot.users:
                    del self._slots[key]


class GatewayService:
    def __init__(
        self,
        database: Database,
        vault: Vault,
        payments: PaymentService,
        channel: Channel,
        clock: Clock,
        acquirer_id: str = "898",
        refunds: RefundService | None = None,
    ) -> None:
        self.database = database
        self.vault = vault
        self.payments = payments
        self.channel = channel
        self.clock = clock
        self.acquirer_id = acquirer_id
        self.refunds = refunds  # None: refund advices are answered 12
        self._locks = _KeyedLocks(database.baton)
        self._clear_keys: dict[tuple[str, bytes, bytes], WorkingKeys] = {}  # ``_keys``
        self._handlers: dict[Kind, Callable[[_Context], _Result]] = {
            Kind.BALANCE: self._balance,
            Kind.SALE: lambda ctx: self._authorize(ctx, capture=True),
            Kind.PREAUTH: lambda ctx: self._authorize(ctx, capture=False),
            Kind.COMPLETION: self._completion,
            Kind.SALE_VOID: lambda ctx: self._void(ctx, "0200", Kind.SALE),
            Kind.COMPLETION_VOID: lambda ctx: self._void(ctx, "0200", Kind.COMPLETION),
            Kind.PREAUTH_VOID: lambda ctx: self._void(ctx, "0100", Kind.PREAUTH),
            Kind.REFUND: self._refund,
            Kind.REVERSAL: self._reversal,
        }

    # -- the entry point --------------------------------------------------------------------------
    def handle(self, payload: bytes) -> Outcome:
        """One frame's payload (after the length prefix) → the reply's payload, or None to
        close the connection. Never raises. Runs holding the database's baton (one request's
        Python at a time, core/baton.py)."""
        with self.database.baton.held():
            return self._handle_frame(payload)

    def _handle_frame(self, payload: bytes) -> Outcome:
        try:
            frame = split(payload)
            mti = read_mti(frame.body)
        except UnreadableMessage:
            return Outcome(None)
        if response_mti(mti) is None:
            return Outcome(None, mti)  # an answer, or no MTI we could answer
        try:
            outcome = self._handle(frame, mti)
        except Exception:
            log.exception("iso8583 mti=%s unexpected error", mti)
            outcome = self._refuse(frame, mti, {}, SYSTEM_MALFUNCTION, "unexpected error")
        _log(outcome)
        return outcome

    def _handle(self, frame: Frame, mti: str) -> Outcome:
        problem = envelope_problem(frame)
        if problem:
            return self._refuse(frame, mti, {}, FORMAT_ERROR, problem)
        try:
            message = decode(frame.body)
        except FormatError as error:
            return self._refuse(frame, mti, error.fields, FORMAT_ERROR, str(error))
        try:
            context = self._parse(frame, message)
            if context.txn.kind is Kind.SIGN_ON:
                self._check_sign_on(context)
                return self._guarded(context)
        except _Answer as answer:
            return self._refuse(frame, mti, message.fields, answer.code, answer.reason)
        # One request per identity at a time: from the journal's look to its row written.
        with self._locks.hold(context.identity.lock_key):
            try:
                self._check(context)
            except _Answer as answer:
                return self._refuse(frame, mti, message.fields, answer.code, answer.reason)
            return self._guarded(context)

    def _guarded(self, ctx: _Context) -> Outcome:
        """``_process``; an unexpected error is answered ``96`` (and logged)."""
        try:
            return self._process(ctx)
        except Exception:
            mti = ctx.message.mti
            log.exception("iso8583 mti=%s kind=%s unexpected error", mti, ctx.txn.kind)
            return self._refuse(
                ctx.frame, mti, ctx.message.fields, SYSTEM_MALFUNCTION, "unexpected error", ctx
            )

    # -- checks before anything happens -----------------------------------------------------------
    def _parse(self, frame: Frame, message: Message) -> _Context:
        """What the message asks, checked without reading anything."""
        if message.mti not in REQUEST_MTIS:
            raise _Answer(FORMAT_ERROR, f"unknown MTI {message.mti}")
        present = set(message.fields)
        if not present >= COMMON_FIELDS:
            raise _Answer(FORMAT_ERROR, f"missing fields {sorted(COMMON_FIELDS - present)}")
        f60 = _sub_field(parse_60, _text(message, 60))
        txn = classify(
            message.mti, message.text(3), message.text(25), f60.message_type, f60.network_code
        )
        if txn is None:
            raise _Answer(INVALID_TRANSACTION, "unknown processing code / condition / 60.1")
        _check_fields(txn, message)
        terminal_id, merchant_id = _text(message, 41), _text(message, 42)
        identity = Identity(message.mti, terminal_id, merchant_id, f60.batch, _text(message, 11))
        principal = Principal(f"terminal:{terminal_id}", Role.MERCHANT, merchant_id)
        return _Context(frame, message, txn, f60, identity, principal)

    def _check_sign_on(self, ctx: _Context) -> None:
        """An inactive terminal may sign on (its first sign-on activates it)."""
        with self.database.read() as session:
            point = _answered(
                lambda: payment_point(session, ctx.identity.terminal_id, allow_inactive=True)
            )
        if point[0].merchant_id != ctx.identity.merchant_id:
            raise _Answer(INVALID_MERCHANT, "terminal and merchant do not match our records")

    def _check(self, ctx: _Context) -> None:
        """Every request but a sign-on, in one read on the driver (docs/benchmarks.md): the
        terminal and merchant (checked as the payment it leads to checks them), the session
        keys, and the journal rows of this identity and of its reversal — read here, looked
        at only once the MAC has passed."""
        identity = ctx.identity
        with self.database.driver_read() as driver:
            checked = _answered(lambda: _checked_point(driver, identity.terminal_id))
            if checked.merchant_id != identity.merchant_id:
                raise _Answer(INVALID_MERCHANT, "terminal and merchant do not match our records")
            ctx.point = checked
            row = repository.load_keys(driver, identity.terminal_id)
            if row is not None:
                ctx.stored, ctx.reversal = repository.find_with_reversal(driver, identity)
        if row is None:
            raise _Answer(SIGN_ON_REQUIRED, "the terminal has not signed on")
        ctx.keys = self._keys(row)
        ctx.open_batch = row.batch
        if ctx.txn.mac and not mac_matches(
            ctx.keys.mak, mac_input(ctx.frame.body), ctx.message.binary(MAC_FIELD)
        ):
            raise _Answer(MAC_FAILED, "MAC missing or wrong")
        ctx.fingerprint = self._fingerprint(ctx.message)

    def _keys(self, row: repository.SessionKeys) -> WorkingKeys:
        """The session's keys in clear. Decrypted once per sign-on, not per request: the
        cache is keyed by the stored ciphertexts, which every sign-on replaces, so a key
        never outlives its session here. Kept in process memory only, where the vault's own
        key (which decrypts them) already is."""
        sealed = (row.terminal_id, row.pik_enc, row.mak_enc)
        keys = self._clear_keys.get(sealed)
        if keys is None:
            if len(self._clear_keys) >= KEY_CACHE_SIZE:
                self._clear_keys.clear()  # old sessions' keys go; live ones come back
            terminal_id = row.terminal_id
            keys = self._clear_keys[sealed] = WorkingKeys(
                bytes.fromhex(self.vault.decrypt(row.pik_enc, f"{PIK_CONTEXT}:{terminal_id}")),
                bytes.fromhex(self.vault.decrypt(row.mak_enc, f"{MAK_CONTEXT}:{terminal_id}")),
            )
        return keys

    def _fingerprint(self, message: Message) -> str:
        """A keyed hash of every field but the MAC: tells a repeat from a different request
        without storing card data."""
        parts = [message.mti] + [
            f"{number}={value.hex() if isinstance(value, bytes) else value}"
            for number, value in sorted(message.fields.items())
            if number != MAC_FIELD
        ]
        return self.vault.lookup_hash("\x1f".join(parts), REQUEST_CONTEXT)

    # -- processing -------------------------------------------------------------------------------
    def _process(self, ctx: _Context) -> Outcome:
        """Checks passed; any request but a sign-on holds its identity's lock."""
        kind = ctx.txn.kind
        if kind is Kind.SIGN_ON:
            return self._respond(ctx, self._sign_on(ctx))
        if ctx.stored is not None:
            return self._replay(ctx, ctx.stored)
        if kind is not Kind.REVERSAL and ctx.f60.batch != ctx.open_batch:
            return self._refuse_after_mac(ctx, SIGN_ON_REQUIRED, "not the open batch")
        if ctx.txn.reversible and ctx.reversal is not None:
            # its reversal came first: it must not take effect now
            return self._respond(ctx, _Result(INVALID_TRANSACTION))
        if kind is Kind.SETTLEMENT:
            return self._settle(ctx)
        try:
            result = self._handlers[kind](ctx)
        except _Answer as answer:
            result = _Result(answer.code, journal=answer.journal)
        except DomainError as error:
            # the network's own refusal (a completion over the card's open-to-buy: 51) as it
            # gave it; our rules' refusals through the one table
            code = _network_code(error) or field_39(error.code)
            result = _Result(code, journal=error.code not in TRANSIENT_ERRORS)
        except IntegrityError as error:  # a journal row, taken meanwhile
            return self._answered_meanwhile(ctx, error)
        return self._respond(ctx, result)

    def _respond(self, ctx: _Context, result: _Result) -> Outcome:
        if result.taken:  # applied, but another request took its identity: staff must know
            detail = "applied, but its identity was answered to another request"
            self._case(ctx, ANSWERED_ELSEWHERE, detail, result.payment_id)
            return self._answered_meanwhile(ctx, LookupError("the journal row is not there"))
        if result.body is not None:  # journaled with its payment
            return self._outcome(ctx, result.body, result.code, result.rrn)
        body = self._body(ctx, result)
        if result.journal and ctx.txn.kind not in NOT_JOURNALED:
            try:
                with self.database.transaction() as session:
                    self._record(session, ctx, result, body)
            except IntegrityError as error:
                return self._answered_meanwhile(ctx, error)
        return self._outcome(ctx, body, result.code, result.rrn)

    def _answered_meanwhile(self, ctx: _Context, error: Exception) -> Outcome:
        """The same identity was journaled meanwhile (by another process): answer as it did."""
        with self.database.read() as session:
            stored = repository.find_request(session, ctx.identity)
        if stored is None:
            raise error
        return self._replay(ctx, stored)

    def _record(self, session: Session, ctx: _Context, result: _Result, body: bytes) -> None:
        DriverSQL(session).insert(GatewayRequest, self._journal_row(ctx, result, body))

    def _journal_row(self, ctx: _Context, result: _Result, body: bytes) -> dict[str, Any]:
        """The journal's row of this request (always the same columns, in the same order: a
        batch of them is inserted in one statement)."""
        identity = ctx.identity
        return {
            "terminal_id": identity.terminal_id, "merchant_id": identity.merchant_id,
            "mti": identity.mti, "batch": identity.batch, "stan": identity.stan,
            "kind": ctx.txn.kind.value, "request_hash": ctx.fingerprint,
            "payment_id": result.payment_id, "amount": result.amount,
            "response_code": result.code, "rrn": result.rrn, "response": body,
            "created_at": self.clock.now(),
        }  # fmt: skip

    def _replay(self, ctx: _Context, stored: GatewayRequest) -> Outcome:
        # a reversal is always acknowledged, even resent with another reason (39)
        if stored.request_hash != ctx.fingerprint and ctx.txn.kind is not Kind.REVERSAL:
            return self._refuse_after_mac(ctx, DUPLICATE, "identity reused by another request")
        body = stored.response
        if ctx.keys is not None and MAC_FIELD in bitmap_fields(body[2:10]):
            # the same bytes, MACed again in case the terminal signed on since
            body = body[:-MAC_BYTES] + retail_mac(ctx.keys.mak, body[:-MAC_BYTES])
        return replace(self._outcome(ctx, body, stored.response_code, stored.rrn), replayed=True)

    # -- responses --------------------------------------------------------------------------------
    def _host_fields(self) -> dict[int, FieldValue]:
        local = self.clock.now().astimezone(SHANGHAI)
        day = f"{local.month:02d}{local.day:02d}"  # (strftime costs more, on every answer)
        return {
            12: f"{local.hour:02d}{local.minute:02d}{local.second:02d}",
            13: day,
            15: day,  # the business date, settled T+1 from it
            32: self.acquirer_id,
        }

    def _body(self, ctx: _Context, result: _Result) -> bytes:
        fields = {n: ctx.message.fields[n] for n in ECHOED if n in ctx.message.fields}
        fields |= self._host_fields() | result.fields
        fields[39] = result.code
        return _encoded(ctx.message.mti, fields, ctx.keys if ctx.txn.mac else None)

    def _outcome(self, ctx: _Context, body: bytes, code: str, rrn: str | None) -> Outcome:
        identity = ctx.identity
        return Outcome(
            reply_payload(ctx.frame, body), identity.mti, code, ctx.txn.kind.value,
            identity.terminal_id, identity.batch, identity.stan, rrn,
        )  # fmt: skip

    def _refuse_after_mac(self, ctx: _Context, code: str, reason: str) -> Outcome:
        log.info("iso8583 refused kind=%s code=%s: %s", ctx.txn.kind, code, reason)
        return self._outcome(ctx, self._body(ctx, _Result(code, journal=False)), code, None)

    def _refuse(
        self,
        frame: Frame,
        mti: str,
        fields: dict[int, FieldValue],
        code: str,
        reason: str,
        ctx: _Context | None = None,
    ) -> Outcome:
        """An answer before (or instead of) processing: echo what was read, no journal; MACed
        only when the request's MAC was verified."""
        log.info("iso8583 refused mti=%s code=%s: %s", mti, code, reason)
        echoed = {n: fields[n] for n in ECHOED if n in fields}
        keys = ctx.keys if ctx is not None and ctx.txn.mac else None
        try:
            body = _encoded(mti, {**echoed, **self._host_fields(), 39: code}, keys)
        except CodecError:  # something echoed does not encode: answer without it
            body = _encoded(mti, {**self._host_fields(), 39: code}, keys)
        return Outcome(
            reply_payload(frame, body), mti, code, ctx.txn.kind.value if ctx else None,
            _str(echoed.get(41)), None, _str(echoed.get(11)), None,
        )  # fmt: skip

    # -- sign-on ----------------------------------------------------------------------------------
    def _sign_on(self, ctx: _Context) -> _Result:
        """Fresh PIK and MAK under the TMK (field 62), the open batch in 60.2. The previous
        keys stop working at once."""
        terminal_id = ctx.identity.terminal_id
        keys = issue_working_keys()
        now = self.clock.now()
        with self.database.transaction() as session:
            tmk = load_master_key(session, self.vault, terminal_id)
            activate_on_sign_on(session, terminal_id, clock=self.clock)  # the first one only
            row = repository.load_session(session, terminal_id, for_update=True)
            if row is None:
                row = TerminalSession(
                    terminal_id=terminal_id, batch=opening_batch(ctx.f60.batch),
                    signed_on_at=now,
                )  # fmt: skip
                session.add(row)
            row.pik_enc = self.vault.encrypt(keys.pik.hex(), f"{PIK_CONTEXT}:{terminal_id}")
            row.mak_enc = self.vault.encrypt(keys.mak.hex(), f"{MAK_CONTEXT}:{terminal_id}")
            row.pik_kcv, row.mak_kcv = check_value(keys.pik).hex(), check_value(keys.mak).hex()
            row.signed_on_at = row.updated_at = now
            batch = row.batch
        f60 = Field60(ctx.f60.message_type, batch, ctx.f60.network_code, ctx.f60.rest)
        return _Result(APPROVED, {60: f60.encode(), 62: key_data(tmk, keys)})

    # -- card transactions ------------------------------------------------------------------------
    def _card(self, ctx: _Context) -> CardInput:
        """The card from 2/35/14/22/52. The clear PIN exists only inside the returned value."""
        message = ctx.message
        pan, expiry = message.text(2), message.text(14)
        if message.has(35):
            track = _sub_field(parse_track2, _text(message, 35))
            if pan is not None and pan != track.pan:
                raise _Answer(FORMAT_ERROR, "field 2 and track 2 disagree", journal=True)
            pan, expiry = track.pan, expiry or track.expiry
        if pan is None or expiry is None:
            raise _Answer(FORMAT_ERROR, "no card number or no expiry", journal=True)
        entry_mode = ENTRY_MODES.get(_text(message, 22)[:2])
        if entry_mode is None:
            raise _Answer(FORMAT_ERROR, "unknown POS entry mode", journal=True)
        pin = None
        block = message.binary(52)
        if block is not None:
            assert ctx.keys is not None
            try:
                pin = decrypt_pin(ctx.keys.pik, block, pan)
            except PinBlockError:
                raise _Answer(INCORRECT_PIN, "PIN block does not decrypt", journal=True) from None
        return CardInput(pan=pan, expiry=expiry, entry_mode=entry_mode, pin=pin)

    def _authorize(self, ctx: _Context, *, capture: bool) -> _Result:
        """Sale (消费) or pre-authorisation (预授权): one payment, idempotent on the identity.
        Its journal row is written in the payment's own transaction: one commit, and no
        payment recorded without the answer the terminal was given."""
        identity, amount = ctx.identity, _amount(ctx)
        request = PaymentRequest(
            terminal_id=identity.terminal_id, amount=amount, method=Method.CARD,
            card=self._card(ctx), capture=capture, idempotency_key=identity.idempotency_key,
            description=f"ISO 8583 batch {identity.batch} STAN {identity.stan}",
        )  # fmt: skip
        journal, answers = self._journaled(ctx, lambda payment: _payment_result(payment, amount))
        payment = self.payments.create(ctx.principal, request, also=journal, point=ctx.point)
        # a payment recorded earlier (its journal row lost in a crash, or a raced key's winner)
        # has no answer of ours: it is journaled now
        return answers.get(payment.rrn) or _payment_result(payment, amount)

    def _journaled(
        self, ctx: _Context, answer: Callable[[Payment], _Result]
    ) -> tuple[AlsoRecord, dict[str, _Result]]:
        """The hook that journals a payment's change in the transaction that records it, so
        that no sale, completion or void is recorded without the answer the terminal was
        given (a repeat after a crash gets that answer, not a second attempt); and the answers
        it made, by RRN (a batch of sales may have written and rolled back a journal row
        before the payment was written again alone)."""
        answers: dict[str, _Result] = {}

        def journal(payment: Payment) -> AlsoRow:
            # the answer, encoded and MACed; its journal row, written with the payment
            result = answers[payment.rrn] = answer(payment)
            body = result.body = self._body(ctx, result)
            return GatewayRequest, self._journal_row(ctx, result, body)

        return journal, answers

    def _journaled_change(
        self, ctx: _Context, answer: Callable[[Payment], _Result]
    ) -> tuple[AlsoWrite, dict[str, _Result]]:
        """``_journaled`` for a completion or a void: the network has made the change by the
        time its row is written, so the change commits even when another request took its
        identity meanwhile (another process: same 41, 42, 60.2, 11 and MTI); its row is then
        not written, and the answer is that request's (``_Result.taken``)."""
        row_of, answers = self._journaled(ctx, answer)

        def journal(driver: DriverSQL, payment: Payment) -> None:
            model, row = row_of(payment)
            if not driver.insert(model, row, unless_taken=IDENTITY_COLUMNS, returning="id"):
                answers[payment.rrn].taken = True

        return journal, answers

    def _balance(self, ctx: _Context) -> _Result:
        card = self._card(ctx)
        if not isinstance(self.channel, BalanceInquiry):
            return _Result(INVALID_TRANSACTION)
        data = CardData(pan=card.pan, expiry=card.expiry, pin=card.pin, entry_mode=card.entry_mode)
        try:
            answer, balance = self.channel.balance(data)
        except ChannelTimeout:
            return _Result(NO_RESPONSE)
        if not answer.approved or balance is None:
            return _Result(answer.response_code)
        sign = "C" if balance >= 0 else "D"
        return _Result(APPROVED, {54: f"{BALANCE_PREFIX}{sign}{abs(balance):012d}"})

    def _original(self, ctx: _Context, mti: str, kind: Kind) -> GatewayRequest:
        """The original a void or completion names in 61 (batch, STAN), approved: ``25``
        when there is none of that kind, ``12`` when it was declined."""
        f61 = _sub_field(parse_61, _text(ctx.message, 61))
        identity = ctx.identity
        wanted = Identity(mti, identity.terminal_id, identity.merchant_id, f61.batch, f61.stan)
        with self.database.read() as session:
            original = repository.find_request(session, wanted)
        if original is None or original.kind != kind.value:
            raise _Answer(ORIGINAL_NOT_FOUND, "no such original", journal=True)
        if original.response_code != APPROVED or original.payment_id is None:
            raise _Answer(INVALID_TRANSACTION, "the original was not approved", journal=True)
        return original

    def _completion(self, ctx: _Context) -> _Result:
        """预授权完成: capture the pre-auth that 61 names, for the amount in field 4."""
        original = self._original(ctx, "0100", Kind.PREAUTH)
        assert original.payment_id is not None

        def completed(payment: Payment) -> _Result:
            return _payment_result(payment, payment.captured_amount)

        journal, answers = self._journaled_change(ctx, completed)
        payment = self.payments.capture(
            ctx.principal, original.payment_id, _amount(ctx), also=journal
        )
        return answers[payment.rrn]

    def _void(self, ctx: _Context, mti: str, kind: Kind) -> _Result:
        """撤销 of a sale, completion or pre-auth, in full. A sale or completion must be in the
        open batch (after settlement: ``12``, refund instead) and be named by its RRN too."""
        f61 = _sub_field(parse_61, _text(ctx.message, 61))
        if kind is not Kind.PREAUTH and f61.batch != ctx.open_batch:
            raise _Answer(INVALID_TRANSACTION, "the batch is settled: refund", journal=True)
        original = self._original(ctx, mti, kind)
        rrn = ctx.message.text(37)
        if (rrn is not None or kind is not Kind.PREAUTH) and rrn != original.rrn:
            raise _Answer(ORIGINAL_NOT_FOUND, "the RRN does not match", journal=True)
        if _amount(ctx) != original.amount:
            raise _Answer(INVALID_AMOUNT, "a void is for the full amount", journal=True)
        assert original.payment_id is not None
        payment = self.payments.get(ctx.principal, original.payment_id)
        expected = PaymentStatus.AUTHORIZED if kind is Kind.PREAUTH else PaymentStatus.CAPTURED
        if payment.status != expected.value:
            raise _Answer(INVALID_TRANSACTION, f"the payment is {payment.status}", journal=True)
        amount = _amount(ctx)  # the original's, checked above
        journal, answers = self._journaled_change(
            ctx, lambda voided: _payment_result(voided, amount, approved=True)
        )
        payment = self.payments.void(ctx.principal, payment.id, also=journal)
        return answers[payment.rrn]

    def _refund(self, ctx: _Context) -> _Result:
        """退货, an advice (0220): ``RefundService.request`` — the HTTP API's use case — for
        the payment that 37 and 61.3 name. Its out_refund_no is the advice's identity, so a
        repeated advice never refunds twice, even one that slipped past the journal. A refund
        the policy sends to review (or that waits for the merchant's funds) answers ``00``
        with 44 ``PENDING REVIEW``."""
        if self.refunds is None:
            raise _Answer(INVALID_TRANSACTION, "no refund service")
        original = self._refunded_payment(ctx)
        request = RefundRequest(
            payment_id=original.id, amount=_amount(ctx),
            reason=RefundReason.CUSTOMER_REQUEST.value,
            out_refund_no=ctx.identity.idempotency_key, requester_kind=RequesterKind.TERMINAL,
        )  # fmt: skip
        refund = self.refunds.request(ctx.principal, request)
        status = RefundStatus(refund.status)
        fields: dict[int, FieldValue] = {37: original.rrn}
        if not refund_accepted(status):
            return _Result(INVALID_TRANSACTION, fields, original.id, refund.amount, original.rrn)
        if original.auth_code:
            fields[38] = original.auth_code
        if status in AWAITING_REVIEW:
            fields[44] = PENDING_REVIEW
        return _Result(APPROVED, fields, original.id, refund.amount, original.rrn)

    def _refunded_payment(self, ctx: _Context) -> Payment:
        """The original of a refund: the payment with RRN 37 made on day 61.3 (MMDD, the
        business date) by this terminal for this merchant, with the card the terminal read
        (BIN, last four, length); ``25`` when there is none."""
        rrn = _text(ctx.message, 37)
        day = _sub_field(parse_61, _text(ctx.message, 61)).date
        pan = self._card(ctx).pan
        filters = PaymentFilters(rrn=rrn, terminal_id=ctx.identity.terminal_id)
        for payment in self.payments.list(ctx.principal, filters, ORIGINAL_CANDIDATES, None):
            if _month_day(payment.business_date) == day and _same_card(payment, pan):
                return payment
        raise _Answer(ORIGINAL_NOT_FOUND, "no such original", journal=True)

    # -- reversal ---------------------------------------------------------------------------------
    def _reversal(self, ctx: _Context) -> _Result:
        """冲正: undo the original (same 41, 42, 60.2, 11) if we applied it; always ``00``.
        What the host cannot undo by itself (a settled payment, a void) becomes a case."""
        message = ctx.message
        txn = reversed_kind(message.text(3), message.text(25), ctx.f60.message_type)
        assert txn is not None  # classify() accepted the reversal
        identity = ctx.identity
        original_identity = Identity(
            txn.mti, identity.terminal_id, identity.merchant_id, identity.batch, identity.stan
        )
        with self.database.read() as session:
            original = repository.find_request(session, original_identity)
        if original is None:
            return self._reverse_unjournaled(ctx, txn, original_identity)
        if original.payment_id is None or original.response_code != APPROVED:
            return _Result(APPROVED)  # never applied: nothing to undo
        if original.kind != txn.kind.value or (
            message.has(4) and _amount(ctx) != original.amount
        ):
            self._case(ctx, REVERSAL_MISMATCH, "does not match its original", original.payment_id)
            return _Result(APPROVED, payment_id=original.payment_id)
        result = _Result(APPROVED, {37: original.rrn} if original.rrn else {}, original.payment_id)
        if txn.kind in (Kind.SALE_VOID, Kind.COMPLETION_VOID, Kind.PREAUTH_VOID):
            return self._undo_void(ctx, original.payment_id, result)
        if txn.kind is Kind.COMPLETION:
            return self._undo_completion(ctx, original.payment_id, result)
        self._undo(ctx, original.payment_id)
        return result

    def _reverse_unjournaled(
        self, ctx: _Context, txn: Transaction, original: Identity
    ) -> _Result:
        """An original we never answered: unknown, refused before taking effect — or its
        process died between its payment and its journal row. A sale or pre-auth carries its
        identity as the payment's Idempotency-Key, so such a payment is found and undone."""
        if txn.kind not in IDEMPOTENT_PAYMENT_KINDS:
            return _Result(APPROVED)
        with self.database.read() as session:
            payment = repository.find_payment(
                session, original.merchant_id, original.idempotency_key
            )
        if payment is None:
            # never recorded — but the network may have approved it before a crash: its
            # reference derives from the identity, so undo it there (a no-op if unknown)
            self.payments.reverse_unrecorded(original.merchant_id, original.idempotency_key)
            return _Result(APPROVED)
        if ctx.message.has(4) and _amount(ctx) != payment.amount:
            self._case(ctx, REVERSAL_MISMATCH, "does not match its original", payment.id)
        else:
            self._undo(ctx, payment.id)  # a declined payment is left as it is
        return _Result(APPROVED, {37: payment.rrn}, payment.id)

    def _undo(self, ctx: _Context, payment_id: str) -> None:
        """Reverse the payment; one the host cannot undo by itself becomes a case: settled
        (by us, or counted by a batch the terminal has closed: its sale or completion was
        journaled there), or refunded since (undoing it whole would give the refunded money
        back twice)."""
        with self.database.read() as session:
            counted = repository.counted_in_a_closed_batch(
                session, ctx.identity.terminal_id, payment_id, ctx.open_batch
            )
        if counted:
            self._case(ctx, SETTLED_REVERSAL, "reversal after its batch was settled", payment_id)
            return
        payment = self.payments.get(ctx.principal, payment_id)
        if payment.settled_at is not None:
            self._case(ctx, SETTLED_REVERSAL, "reversal after settlement", payment_id)
            return
        try:
            self.payments.reverse(ctx.principal, payment_id)
        except DomainError as error:
            if error.code is not ErrorCode.INVALID_TRANSITION:
                raise
            settled = self.payments.get(ctx.principal, payment_id).settled_at is not None
            case, detail = (
                (SETTLED_REVERSAL, "reversal after settlement") if settled
                else (REFUNDED_REVERSAL, "reversal of a refunded payment")
            )  # fmt: skip
            self._case(ctx, case, detail, payment_id)

    def _undo_void(self, ctx: _Context, payment_id: str, answer: _Result) -> _Result:
        """撤销冲正: the payment is captured again (``PaymentService.reverse_void``); a
        pre-auth's void gives it a new hold. A void of a closed batch (its totals left the
        payment out) is a case."""
        return self._stand_again(
            ctx, payment_id, answer, self.payments.reverse_void, VOID_REVERSAL,
            (VOID_REVERSAL, "the void's batch is settled"),
        )  # fmt: skip

    def _undo_completion(self, ctx: _Context, payment_id: str, answer: _Result) -> _Result:
        """完成冲正: the pre-auth stands authorised again (``PaymentService.
        reverse_completion``). A completion of a closed batch (its totals counted it) is a
        case."""
        return self._stand_again(
            ctx, payment_id, answer, self.payments.reverse_completion, COMPLETION_REVERSAL,
            (SETTLED_REVERSAL, "reversal after its batch was settled"),
        )  # fmt: skip

    def _stand_again(
        self,
        ctx: _Context,
        payment_id: str,
        answer: _Result,
        undo: Callable[..., Payment],
        refused: str,
        closed_batch: tuple[str, str],
    ) -> _Result:
        """The original stands again as before what the reversal names, the reversal's
        journal row written with it (a resent reversal is replayed, never run against a later
        change). What the host cannot undo by itself — in a closed batch, of an earlier day,
        refunded, the day's limits spent, the network refusing — becomes a case; the
        reversal is acknowledged either way."""
        if ctx.identity.batch != ctx.open_batch:
            self._case(ctx, *closed_batch, payment_id)
            return answer
        journal, answers = self._journaled_change(ctx, lambda _restored: answer)
        try:
            payment = undo(ctx.principal, payment_id, also=journal)
        except DomainError as error:
            if error.code in TRANSIENT_ERRORS:
                raise
            self._case(ctx, refused, error.message[:200], payment_id)
            return answer
        return answers.get(payment.rrn, answer)  # none: restored already, journaled after

    def _case(self, ctx: _Context, kind: str, detail: str, payment_id: str | None) -> None:
        log.warning("iso8583 case=%s terminal=%s stan=%s", kind, ctx.identity.terminal_id,
                    ctx.identity.stan)  # fmt: skip
        with self.database.transaction() as session:
            repository.open_case(session, kind, ctx.identity, detail, self.clock.now(), payment_id)

    # -- batch settlement -------------------------------------------------------------------------
    def _settle(self, ctx: _Context) -> Outcome:
        """批结算: compare the terminal's totals (48) with ours, answer ours + 1/2, close the
        batch either way — all in one transaction with the journal row."""
        theirs, _flag = _sub_field(parse_48, _text(ctx.message, 48))
        identity = ctx.identity
        try:
            with self.database.transaction() as session:
                row = repository.load_session(session, identity.terminal_id, for_update=True)
                if row is None or row.batch != identity.batch:
                    raise _Answer(SIGN_ON_REQUIRED, "the batch was closed meanwhile")
                ours = repository.batch_totals(session, identity.terminal_id, identity.batch)
                balanced = ours == theirs
                row.batch, row.updated_at = next_batch(row.batch), self.clock.now()
                if not balanced:
                    detail = f"terminal: {theirs}; host: {ours}"
                    repository.open_case(
                        session, UNBALANCED_BATCH, identity, detail, self.clock.now()
                    )
                flag = BALANCED if balanced else NOT_BALANCED
                # a batch beyond 48's digits is answered with them full (and never balanced)
                result = _Result(APPROVED, {48: ours.capped().encode() + flag})
                body = self._body(ctx, result)
                self._record(session, ctx, result, body)
        except _Answer as answer:
            return self._refuse_after_mac(ctx, answer.code, answer.reason)
        except IntegrityError:
            with self.database.read() as session:
                stored = repository.find_request(session, identity)
            if stored is None:
                raise
            return self._replay(ctx, stored)
        return self._outcome(ctx, body, APPROVED, None)


# -- helpers -------------------------------------------------------------------------------------
def _checked_point(driver: DriverSQL, terminal_id: str) -> PaymentPoint:
    """The terminal and its merchant, both checked able to take payments (the rows the
    payment reads, in one statement)."""
    point = load_point(driver, terminal_id)
    point.check_can_pay()
    return point


def _answered(read: Callable[[], T]) -> T:
    """``read()``, its refusal as the terminal's answer (field 39)."""
    try:
        return read()
    except DomainError as error:
        raise _Answer(field_39(error.code), error.message) from None


def _text(message: Message, number: int) -> str:
    value = message.text(number)
    if value is None:
        raise _Answer(FORMAT_ERROR, f"field {number} missing")
    return value


def _str(value: FieldValue | None) -> str | None:
    return value if isinstance(value, str) else None


T = TypeVar("T")


def _sub_field(parser: Callable[[str], T], value: str) -> T:
    try:
        return parser(value)
    except FieldError as error:
        raise _Answer(FORMAT_ERROR, str(error), journal=True) from None


def _amount(ctx: _Context) -> int:
    return int(_text(ctx.message, 4))


def _check_fields(txn: Transaction, message: Message) -> None:
    present = set(message.fields)
    missing = REQUIRED[txn.kind] - present
    if missing:
        raise _Answer(FORMAT_ERROR, f"missing fields {sorted(missing)}")
    if txn.kind in CARD_KINDS and not present & {2, 35}:
        raise _Answer(FORMAT_ERROR, "a card transaction carries field 2 or 35")
    if message.has(49) and message.text(49) != CURRENCY:
        raise _Answer(FORMAT_ERROR, "currency is always 156")
    if message.has(52) and message.text(53) != SECURITY_CONTROL:
        raise _Answer(FORMAT_ERROR, f"a PIN block needs field 53 = {SECURITY_CONTROL}")
    if txn.kind is Kind.REVERSAL and message.text(39) not in REVERSAL_REASONS:
        raise _Answer(FORMAT_ERROR, "a reversal's reason (39) is 98, 96, A0 or 06")
    try:
        if message.has(35):
            parse_track2(_text(message, 35))
        if message.has(61):
            parse_61(_text(message, 61))
        if txn.kind is Kind.SETTLEMENT:
            parse_48(_text(message, 48))
        if txn.kind is Kind.REFUND and parse_61(_text(message, 61)).date is None:
            raise FieldError("a refund names its original's date in 61.3")
    except FieldError as error:
        raise _Answer(FORMAT_ERROR, str(error)) from None


def _network_code(error: DomainError) -> str | None:
    """The network's own response code a refusal carries, if it is one field 39 can hold."""
    code = error.details.get("network_response_code")
    if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalnum():
        return code
    return None


def _month_day(business_date: str) -> str:
    """``2026-11-23`` → ``1123`` (61.3)."""
    return business_date[5:7] + business_date[8:10]


def _same_card(payment: Payment, pan: str) -> bool:
    return (payment.card_bin, payment.card_last4, payment.card_length) == (
        pan[:6], pan[-4:], len(pan),
    )  # fmt: skip


def _payment_result(payment: Payment, amount: int, *, approved: bool | None = None) -> _Result:
    ok = approved if approved is not None else payment.status in (
        PaymentStatus.CAPTURED.value, PaymentStatus.AUTHORIZED.value,
    )  # fmt: skip
    fields: dict[int, FieldValue] = {37: payment.rrn}
    if ok and payment.auth_code:
        fields[38] = payment.auth_code
    code = APPROVED if ok else (payment.decline_code or INVALID_TRANSACTION)
    return _Result(code, fields, payment.id, amount, payment.rrn)


def _encoded(mti: str, fields: dict[int, FieldValue], keys: WorkingKeys | None) -> bytes:
    """The response body to ``mti``; with ``keys``, MACed (field 64 over the rest)."""
    answer = response_mti(mti)
    assert answer is not None
    message = Message(answer, dict(fields))
    if keys is None:
        message.fields.pop(MAC_FIELD, None)
        return encode(message)
    message.fields[MAC_FIELD] = bytes(MAC_BYTES)
    body = encode(message)
    return body[:-MAC_BYTES] + retail_mac(keys.mak, body[:-MAC_BYTES])


def _log(outcome: Outcome) -> None:
    """One structured line per request: never a PAN, track, PIN or key."""
    log.info(
        "iso8583 mti=%s kind=%s terminal=%s batch=%s stan=%s code=%s rrn=%s replayed=%s%s",
        outcome.mti, outcome.kind, outcome.terminal_id, outcome.batch, outcome.stan,
        outcome.code, outcome.rrn, outcome.replayed, "" if outcome.reply else " closed=True",
    )  # fmt: skip
