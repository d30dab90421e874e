"""The bank batch file and the bank's confirmation file: CSV layouts, pure (docs/settlement.md).

Both are UTF-8 CSV with a header row; amounts are yuan with exactly two decimals ("1234.50").
A file is read whole and checked before anything is applied: every problem is reported with
the file's name, its line and its column, and a file with any problem imports nothing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TextIO

from shoudan.core.errors import DomainError, ErrorCode

BATCH_COLUMNS: Final = (
    "batch_id", "line", "payout_id", "merchant_id", "account_name", "bank_name",
    "account_number", "amount", "currency",
)  # fmt: skip
CONFIRMATION_COLUMNS: Final = ("batch_id", "line", "payout_id", "amount", "status", "reason")
OUTCOMES: Final = frozenset({"paid", "rejected"})
MAX_ERRORS_SHOWN = 20
MAX_LINES = 1_000_000


@dataclass(frozen=True, slots=True)
class BatchLine:
    batch_id: str
    line: int
    payout_id: str
    merchant_id: str
    account_name: str
    bank_name: str
    account_number: str  # in clear: the bank needs it; the file travels to the bank only
    amount: int  # fen
    currency: str = "CNY"

    def __repr__(self) -> str:  # an account number must never reach a log
        return f"BatchLine({self.batch_id}:{self.line} {self.payout_id} {self.amount})"


@dataclass(frozen=True, slots=True)
class Confirmation:
    batch_id: str
    line: int
    payout_id: str
    amount: int  # fen
    status: str  # paid | rejected
    reason: str  # the bank's reason for a rejection ("" when paid)
    file_line: int = 0  # where it was read (for error messages)


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    column: str
    message: str


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def parse_yuan(text: str) -> int:
    """Strict: digits, a point, exactly two decimals; positive."""
    whole, dot, cents = text.partition(".")
    if not (dot and whole.isdigit() and cents.isdigit() and len(cents) == 2 and whole.isascii()):
        raise ValueError(f"amount must be yuan with two decimals like 1234.50, got {text!r}")
    fen = int(whole) * 100 + int(cents)
    if fen <= 0:
        raise ValueError("amount must be positive")
    return fen


def write_batch(lines: Iterable[BatchLine], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BATCH_COLUMNS)
    count = 0
    for item in lines:
        writer.writerow((
            item.batch_id, item.line, item.payout_id, item.merchant_id, item.account_name,
            item.bank_name, item.account_number, yuan(item.amount), item.currency,
        ))  # fmt: skip
        count += 1
    return count


def write_confirmations(rows: Iterable[Confirmation], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CONFIRMATION_COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(
            (row.batch_id, row.line, row.payout_id, yuan(row.amount), row.status, row.reason)
        )
        count += 1
    return count


def invalid(name: str, problems: list[Problem]) -> DomainError:
    """One error naming the file and every problem (the first few in the message)."""
    shown = "; ".join(
        f"{name}: line {p.line}, column {p.column}: {p.message}"
        for p in problems[:MAX_ERRORS_SHOWN]
    )
    more = len(problems) - MAX_ERRORS_SHOWN
    suffix = f" (and {more} more)" if more > 0 else ""
    return DomainError(
        ErrorCode.BANK_FILE_INVALID,
        shown + suffix,
        file=name,
        problems=[{"line": p.line, "column": p.column, "message": p.message} for p in problems],
    )


def _rows(name: str, text: str, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise invalid(name, [Problem(1, "-", "the file is empty")])
    if tuple(h.strip() for h in header) != columns:
        expected = ",".join(columns)
        raise invalid(name, [Problem(1, "-", f"the header must be {expected}")])
    rows: list[tuple[int, dict[str, str]]] = []
    problems: list[Problem] = []
    for record in reader:
        line = reader.line_num
        if not record:
            continue
        if len(record) != len(columns):
            problems.append(
                Problem(line, "-", f"{len(record)} fields where {len(columns)} are expected")
            )
            continue
        rows.append((line, dict(zip(columns, (v.strip() for v in record), strict=True))))
        if len(rows) > MAX_LINES:
            raise invalid(name, [Problem(line, "-", f"more than {MAX_LINES} lines")])
    if problems:
        raise invalid(name, problems)
    return rows


def _int(value: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return int(value)


def _field(
    problems: list[Problem], line: int, column: str, row: dict[str, str],
    parse: Callable[[str], int],
) -> int | None:
    try:
        return parse(row[column])
    except ValueError as error:
        problems.append(Problem(line, column, str(error)))
        return None


def parse_confirmations(name: str, text: str) -> list[Confirmation]:
    """Every line of a confirmation file, or one error listing every problem in it."""
    problems: list[Problem] = []
    out: list[Confirmation] = []
    seen: dict[tuple[str, int], int] = {}
    for line, row in _rows(name, text, CONFIRMATION_COLUMNS):
        number = _field(problems, line, "line", row, _int)
        amount = _field(problems, line, "amount", row, parse_yuan)
        if number is None or amount is None:
            continue
        if row["status"] not in OUTCOMES:
            problems.append(Problem(line, "status", f"must be paid or rejected: {row['status']!r}"))
            continue
        if row["status"] == "rejected" and not row["reason"]:
            problems.append(Problem(line, "reason", "a rejected line needs the bank's reason"))
            continue
        if not row["payout_id"]:
            problems.append(Problem(line, "payout_id", "empty"))
            continue
        key = (row["batch_id"], number)
        if key in seen:
            problems.append(Problem(line, "line", f"duplicates file line {seen[key]}"))
            continue
        seen[key] = line
        out.append(Confirmation(
            row["batch_id"], number, row["payout_id"], amount, row["status"],
            row["reason"][:64], line,
        ))  # fmt: skip
    if problems:
        raise invalid(name, problems)
    return out


def parse_batch(name: str, text: str) -> list[BatchLine]:
    """Every line of a batch file (what the bank simulator reads)."""
    problems: list[Problem] = []
    out: list[BatchLine] = []
    for line, row in _rows(name, text, BATCH_COLUMNS):
        number, amount = _field(problems, line, "line", row, _int), _field(
            problems, line, "amount", row, parse_yuan
        )
        if number is None or amount is None:
            continue
        out.append(BatchLine(
            row["batch_id"], number, row["payout_id"], row["merchant_id"], row["account_name"],
            row["bank_name"], row["account_number"], amount, row["currency"],
        ))  # fmt: skip
    if problems:
        raise invalid(name, problems)
    return out
