"""Export the ledger as a beancount file, so any accountant's tool can check our books.

* account ids map to beancount names under the root of their type
  (``liability:merchant:M1:unsettled`` → ``Liabilities:Merchant:M1:Unsettled``);
* posted entries (transfers and hold posts) become transactions dated by their business day
  (Asia/Shanghai), amounts in yuan with the fen exact;
* holds that are still pending are reservations, not movements: they are listed as comments;
* after the last entry, a ``balance`` assertion per account states our posted balance, so
  ``bean-check`` proves that the file's replay equals the balances we store.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import TextIO

from sqlalchemy import text
from sqlalchemy.orm import Session

from shoudan.core.clock import SHANGHAI
from shoudan.core.models import UTCDateTime
from shoudan.ledger.domain import AccountType

ROOTS = {
    AccountType.ASSET: "Assets",
    AccountType.LIABILITY: "Liabilities",
    AccountType.EQUITY: "Equity",
    AccountType.REVENUE: "Income",
    AccountType.EXPENSE: "Expenses",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


def beancount_name(account_id: str, account_type: AccountType) -> str:
    """A valid, readable beancount account name for one of our accounts (not yet unique:
    :func:`unique_names` settles collisions)."""
    parts = [p for p in re.split(r"[:/.]", account_id) if p]
    if parts and parts[0].lower() in {t.value for t in AccountType}:
        parts = parts[1:]  # the id already names its type; the root says it again
    components = []
    for part in parts or ["Account"]:
        cleaned = _UNSAFE.sub("-", part).strip("-") or "X"
        components.append(cleaned[0].upper() + cleaned[1:])
    return ":".join([ROOTS[account_type], *components])


def unique_names(accounts: list[tuple[str, AccountType]]) -> dict[str, str]:
    """Names for all accounts; where two ids would share a name (beancount compares them as
    written, we also guard against case-only differences), each gets a digest of its id."""
    names = {account_id: beancount_name(account_id, kind) for account_id, kind in accounts}
    taken: dict[str, int] = {}
    for name in names.values():
        taken[name.lower()] = taken.get(name.lower(), 0) + 1
    for account_id, name in names.items():
        if taken[name.lower()] > 1:
            names[account_id] = f"{name}-{hashlib.sha256(account_id.encode()).hexdigest()[:8]}"
    return names


def _comment(value: str) -> str:
    return " ".join(value.split())  # no line breaks can escape a comment


def _yuan(fen: int, currency: str) -> str:
    return f"{Decimal(fen).scaleb(-2):.2f} {currency}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_beancount(session: Session, out: TextIO) -> int:
    """Write the whole ledger; returns the number of transactions written."""
    times = UTCDateTime()
    dialect = session.get_bind().dialect

    def day(value: object) -> date:
        moment = times.process_result_value(value, dialect)
        assert moment is not None
        return moment.astimezone(SHANGHAI).date()

    accounts = list(
        session.execute(
            text("SELECT id, type, currency, name, created_at FROM ledger_accounts ORDER BY id")
        )
    )
    names = unique_names([(row[0], AccountType(row[1])) for row in accounts])
    out.write(";; shoudan ledger export (posted entries; pending holds as comments)\n")
    out.write('option "operating_currency" "CNY"\n\n')
    first_day = min((day(row[4]) for row in accounts), default=date(2000, 1, 1))
    for account_id, _type, currency, name, _created in accounts:
        label = f"  ; {_comment(name)}" if name else ""
        out.write(f"{first_day.isoformat()} open {names[account_id]} {currency}{label}\n")
    out.write("\n")

    count = 0
    last_day = first_day
    for entry_id, kind, code, description, created_at, postings in _entries(session):
        when = day(created_at)
        last_day = max(last_day, when)
        if kind == "pending":
            out.write(f"; {when.isoformat()} hold {_comment(entry_id)} (pending, not posted)\n")
            continue
        narration = description or code or kind
        out.write(
            f"{when.isoformat()} * {_quote(narration)}\n  entry_id: {_quote(entry_id)}\n"
            f"  kind: {_quote(kind)}\n"
        )
        for account_id, currency, amount in postings:
            out.write(f"  {names[account_id]}  {_yuan(amount, currency)}\n")
        out.write("\n")
        count += 1

    check_day = last_day + timedelta(days=1)
    for row in session.execute(
        text("SELECT id, currency, debits_posted - credits_posted FROM ledger_accounts ORDER BY id")
    ):
        out.write(f"{check_day.isoformat()} balance {names[row[0]]}  {_yuan(row[2], row[1])}\n")
    return count


def _entries(
    session: Session,
) -> Iterator[tuple[str, str, str, str, object, list[tuple[str, str, int]]]]:
    """Entries with postings, oldest first, streamed (a real ledger does not fit in memory)."""
    rows = session.execute(
        text(
            "SELECT e.id, e.kind, e.code, e.description, e.created_at,"
            " p.account_id, p.currency, p.amount FROM ledger_entries e"
            " JOIN ledger_postings p ON p.entry_id = e.id"
            " WHERE e.kind IN ('transfer', 'post', 'pending')"
            " ORDER BY e.created_at, e.id, p.seq"
        ),
        execution_options={"yield_per": 5_000},
    )
    current: tuple[str, str, str, str, object] | None = None
    postings: list[tuple[str, str, int]] = []
    for entry_id, kind, code, description, created_at, account_id, currency, amount in rows:
        if current is None or current[0] != entry_id:
            if current is not None:
                yield (*current, postings)
            current, postings = (entry_id, kind, code, description, created_at), []
        postings.append((account_id, currency, amount))
    if current is not None:
        yield (*current, postings)
