"""The sandbox issuer: a deterministic stand-in for the card and QR networks (spec §6).

No real network is reachable, so every payment path (approval, each decline, time-out and
reversal, transient and permanent refund failures, an exhausted open-to-buy) is exercised
against this simulator, chosen by PAN as the spec's table says.

Card rules, checked in this order (an issuer checks card status before the PIN, and the
balance only after the PIN):

1. Luhn check fails → ``14``;
2. 6222020000000000984 → no answer: sleeps ``timeout_seconds``, raises ``ChannelTimeout``
   (nothing is recorded, so a later ``query`` returns None and ``reverse`` is a no-op);
3. 6258070000000918 → ``91``; 6258070000000546 → ``54``; 6222020000000000414 → ``41``;
4. expiry (YYMM, valid through the end of that month, Asia/Shanghai) before the clock's
   month → ``54``;
5. PIN: a PIN, when given, must be ``123456`` (``55``); a debit card (BIN 622202) without a
   PIN is accepted only contactless up to ¥1,000.00 (小额免密), else ``55``;
6. 6222020000000000513 → ``51``; 6258070000000108 → ``51`` once its ¥1,000.00 open-to-buy
   is used (voids and reversals give it back; refunds do not — a network posts refunds to
   the card days later);
7. approve. 6222020000000000778 approves but every refund to it fails permanently
   (``card_closed``); 6258070000000785 approves, and the first attempt of each refund fails
   transiently, the retry succeeds.

A balance inquiry (查询, ``balance``) runs steps 1-6 as a ¥0.00 authorisation (so a
contactless debit card may ask without a PIN, as it may pay up to ¥1,000.00 without one) and
answers a fixed balance per card (``BALANCES``; any other approving card
``DEFAULT_BALANCE``), or what is left of the open-to-buy card's ¥1,000.00. It records
nothing: balances do not move with sales, except the open-to-buy card's.

QR payment codes: a code ending in ``51`` → ``51``; any other valid code approves.

State (authorised references, open-to-buy, refund attempts) lives in a ``SandboxStore``
(``channels.store``): this instance's memory by default, or the sandbox's own SQLite file,
which every process of the application (HTTP API, worker, gateway) shares, so that a refund
executed by the worker finds the payment the API authorised. Every operation is one atomic
store session, so concurrent refunds from several processes never exceed the captured
amount. No PAN or PIN is kept: transactions remember a behaviour profile and an HMAC token of
the PAN under the store's key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import StrEnum
from importlib import resources
from typing import Any, ClassVar, Final

from shoudan.channels.domain import (
    AUTH_CODE_LENGTH,
    AuthorizeRequest,
    CardData,
    ChannelResult,
    ChannelTimeout,
    EntryMode,
    Funding,
    Network,
    RefundResult,
    RefundStatus,
    ResponseCode,
    TxnState,
    card_funding,
    card_network,
    luhn_valid,
    positive_amount,
)
from shoudan.channels.store import MemoryStore, SandboxStore, StoreSession
from shoudan.core import baton
from shoudan.core.clock import SHANGHAI, Clock, SystemClock
from shoudan.core.errors import DomainError, ErrorCode

SANDBOX_PIN: Final = "123456"
OPEN_TO_BUY: Final = 100_000  # ¥1,000.00 on the open-to-buy card
NO_PIN_CEILING: Final = 100_000  # 小额免密: contactless debit without PIN up to ¥1,000.00
CAPTURE_LIMIT_PERCENT: Final = Decimal(115)  # completion may exceed the pre-auth by 15%

# The sandbox cards live in a data file beside this module (fixtures/sandbox_cards.json):
# card numbers are data that tests, docs and the demo share, never literals in the code.
_CARDS: Final[dict[str, str]] = json.loads(
    resources.files("shoudan.channels").joinpath("fixtures/sandbox_cards.json").read_text()
)
PAN_APPROVE_DEBIT: Final = _CARDS["approve_debit"]
PAN_APPROVE_CREDIT: Final = _CARDS["approve_credit"]
PAN_INSUFFICIENT_FUNDS: Final = _CARDS["insufficient_funds"]
PAN_EXPIRED: Final = _CARDS["expired"]
PAN_LOST: Final = _CARDS["lost"]
PAN_ISSUER_UNAVAILABLE: Final = _CARDS["issuer_unavailable"]
PAN_NO_ANSWER: Final = _CARDS["no_answer"]
PAN_CARD_CLOSED: Final = _CARDS["card_closed"]
PAN_FLAKY_REFUND: Final = _CARDS["flaky_refund"]
PAN_OPEN_TO_BUY: Final = _CARDS["open_to_buy"]

# Balance inquiries: what each approving sandbox card has available, in fen (fixed).
BALANCES: Final[dict[str, int]] = {
    PAN_APPROVE_DEBIT: 100_000_000,  # ¥1,000,000.00: "large balance"
    PAN_APPROVE_CREDIT: 5_000_000,  # ¥50,000.00 of credit
    PAN_CARD_CLOSED: 300_000,  # ¥3,000.00
    PAN_FLAKY_REFUND: 2_000_000,  # ¥20,000.00
}
DEFAULT_BALANCE: Final = 1_000_000  # ¥10,000.00 for any other Luhn-valid card

_DECLINES: Final = {
    PAN_ISSUER_UNAVAILABLE: ResponseCode.ISSUER_UNAVAILABLE,
    PAN_EXPIRED: ResponseCode.EXPIRED_CARD,
    PAN_LOST: ResponseCode.LOST_CARD,
}

MESSAGES: Final = {
    ResponseCode.APPROVED: "approved",
    ResponseCode.INVALID_TRANSACTION: "invalid transaction",
    ResponseCode.INVALID_AMOUNT: "invalid amount",
    ResponseCode.INVALID_CARD: "invalid card number",
    ResponseCode.ORIGINAL_NOT_FOUND: "original transaction not found",
    ResponseCode.LOST_CARD: "lost card",
    ResponseCode.INSUFFICIENT_FUNDS: "insufficient funds",
    ResponseCode.EXPIRED_CARD: "expired card",
    ResponseCode.INCORRECT_PIN: "incorrect PIN",
    ResponseCode.ISSUER_UNAVAILABLE: "issuer or switch unavailable",
    ResponseCode.DUPLICATE: "reference reused for a different request",
}


class _Profile(StrEnum):
    """What a transaction remembers of its card instead of the PAN."""

    NORMAL = "normal"
    CARD_CLOSED = "card_closed"
    FLAKY_REFUND = "flaky_refund"
    OPEN_TO_BUY = "open_to_buy"


@dataclass
class _Refund:
    amount: int
    status: RefundStatus
    attempts: int
    reason: str | None


@dataclass
class _Txn:
    fingerprint: str
    network: Network
    result: ChannelResult
    state: TxnState
    amount: int  # authorised
    captured: int = 0
    profile: _Profile = _Profile.NORMAL
    card_token: str | None = None
    held: int = 0  # open-to-buy this transaction currently uses
    refunds: dict[str, _Refund] = field(default_factory=dict)
    preauth: bool = False  # authorised first (a completion's capture can be undone)

    @property
    def refunded(self) -> int:
        """Refunded or in flight (a transient failure will be retried, so it stays reserved)."""
        return sum(
            r.amount for r in self.refunds.values() if r.status is not RefundStatus.FAILED_PERMANENT
        )

    def dump(self) -> str:
        # by hand: dataclasses.asdict deep-copies, which is slow on a transaction with refunds
        result = {name: getattr(self.result, name) for name in _RESULT_FIELDS}
        refunds = {key: vars(refund) for key, refund in self.refunds.items()}
        return json.dumps({**vars(self), "result": result, "refunds": refunds}, sort_keys=True)

    @classmethod
    def load(cls, text: str) -> _Txn:
        data = json.loads(text)
        return cls(
            fingerprint=data["fingerprint"],
            network=Network(data["network"]),
            result=_load_result(data["result"]),
            state=TxnState(data["state"]),
            amount=data["amount"],
            captured=data["captured"],
            profile=_Profile(data["profile"]),
            card_token=data["card_token"],
            held=data["held"],
            refunds={
                key: _Refund(r["amount"], RefundStatus(r["status"]), r["attempts"], r["reason"])
                for key, r in data["refunds"].items()
            },
            preauth=data.get("preauth", False),  # absent from books written before it
        )


_RESULT_FIELDS: Final = tuple(f.name for f in fields(ChannelResult))


def _load_result(data: dict[str, Any]) -> ChannelResult:
    network, state = data["network"], data["state"]
    return ChannelResult(
        **{
            **data,
            "network": None if network is None else Network(network),
            "state": None if state is None else TxnState(state),
        }
    )


class _Books:
    """The network's books for one atomic store session. Transactions read here are written
    back when the session ends (only those that changed), so no mutation can be forgotten."""

    _TXN: Final = "txn"
    _REVERSED_UNKNOWN: Final = "reversed_unknown"
    _OPEN_TO_BUY: Final = "open_to_buy_used"

    def __init__(self, session: StoreSession) -> None:
        self._session = session
        self._seen: dict[str, tuple[str | None, _Txn]] = {}

    def txn(self, reference: str) -> _Txn | None:
        if reference not in self._seen:
            text = self._session.get(self._TXN, reference)
            if text is None:
                return None
            self._seen[reference] = (text, _Txn.load(text))
        return self._seen[reference][1]

    def add(self, reference: str, txn: _Txn) -> None:
        self._seen[reference] = (None, txn)

    def reversed_unknown(self, reference: str) -> bool:
        return self._session.get(self._REVERSED_UNKNOWN, reference) is not None

    def mark_reversed_unknown(self, reference: str) -> None:
        self._session.put(self._REVERSED_UNKNOWN, reference, "1")

    def open_to_buy_used(self, card_token: str) -> int:
        return int(self._session.get(self._OPEN_TO_BUY, card_token) or 0)

    def set_open_to_buy_used(self, card_token: str, used: int) -> None:
        self._session.put(self._OPEN_TO_BUY, card_token, str(used))

    def flush(self) -> None:
        for reference, (before, txn) in self._seen.items():
            after = txn.dump()
            if after != before:
                self._session.put(self._TXN, reference, after)


def _derived_digits(purpose: str, reference: str, digits: int) -> str:
    """``digits`` decimal digits derived from ``reference``: the simulators' own ids and
    codes, the same on every rerun."""
    digest = hashlib.sha256(f"{purpose}\x1f{reference}".encode()).digest()
    value = int.from_bytes(digest[:8], "big")
    return f"{value % 10**digits:0{digits}d}"


def auth_code_for(reference: str) -> str:
    """Field 38: six digits derived from the reference, so reruns print the same receipt."""
    return _derived_digits("auth", reference, AUTH_CODE_LENGTH)


def channel_reference_for(reference: str) -> str:
    """The network's own id for a transaction: 12 digits, derived from our reference."""
    return _derived_digits("channel", reference, 12)


_REFUND_MESSAGES: Final = {
    None: "refunded",
    "card_closed": "card closed: the issuer cannot credit it",
    "issuer_unavailable": "issuer unavailable: retry with the same refund reference",
}


def _refund_result(refund_reference: str, refund: _Refund) -> RefundResult:
    message = _REFUND_MESSAGES.get(refund.reason, "refund failed")
    return RefundResult(refund.status, refund_reference, refund.amount, refund.reason, message)


class SandboxChannel:
    """The simulator. ``latency_seconds`` delays every answer (outside the store session);
    ``timeout_seconds`` is how long the no-answer card keeps the caller waiting before
    ``ChannelTimeout`` (tests pass a tiny value). ``clock`` decides which cards are expired.
    ``store`` holds the network's books: this instance's memory unless given (see
    ``channels.store``); two instances over one ``SqliteStore`` file are one network."""

    # runs in this process: called holding the request's baton, its simulated waits put the
    # baton down themselves (``baton.sleep``; core/baton.py)
    in_process: ClassVar[bool] = True

    def __init__(
        self,
        latency_seconds: float = 0.0,
        timeout_seconds: float = 2.0,
        clock: Clock | None = None,
        store: SandboxStore | None = None,
    ) -> None:
        if latency_seconds < 0 or timeout_seconds < 0:
            raise DomainError(ErrorCode.CONFIGURATION_ERROR, "sandbox delays cannot be negative")
        self.latency_seconds = latency_seconds
        self.timeout_seconds = timeout_seconds
        self.clock: Clock = clock or SystemClock()
        self.store: SandboxStore = store if store is not None else MemoryStore()
        self._key = self.store.token_key  # PAN tokens are meaningless outside the store

    def __repr__(self) -> str:
        return (
            f"SandboxChannel(latency_seconds={self.latency_seconds}, "
            f"timeout_seconds={self.timeout_seconds}, store={self.store!r})"
        )

    # -- helpers -----------------------------------------------------------------------------
    @contextmanager
    def _books(self) -> Iterator[_Books]:
        with self.store.session() as session:
            books = _Books(session)
            yield books
            books.flush()

    def _delay(self) -> None:
        if self.latency_seconds:
            baton.sleep(self.latency_seconds)

    def _token(self, pan: str) -> str:
        return hmac.new(self._key, pan.encode(), hashlib.sha256).hexdigest()

    def _fingerprint(self, req: AuthorizeRequest) -> str:
        what = self._token(req.card.pan) if req.card is not None else req.auth_code or ""
        material = f"{req.amount}|{req.currency}|{req.capture}|{what}"
        return hmac.new(self._key, material.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _result(
        reference: str,
        code: ResponseCode,
        network: Network | None,
        state: TxnState | None,
        message: str | None = None,
    ) -> ChannelResult:
        approved = code is ResponseCode.APPROVED
        return ChannelResult(
            approved=approved,
            response_code=code.value,
            network=network,
            channel_reference=channel_reference_for(reference),
            auth_code=auth_code_for(reference) if approved else None,
            message=message or MESSAGES.get(code, code.name.lower()),
            state=state,
        )

    def _expired(self, expiry: str) -> bool:
        today = self.clock.now().astimezone(SHANGHAI).date()
        year, month = 2000 + int(expiry[:2]), int(expiry[2:])
        return (year, month) < (today.year, today.month)

    def _card_decision(self, card: CardData, amount: int) -> ResponseCode | None:
        """Steps 3-6 of the module docstring except open-to-buy (needs the books)."""
        if card.pan in _DECLINES:
            return _DECLINES[card.pan]
        if self._expired(card.expiry):
            return ResponseCode.EXPIRED_CARD
        if card.pin is not None:
            if not hmac.compare_digest(card.pin.encode(), SANDBOX_PIN.encode()):
                return ResponseCode.INCORRECT_PIN
        elif card_funding(card.pan) is Funding.DEBIT and not (
            card.entry_mode is EntryMode.CONTACTLESS and amount <= NO_PIN_CEILING
        ):
            return ResponseCode.INCORRECT_PIN
        if card.pan == PAN_INSUFFICIENT_FUNDS:
            return ResponseCode.INSUFFICIENT_FUNDS
        return None

    def _answer_or_time_out(self, card: CardData, what: str) -> None:
        """The no-answer card keeps the caller waiting, then ``ChannelTimeout``."""
        if card.pan == PAN_NO_ANSWER and luhn_valid(card.pan):
            baton.sleep(self.timeout_seconds)
            raise ChannelTimeout(f"no answer from the issuer for {what!r}")

    @staticmethod
    def _hold(books: _Books, txn: _Txn, new_held: int) -> bool:
        """Move ``txn``'s open-to-buy use to ``new_held``; False (no change) if over the limit."""
        if txn.profile is not _Profile.OPEN_TO_BUY or txn.card_token is None:
            return True
        used = books.open_to_buy_used(txn.card_token) - txn.held + new_held
        if used > OPEN_TO_BUY:
            return False
        books.set_open_to_buy_used(txn.card_token, used)
        txn.held = new_held
        return True

    # -- the Channel protocol ----------------------------------------------------------------
    def authorize(self, req: AuthorizeRequest) -> ChannelResult:
        """Sale or pre-authorisation. Idempotent on ``req.reference``: a repeat gets the first
        answer; the same reference with a different request gets ``94``."""
        if not isinstance(req, AuthorizeRequest):
            raise DomainError(ErrorCode.INVALID_INPUT, "authorize needs an AuthorizeRequest")
        network = req.network
        card = req.card
        if card is not None:
            self._answer_or_time_out(card, req.reference)
        self._delay()
        fingerprint = self._fingerprint(req)
        decision: ResponseCode | None
        profile, token = _Profile.NORMAL, None
        if card is None:
            assert req.auth_code is not None
            decision = ResponseCode.INSUFFICIENT_FUNDS if req.auth_code.endswith("51") else None
        elif not luhn_valid(card.pan):
            decision = ResponseCode.INVALID_CARD
        else:
            decision = self._card_decision(card, req.amount)
            if card.pan == PAN_CARD_CLOSED:
                profile = _Profile.CARD_CLOSED
            elif card.pan == PAN_FLAKY_REFUND:
                profile = _Profile.FLAKY_REFUND
            elif card.pan == PAN_OPEN_TO_BUY:
                profile, token = _Profile.OPEN_TO_BUY, self._token(card.pan)
        with self._books() as books:
            existing = books.txn(req.reference)
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    return self._result(req.reference, ResponseCode.DUPLICATE, network, None)
                return existing.result
            if books.reversed_unknown(req.reference):
                # reversed before it arrived: a late original must not take effect
                return self._result(
                    req.reference,
                    ResponseCode.INVALID_TRANSACTION,
                    network,
                    TxnState.REVERSED,
                    "already reversed",
                )
            state = TxnState.CAPTURED if req.capture else TxnState.AUTHORIZED
            txn = _Txn(fingerprint, network, _PLACEHOLDER, state, req.amount, 0, profile, token)
            txn.preauth = not req.capture
            if decision is None and not self._hold(books, txn, req.amount):
                decision = ResponseCode.INSUFFICIENT_FUNDS
            if decision is not None:
                txn.state, txn.amount = TxnState.DECLINED, 0
            else:
                txn.captured = req.amount if req.capture else 0
            txn.result = self._result(
                req.reference, decision or ResponseCode.APPROVED, network, txn.state
            )
            books.add(req.reference, txn)
            return txn.result

    def capture(self, reference: str, amount: int) -> ChannelResult:
        """Completion (预授权完成) of a pre-authorisation, up to 115% of it. Idempotent: a
        repeat with the same amount is approved again; a different amount gets ``12``."""
        amount = positive_amount(amount)
        self._delay()
        with self._books() as books:
            txn = books.txn(reference)
            if txn is None:
                return self._result(reference, ResponseCode.ORIGINAL_NOT_FOUND, None, None)
            if txn.state is TxnState.CAPTURED and txn.captured == amount:
                return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)
            if txn.state is not TxnState.AUTHORIZED:
                return self._result(
                    reference, ResponseCode.INVALID_TRANSACTION, txn.network, txn.state,
                    f"cannot capture a {txn.state} transaction",
                )  # fmt: skip
            if Decimal(amount) * 100 > Decimal(txn.amount) * CAPTURE_LIMIT_PERCENT:
                return self._result(reference, ResponseCode.INVALID_AMOUNT, txn.network, txn.state)
            if not self._hold(books, txn, amount):
                return self._result(
                    reference, ResponseCode.INSUFFICIENT_FUNDS, txn.network, txn.state
                )
            txn.state, txn.captured = TxnState.CAPTURED, amount
            return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)

    def void(self, reference: str) -> ChannelResult:
        """Cancel an authorised or captured transaction in full (撤销); gives back open-to-buy.
        Idempotent: voiding a voided transaction is approved again."""
        self._delay()
        with self._books() as books:
            txn = books.txn(reference)
            if txn is None:
                return self._result(reference, ResponseCode.ORIGINAL_NOT_FOUND, None, None)
            if txn.state is TxnState.VOIDED:
                return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)
            if txn.state not in (TxnState.AUTHORIZED, TxnState.CAPTURED) or txn.refunds:
                return self._result(
                    reference, ResponseCode.INVALID_TRANSACTION, txn.network, txn.state,
                    f"cannot void a {txn.state} transaction"
                    + (" with refunds" if txn.refunds else ""),
                )  # fmt: skip
            self._hold(books, txn, 0)
            txn.state = TxnState.VOIDED
            return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)

    def reverse_void(self, reference: str) -> ChannelResult:
        """Undo a void (撤销冲正): the transaction is authorised or captured again, as before
        the void, and takes its open-to-buy back (``51`` if it is used meanwhile).
        Idempotent: a transaction that stands is approved again."""
        self._delay()
        with self._books() as books:
            txn = books.txn(reference)
            if txn is None:
                return self._result(reference, ResponseCode.ORIGINAL_NOT_FOUND, None, None)
            before = TxnState.CAPTURED if txn.captured else TxnState.AUTHORIZED
            if txn.state is before:
                return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)
            if txn.state is not TxnState.VOIDED:
                return self._result(
                    reference, ResponseCode.INVALID_TRANSACTION, txn.network, txn.state,
                    f"no void to undo: the transaction is {txn.state}",
                )  # fmt: skip
            if not self._hold(books, txn, txn.captured or txn.amount):
                return self._result(
                    reference, ResponseCode.INSUFFICIENT_FUNDS, txn.network, txn.state
                )
            txn.state = before
            return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)

    def reverse_completion(self, reference: str) -> ChannelResult:
        """Undo a completion (完成冲正): the pre-authorisation stands again, holding its
        authorised amount of open-to-buy (``51`` if that is used meanwhile). Idempotent."""
        self._delay()
        with self._books() as books:
            txn = books.txn(reference)
            if txn is None:
                return self._result(reference, ResponseCode.ORIGINAL_NOT_FOUND, None, None)
            if txn.preauth and txn.state is TxnState.AUTHORIZED:
                return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)
            if not txn.preauth or txn.state is not TxnState.CAPTURED or txn.refunds:
                return self._result(
                    reference, ResponseCode.INVALID_TRANSACTION, txn.network, txn.state,
                    "no completion to undo",
                )  # fmt: skip
            if not self._hold(books, txn, txn.amount):
                return self._result(
                    reference, ResponseCode.INSUFFICIENT_FUNDS, txn.network, txn.state
                )
            txn.state, txn.captured = TxnState.AUTHORIZED, 0
            return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)

    def reverse(self, reference: str) -> ChannelResult:
        """Undo whatever ``reference`` did (冲正). Always approved — also for an unknown or
        declined reference — so the sender can stop resending. An unknown reference is
        remembered so that the original, should it arrive late, is refused."""
        self._delay()
        with self._books() as books:
            txn = books.txn(reference)
            if txn is None:
                books.mark_reversed_unknown(reference)
                return self._result(reference, ResponseCode.APPROVED, None, TxnState.REVERSED)
            if txn.state in (TxnState.AUTHORIZED, TxnState.CAPTURED):
                self._hold(books, txn, 0)
                txn.state = TxnState.REVERSED
            return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)

    def refund(self, reference: str, refund_reference: str, amount: int) -> RefundResult:
        """Return ``amount`` of a captured transaction to the card or wallet. Idempotent per
        ``refund_reference``: a succeeded or permanently failed refund answers the same again;
        a transiently failed one is attempted again."""
        amount = positive_amount(amount)
        self._delay()
        with self._books() as books:
            txn = books.txn(reference)

            def fail(reason: str, message: str) -> RefundResult:
                return RefundResult(
                    RefundStatus.FAILED_PERMANENT, refund_reference, amount, reason, message
                )

            if txn is None:
                return fail("original_not_found", "original transaction not found")
            existing = txn.refunds.get(refund_reference)
            if existing is not None:
                if existing.amount != amount:
                    return fail("refund_reference_reused", "refund reference reused")
                if existing.status is RefundStatus.FAILED_TRANSIENT:
                    existing.attempts += 1
                    existing.status, existing.reason = RefundStatus.SUCCEEDED, None
                return _refund_result(refund_reference, existing)
            if txn.state is not TxnState.CAPTURED:
                return fail("not_captured", f"cannot refund a {txn.state} transaction")
            if txn.refunded + amount > txn.captured:
                return fail("exceeds_captured", "refunds would exceed the captured amount")
            if txn.profile is _Profile.CARD_CLOSED:
                refund = _Refund(amount, RefundStatus.FAILED_PERMANENT, 1, "card_closed")
            elif txn.profile is _Profile.FLAKY_REFUND:
                refund = _Refund(amount, RefundStatus.FAILED_TRANSIENT, 1, "issuer_unavailable")
            else:
                refund = _Refund(amount, RefundStatus.SUCCEEDED, 1, None)
            txn.refunds[refund_reference] = refund
            return _refund_result(refund_reference, refund)

    def query_refund(self, reference: str, refund_reference: str) -> RefundResult | None:
        """The network's record of a refund attempt, as it stands: None when the refund
        reference was never recorded for ``reference`` (a refusal such as
        ``exceeds_captured`` changes nothing and is not recorded: resending it gets the same
        refusal). Never performs or retries anything."""
        self._delay()
        with self._books() as books:
            txn = books.txn(reference)
            refund = None if txn is None else txn.refunds.get(refund_reference)
            return None if refund is None else _refund_result(refund_reference, refund)

    def query(self, reference: str) -> ChannelResult | None:
        """The current state of ``reference``, or None when the network never saw it."""
        self._delay()
        with self._books() as books:
            txn = books.txn(reference)
            if txn is None:
                return None
            if txn.state is TxnState.DECLINED:
                return txn.result
            return self._result(reference, ResponseCode.APPROVED, txn.network, txn.state)

    def balance(self, card: CardData) -> tuple[ChannelResult, int | None]:
        """查询: the card's available balance in fen (None when declined). The card rules of
        an authorisation for ¥0.00 apply (Luhn, status, expiry, PIN); nothing is recorded.
        The answer's references derive from the card's token, so a repeat is identical."""
        if not isinstance(card, CardData):
            raise DomainError(ErrorCode.INVALID_INPUT, "balance needs CardData")
        self._answer_or_time_out(card, "a balance inquiry")
        self._delay()
        reference = f"balance:{self._token(card.pan)}"
        network = card_network(card.pan)
        if not luhn_valid(card.pan):
            return self._result(reference, ResponseCode.INVALID_CARD, network, None), None
        decision = self._card_decision(card, 0)
        if decision is not None:
            return self._result(reference, decision, network, None), None
        if card.pan == PAN_OPEN_TO_BUY:
            available = self.open_to_buy_remaining(card.pan)
        else:
            available = BALANCES.get(card.pan, DEFAULT_BALANCE)
        return self._result(reference, ResponseCode.APPROVED, network, None), available

    # -- introspection for tests and the demo -------------------------------------------------
    def open_to_buy_remaining(self, pan: str = PAN_OPEN_TO_BUY) -> int:
        """What the open-to-buy card can still spend at this network, in fen."""
        with self._books() as books:
            return OPEN_TO_BUY - books.open_to_buy_used(self._token(pan))


_PLACEHOLDER: Final = ChannelResult(
    approved=False,
    response_code=ResponseCode.SYSTEM_MALFUNCTION.value,
    network=None,
    channel_reference="",
    auth_code=None,
    message="pending",
)
