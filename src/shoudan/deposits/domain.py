"""Deposit (押金) rules, pure: the states, which refund path applies, how much goes back, the
day counts and the request checks. No I/O: the service loads the facts, this module decides.

Days are Asia/Shanghai calendar days. "Within N days of an event" means the calendar date is at
most N days after the event's date: day 0 is the event's own date, day N is still inside, day
N+1 is outside (cooling-off, the activation window and the request deadline all count so).
Depreciation counts *started* months since activation: the activation date starts month 1, the
same day-of-month one month later starts month 2 (clamped to the month's last day).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from shoudan.core.clock import SHANGHAI
from shoudan.core.errors import DomainError, ErrorCode

MAX_REASON = 500


class DepositStatus(StrEnum):
    CHARGED = "charged"  # charged at activation, still owed by the merchant (in part)
    HELD = "held"  # paid: up front, or collected from a settlement
    IN_REVIEW = "in_review"  # the merchant asked for it back; staff decide
    BLOCKED_DEBT = "blocked_debt"  # decided, waiting until the merchant owes nothing
    REFUNDED = "refunded"  # (some of) it went back to the merchant's settled balance
    FORFEITED = "forfeited"  # nothing went back: all of it is revenue


OPEN = frozenset({DepositStatus.CHARGED, DepositStatus.HELD})
FINAL = frozenset({DepositStatus.REFUNDED, DepositStatus.FORFEITED})
_CLOSING = frozenset({DepositStatus.BLOCKED_DEBT, *FINAL})

# The one table of allowed moves.
TRANSITIONS: dict[DepositStatus, frozenset[DepositStatus]] = {
    DepositStatus.CHARGED: frozenset({DepositStatus.HELD, DepositStatus.IN_REVIEW, *_CLOSING}),
    DepositStatus.HELD: frozenset({DepositStatus.IN_REVIEW, *_CLOSING}),
    DepositStatus.IN_REVIEW: frozenset({DepositStatus.CHARGED, DepositStatus.HELD, *_CLOSING}),
    DepositStatus.BLOCKED_DEBT: FINAL,
    DepositStatus.REFUNDED: frozenset(),
    DepositStatus.FORFEITED: frozenset(),
}


class RequestStatus(StrEnum):
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    REJECTED = "rejected"


class Basis(StrEnum):
    """Why the deposit is closed, and so how much goes back."""

    TARGET_REACHED = "target_reached"  # full refund
    COOLING_OFF = "cooling_off"  # full refund
    TERMINATION = "termination"  # deposit − penalty − depreciation, never below zero


class ReturnCondition(StrEnum):
    UNUSED = "unused"
    USED = "used"
    DAMAGED = "damaged"


def transition(current: DepositStatus | str, target: DepositStatus) -> DepositStatus:
    source = DepositStatus(current)
    if target not in TRANSITIONS[source]:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION,
            f"a deposit that is {source.value} cannot become {target.value}",
            status=source.value,
        )
    return target


# -- days and months ---------------------------------------------------------------------------
def local_day(moment: datetime) -> date:
    return moment.astimezone(SHANGHAI).date()


def days_since(start: datetime, moment: datetime) -> int:
    """Calendar days (Asia/Shanghai) from ``start``'s date to ``moment``'s date."""
    return (local_day(moment) - local_day(start)).days


def within_days(start: datetime, moment: datetime, days: int) -> bool:
    """Day 0 (the start's own date) to day ``days`` inclusive."""
    return 0 <= days_since(start, moment) <= days


def last_day_within(start: datetime, days: int) -> date:
    return local_day(start) + timedelta(days=days)


def add_months(day: date, months: int) -> date:
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def started_months(activated_at: datetime, moment: datetime) -> int:
    """Months started since activation: 1 on the activation date, 2 from the same date a month
    later, and so on; 0 before activation."""
    start, end = local_day(activated_at), local_day(moment)
    if end < start:
        return 0
    months = (end.year - start.year) * 12 + end.month - start.month
    if add_months(start, months) > end:
        months -= 1
    return months + 1


# -- deciding a refund ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Terms:
    """The deposit part of a contract (``onboarding.terms.ContractTerms``), as the rules need."""

    amount: int
    activation_target: int  # 0: no target path
    activation_window_days: int
    cooling_off_days: int
    termination_penalty: int
    monthly_depreciation: int
    deposit_refund_deadline_days: int


@dataclass(frozen=True, slots=True)
class Facts:
    """What happened to the device and its deposit, as recorded."""

    activated_at: datetime | None
    delivered_at: datetime | None
    returned_at: datetime | None
    return_condition: str | None
    terminated_at: datetime | None
    target_reached_at: datetime | None


@dataclass(frozen=True, slots=True)
class Outcome:
    basis: Basis
    refund: int  # fen back to the merchant
    penalty: int  # fen kept as penalty revenue
    depreciation: int  # fen kept as depreciation revenue

    @property
    def kept(self) -> int:
        return self.penalty + self.depreciation


def full_refund(terms: Terms, basis: Basis) -> Outcome:
    return Outcome(basis, terms.amount, 0, 0)


def termination(terms: Terms, activated_at: datetime | None, at: datetime) -> Outcome:
    """Deposit − penalty − depreciation, never below zero: the penalty is taken first, then
    depreciation up to what is left. A device never activated has no depreciation."""
    months = started_months(activated_at, at) if activated_at is not None else 0
    penalty = min(terms.amount, terms.termination_penalty)
    depreciation = min(terms.amount - penalty, terms.monthly_depreciation * months)
    return Outcome(Basis.TERMINATION, terms.amount - penalty - depreciation, penalty, depreciation)


def is_cooling_off_return(terms: Terms, facts: Facts) -> bool:
    return (
        facts.returned_at is not None
        and facts.delivered_at is not None
        and facts.return_condition == ReturnCondition.UNUSED.value
        and within_days(facts.delivered_at, facts.returned_at, terms.cooling_off_days)
    )


def decide(terms: Terms, facts: Facts, now: datetime) -> Outcome:
    """The refund the recorded facts give: target reached, then cooling-off, else the
    termination formula at the return, the termination, or (a merchant request) now."""
    if facts.target_reached_at is not None:
        return full_refund(terms, Basis.TARGET_REACHED)
    if is_cooling_off_return(terms, facts):
        return full_refund(terms, Basis.COOLING_OFF)
    ended = facts.returned_at or facts.terminated_at or now
    return termination(terms, facts.activated_at, ended)


def has_target(terms: Terms) -> bool:
    return terms.activation_target > 0


def target_reached(terms: Terms, card_volume: int) -> bool:
    """Reached at exactly the target: ``volume >= target``."""
    return has_target(terms) and card_volume >= terms.activation_target


def in_activation_window(terms: Terms, activated_at: datetime, moment: datetime) -> bool:
    return within_days(activated_at, moment, terms.activation_window_days)


def window_end(terms: Terms, activated_at: datetime) -> datetime:
    """The first instant after the window (midnight in Shanghai after its last day)."""
    last = last_day_within(activated_at, terms.activation_window_days) + timedelta(days=1)
    return datetime(last.year, last.month, last.day, tzinfo=SHANGHAI)


# -- money ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Payout:
    """Where a closing deposit goes: the merchant's own unpaid part of it is cancelled first
    (credit its debt), the rest of the refund to its settled balance, the kept part to revenue."""

    debt_offset: int
    to_settled: int
    penalty: int
    depreciation: int


def payout(outcome: Outcome, outstanding: int) -> Payout:
    offset = min(outstanding, outcome.refund)
    return Payout(offset, outcome.refund - offset, outcome.penalty, outcome.depreciation)


def is_blocked(debt_balance: int, unpaid_deposits: int) -> bool:
    """Blocked while the merchant owes anything besides the unpaid parts of its open deposits
    (those are matched by the deposits themselves: a refund cancels them, never pays them)."""
    return debt_balance - unpaid_deposits > 0


def allocate(amount: int, outstanding: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """A collection pays the deposits' unpaid parts oldest first: (deposit id, fen paid)."""
    paid: list[tuple[str, int]] = []
    left = amount
    for deposit_id, owed in outstanding:
        if left <= 0:
            break
        share = min(left, owed)
        if share > 0:
            paid.append((deposit_id, share))
            left -= share
    return paid


# -- merchant requests ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Materials:
    phone: str
    id_number: str
    bank_card_last4: str

    def __repr__(self) -> str:  # personal data stays out of logs
        return "Materials(***)"


def _normal(value: str) -> str:
    return "".join(value.split()).upper()


def check_materials(given: Materials, on_record: Materials) -> None:
    """Every item must match our records; the error names the first that does not."""
    for field in ("phone", "id_number", "bank_card_last4"):
        expected = _normal(getattr(on_record, field))
        if not expected or _normal(getattr(given, field)) != expected:
            raise DomainError(
                ErrorCode.DEPOSIT_MATERIALS_MISMATCH,
                f"{field} does not match our records",
                field=field,
            )


def check_deadline(terms: Terms, start: datetime, now: datetime) -> None:
    """A request is accepted up to day N (``deposit_refund_deadline_days``) after the deposit
    started (activation, or its up-front payment for a device never activated)."""
    if not within_days(start, now, terms.deposit_refund_deadline_days):
        last = last_day_within(start, terms.deposit_refund_deadline_days)
        raise DomainError(
            ErrorCode.DEPOSIT_REFUND_DEADLINE_PASSED,
            f"deposit refunds could be requested until {last.isoformat()}",
            deadline=last.isoformat(),
        )


def check_reason(reason: str) -> str:
    text = " ".join(reason.split())
    if not text or len(text) > MAX_REASON:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"reason is 1-{MAX_REASON} characters", field="reason"
        )
    return text


# -- notifications ----------------------------------------------------------------------------
def yuan(fen: int) -> str:
    return f"¥{fen // 100}.{fen % 100:02d}"


def merchant_message(event: str, serial_number: str, amount: int, refund: int | None) -> str | None:
    """The SMS text for a deposit event, or None when the merchant is not texted about it."""
    device = f"终端{serial_number}"
    texts = {
        "deposit.charged": f"【收单】{device}已激活，押金{yuan(amount)}将从首笔结算中扣收。",
        "deposit.paid": f"【收单】已收到{device}的押金{yuan(amount)}。",
        "deposit.blocked": f"【收单】{device}押金退还暂缓：您尚有欠款，结清后自动退还。",
        "deposit.refunded": f"【收单】{device}押金已退还{yuan(refund or 0)}至您的结算账户。",
        "deposit.forfeited": f"【收单】{device}押金{yuan(amount)}按合同不予退还。",
        "deposit.refund_requested": f"【收单】已收到{device}的押金退还申请，审核后通知您。",
        "deposit.refund_rejected": f"【收单】{device}的押金退还申请未通过审核。",
    }
    return texts.get(event)
