"""What the acquirer says to an upstream card or QR network, and what it hears back.

A ``Channel`` is the port the payment use cases call; the sandbox (``channels.sandbox``) is
the one implementation we ship, because no real network is reachable from here. The shapes
below are what a real adapter (UnionPay, WeChat Pay, Alipay) would map to and from.
``BankTransfer`` is the other rail, a bank credit transfer (sandbox: ``channels.bank``), for
refunds a card cannot take back and for settlement payouts.

Card data is the most sensitive thing the system touches: ``CardData`` never shows its PAN or
PIN in ``repr``/``str`` (logs, tracebacks, pytest output), and nothing here stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.identifiers import luhn_valid as check_digit_valid
from shoudan.core.money import check_currency, check_minor

DEBIT_BINS: Final = frozenset({"622202"})
CREDIT_BINS: Final = frozenset({"625807"})
PAN_MIN_LENGTH: Final = 12
PAN_MAX_LENGTH: Final = 19
QR_AUTH_CODE_LENGTH: Final = 18
MAX_REFERENCE_LENGTH: Final = 64
AUTH_CODE_LENGTH: Final = 6


class Network(StrEnum):
    UNIONPAY = "unionpay"
    WECHAT = "wechat"
    ALIPAY = "alipay"


class Funding(StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"


class PaymentMethod(StrEnum):
    """How the consumer paid (the payments domain calls it ``Method``)."""

    CARD = "card"
    WECHAT = "wechat"
    ALIPAY = "alipay"
    UNIONPAY_QR = "unionpay_qr"


class EntryMode(StrEnum):
    CHIP = "chip"
    MAGSTRIPE = "magstripe"
    CONTACTLESS = "contactless"
    MANUAL = "manual"


class ResponseCode(StrEnum):
    """ISO 8583 field 39 codes a network answers with (spec §5)."""

    APPROVED = "00"
    DO_NOT_HONOUR = "05"
    INVALID_TRANSACTION = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD = "14"
    ORIGINAL_NOT_FOUND = "25"
    LOST_CARD = "41"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    INCORRECT_PIN = "55"
    ISSUER_UNAVAILABLE = "91"
    DUPLICATE = "94"
    SYSTEM_MALFUNCTION = "96"


class TxnState(StrEnum):
    """Where a transaction stands at the network (what ``Channel.query`` reports)."""

    DECLINED = "declined"
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    VOIDED = "voided"
    REVERSED = "reversed"


class RefundStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED_TRANSIENT = "failed_transient"  # retry with the same refund_reference
    FAILED_PERMANENT = "failed_permanent"  # e.g. card closed: re-route, do not retry


# -- card and QR rules -------------------------------------------------------------------------
def _pan_shape(pan: object) -> str:
    if (
        not isinstance(pan, str)
        or not pan.isascii()
        or not pan.isdigit()
        or not PAN_MIN_LENGTH <= len(pan) <= PAN_MAX_LENGTH
    ):
        raise DomainError(
            ErrorCode.INVALID_CARD,
            f"a card number is {PAN_MIN_LENGTH}-{PAN_MAX_LENGTH} digits",
        )
    return pan


def luhn_valid(pan: str) -> bool:
    """A card number's check digit (and length). False, never an error, for a non-PAN."""
    if not isinstance(pan, str) or not PAN_MIN_LENGTH <= len(pan) <= PAN_MAX_LENGTH:
        return False
    return check_digit_valid(pan)


def card_funding(pan: str) -> Funding:
    """Debit or credit, by BIN: 622202 debit, 625807 credit; any other BIN prices as credit
    (the spec's rule, and the more expensive assumption for an unknown card)."""
    bin_ = _pan_shape(pan)[:6]
    return Funding.DEBIT if bin_ in DEBIT_BINS else Funding.CREDIT


def card_network(pan: str) -> Network:
    """Every card we accept is routed through UnionPay (银联)."""
    _pan_shape(pan)
    return Network.UNIONPAY


def mask_pan(pan: str) -> str:
    """``6217001234567890123`` → ``621700*********0123``: BIN and last four only."""
    if len(pan) < 10:
        return "*" * len(pan)
    return f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"


_QR_PREFIXES: Final[tuple[tuple[range, PaymentMethod, Network], ...]] = (
    (range(10, 16), PaymentMethod.WECHAT, Network.WECHAT),
    (range(25, 31), PaymentMethod.ALIPAY, Network.ALIPAY),
    (range(62, 63), PaymentMethod.UNIONPAY_QR, Network.UNIONPAY),
)


def _qr(auth_code: object) -> tuple[PaymentMethod, Network]:
    if (
        isinstance(auth_code, str)
        and len(auth_code) == QR_AUTH_CODE_LENGTH
        and auth_code.isascii()
        and auth_code.isdigit()
    ):
        prefix = int(auth_code[:2])
        for prefixes, method, network in _QR_PREFIXES:
            if prefix in prefixes:
                return method, network
    raise DomainError(
        ErrorCode.INVALID_AUTH_CODE,
        "a payment code is 18 digits starting 10-15 (WeChat), 25-30 (Alipay) or 62 (UnionPay)",
    )


def qr_method(auth_code: str) -> PaymentMethod:
    """Which wallet a consumer's payment code (付款码) belongs to: wechat, alipay, unionpay_qr."""
    return _qr(auth_code)[0]


def qr_network(auth_code: str) -> Network:
    """The network a payment code is sent to (UnionPay QR goes to ``unionpay``)."""
    return _qr(auth_code)[1]


# -- requests and answers ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CardData:
    """What the terminal read from a card. Only ever held in memory for one request: it is
    sent upstream and dropped. ``repr`` shows the masked PAN and never the PIN."""

    pan: str = field(repr=False)
    expiry: str  # YYMM
    pin: str | None = field(default=None, repr=False)
    entry_mode: EntryMode = EntryMode.CHIP

    def __post_init__(self) -> None:
        _pan_shape(self.pan)
        expiry = self.expiry
        if (
            not isinstance(expiry, str)
            or len(expiry) != 4
            or not expiry.isascii()
            or not expiry.isdigit()
            or not 1 <= int(expiry[2:]) <= 12
        ):
            raise DomainError(ErrorCode.INVALID_CARD, "card expiry must be YYMM")
        if self.pin is not None and not isinstance(self.pin, str):
            raise DomainError(ErrorCode.INVALID_CARD, "a PIN is a string")
        try:
            object.__setattr__(self, "entry_mode", EntryMode(self.entry_mode))
        except ValueError:
            raise DomainError(
                ErrorCode.INVALID_INPUT, f"unknown entry mode {self.entry_mode!r}"
            ) from None

    def __repr__(self) -> str:
        pin = "None" if self.pin is None else "'******'"
        return (
            f"CardData(pan='{mask_pan(self.pan)}', expiry={self.expiry!r}, pin={pin}, "
            f"entry_mode={self.entry_mode.value!r})"
        )

    __str__ = __repr__

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.pan)

    @property
    def funding(self) -> Funding:
        return card_funding(self.pan)


def _reference(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_REFERENCE_LENGTH:
        raise DomainError(ErrorCode.INVALID_INPUT, f"{what} is 1-{MAX_REFERENCE_LENGTH} characters")
    return value


def positive_amount(amount: object) -> int:
    value = check_minor(amount)
    if value <= 0:
        raise DomainError(ErrorCode.INVALID_AMOUNT, f"amount must be positive fen, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """A sale (``capture=True``) or a pre-authorisation (``capture=False``), by card or by a
    consumer's QR payment code — exactly one of ``card`` and ``auth_code``.

    ``reference`` is our unique id for the transaction at the network: repeating a request
    with the same reference is idempotent, and capture/void/reverse/query/refund name it.
    """

    reference: str
    amount: int
    currency: str
    card: CardData | None
    auth_code: str | None
    capture: bool = True

    def __post_init__(self) -> None:
        _reference(self.reference, "a channel reference")
        positive_amount(self.amount)
        check_currency(self.currency)
        if (self.card is None) == (self.auth_code is None):
            raise DomainError(
                ErrorCode.INVALID_INPUT, "a request carries either card data or a payment code"
            )
        if self.card is not None and not isinstance(self.card, CardData):
            raise DomainError(ErrorCode.INVALID_CARD, "card must be CardData")
        if self.auth_code is not None:
            _qr(self.auth_code)
        if not isinstance(self.capture, bool):
            raise DomainError(ErrorCode.INVALID_INPUT, "capture is a boolean")

    @property
    def method(self) -> PaymentMethod:
        return PaymentMethod.CARD if self.auth_code is None else qr_method(self.auth_code)

    @property
    def network(self) -> Network:
        if self.card is not None:
            return card_network(self.card.pan)
        assert self.auth_code is not None
        return qr_network(self.auth_code)


@dataclass(frozen=True, slots=True)
class ChannelResult:
    """The network's answer. ``approved`` iff ``response_code == "00"``; an approval carries a
    6-character authorisation code (field 38). ``network`` is None only when the network has
    never seen the reference (e.g. a reversal of a request that never arrived). ``state`` is
    where the transaction now stands at the network, when known."""

    approved: bool
    response_code: str
    network: Network | None
    channel_reference: str
    auth_code: str | None
    message: str
    state: TxnState | None = None

    def __post_init__(self) -> None:
        if self.approved != (self.response_code == ResponseCode.APPROVED):
            raise DomainError(ErrorCode.INTERNAL_ERROR, "approved iff response code 00")
        if self.approved and (self.auth_code is None or len(self.auth_code) != AUTH_CODE_LENGTH):
            raise DomainError(ErrorCode.INTERNAL_ERROR, "an approval has a 6-character auth code")


@dataclass(frozen=True, slots=True)
class RefundResult:
    """The outcome of one refund attempt. ``reason`` is a stable word for failures, such as
    ``card_closed`` (permanent: the money must be re-routed) or ``issuer_unavailable``."""

    status: RefundStatus
    refund_reference: str
    amount: int
    reason: str | None = None
    message: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status is RefundStatus.SUCCEEDED


class ChannelError(Exception):
    """The network did not give a usable answer. Not a DomainError: nobody refused anything,
    and the outcome at the network is unknown or may change on retry."""


class ChannelTimeout(ChannelError):
    """No answer in time. The request may or may not have been applied upstream: the caller
    must ``reverse`` (or ``query``) before treating it as failed."""


class ChannelTransientError(ChannelError):
    """The network refused to process the request right now; the same request may succeed
    if retried (with the same reference)."""


@runtime_checkable
class Channel(Protocol):
    """An upstream network as the payment use cases see it. Every call is idempotent on its
    reference (and ``refund`` on its ``refund_reference``), so retries are safe."""

    def authorize(self, req: AuthorizeRequest) -> ChannelResult: ...

    def capture(self, reference: str, amount: int) -> ChannelResult: ...

    def void(self, reference: str) -> ChannelResult: ...

    def reverse_void(self, reference: str) -> ChannelResult:
        """Undo the void of ``reference`` (撤销冲正: the terminal never saw its answer): the
        transaction stands as before it. Idempotent; refused (with the network's code) when
        it cannot stand again, e.g. the card's open-to-buy is used meanwhile."""
        ...

    def reverse_completion(self, reference: str) -> ChannelResult:
        """Undo the completion of pre-authorisation ``reference`` (完成冲正): it stands
        authorised again, as before it. Idempotent; refused (with the network's code) when it
        cannot."""
        ...

    def reverse(self, reference: str) -> ChannelResult:
        """Undo whatever ``reference`` did, if anything; always approved, also when unknown."""
        ...

    def refund(self, reference: str, refund_reference: str, amount: int) -> RefundResult: ...

    def query(self, reference: str) -> ChannelResult | None:
        """The network's view of ``reference``, or None when it never saw it."""
        ...

    def query_refund(self, reference: str, refund_reference: str) -> RefundResult | None:
        """The network's record of a refund attempt, or None when it never recorded
        ``refund_reference`` for ``reference``. Only reads: it never performs or retries the
        refund, so a transient failure stays ``failed_transient`` until ``refund`` is called
        again. Resolves an unknown outcome (a time-out) before deciding to retry."""
        ...


# -- bank transfers ----------------------------------------------------------------------------
MAX_ACCOUNT_NAME_LENGTH: Final = 100


class TransferStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED_PERMANENT = "failed_permanent"  # e.g. account closed: the money did not move


@dataclass(frozen=True, slots=True)
class TransferResult:
    """A bank's answer to a credit transfer. ``reason`` is a stable word for failures
    (``invalid_account``, ``account_closed``, ``reference_reused``); ``account_last4`` is all
    the answer repeats of the account number."""

    status: TransferStatus
    reference: str
    amount: int
    account_last4: str
    reason: str | None = None
    message: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status is TransferStatus.SUCCEEDED


def check_transfer(
    reference: object, account_number: object, holder_name: object, bank_name: object,
    amount: object,
) -> int:  # fmt: skip
    """Refuse a malformed transfer request (a caller's bug, not a bank's answer); returns the
    amount. Whether the account exists is the bank's to say."""
    _reference(reference, "a transfer reference")
    if not isinstance(account_number, str) or not account_number:
        raise DomainError(ErrorCode.INVALID_INPUT, "an account number is a non-empty string")
    for value, what in ((holder_name, "holder name"), (bank_name, "bank name")):
        if (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > MAX_ACCOUNT_NAME_LENGTH
        ):
            raise DomainError(
                ErrorCode.INVALID_INPUT, f"the {what} is 1-{MAX_ACCOUNT_NAME_LENGTH} characters"
            )
    return positive_amount(amount)


@runtime_checkable
class BankTransfer(Protocol):
    """A bank transfer rail: refunds the card network cannot return (card closed) and,
    later, settlement payouts. Idempotent per ``reference``: a repeat gets the first answer;
    the same reference for another account or amount fails ``reference_reused``."""

    def transfer(
        self, reference: str, account_number: str, holder_name: str, bank_name: str, amount: int
    ) -> TransferResult: ...

    def query_transfer(self, reference: str) -> TransferResult | None:
        """The bank's record of ``reference``, or None when it never recorded it."""
        ...
