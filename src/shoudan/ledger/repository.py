"""Ledger storage on SQL. The hot path (loading state for a batch, writing its entries) uses
the driver's cursor directly inside the SQLAlchemy-managed transaction: SQLAlchemy's per-call
overhead would otherwise cost more than SQLite itself (see docs/benchmarks.md).

SQL is written once with ``?`` placeholders and translated for psycopg (``%s``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from shoudan.core.db import DriverSQL
from shoudan.ledger.domain import (
    AccountState,
    EntryRow,
    HoldState,
    Posting,
)

CHUNK = 500  # ids per IN (...) list; far below SQLite's variable limit


class LedgerRepository:
    """Works on the driver connection of the current transaction (``raw``), whichever way
    that transaction was opened: an ORM session, a Core connection, or
    ``Database.driver_transaction``."""

    def __init__(self, raw: Any, dialect: str, cursor: Any = None) -> None:
        self.dialect = dialect
        self.is_sqlite = dialect == "sqlite"
        self.cursor: Any = cursor if cursor is not None else raw.cursor()

    @classmethod
    def of(cls, bind: Session | Connection) -> LedgerRepository:
        if isinstance(bind, Session):  # the transaction's own driver cursor, made once
            driver = DriverSQL(bind)
            return cls(None, driver.dialect.name, driver.cursor)
        return cls(bind.connection.driver_connection, bind.dialect.name)

    # -- SQL helpers ---------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self.is_sqlite else text.replace("?", "%s")

    def _in(self, column: str, count: int) -> str:
        return f"{column} IN ({', '.join('?' * count)})"

    def _chunks(self, ids: Iterable[str]) -> Iterator[list[str]]:
        ordered = sorted(set(ids))
        for start in range(0, len(ordered), CHUNK):
            yield ordered[start : start + CHUNK]

    def time_param(self, moment: datetime | None) -> Any:
        """Store instants as SQLAlchemy does: naive UTC text on SQLite, timestamptz on PG."""
        if moment is None:
            return None
        moment = moment.astimezone(UTC)
        if self.is_sqlite:
            return moment.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        return moment

    @staticmethod
    def time_value(value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # -- loading -------------------------------------------------------------------------------
    def lock_accounts(self, ids: Iterable[str]) -> dict[str, AccountState]:
        """Load accounts; on PostgreSQL lock them FOR UPDATE in id order (no deadlocks).
        SQLite needs no row locks: the write transaction (BEGIN IMMEDIATE) is the only writer."""
        found: dict[str, AccountState] = {}
        suffix = "" if self.is_sqlite else " ORDER BY id FOR UPDATE"
        for chunk in self._chunks(ids):
            self.cursor.execute(
                self._sql(
                    "SELECT id, currency, max_debit_balance, max_credit_balance, debits_posted,"
                    " credits_posted, debits_pending, credits_pending FROM ledger_accounts"
                    f" WHERE {self._in('id', len(chunk))}{suffix}"
                ),
                chunk,
            )
            for row in self.cursor.fetchall():
                found[row[0]] = AccountState(*row)
        return found

    def existing_entries(self, ids: Iterable[str]) -> dict[str, str]:
        """Content fingerprints of the stored entries among ``ids``."""
        found: dict[str, str] = {}
        for chunk in self._chunks(ids):
            self.cursor.execute(
                self._sql(
                    "SELECT id, content_hash FROM ledger_entries"
                    f" WHERE {self._in('id', len(chunk))}"
                ),
                chunk,
            )
            for entry_id, digest in self.cursor.fetchall():
                found[entry_id] = digest
        return found

    def holds(self, ids: Iterable[str]) -> dict[str, HoldState]:
        """Pending entries by id, with their postings and whether something resolved them."""
        wanted = list(ids)
        found: dict[str, HoldState] = {}
        postings: dict[str, list[Posting]] = {}
        for chunk in self._chunks(wanted):
            marks = self._in("e.id", len(chunk))
            self.cursor.execute(
                self._sql(
                    "SELECT e.id, e.expires_at, r.id FROM ledger_entries e"
                    " LEFT JOIN ledger_entries r ON r.resolves_id = e.id"
                    f" WHERE e.kind = 'pending' AND {marks}"
                ),
                chunk,
            )
            meta = self.cursor.fetchall()
            self.cursor.execute(
                self._sql(
                    "SELECT entry_id, account_id, amount, currency FROM ledger_postings"
                    f" WHERE {self._in('entry_id', len(chunk))} ORDER BY entry_id, seq"
                ),
                chunk,
            )
            for entry_id, account_id, amount, currency in self.cursor.fetchall():
                postings.setdefault(entry_id, []).append(Posting(account_id, amount, currency))
            for entry_id, expires_at, resolver in meta:
                found[entry_id] = HoldState(
                    entry_id,
                    tuple(postings.get(entry_id, ())),
                    self.time_value(expires_at),
                    resolved=resolver is not None,
                )
        return found

    def due_holds(self, now: datetime, limit: int) -> list[str]:
        self.cursor.execute(
            self._sql(
                "SELECT e.id FROM ledger_entries e"
                " LEFT JOIN ledger_entries r ON r.resolves_id = e.id"
                " WHERE e.kind = 'pending' AND e.expires_at IS NOT NULL AND e.expires_at <= ?"
                " AND r.id IS NULL ORDER BY e.expires_at, e.id LIMIT ?"
            ),
            (self.time_param(now), limit),
        )
        return [row[0] for row in self.cursor.fetchall()]

    # -- writing -------------------------------------------------------------------------------
    def write(
        self, rows: Sequence[EntryRow], accounts: Iterable[AccountState], now: datetime
    ) -> None:
        if not rows:
            return
        created = self.time_param(now)
        entries = [
            (
                row.id, row.kind.value, row.resolves_id, row.code, row.description,
                row.content_hash, self.time_param(row.expires_at), created,
            )
            for row in rows
        ]  # fmt: skip
        postings = [
            (row.id, seq, posting.account_id, posting.currency, posting.amount)
            for row in rows
            for seq, posting in enumerate(row.postings)
        ]
        balances = [
            (a.id, a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
            for a in sorted(accounts, key=lambda account: account.id)
        ]
        if self.is_sqlite:
            self._write_sqlite(entries, postings, balances)
        else:
            self._write_postgresql(entries, postings, balances)

    def _write_sqlite(
        self,
        entries: list[tuple[Any, ...]],
        postings: list[tuple[Any, ...]],
        balances: list[tuple[Any, ...]],
    ) -> None:
        self.cursor.executemany(
            "INSERT INTO ledger_entries (id, kind, resolves_id, code, description,"
            " content_hash, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            entries,
        )
        if postings:
            self.cursor.executemany(
                "INSERT INTO ledger_postings (entry_id, seq, account_id, currency, amount)"
                " VALUES (?, ?, ?, ?, ?)",
                postings,
            )
        self.cursor.executemany(
            "UPDATE ledger_accounts SET debits_posted = ?, credits_posted = ?,"
            " debits_pending = ?, credits_pending = ? WHERE id = ?",
            [(*balance[1:], balance[0]) for balance in balances],
        )

    def _write_postgresql(
        self,
        entries: list[tuple[Any, ...]],
        postings: list[tuple[Any, ...]],
        balances: list[tuple[Any, ...]],
    ) -> None:
        """One statement per table, whatever the batch size: columns travel as arrays and
        ``unnest`` turns them back into rows (a round trip per row would dominate)."""
        self.cursor.execute(
            "INSERT INTO ledger_entries (id, kind, resolves_id, code, description,"
            " content_hash, expires_at, created_at)"
            " SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[],"
            " %s::varchar[], %s::varchar[], %s::timestamptz[], %s::timestamptz[])",
            _columns(entries, 8),
        )
        if postings:
            self.cursor.execute(
                "INSERT INTO ledger_postings (entry_id, seq, account_id, currency, amount)"
                " SELECT * FROM unnest(%s::varchar[], %s::smallint[], %s::varchar[],"
                " %s::varchar[], %s::bigint[])",
                _columns(postings, 5),
            )
        self.cursor.execute(
            "UPDATE ledger_accounts a SET debits_posted = b.dp, credits_posted = b.cp,"
            " debits_pending = b.dpend, credits_pending = b.cpend"
            " FROM unnest(%s::varchar[], %s::bigint[], %s::bigint[], %s::bigint[],"
            " %s::bigint[]) AS b(id, dp, cp, dpend, cpend) WHERE a.id = b.id",
            _columns(balances, 5),
        )


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to columns (``[(a, 1), (b, 2)]`` → ``[[a, b], [1, 2]]``)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width
