"""A statement read and validated in DuckDB: its lines numbered as the file has them, split
into values, every rule of the layout checked and every line normalised (kind, match key,
date, amount, status) by one SQL pass. Python looks only at the few lines around the table
(preamble, header, totals) and, when a rule fails, at the first refused line, to name its
column and say why (``layouts.Reader``).

Tables left in the run's DuckDB: ``lines`` (line, text) and ``theirs`` (line, kind, key, day,
amount, status, received); ``matching.py`` joins them with ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Final

from shoudan.reconciliation import source
from shoudan.reconciliation.domain import Period, RecordKind, StatementError
from shoudan.reconciliation.layouts import (
    MAX_FEN_DIGITS,
    WHITESPACE,
    Layout,
    Reader,
    Totals,
    sql_text,
)

WINDOW: Final = 256  # lines fetched at a time around the table

# One VARCHAR per line: NUL as the delimiter (scan refuses NUL bytes), no quoting. With
# insertion order kept, the scan's order is the file's, so row_number() is the line number;
# an empty line reads as NULL and keeps its number.
READ_LINES: Final = """
CREATE OR REPLACE TABLE lines AS
SELECT row_number() OVER () AS line, coalesce(text, '') AS text
FROM read_csv(?, columns = {'text': 'VARCHAR'}, header = false, delim = ?, quote = '',
              escape = '', auto_detect = false, strict_mode = false)
"""

# A line's values: split on commas, or through the quoted-value pattern when it has quotes.
SPLIT: Final = (
    "CASE WHEN contains(text, '\"') THEN list_transform(regexp_extract_all(text || ',', "
    f"{sql_text(source.CSV_VALUE)}, 1), lambda x: CASE WHEN starts_with(x, '\"') "
    "THEN replace(x[2:-2], '\"\"', '\"') ELSE x END) ELSE string_split(text, ',') END"
)
CSV_OK: Final = (
    f"(NOT contains(text, '\"') OR regexp_full_match(text || ',', {sql_text(source.CSV_LINE)}))"
)

MACROS: Final = (
    f"""
    CREATE OR REPLACE MACRO strip(x, padded) AS
        CASE WHEN padded THEN trim(x, '{WHITESPACE}') ELSE x END;
    CREATE OR REPLACE MACRO yuan_ok(x) AS regexp_full_match(x, '[0-9]{{1,13}}\\.[0-9]{{2}}');
    CREATE OR REPLACE MACRO signed_yuan_ok(x) AS
        regexp_full_match(x, '-?[0-9]{{1,13}}\\.[0-9]{{2}}');
    CREATE OR REPLACE MACRO yuan(x) AS TRY_CAST(replace(x, '.', '') AS BIGINT);
    CREATE OR REPLACE MACRO fen_ok(x) AS regexp_full_match(x, '[0-9]{{1,{MAX_FEN_DIGITS}}}');
    CREATE OR REPLACE MACRO ymd_day(x) AS CASE
        WHEN regexp_full_match(x, '[0-9]{{8}}') AND x[1:4] <> '0000'
        THEN strftime(try_strptime(x, '%Y%m%d'), '%Y-%m-%d') END;
    CREATE OR REPLACE MACRO iso_day(x) AS CASE
        WHEN regexp_full_match(x, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}} .{{8}}') AND x[1:4] <> '0000'
        THEN strftime(try_strptime(x[1:10], '%Y-%m-%d'), '%Y-%m-%d') END;
    """
)

# Does any value need stripping? (Stripping every value costs more than the rest together.)
PADDED: Final = (
    f"(contains(text, '\"') OR regexp_matches(text, "
    f"'(^|,)[{WHITESPACE}]|[{WHITESPACE}](,|$)'))"
)

THEIRS: Final = """
CREATE OR REPLACE TABLE theirs AS
SELECT line, {day} AS day, {kind} AS kind, {key} AS key, {amount} AS amount,
       {status} AS status, {received} AS received,
       coalesce(width = {width} AND csv_ok AND day IS NOT NULL AND in_run(day) AND ({ok}),
                false) AS ok
FROM (
    SELECT line, len(f) AS width, {csv_ok} AS csv_ok, {values}
    FROM (SELECT line, text, {split} AS f, {padded} AS padded
          FROM lines WHERE line > ? AND line < ?)
)
"""
_VALUE: Final = re.compile(r"\bv(\d+)\b")

TOTALS: Final = f"""
SELECT count(*),
       count(*) FILTER (kind = '{RecordKind.PAYMENT.value}'),
       coalesce(sum(amount) FILTER (kind = '{RecordKind.PAYMENT.value}'), 0),
       count(*) FILTER (kind = '{RecordKind.REFUND.value}'),
       coalesce(sum(amount) FILTER (kind = '{RecordKind.REFUND.value}'), 0),
       coalesce(sum(received) FILTER (kind = '{RecordKind.PAYMENT.value}'), 0),
       coalesce(sum(received) FILTER (kind = '{RecordKind.REFUND.value}'), 0),
       min(day), max(day)
FROM theirs
"""

DUPLICATE: Final = """
SELECT line, first_line, key FROM (
    SELECT line, key, min(line) OVER (PARTITION BY key) AS first_line,
           row_number() OVER (PARTITION BY key ORDER BY line) AS nth
    FROM theirs
) WHERE nth = 2 ORDER BY line LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class Statement:
    lines: int  # data lines
    first_day: str
    last_day: str


def load(
    db: Any, path: Path, file: str, layout: Layout, period: Period | None
) -> Statement:  # fmt: skip
    """Read the UTF-8 statement at ``path`` into ``db`` and validate it; any problem is a
    ``StatementError`` naming ``file``, the line and, where it applies, the column."""
    reader = Reader(file, layout, period)
    read_lines(db, path)
    header = reader.header(_rows(db, reader, 1))
    footer_start = _footer_start(db, reader, header)
    normalise(db, layout, period, header, footer_start)
    bad = db.execute("SELECT min(line) FROM theirs WHERE NOT ok").fetchone()[0]
    if bad is not None:
        raise _refusal(db, reader, int(bad))
    totals, first_day, last_day = _totals(db)
    if totals.rows == 0:
        raise reader.error(header, "the statement has no transaction lines")
    reader.check_footer(list(_rows(db, reader, footer_start)), totals)
    _refuse_duplicates(db, file)
    assert first_day is not None and last_day is not None
    return Statement(totals.rows, first_day, last_day)


def read_lines(db: Any, path: Path) -> None:
    """Table ``lines``: every line of the UTF-8 file at ``path``, numbered."""
    db.execute(READ_LINES, [str(path), "\0"])


def normalise(db: Any, layout: Layout, period: Period | None, after: int, before: int) -> None:
    """Table ``theirs``: lines ``after`` < line < ``before`` normalised, each with ``ok``:
    whether it passes every rule of the layout (and is in ``period``)."""
    _define_macros(db, layout, period)
    record = layout.sql_record()
    used = sorted({int(n) for part in astuple(record) for n in _VALUE.findall(part)})
    values = ", ".join(f"clean(strip(f[{n}], padded)) AS v{n}" for n in used)
    db.execute(
        THEIRS.format(
            day=record.day, kind=record.kind, key=record.key, amount=record.amount,
            status=record.status, received=record.received, ok=record.ok,
            width=len(layout.columns), csv_ok=CSV_OK, split=SPLIT, values=values,
            padded=PADDED,
        ),
        [after, before],
    )  # fmt: skip


def _rows(db: Any, reader: Reader, start: int) -> Iterator[tuple[int, list[str]]]:
    """(line, values) from line ``start`` to the end, a window at a time."""
    while True:
        window = db.execute(
            "SELECT line, text FROM lines WHERE line >= ? AND line < ? ORDER BY line",
            [start, start + WINDOW],
        ).fetchall()
        for line, text in window:
            yield line, _values(reader, line, text)
        if len(window) < WINDOW:
            return
        start += WINDOW


def _values(reader: Reader, line: int, text: str) -> list[str]:
    try:
        return source.parse_line(text)
    except source.NotCsv as exc:
        raise reader.error(line, f"not valid CSV: {exc}") from None


def _footer_start(db: Any, reader: Reader, header: int) -> int:
    """The first line of the block after the data (one past the last line if none)."""
    hint = reader.layout.footer_hint
    if hint is not None:
        cursor = db.execute(
            f"SELECT line, text FROM lines WHERE line > ? AND {hint} ORDER BY line", [header]
        )
        while batch := cursor.fetchmany(WINDOW):
            for line, text in batch:
                try:
                    values = source.parse_line(text)
                except source.NotCsv:
                    continue  # a data line: the data rules refuse it
                if reader.layout.is_footer(values):
                    return int(line)
    return int(db.execute("SELECT count(*) FROM lines").fetchone()[0]) + 1


def _define_macros(db: Any, layout: Layout, period: Period | None) -> None:
    db.execute(MACROS)
    db.execute(f"CREATE OR REPLACE MACRO clean(x) AS {layout.sql_clean}")
    in_run = "true"
    if period is not None:
        in_run = f"d BETWEEN '{period.start.isoformat()}' AND '{period.end.isoformat()}'"
    db.execute(f"CREATE OR REPLACE MACRO in_run(d) AS {in_run}")


def _refusal(db: Any, reader: Reader, line: int) -> StatementError:
    text = db.execute("SELECT text FROM lines WHERE line = ?", [line]).fetchone()[0]
    found = reader.line_error(line, _values(reader, line, text))
    if found is None:  # the SQL and the Python rules disagree: still refuse, by line
        return reader.error(line, "refused by the layout's rules")
    return found


def _totals(db: Any) -> tuple[Totals, str | None, str | None]:
    row = db.execute(TOTALS).fetchone()
    rows, payments, paid, refunds, refunded, trade_received, refund_received = map(int, row[:7])
    extra = {
        "trade": payments, "trade_received": trade_received,
        "refund": refunds, "refund_received": refund_received,
    }  # fmt: skip
    return Totals(rows, payments, paid, refunds, refunded, extra), row[7], row[8]


def _refuse_duplicates(db: Any, file: str) -> None:
    row = db.execute(DUPLICATE).fetchone()
    if row is not None:
        line, first_line, key = int(row[0]), int(row[1]), str(row[2])
        raise StatementError(
            file, line,
            f"duplicates line {first_line} (the same transaction, {_describe_key(key)})",
        )  # fmt: skip


def _describe_key(key: str) -> str:
    parts = key.split("|")
    if parts[0] == "R":
        return f"refund {parts[1]}"
    return f"reference {parts[1]} on {parts[2]}"


def values_of(layout: Layout, text: str) -> list[str]:
    """A line's values as the layout cleans them (for an exception's ``their_values``)."""
    return layout.clean(source.parse_line(text))
