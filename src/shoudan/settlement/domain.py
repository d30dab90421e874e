"""Settlement rules, pure: which payments a run settles, how much moves, how a shortfall
becomes debt, whether a payout may go to the merchant's account, the payout state machine.

Time (docs/settlement.md has the worked examples):

* the **cut-off** is 23:00 Asia/Shanghai (configurable). A payment captured at or after the
  cut-off of day D belongs to trade date D+1; before it, to trade date D;
* **T+1**: a payment of trade date T is due on the first working day after T (China's
  calendar: weekends and holidays off, make-up working days 调休 on);
* the run of date S settles every payment due on or before S that is not settled yet, and may
  start as soon as the cut-off of the last trade date due on S has passed — netting happens at
  the cut-off, so the payout reaches the bank on S (the run of Tuesday opens Monday 23:00; of a
  Monday after a weekend, Sunday 23:00). A run asked earlier is "in the future". A run of a
  non-working day finds nothing new; a missed day is caught up by the next run;
* **D0** (秒到): a D0 merchant's captured payments are settled every N minutes, each for the
  plan's D0 fee (never more than the payment's own net).

Money is integer fen. The amount moved from unsettled to settled is what the unsettled balance
holds beyond the nets of the payments not due yet: refunds and voids already taken from the
unsettled balance are thereby netted in the run; a merchant whose balance cannot cover its
debt keeps the debt, carried to the next run — a payout is never negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

from shoudan.core.calendar import add_working_days, is_working_day
from shoudan.core.clock import SHANGHAI
from shoudan.core.errors import DomainError, ErrorCode

DEFAULT_CUTOFF = time(23, 0)
DEFAULT_D0_EVERY_MINUTES = 5
MAX_REASON = 255
FIRST_DATE = date(2000, 1, 1)  # dates (and statement periods) before it are refused
LAST_DATE = date(9000, 12, 31)


class Term(StrEnum):
    T1 = "T1"  # next working day
    D0 = "D0"  # 秒到: every few minutes, for the plan's D0 fee


class RunStatus(StrEnum):
    RUNNING = "running"  # started; merchants done so far are recorded (a crash resumes here)
    COMPLETED = "completed"


# -- dates ----------------------------------------------------------------------------------------
def cutoff_instant(day: date, cutoff: time = DEFAULT_CUTOFF) -> datetime:
    """The cut-off of ``day`` (Asia/Shanghai) as a UTC instant."""
    return datetime.combine(day, cutoff, tzinfo=SHANGHAI).astimezone(UTC)


def trade_date(captured_at: datetime, cutoff: time = DEFAULT_CUTOFF) -> date:
    """The trade date of a capture: its Shanghai date, or the next day from the cut-off on."""
    local = captured_at.astimezone(SHANGHAI)
    day = local.date()
    return day + timedelta(days=1) if local.time() >= cutoff else day


def due_date(trade: date) -> date:
    """T+1: the first working day after the trade date."""
    return add_working_days(trade, 1)


def last_working_day_on_or_before(day: date) -> date:
    while not is_working_day(day):
        day -= timedelta(days=1)
    return day


def last_trade_date_due(run_date: date) -> date:
    """The latest trade date whose payments are due by ``run_date``: due dates grow with trade
    dates, so the run settles every trade date up to this one (the day before the last working
    day on or before the run date)."""
    return last_working_day_on_or_before(run_date) - timedelta(days=1)


def t1_capture_boundary(run_date: date, cutoff: time = DEFAULT_CUTOFF) -> datetime:
    """Payments captured strictly before this instant are due by ``run_date``."""
    return cutoff_instant(last_trade_date_due(run_date), cutoff)


def run_opens_at(run_date: date, cutoff: time = DEFAULT_CUTOFF) -> datetime:
    """When the run of ``run_date`` may start: the cut-off of the last trade date due on it,
    which is also its capture boundary (everything it settles is captured by then)."""
    return t1_capture_boundary(run_date, cutoff)


def check_run_date(run_date: date, now: datetime, cutoff: time = DEFAULT_CUTOFF) -> None:
    """A run may start once the cut-off of its last trade date has passed (and the date is a
    real one)."""
    if not FIRST_DATE <= run_date <= LAST_DATE:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"settlement dates run from {FIRST_DATE.isoformat()} to {LAST_DATE.isoformat()}",
            field="date",
        )
    opens = run_opens_at(run_date, cutoff)
    if now < opens:
        local = opens.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
        raise DomainError(
            ErrorCode.SETTLEMENT_DATE_IN_FUTURE,
            f"settlement of {run_date.isoformat()} opens at the cut-off of its last trade date, "
            f"{local} Asia/Shanghai",
            field="date",
        )


def due_run_date(now: datetime, cutoff: time = DEFAULT_CUTOFF) -> date:
    """The latest working day whose run has opened at ``now`` (what the worker settles right
    after each cut-off): the current trade date, or the working day before it. Monday 23:01 →
    Tuesday; Friday 23:01 → Friday (Monday's run opens Sunday 23:00)."""
    return last_working_day_on_or_before(trade_date(now, cutoff))


def latest_run_date(now: datetime, cutoff: time = DEFAULT_CUTOFF) -> date:
    """The latest date whose cut-off has passed at ``now`` (the label of a D0 run)."""
    today = now.astimezone(SHANGHAI).date()
    return today if now >= cutoff_instant(today, cutoff) else today - timedelta(days=1)


def parse_run_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"date must be YYYY-MM-DD, got {text!r}", field="date"
        ) from None


def d0_slot(now: datetime, every_minutes: int = DEFAULT_D0_EVERY_MINUTES) -> datetime:
    """The start of the D0 slot ``now`` falls in (UTC, on whole multiples of N minutes): a D0
    run settles what was captured before it, and one slot runs once."""
    if every_minutes < 1:
        raise DomainError(ErrorCode.CONFIGURATION_ERROR, "the D0 interval is at least a minute")
    now = now.astimezone(UTC)
    minutes = (now.hour * 60 + now.minute) // every_minutes * every_minutes
    return now.replace(hour=minutes // 60, minute=minutes % 60, second=0, microsecond=0)


def run_key(term: Term, run_date: date, slot: datetime | None = None) -> str:
    if term is Term.T1:
        return f"T1:{run_date.isoformat()}"
    assert slot is not None
    return f"D0:{slot.astimezone(UTC).strftime('%Y-%m-%dT%H:%M')}"


# -- money ----------------------------------------------------------------------------------------
def amount_to_settle(unsettled_available: int, not_due_nets: int) -> int:
    """What moves from unsettled to settled: the balance beyond the nets not due yet (never
    negative: refunds that took more than the due part are netted by later runs)."""
    return max(0, unsettled_available - max(0, not_due_nets))


def d0_fee(payment_net: int, plan_fee: int) -> int:
    """The D0 fee of one payment: the plan's, never more than the payment brings in."""
    return max(0, min(plan_fee, payment_net))


def split_charge(amount: int, available: int) -> tuple[int, int]:
    """(from the balance, carried as debt): a charge the balance cannot cover becomes debt."""
    covered = max(0, min(amount, available))
    return covered, amount - covered


@dataclass(frozen=True, slots=True)
class Netting:
    """One merchant in one run, in fen."""

    moved: int  # unsettled -> settled
    d0_fee: int
    debt_collected: int
    debt_carried: int  # the merchant's debt after the run
    payout: int  # settled -> payout in flight (0 when blocked or nothing to pay)


# -- payouts --------------------------------------------------------------------------------------
class PayoutStatus(StrEnum):
    BLOCKED = "blocked"  # no money moved: the account is not the merchant's own verified one
    PENDING = "pending"  # money in flight, waiting for the next bank batch
    EXPORTED = "exported"  # in a bank batch file
    PAID = "paid"  # the bank confirmed the line
    REJECTED = "rejected"  # the bank refused the line: the money is back in settled
    # never sent: its account stopped passing the check or was replaced before the export; the
    # money is back in settled and the next run pays it to the current verified account
    CANCELLED = "cancelled"


TRANSITIONS: dict[PayoutStatus, frozenset[PayoutStatus]] = {
    PayoutStatus.BLOCKED: frozenset({PayoutStatus.PENDING}),
    PayoutStatus.PENDING: frozenset({PayoutStatus.EXPORTED, PayoutStatus.CANCELLED}),
    PayoutStatus.EXPORTED: frozenset({PayoutStatus.PAID, PayoutStatus.REJECTED}),
    PayoutStatus.PAID: frozenset(),
    PayoutStatus.REJECTED: frozenset(),
    PayoutStatus.CANCELLED: frozenset(),
}


def transition(current: PayoutStatus | str, target: PayoutStatus) -> PayoutStatus:
    source = PayoutStatus(current)
    if target not in TRANSITIONS[source]:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION, f"a payout cannot go from {source} to {target}"
        )
    return target


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """What the payout check needs to know of the merchant's current settlement account."""

    holder_name: str
    verified: bool
    last_payout_rejected: str | None = None  # the bank's reason, if the last one bounced


def normal_name(name: str) -> str:
    """Names compare without spaces (full-width ones included) and case."""
    return "".join(name.split()).replace("\u3000", "").casefold()


def payout_block_reason(legal_name: str, account: AccountFacts | None) -> str | None:
    """Why a payout may not go out (一清: only to the merchant's own verified account), for
    staff to read; None when it may."""
    if account is None:
        return "no settlement account on file: add the merchant's own bank account"
    if not account.verified:
        return "the settlement account is not verified yet: verify it before paying out"
    if normal_name(account.holder_name) != normal_name(legal_name):
        return (
            f"the account holder {account.holder_name!r} is not the merchant's legal name "
            f"{legal_name!r}: payouts go only to the merchant's own account (一清)"
        )
    if account.last_payout_rejected:
        return (
            f"the bank rejected the last payout to this account ({account.last_payout_rejected})"
            ": replace or re-verify the account"
        )
    return None


def yuan_text(fen: int) -> str:
    """Fen as yuan with thousands separators: -123456 -> "-1,234.56"."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def rejected_payout_message(amount: int, account_masked: str | None, reason: str | None) -> str:
    """The merchant's text when the bank returns a payout (no full account number)."""
    last4 = (account_masked or "")[-4:] or "----"
    return (
        f"【收单】您尾号{last4}的结算款¥{yuan_text(amount)}被银行退回（{reason or '未知原因'}），"
        "已退回您的账户余额。请核对或更换本人名下的结算账户，核实后将重新付款。"
    )
