"""The matching engine: an in-process DuckDB with a memory limit (it spills to the scratch
directory beyond it) holding the statement (``statement.py`` loads and validates it) and our
records (streamed from the driver's cursor to a scratch CSV file, then loaded), classified by
one full outer join on the match key.

Python only streams rows in and out; the join and the counts are SQL.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import duckdb

from shoudan.reconciliation.domain import (
    EXPECTED_ON_STATEMENT,
    ChannelStatus,
    ExceptionClass,
    RecordKind,
)

FETCH: Final = 10_000
MEMORY_LIMIT: Final = "512MB"

OUR_COLUMNS: Final = {
    "kind": "VARCHAR", "key": "VARCHAR", "ref": "VARCHAR", "merchant_id": "VARCHAR",
    "amount": "BIGINT", "status": "VARCHAR",
}  # fmt: skip


OurRow = Sequence[Any]  # kind, key, ref, merchant_id, amount, status (ChannelStatus value)


@dataclass(frozen=True, slots=True)
class Difference:
    """One exception as the join found it (``text``: the statement's line as the file has it)."""

    exception_class: ExceptionClass
    kind: str
    key: str
    line: int | None
    text: str | None
    their_amount: int | None
    their_status: str | None
    ref: str | None
    merchant_id: str | None
    our_amount: int | None
    our_status: str | None
    difference: int  # theirs − ours, in money moved (signed fen)


@dataclass(frozen=True, slots=True)
class Tallies:
    statement_lines: int
    statement_net: int
    our_records: int
    our_net: int


class _CsvSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        self.rows = 0

    def write_many(self, rows: Sequence[Iterable[Any]]) -> None:
        self._writer.writerows(rows)
        self.rows += len(rows)

    def close(self) -> None:
        self._file.close()


# What a record moves between us and the channel: domain.money_effect, as SQL (a test keeps
# the two in step).
def _effect(alias: str) -> str:
    return (
        f"CASE WHEN {alias}.status = '{ChannelStatus.SUCCESS.value}' THEN CASE {alias}.kind "
        f"WHEN '{RecordKind.PAYMENT.value}' THEN {alias}.amount ELSE -{alias}.amount END ELSE 0 END"
    )


_EXPECTED: Final = ", ".join(f"'{status.value}'" for status in sorted(EXPECTED_ON_STATEMENT))

# The one classification. Order matters: a line of ours the channel lacks is an exception
# only when ours says the money moved (or was voided); a status difference outranks an
# amount difference, so each line lands in exactly one class.
CLASSIFY: Final = f"""
CREATE TABLE classified AS
SELECT
    coalesce(t.kind, o.kind) AS kind, coalesce(t.key, o.key) AS key,
    t.line, t.amount AS their_amount, t.status AS their_status,
    o.ref, o.merchant_id, o.amount AS our_amount, o.status AS our_status,
    coalesce({_effect("t")}, 0) - coalesce({_effect("o")}, 0) AS difference,
    CASE
        WHEN o.key IS NULL THEN '{ExceptionClass.MISSING_IN_OURS.value}'
        WHEN t.key IS NULL THEN CASE WHEN o.status IN ({_EXPECTED})
            THEN '{ExceptionClass.MISSING_IN_CHANNEL.value}' ELSE 'unexpected' END
        WHEN t.status <> o.status THEN '{ExceptionClass.STATUS_MISMATCH.value}'
        WHEN t.amount <> o.amount THEN '{ExceptionClass.AMOUNT_MISMATCH.value}'
        ELSE 'matched'
    END AS class
FROM theirs t FULL OUTER JOIN ours o ON t.key = o.key
"""


class Matcher:
    """One run's DuckDB. Use as a context manager; the scratch directory is the caller's."""

    def __init__(self, scratch: Path, threads: int = 2, memory_limit: str = MEMORY_LIMIT) -> None:
        self.scratch = scratch
        self.db = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": memory_limit,
                "threads": threads,
                "temp_directory": str(scratch / "spill"),
                "preserve_insertion_order": True,  # statement.py numbers lines by order
            },
        )
        self._ours = _CsvSink(scratch / "ours.csv")

    def __enter__(self) -> Matcher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._ours.close()
        self.db.close()

    @property
    def ours_written(self) -> int:
        return self._ours.rows

    # -- loading ----------------------------------------------------------------------------
    def add_ours(self, batches: Iterable[Sequence[OurRow]]) -> int:
        """Write our records (batches of rows); how many so far."""
        for batch in batches:
            self._ours.write_many(batch)
        return self._ours.rows

    def unknown_refund_keys(self) -> list[str]:
        """Refund keys on the statement that none of our loaded records has (looked up once
        more by id: a refund's date at the channel may differ from ours)."""
        self._ours.close()
        self._load("ours", self._ours.path, OUR_COLUMNS)
        rows = self.db.execute(
            "SELECT key FROM theirs WHERE kind = 'refund' "
            "AND key NOT IN (SELECT key FROM ours) ORDER BY key"
        ).fetchall()
        return [str(row[0]) for row in rows]

    def add_late_ours(self, batches: Iterable[Sequence[OurRow]]) -> None:
        for batch in batches:
            if batch:
                self.db.executemany(
                    "INSERT INTO ours VALUES (?, ?, ?, ?, ?, ?)", [tuple(row) for row in batch]
                )

    def _load(self, table: str, path: Path, columns: dict[str, str]) -> None:
        self.db.execute(
            f"CREATE TABLE {table} AS SELECT * FROM read_csv(?, header = false, "
            f"columns = {_struct(columns)}, quote = '\"', escape = '\"', delim = ',')",
            [str(path)],
        )

    # -- classifying ------------------------------------------------------------------------
    def classify(self) -> dict[str, int]:
        """Counts per class (``matched``, the four exception classes, ``unexpected``: ours not
        on the statement in a state where that is normal)."""
        self.db.execute(CLASSIFY)
        counts = self.db.execute("SELECT class, count(*) FROM classified GROUP BY class")
        return {str(name): int(count) for name, count in counts.fetchall()}

    def tallies(self) -> Tallies:
        """Lines and net money of each side (after ``classify``)."""
        row = self.db.execute(
            f"""
            SELECT (SELECT count(*) FROM theirs t), (SELECT coalesce(sum({_effect("t")}), 0)
                    FROM theirs t),
                   (SELECT count(*) FROM ours o), (SELECT coalesce(sum({_effect("o")}), 0)
                    FROM ours o)
            """
        ).fetchone()
        assert row is not None
        return Tallies(*(int(value) for value in row))

    def differences(self) -> Iterator[Difference]:
        cursor = self.db.execute(
            f"""
            SELECT c.class, c.kind, c.key, c.line, l.text, c.their_amount, c.their_status,
                   c.ref, c.merchant_id, c.our_amount, c.our_status, c.difference
            FROM classified c LEFT JOIN lines l ON l.line = c.line
            WHERE c.class IN ({", ".join(f"'{e.value}'" for e in ExceptionClass)})
            ORDER BY c.line NULLS LAST, c.key
            """
        )
        while batch := cursor.fetchmany(FETCH):
            for row in batch:
                yield Difference(ExceptionClass(row[0]), *row[1:])


def _struct(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items()) + "}"
