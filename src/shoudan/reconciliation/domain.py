"""Reconciliation rules (对账), pure: the classes of difference, how a record's status reads in
a channel's vocabulary, what a difference is worth, how an exception may be resolved, and the
precise "bad statement" error every parser raises.

The matching itself runs as SQL joins in DuckDB (``matching.py``); the statement layouts are
in ``layouts.py``. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Final

from shoudan.core.errors import DomainError, ErrorCode

MAX_PERIOD_DAYS: Final = 31
MAX_NOTE_LENGTH: Final = 1000


class Channel(StrEnum):
    """A statement's source; its value is also the network our records carry."""

    UNIONPAY = "unionpay"  # the card network (and UnionPay QR)
    WECHAT = "wechat"
    ALIPAY = "alipay"


class RecordKind(StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"


class ChannelStatus(StrEnum):
    """A transaction's final state as a channel reports it; ours are mapped onto the same
    words so that one comparison decides a status mismatch."""

    SUCCESS = "success"  # a captured sale / a refund paid back
    VOIDED = "voided"  # a sale cancelled the same day (void, reversal, 撤销)
    PROCESSING = "processing"  # a refund still on its way
    FAILED = "failed"  # a refund the channel could not pay
    DECLINED = "declined"  # a sale refused (no money moved)
    NOT_SENT = "not_sent"  # ours only: a refund never sent to the channel
    AUTHORIZED = "authorized"  # ours only: a pre-authorisation not completed


class ExceptionClass(StrEnum):
    MISSING_IN_OURS = "missing_in_ours"  # 长款: the channel has it, we do not
    MISSING_IN_CHANNEL = "missing_in_channel"  # 短款: we have it, the channel does not
    AMOUNT_MISMATCH = "amount_mismatch"
    STATUS_MISMATCH = "status_mismatch"


class ExceptionStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class Resolution(StrEnum):
    ADJUST = "adjust"  # an adjusting ledger entry: the difference into suspense
    WRITE_OFF = "write_off"  # the difference written off as a gain or a loss (reason needed)
    MARK_RESOLVED = "mark_resolved"  # no money moves (e.g. a timing difference)


# Our statuses in the channel's words (payments.domain.PaymentStatus and
# refunds.domain.RefundStatus values; anything not listed was never sent to the channel).
PAYMENT_STATUS_IN_CHANNEL: Final[dict[str, ChannelStatus]] = {
    "captured": ChannelStatus.SUCCESS,
    "voided": ChannelStatus.VOIDED,
    "reversed": ChannelStatus.VOIDED,
    "declined": ChannelStatus.DECLINED,
    "authorized": ChannelStatus.AUTHORIZED,
}
REFUND_STATUS_IN_CHANNEL: Final[dict[str, ChannelStatus]] = {
    "succeeded": ChannelStatus.SUCCESS,
    "processing": ChannelStatus.PROCESSING,
    "abnormal": ChannelStatus.FAILED,
    "failed": ChannelStatus.FAILED,
}
# A record of ours in one of these states must be on the channel's statement; in any other
# state its absence is no exception (a decline, a refund still in flight or never sent).
EXPECTED_ON_STATEMENT: Final = frozenset({ChannelStatus.SUCCESS, ChannelStatus.VOIDED})


def channel_status(kind: RecordKind, our_status: str) -> ChannelStatus:
    table = PAYMENT_STATUS_IN_CHANNEL if kind is RecordKind.PAYMENT else REFUND_STATUS_IN_CHANNEL
    return table.get(our_status, ChannelStatus.NOT_SENT)


def money_effect(kind: RecordKind, status: str, amount: int) -> int:
    """What a record moves between us and the channel, signed fen: a successful sale +amount
    (the channel owes us), a successful refund −amount, anything else 0."""
    if status != ChannelStatus.SUCCESS:
        return 0
    return amount if kind is RecordKind.PAYMENT else -amount


@dataclass(frozen=True, slots=True)
class Period:
    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise DomainError(ErrorCode.INVALID_INPUT, "the period ends before it starts")
        if (self.end - self.start).days + 1 > MAX_PERIOD_DAYS:
            raise DomainError(
                ErrorCode.INVALID_INPUT, f"a run covers at most {MAX_PERIOD_DAYS} days"
            )

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.start <= day <= self.end


def parse_period(start: str, end: str | None = None) -> Period:
    try:
        first = date.fromisoformat(start)
        last = date.fromisoformat(end) if end else first
    except ValueError as exc:
        raise DomainError(ErrorCode.INVALID_INPUT, "dates are YYYY-MM-DD") from exc
    return Period(first, last)


class StatementError(DomainError):
    """A statement refused before anything is written: names the file, line and column."""

    def __init__(
        self, file: str, line: int, problem: str, column: int | None = None,
        column_name: str | None = None,
    ) -> None:  # fmt: skip
        where = f"{file}: line {line}"
        if column is not None:
            where += f", column {column}" + (f" ({column_name})" if column_name else "")
        super().__init__(
            ErrorCode.STATEMENT_INVALID, f"{where}: {problem}", file=file, line=line,
            column=column, column_name=column_name,
        )  # fmt: skip


# -- resolution -------------------------------------------------------------------------------
def check_resolution(
    status: str, action: Resolution, amount_difference: int, reason: str | None
) -> None:
    """An exception resolves once; money actions need a difference to move; a write-off needs
    its reason."""
    if status != ExceptionStatus.OPEN:
        raise DomainError(ErrorCode.EXCEPTION_ALREADY_RESOLVED, "the exception is resolved")
    if action is not Resolution.MARK_RESOLVED and amount_difference == 0:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"{action.value} moves money but this exception differs by ¥0.00: use mark_resolved",
        )
    if action is Resolution.WRITE_OFF and not (reason and reason.strip()):
        raise DomainError(ErrorCode.INVALID_INPUT, "a write-off needs a reason")
