"""Pure refund rules: states and their one transition table, the refund policy, the fee a
refund returns, the risk score with its reasons, who may approve, when money should arrive,
and when a failed attempt is retried. No I/O: the service gathers facts, this module decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo

from shoudan.core.calendar import add_working_days
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.money import round_half_up

SHANGHAI: Final = ZoneInfo("Asia/Shanghai")
MAX_REASON_TEXT = 500
MAX_OUT_REFUND_NO = 64


class RefundStatus(StrEnum):
    REQUESTED = "requested"
    PENDING_FUNDS = "pending_funds"  # the merchant's balance is short: waits, fails after N days
    IN_REVIEW = "in_review"
    NEEDS_INFO = "needs_info"  # a reviewer asked the merchant for more material
    APPROVED = "approved"
    PROCESSING = "processing"  # at the network (or the bank, once re-routed)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABNORMAL = "abnormal"  # the network cannot return it (card closed): staff re-route it
    REJECTED = "rejected"
    CANCELED = "canceled"


S = RefundStatus
# The one transition table. A refund only ever moves along these edges.
TRANSITIONS: Final[dict[RefundStatus, frozenset[RefundStatus]]] = {
    S.REQUESTED: frozenset({S.PENDING_FUNDS, S.IN_REVIEW, S.APPROVED}),
    S.PENDING_FUNDS: frozenset({S.IN_REVIEW, S.APPROVED, S.FAILED, S.REJECTED, S.CANCELED}),
    S.IN_REVIEW: frozenset({S.NEEDS_INFO, S.APPROVED, S.REJECTED, S.CANCELED}),
    S.NEEDS_INFO: frozenset({S.IN_REVIEW, S.REJECTED, S.CANCELED}),
    S.APPROVED: frozenset({S.PROCESSING, S.CANCELED}),
    S.PROCESSING: frozenset({S.SUCCEEDED, S.FAILED, S.ABNORMAL}),
    S.ABNORMAL: frozenset({S.PROCESSING}),  # re-routed to a bank transfer
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.REJECTED: frozenset(),
    S.CANCELED: frozenset(),
}
FINAL: Final = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
# Refunds that hold (or have taken) refundable capacity: they count against the payment.
LIVE: Final = frozenset(RefundStatus) - {S.FAILED, S.REJECTED, S.CANCELED}


def transition(current: RefundStatus, target: RefundStatus) -> RefundStatus:
    if target not in TRANSITIONS[current]:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION,
            f"a refund that is {current.value} cannot become {target.value}",
            status=current.value,
        )
    return target


class RefundReason(StrEnum):
    CUSTOMER_REQUEST = "customer_request"
    PRODUCT_RETURN = "product_return"
    PRODUCT_RECALL = "product_recall"
    DUPLICATE = "duplicate"
    PAYMENT_ERROR = "payment_error"
    TRANSACTION_FAILURE = "transaction_failure"
    FRAUDULENT = "fraudulent"
    OTHER = "other"


class RequesterKind(StrEnum):
    MERCHANT = "merchant"
    STAFF = "staff"
    TERMINAL = "terminal"


class Route(StrEnum):
    ORIGINAL = "original"  # back through the network the payment came from
    BANK_TRANSFER = "bank_transfer"  # re-routed by staff to the consumer's bank account


# -- policy -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Policy:
    window_days: int = 180
    max_per_payment: int = 50


@dataclass(frozen=True, slots=True)
class PaymentForRefund:
    """What the policy needs to know of the original payment and its refunds so far."""

    status: str  # payments.domain.PaymentStatus value
    captured_amount: int
    captured_at: datetime | None
    business_date: date
    settled: bool
    redeemed: int  # prepayment redemptions
    live_refunded: int  # sum of live refunds (requested … succeeded)
    live_count: int


def check_request(
    payment: PaymentForRefund, amount: int, now: datetime, today: date, policy: Policy
) -> None:
    """Refuse a refund request the policy does not allow (nothing is written before this)."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise DomainError(ErrorCode.INVALID_AMOUNT, "amount is a positive integer number of fen")
    if payment.status != "captured" or payment.captured_at is None:
        raise DomainError(
            ErrorCode.REFUND_NOT_ALLOWED,
            f"a {payment.status} payment cannot be refunded",
            payment_status=payment.status,
        )
    if now - payment.captured_at > timedelta(days=policy.window_days):
        raise DomainError(
            ErrorCode.REFUND_WINDOW_EXPIRED,
            f"refunds are accepted within {policy.window_days} days of the payment",
        )
    if payment.live_count >= policy.max_per_payment:
        raise DomainError(
            ErrorCode.REFUND_COUNT_EXCEEDED,
            f"a payment can be refunded at most {policy.max_per_payment} times",
        )
    remainder = refundable(payment)
    if amount > remainder:
        raise DomainError(
            ErrorCode.REFUND_EXCEEDS_REFUNDABLE,
            f"at most {remainder} fen of this payment can still be refunded",
            refundable=remainder,
        )
    full = amount == payment.captured_amount and payment.live_count == 0
    if full and not payment.settled and payment.business_date == today:
        raise DomainError(
            ErrorCode.USE_VOID,
            "a full refund on the day of the payment, before settlement, is a void",
        )


def refundable(payment: PaymentForRefund) -> int:
    """Captured minus redeemed (prepayments) minus live refunds: what may still be refunded."""
    return max(0, payment.captured_amount - payment.redeemed - payment.live_refunded)


def fee_returned(
    policy: str, fee: int, captured: int, amount: int, refunded_before: int, returned_before: int
) -> int:
    """The part of the payment's fee a refund gives back. ``keep`` (the default): nothing.
    ``return_pro_rata``: the fee times the refunded share, rounded half up; the refund that
    completes the payment returns exactly what is left, so the fee returned over all refunds
    is never more or less than the fee by a rounding fen."""
    if policy != "return_pro_rata" or fee == 0:
        return 0
    if refunded_before + amount >= captured:
        return fee - returned_before
    share = round_half_up(Decimal(fee) * Decimal(amount) / Decimal(captured))
    return min(share, fee - returned_before)


# -- risk ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RiskRules:
    """Weights (0 turns a rule off) and thresholds; from configuration."""

    quick_refund_weight: int = 30
    quick_refund_minutes: int = 10
    refund_ratio_weight: int = 25
    refund_ratio_percent: int = 30
    large_ticket_weight: int = 20
    large_ticket_multiple: int = 3
    card_velocity_weight: int = 40
    card_velocity_count: int = 3
    off_hours_weight: int = 15
    business_hours: tuple[time, time] = (time(8), time(22))
    round_amount_weight: int = 15
    round_amount_min: int = 1_000_000
    round_amount_unit: int = 100_000


# The card's refunds in 24 h are counted up to a bound (this one included): past the rule's
# threshold its answer cannot change, and each request reads at most this many rows.
CARD_REFUNDS_COUNTED: Final = 100


@dataclass(frozen=True, slots=True)
class RiskFacts:
    amount: int
    payment_captured_at: datetime
    requested_at: datetime
    merchant_refunds_today: int  # live refunds requested today, this one included
    merchant_sales_today: int
    merchant_average_ticket: int | None  # None: no history to compare with
    card_refunds_24h: int | None  # refunds to the same card across merchants, this one included


@dataclass(frozen=True, slots=True)
class RiskReason:
    rule: str
    weight: int
    fact: str


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    score: int
    reasons: tuple[RiskReason, ...]


def parse_business_hours(text: str) -> tuple[time, time]:
    """``"08:00-22:00"`` → (08:00, 22:00)."""
    try:
        start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise DomainError(
            ErrorCode.CONFIGURATION_ERROR, f"business hours {text!r} are not HH:MM-HH:MM"
        ) from None
    return start, end


def _yuan(fen: int) -> str:
    return f"¥{fen // 100:,}.{fen % 100:02d}"


def card_refunds_bound(rules: RiskRules) -> int:
    return max(CARD_REFUNDS_COUNTED, rules.card_velocity_count)


def _counted(refunds: int, rules: RiskRules) -> str:
    return f"at least {refunds}" if refunds >= card_refunds_bound(rules) else str(refunds)


def assess(facts: RiskFacts, rules: RiskRules) -> RiskAssessment:
    """Each rule that fires adds its weight and says which fact triggered it."""
    reasons: list[RiskReason] = []

    def fire(rule: str, weight: int, fact: str) -> None:
        if weight > 0:
            reasons.append(RiskReason(rule, weight, fact))

    elapsed = facts.requested_at - facts.payment_captured_at
    if elapsed < timedelta(minutes=rules.quick_refund_minutes):
        minutes = int(elapsed.total_seconds() // 60)
        limit = rules.quick_refund_minutes
        fact = f"requested {minutes} min after the payment (< {limit} min)"
        fire("quick_refund", rules.quick_refund_weight, fact)
    sales = facts.merchant_sales_today
    if facts.merchant_refunds_today * 100 > sales * rules.refund_ratio_percent:
        refunds = _yuan(facts.merchant_refunds_today)
        if sales == 0:
            fact = f"refunds today {refunds} with no sales today"
        else:
            share = facts.merchant_refunds_today * 100 // sales
            fact = f"refunds today {refunds} are {share}% of sales today {_yuan(sales)}"
        fire("refund_ratio", rules.refund_ratio_weight,
             f"{fact} (> {rules.refund_ratio_percent}%)")  # fmt: skip
    average = facts.merchant_average_ticket
    if average and facts.amount > average * rules.large_ticket_multiple:
        fire("large_ticket", rules.large_ticket_weight,
             f"{_yuan(facts.amount)} is over {rules.large_ticket_multiple}x the merchant's "
             f"average ticket {_yuan(average)}")  # fmt: skip
    if facts.card_refunds_24h is not None and facts.card_refunds_24h >= rules.card_velocity_count:
        fire("card_velocity", rules.card_velocity_weight,
             f"the same card has {_counted(facts.card_refunds_24h, rules)} refunds in 24 h "
             "across merchants "
             f"(>= {rules.card_velocity_count})")  # fmt: skip
    local = facts.payment_captured_at.astimezone(SHANGHAI).time()
    opens, closes = rules.business_hours
    # hours may run past midnight (22:00-02:00): then "open" is outside the closed span
    open_now = opens <= local < closes if opens <= closes else not closes <= local < opens
    if not open_now:
        fact = f"paid at {local:%H:%M}, outside business hours {opens:%H:%M}-{closes:%H:%M}"
        fire("off_hours", rules.off_hours_weight, fact)
    if facts.amount >= rules.round_amount_min and facts.amount % rules.round_amount_unit == 0:
        fact = f"round amount {_yuan(facts.amount)} (>= {_yuan(rules.round_amount_min)})"
        fire("round_amount", rules.round_amount_weight, fact)
    return RiskAssessment(sum(r.weight for r in reasons), tuple(reasons))


# -- review and approval -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReviewThresholds:
    review_amount: int = 500_000
    review_score: int = 50
    two_approvals_amount: int = 5_000_000


def approvals_required(amount: int, score: int, thresholds: ReviewThresholds) -> int:
    """0: approved at once; 1: one reviewer or approver; 2: two different approvers."""
    if amount >= thresholds.two_approvals_amount:
        return 2
    if amount >= thresholds.review_amount or score >= thresholds.review_score:
        return 1
    return 0


APPROVER_ROLES: Final = frozenset({"approver", "admin"})
REVIEWER_ROLES: Final = APPROVER_ROLES | {"reviewer"}


def check_approval(
    *, requested_by: str, approver: str, role: str, approved_by: tuple[str, ...], required: int
) -> None:
    """Maker-checker: nobody approves their own request; two approvals come from two people;
    a reviewer may give the single approval of an ordinary review, only approvers the two of a
    large refund."""
    allowed = APPROVER_ROLES if required >= 2 else REVIEWER_ROLES
    if role not in allowed:
        raise DomainError(
            ErrorCode.FORBIDDEN,
            "this refund needs an approver" if required >= 2 else "needs a reviewer or approver",
        )
    if approver == requested_by:
        raise DomainError(ErrorCode.SELF_APPROVAL, "nobody approves their own refund request")
    if approver in approved_by:
        raise DomainError(ErrorCode.ALREADY_APPROVED, "you have already approved this refund")


# -- arrival and retries -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ArrivalRules:
    debit_days: tuple[int, int] = (1, 3)
    credit_days: tuple[int, int] = (3, 7)
    bank_transfer_days: tuple[int, int] = (1, 2)


@dataclass(frozen=True, slots=True)
class Arrival:
    earliest: date
    latest: date
    basis: str


def expected_arrival(
    method: str, funding: str | None, route: Route, start: datetime, rules: ArrivalRules
) -> Arrival:
    """When the consumer should see the money, counted in mainland working days from the day
    the refund is sent (QR wallets: the same day)."""
    day = start.astimezone(SHANGHAI).date()
    if route is Route.BANK_TRANSFER:
        low, high = rules.bank_transfer_days
        basis = "bank transfer"
    elif method != "card":
        return Arrival(day, day, "QR wallet: instant")
    elif funding == "debit":
        low, high = rules.debit_days
        basis = "debit card"
    else:
        low, high = rules.credit_days
        basis = "credit card"
    return Arrival(
        add_working_days(day, low),
        add_working_days(day, high),
        f"{basis}: {low}-{high} working days",
    )


def retry_delay(attempts: int, schedule: tuple[int, ...]) -> timedelta | None:
    """After ``attempts`` transient failures, how long to wait before the next attempt; None
    once the schedule is used up (the refund then fails)."""
    if attempts < 1 or attempts > len(schedule):
        return None
    return timedelta(seconds=schedule[attempts - 1])


def check_text(value: str | None, limit: int, what: str) -> str:
    text = (value or "").strip()
    if len(text) > limit:
        raise DomainError(ErrorCode.INVALID_INPUT, f"{what} is longer than {limit} characters")
    return text


def check_out_refund_no(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_OUT_REFUND_NO or not value.isprintable() or " " in value:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"out_refund_no is 1-{MAX_OUT_REFUND_NO} printable characters without spaces",
        )
    return value


# -- consumer messages ---------------------------------------------------------------------------
_SMS_TEMPLATES: Final = {
    "refund.created": "您的退款{amount}已受理，预计{latest}前到账。",
    "refund.approved": "您的退款{amount}已审核通过，正在退回原支付账户，预计{latest}前到账。",
    "refund.rejected": "您的退款{amount}未获通过，请联系商户了解原因。",
    "refund.succeeded": "您的退款{amount}已退回，请留意银行或钱包到账通知。",
    "refund.failed": "您的退款{amount}未能完成，请联系商户处理。",
    "refund.abnormal": "您的退款{amount}无法退回原卡，客服将与您联系改退至其他账户。",
}
SMS_SIGNATURE: Final = "【收单】"


def consumer_message(event_type: str, amount: int, latest: str, refund_id: str) -> str | None:
    """The SMS a consumer gets for a refund event (simplified Chinese), or None for events
    that do not concern them. It names the refund so customer service can find it."""
    template = _SMS_TEMPLATES.get(event_type)
    if template is None:
        return None
    body = template.format(amount=_yuan(amount), latest=latest)
    return f"{SMS_SIGNATURE}{body}退款单号{refund_id}。"
