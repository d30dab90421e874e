"""Pure payment rules: states and transitions, void and completion windows, RRNs.

A payment is one card or QR transaction taken on a terminal:

* a **sale** (``capture=true``) is ``captured`` at once when the network approves it;
* a **pre-authorisation** (``capture=false``) is ``authorized``: the money is reserved, not
  taken, until a **completion** captures up to 115 % (configurable) of it;
* a **void** (撤销) undoes a payment in full on the same business day, before settlement;
* a **reversal** (冲正) undoes a payment whose outcome the terminal or client never saw;
* a network refusal is a payment too: ``declined``, with the ISO response code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from shoudan.channels.domain import EntryMode, PaymentMethod
from shoudan.core.clock import SHANGHAI
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import derived_id

__all__ = ["EntryMode", "Method", "PaymentStatus", "check_capture", "check_void"]


class PaymentStatus(StrEnum):
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    DECLINED = "declined"
    VOIDED = "voided"
    REVERSED = "reversed"


def keyed_reference(merchant_id: str, idempotency_key: str) -> str:
    """The reference the network knows a payment with an Idempotency-Key by: derived from the
    merchant and the key, not from the payment. A retry after a crash (between the network's
    approval and our commit) sends the same reference, so the network answers it as the same
    transaction instead of charging twice, and a reversal can name it before anything was
    recorded. The payment's own id is a fresh ULID, in time order, so that every index holding
    it grows at its end instead of on random pages (docs/benchmarks.md, tenth session)."""
    return derived_id("pay_", merchant_id, idempotency_key)


# How the consumer paid and how the card was read: the network's vocabulary, one definition.
Method = PaymentMethod


# The one table of allowed transitions (a new payment starts in any of the first three).
TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.AUTHORIZED: frozenset(
        {PaymentStatus.CAPTURED, PaymentStatus.VOIDED, PaymentStatus.REVERSED}
    ),
    # …and back to authorised when the terminal reverses a completion (完成冲正)
    PaymentStatus.CAPTURED: frozenset(
        {PaymentStatus.VOIDED, PaymentStatus.REVERSED, PaymentStatus.AUTHORIZED}
    ),
    PaymentStatus.DECLINED: frozenset(),
    # a void the terminal reversed (撤销冲正): captured or authorised again, as before it
    PaymentStatus.VOIDED: frozenset({PaymentStatus.CAPTURED, PaymentStatus.AUTHORIZED}),
    PaymentStatus.REVERSED: frozenset(),
}

DEFAULT_COMPLETION_LIMIT_PERCENT = Decimal(115)


def transition(current: PaymentStatus, target: PaymentStatus) -> PaymentStatus:
    if target not in TRANSITIONS[current]:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION, f"a {current} payment cannot become {target}"
        )
    return target


def business_date(moment: datetime) -> date:
    """The acquirer's business day: the calendar date in Asia/Shanghai."""
    return moment.astimezone(SHANGHAI).date()


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    """What the rules need to know about a stored payment."""

    status: PaymentStatus
    amount: int  # authorised (pre-auth) or captured (sale) amount
    created_at: datetime
    settled: bool


def check_void(payment: PaymentFacts, now: datetime) -> None:
    """Void (撤销): full amount, same business day, before settlement; otherwise refund."""
    if payment.status in (PaymentStatus.VOIDED, PaymentStatus.REVERSED):
        raise DomainError(ErrorCode.VOID_NOT_ALLOWED, f"the payment is already {payment.status}")
    if payment.status not in (PaymentStatus.CAPTURED, PaymentStatus.AUTHORIZED):
        raise DomainError(ErrorCode.VOID_NOT_ALLOWED, f"a {payment.status} payment has no effect")
    if payment.settled:
        raise DomainError(
            ErrorCode.VOID_NOT_ALLOWED, "the payment is settled: refund it instead of voiding"
        )
    if business_date(payment.created_at) != business_date(now):
        raise DomainError(
            ErrorCode.VOID_NOT_ALLOWED,
            "a void is only possible on the day of the payment: refund it instead",
        )


def check_void_reversal(payment: PaymentFacts, now: datetime) -> None:
    """Undoing a void (撤销冲正), as a void itself only on the payment's business day: after
    it, its day's settlement and statements have left it out."""
    if payment.status is not PaymentStatus.VOIDED:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION, f"no void to undo: the payment is {payment.status}"
        )
    if business_date(payment.created_at) != business_date(now):
        raise DomainError(
            ErrorCode.INVALID_TRANSITION, "a void can only be undone on the day of the payment"
        )


def check_completion_reversal(
    payment: PaymentFacts, preauthorised: bool, captured_at: datetime | None, now: datetime
) -> None:
    """Undoing a completion (完成冲正): a pre-authorisation's capture, before settlement, on
    the completion's business day; the pre-authorisation then stands again."""
    if payment.status is not PaymentStatus.CAPTURED or not preauthorised or captured_at is None:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION, f"no completion to undo: the payment is {payment.status}"
        )
    if payment.settled:
        raise DomainError(ErrorCode.INVALID_TRANSITION, "the payment is settled")
    if business_date(captured_at) != business_date(now):
        raise DomainError(
            ErrorCode.INVALID_TRANSITION, "a completion can only be undone on its day"
        )


def check_capture(
    payment: PaymentFacts,
    amount: int,
    limit_percent: Decimal = DEFAULT_COMPLETION_LIMIT_PERCENT,
) -> None:
    """Completion (预授权完成) of an authorised pre-auth, up to ``limit_percent`` of it."""
    if payment.status is not PaymentStatus.AUTHORIZED:
        raise DomainError(
            ErrorCode.CAPTURE_NOT_ALLOWED, f"only an authorized pre-auth can be captured; it is "
            f"{payment.status}",
        )  # fmt: skip
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise DomainError(ErrorCode.INVALID_AMOUNT, "the capture amount must be positive fen")
    ceiling = int(Decimal(payment.amount) * limit_percent / 100)
    if amount > ceiling:
        raise DomainError(
            ErrorCode.CAPTURE_EXCEEDS_AUTHORIZED,
            f"capture {amount} exceeds {limit_percent}% of the authorised {payment.amount}"
            f" (at most {ceiling})",
        )


def compose_rrn(day: date, sequence: int) -> str:
    """Retrieval reference number: 12 digits, ``yy`` + day of year + a 7-digit sequence of
    that day — unique per day (and across years), sortable, readable on a receipt."""
    if not 1 <= sequence <= 9_999_999:
        raise DomainError(ErrorCode.INTERNAL_ERROR, "RRN sequence exhausted for the day")
    return f"{day.year % 100:02d}{day.timetuple().tm_yday:03d}{sequence:07d}"


def masked_card_number(bin_: str, last4: str, length: int) -> str:
    """``622202*********0018`` from what is stored (the full number never is)."""
    return f"{bin_}{'*' * max(length - len(bin_) - len(last4), 0)}{last4}"
