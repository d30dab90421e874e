"""``shoudan bench reconcile``: wall time and peak RSS to reconcile a channel statement of N
lines against N payments, with a DuckDB-only baseline over the same data in the same run.

Set-up (not timed): a fresh SQLite database built by the migrations, one merchant and
terminal, N captured card payments over ten business days written into the payments table by
one ``INSERT … SELECT`` over a generated series (``GENERATED_PAYMENTS``: the same rows that
``seed_payments`` writes through the columns' bind processors — a test checks it), and the
card network's statement for them (UnionPay layout) with 0.1% of lines changed for each class
of difference (amount, status, dropped, extra).

Ours: ``ReconciliationService.import_statement`` in a child process — scan (SHA-256,
encoding), read and validate every line in DuckDB, stream the payments out of SQLite with the
driver's cursor, match in DuckDB, write the run and its exceptions. Baseline: in another
child process, DuckDB alone reads the same statement file and an export of the same payments
(CSV) and does the equivalent full outer join and count per class — the floor of the join
itself, without validation, the SQL database or the writes. Peak RSS is each child's own
(``VmHWM``).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Table

from shoudan import migrations
from shoudan.auth.domain import Principal, Role
from shoudan.benchmarks.api import bench_merchant, bench_vault
from shoudan.benchmarks.child import measure, peak_rss_mib
from shoudan.bootstrap import bootstrap
from shoudan.core.clock import SHANGHAI, SystemClock
from shoudan.core.db import Database, DriverSQL
from shoudan.ledger.service import Ledger
from shoudan.payments.domain import compose_rrn
from shoudan.payments.models import Payment
from shoudan.reconciliation.domain import Channel, ChannelStatus, RecordKind
from shoudan.reconciliation.generate import ChannelTxn, write_statement
from shoudan.reconciliation.service import ReconciliationService, StatementUpload
from shoudan.terminals.service import TerminalInput, create_terminal

DAYS: Final = 10
FIRST_DAY: Final = date(2026, 11, 1)
INJECT_RATE: Final = 0.001  # per class
SEED_BATCH: Final = 50_000


@dataclass(frozen=True, slots=True)
class SeedPayment:
    id: str
    rrn: str
    channel_reference: str
    business_date: str
    status: str
    amount: int
    network: str
    method: str
    created_at: datetime


SEED_COLUMNS: Final = (
    "id", "merchant_id", "terminal_id", "method", "status", "currency", "amount",
    "captured_amount", "fee", "net", "refunded_amount", "redeemed_amount", "fee_plan_code",
    "business_date", "rrn", "network", "channel_reference", "prepayment", "description",
    "request_hash", "created_at", "updated_at",
)  # fmt: skip


def seed_payments(
    database: Database, merchant_id: str, terminal_id: str, payments: Iterable[SeedPayment]
) -> int:
    """Payments written straight into the table (no ledger, no channel): reconciliation reads
    only their references, amounts and statuses. One driver ``executemany`` per batch of
    plain tuples, every value through its column's bind processor (so the rows are stored as
    the ORM stores them). Returns how many."""
    count = 0
    rows = (_seed_row(p, merchant_id, terminal_id) for p in payments)
    while batch := list(islice(rows, SEED_BATCH)):
        with database.transaction() as session:
            driver = DriverSQL(session)
            sql, processors = _seed_statement(driver)
            processed = [
                tuple(p(v) if p else v for p, v in zip(processors, row, strict=True))
                for row in batch
            ] if any(processors) else batch  # fmt: skip
            driver.cursor.executemany(sql, processed)
        count += len(batch)
    return count


def _seed_row(p: SeedPayment, merchant_id: str, terminal_id: str) -> tuple[Any, ...]:
    captured = p.amount if p.status == "captured" else 0
    return (
        p.id, merchant_id, terminal_id, p.method, p.status, "CNY", p.amount, captured, 0,
        captured, 0, 0, "bench", p.business_date, p.rrn, p.network, p.channel_reference,
        False, "", "-", p.created_at, p.created_at,
    )  # fmt: skip


def _seed_statement(driver: DriverSQL) -> tuple[str, list[Callable[[Any], Any] | None]]:
    table = Payment.__table__
    assert isinstance(table, Table)
    quote = driver.dialect.identifier_preparer.quote
    mark = "?" if driver.is_sqlite else "%s"
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, SEED_COLUMNS))}) "
        f"VALUES ({', '.join([mark] * len(SEED_COLUMNS))})"
    )
    return sql, [table.c[c].type._cached_bind_processor(driver.dialect) for c in SEED_COLUMNS]


def txn_of(p: SeedPayment) -> ChannelTxn:
    """The card network's view of a seeded payment (matching ours exactly)."""
    status = ChannelStatus.SUCCESS if p.status == "captured" else ChannelStatus.VOIDED
    return ChannelTxn(RecordKind.PAYMENT, status, p.amount, p.created_at, p.rrn, p.id)


def _amount(n: int) -> int:
    return 100 + n * 7_919 % 499_900  # spread over ¥1 to ¥5,000; GENERATED_PAYMENTS agrees


def _payments(count: int) -> Iterator[SeedPayment]:
    """The benchmark's payments, in Python (for the statement and the baseline's export);
    GENERATED_PAYMENTS writes the same rows in SQL."""
    per_day = -(-count // DAYS)
    for n in range(count):
        day = FIRST_DAY + timedelta(days=n // per_day)
        at = datetime.combine(day, datetime.min.time(), SHANGHAI) + timedelta(
            seconds=36_000 + n % per_day * 40_000 // per_day  # in id order: cheap indexes
        )
        rrn = compose_rrn(day, n % per_day + 1)
        yield SeedPayment(
            f"pay_bench{n:012d}", rrn, rrn, day.isoformat(), "captured",
            _amount(n), "unionpay", "card", at.astimezone(UTC),
        )  # fmt: skip


# The rows of _payments(count), generated by SQLite itself (a million in seconds, where one
# executemany per row costs minutes); created_at is stored as UTCDateTime stores it on SQLite.
GENERATED_PAYMENTS: Final = f"""
INSERT INTO payments ({", ".join(SEED_COLUMNS)})
WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < :count - 1),
numbered AS (
    SELECT x, date(:first_day, '+' || (x / :per_day) || ' days') AS day,
           100 + x * 7919 % 499900 AS amount, 36000 + x % :per_day * 40000 / :per_day AS seconds
    FROM n
), keyed AS (
    SELECT *, printf('%02d%s%07d', strftime('%Y', day) % 100, strftime('%j', day),
                     x % :per_day + 1) AS rrn,
           strftime('%Y-%m-%d %H:%M:%S', day, '-8 hours', '+' || seconds || ' seconds')
               || '.000000' AS at
    FROM numbered
)
SELECT printf('pay_bench%012d', x), :merchant, :terminal, 'card', 'captured', 'CNY', amount,
       amount, 0, amount, 0, 0, 'bench', day, rrn, 'unionpay', rrn, 0, '', '-', at, at
FROM keyed
"""


def seed_generated_payments(
    database: Database, merchant_id: str, terminal_id: str, count: int
) -> None:
    """``seed_payments(…, _payments(count))`` in one INSERT … SELECT (SQLite only)."""
    assert database.dialect == "sqlite"
    with database.transaction() as session:
        DriverSQL(session).cursor.execute(GENERATED_PAYMENTS, {
            "count": count, "first_day": FIRST_DAY.isoformat(), "per_day": -(-count // DAYS),
            "merchant": merchant_id, "terminal": terminal_id,
        })  # fmt: skip


def _statement(payments: Iterable[SeedPayment], rng: random.Random) -> Iterator[ChannelTxn]:
    """The network's lines for ``payments``, with INJECT_RATE of each class of difference."""
    extra = 0
    for p in payments:
        txn = txn_of(p)
        roll = rng.random()
        if roll < INJECT_RATE:  # 短款: the network lost it
            continue
        if roll < 2 * INJECT_RATE:
            txn = ChannelTxn(txn.kind, txn.status, txn.amount + 1, txn.at, txn.reference, p.id)
        elif roll < 3 * INJECT_RATE:
            txn = ChannelTxn(txn.kind, ChannelStatus.VOIDED, txn.amount, txn.at, txn.reference)
        elif roll < 4 * INJECT_RATE:  # 长款: one we never saw, besides this one
            extra += 1
            rrn = f"{p.rrn[:5]}9{extra:06d}"
            yield ChannelTxn(RecordKind.PAYMENT, ChannelStatus.SUCCESS, 1234, txn.at, rrn)
        yield txn


def _export_ours(payments: Iterable[SeedPayment], path: Path) -> None:
    """Our records as the baseline reads them (the same keys the service builds)."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        for p in payments:
            writer.writerow((p.rrn, p.business_date, p.id, p.amount, "success"))


BASELINE_SQL: Final = """
WITH theirs AS (
    SELECT rrn, strptime(CAST(txn_date AS VARCHAR), '%Y%m%d')::DATE::VARCHAR AS day,
           amount_fen AS amount, CASE txn_type WHEN 'void' THEN 'voided' ELSE 'success' END
           AS status
    FROM read_csv(?, header = true, all_varchar = false,
                  types = {'rrn': 'VARCHAR', 'txn_date': 'VARCHAR', 'amount_fen': 'BIGINT'})
), ours AS (
    SELECT * FROM read_csv(?, header = false, columns = {'rrn': 'VARCHAR', 'day': 'VARCHAR',
        'ref': 'VARCHAR', 'amount': 'BIGINT', 'status': 'VARCHAR'})
)
SELECT CASE
        WHEN o.rrn IS NULL THEN 'missing_in_ours'
        WHEN t.rrn IS NULL THEN 'missing_in_channel'
        WHEN t.status <> o.status THEN 'status_mismatch'
        WHEN t.amount <> o.amount THEN 'amount_mismatch'
        ELSE 'matched' END AS class, count(*)
FROM theirs t FULL OUTER JOIN ours o ON t.rrn = o.rrn AND t.day = o.day
GROUP BY 1 ORDER BY 1
"""


# -- children ---------------------------------------------------------------------------------
def _child_ours(url: str, statement: Path) -> dict[str, Any]:
    database = Database(url)
    try:
        service = ReconciliationService(database, Ledger(database), SystemClock())
        upload = StatementUpload(statement, statement.name, Channel.UNIONPAY)
        started = time.perf_counter()
        run = service.import_statement(Principal("bench", Role.FINANCE), upload).run
        seconds = time.perf_counter() - started
    finally:
        database.dispose()
    counts = {
        "matched": run.matched, "missing_in_ours": run.missing_in_ours,
        "missing_in_channel": run.missing_in_channel, "amount_mismatch": run.amount_mismatch,
        "status_mismatch": run.status_mismatch,
    }  # fmt: skip
    return {"seconds": seconds, "counts": counts}


def _child_baseline(statement: Path, ours: Path) -> dict[str, Any]:
    import duckdb

    started = time.perf_counter()
    with duckdb.connect(":memory:", config={"threads": 2}) as db:
        rows = db.execute(BASELINE_SQL, [str(statement), str(ours)]).fetchall()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "counts": {str(k): int(v) for k, v in rows}}


def _measure(args: list[str]) -> tuple[dict[str, Any], float]:
    return measure("shoudan.benchmarks.reconcile", args)


# -- the run ----------------------------------------------------------------------------------
def _prepare(folder: Path, lines: int) -> tuple[str, Path, Path, float]:
    url = f"sqlite:///{folder / 'bench.sqlite3'}"
    migrations.upgrade(url)
    database = Database(url)
    started = time.perf_counter()
    try:
        bootstrap(database)
        vault, clock = bench_vault(), SystemClock()
        with database.transaction() as session:
            merchant = bench_merchant(session, database, vault, clock, "对账压测商户")
            terminal = create_terminal(
                session, vault,
                TerminalInput("BENCH-R-0001", "BR000001", "epos", merchant.merchant_id, None),
                actor="bench", clock=clock,
            )[0]  # fmt: skip
        seed_generated_payments(database, merchant.merchant_id, terminal.terminal_id, lines)
    finally:
        database.dispose()
    statement = folder / "unionpay-statement.csv"
    with statement.open("w", encoding="utf-8", newline="") as out:
        write_statement(Channel.UNIONPAY, _statement(_payments(lines), random.Random(11)), out)
    ours = folder / "ours.csv"
    _export_ours(_payments(lines), ours)
    return url, statement, ours, time.perf_counter() - started


def run(lines: int) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="shoudan-bench-recon-") as tmp:
        folder = Path(tmp)
        url, statement, ours, setup = _prepare(folder, lines)
        yield {"bench": "reconcile", "phase": "setup", "payments": lines, "seconds": setup}
        mine, my_rss = _measure(["ours", url, str(statement)])
        base, base_rss = _measure(["baseline", str(statement), str(ours)])
        yield {
            "bench": "reconcile", "engine": "sqlite", "statement_lines": _count_lines(statement),
            "payments": lines, "seconds": round(mine["seconds"], 2),
            "peak_rss_mib": round(my_rss, 1), "baseline": "duckdb join only",
            "baseline_seconds": round(base["seconds"], 2),
            "baseline_peak_rss_mib": round(base_rss, 1),
            "ratio": round(mine["seconds"] / base["seconds"], 1),
            "counts": mine["counts"], "baseline_counts": base["counts"],
            "target_seconds": 30, "target_rss_mib": 1024,
        }  # fmt: skip


def _count_lines(path: Path) -> int:
    with path.open("rb") as stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b"")) - 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shoudan.benchmarks.reconcile")
    parser.add_argument("role", choices=["ours", "baseline"])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args(argv)
    if args.role == "ours":
        answer = _child_ours(args.first, Path(args.second))
    else:
        answer = _child_baseline(Path(args.first), Path(args.second))
    print(json.dumps({**answer, "peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main()
