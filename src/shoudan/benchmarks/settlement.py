"""``shoudan bench settlement``: wall time and peak RSS of a T+1 settlement run over N payments
of M merchants, with a DuckDB-only baseline over the same data in the same run.

Set-up (not timed), in a fresh SQLite database built by the migrations:

* M merchants made by the merchants' service (``create_merchant``, one terminal each by
  ``create_terminal``), each with a settlement account in its own legal name, verified — so
  every payout goes out (一清) and none is blocked;
* N captured card payments on the trade date settled (Tuesday 2026-11-03, 09:00–22:00
  Shanghai, before the cut-off), spread evenly over the merchants, written by SQLite itself
  in one ``INSERT … SELECT`` (the payment service would take hours for a million);
* the ledger: **one capture entry per merchant** summing that merchant's payments (channel
  receivable +gross, merchant unsettled −net, card fee revenue −fee) through
  ``Ledger.submit``. This is the seed's simplification: the payment service posts one such
  entry per payment (and a refund-capacity memo account per payment), but settlement reads
  only the merchant's balances, which are the same either way. ``ledger verify`` passes after
  the seed and after the run.

Ours: ``SettlementService.run_t1`` for Wednesday 2026-11-04, end to end (every merchant: its
due payments locked and marked settled, unsettled → settled, payout created, item row), in a
child process; peak RSS is the child's own (VmHWM). Baseline: in another child, DuckDB alone
does the equivalent aggregate and join — sum of net of the due payments per merchant, joined
to the merchant's current settlement account — over the same rows exported once (not timed)
to Parquet. The floor of the arithmetic, without locks, ledger, payouts or writes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import func, select

from shoudan import migrations
from shoudan.benchmarks.api import bench_vault
from shoudan.benchmarks.child import measure, peak_rss_mib
from shoudan.bootstrap import bootstrap
from shoudan.core.clock import SHANGHAI, FixedClock
from shoudan.core.db import Database, DriverSQL
from shoudan.core.identifiers import luhn_valid
from shoudan.ledger import chart
from shoudan.ledger.domain import Posting, Transfer
from shoudan.ledger.service import MAX_BATCH, Ledger
from shoudan.merchants.service import (
    MerchantInput,
    SettlementAccountInput,
    create_merchant,
    verify_settlement_account,
)
from shoudan.payments.domain import compose_rrn
from shoudan.settlement.domain import cutoff_instant, t1_capture_boundary
from shoudan.settlement.models import Payout, SettlementRun
from shoudan.settlement.service import SettlementService
from shoudan.terminals.service import TerminalInput, create_terminal

TRADE_DATE: Final = date(2026, 11, 3)  # a Tuesday
RUN_DATE: Final = date(2026, 11, 4)  # its T+1
MCCS: Final = ("5411", "5812", "5311", "5999")  # 9,999 merchant numbers per (area, MCC)
MERCHANTS_PER_TRANSACTION: Final = 500
FEE_PER_10K: Final = 38  # 0.38%
ACTOR: Final = "bench"


def run_clock() -> FixedClock:
    """Just after the run opens (the trade date's cut-off)."""
    return FixedClock(cutoff_instant(TRADE_DATE) + timedelta(minutes=5))


# -- seed ---------------------------------------------------------------------------------------
def _card_number(n: int) -> str:
    """A Luhn-valid 19-digit card number of its own for merchant ``n``."""
    body = f"621700001{n:09d}"
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def seed_merchants(database: Database, count: int) -> list[tuple[str, str]]:
    """``count`` active merchants with a verified account in their own name and a terminal,
    through the merchants' and terminals' services. Returns (merchant id, terminal id)."""
    vault, clock = bench_vault(), FixedClock(datetime(2026, 10, 1, tzinfo=UTC))
    ledger = Ledger(database, clock)
    made: list[tuple[str, str]] = []
    for start in range(0, count, MERCHANTS_PER_TRANSACTION):
        with database.transaction() as session:
            for n in range(start, min(count, start + MERCHANTS_PER_TRANSACTION)):
                name = f"结算压测商户{n:05d}"
                merchant = create_merchant(session, vault, ledger, MerchantInput(
                    name, "small_business", MCCS[n % len(MCCS)], "3100", "13800000000",
                    settlement_account=SettlementAccountInput(name, "中国银行上海分行",
                                                              _card_number(n)),
                ), actor=ACTOR, clock=clock)  # fmt: skip
                verify_settlement_account(session, merchant.merchant_id, actor=ACTOR, clock=clock)
                terminal_id = f"BS{n:06d}"
                create_terminal(session, vault, TerminalInput(
                    f"BENCH-S-{n:06d}", terminal_id, "epos", merchant.merchant_id,
                ), actor=ACTOR, clock=clock)  # fmt: skip
                made.append((merchant.merchant_id, terminal_id))
    return made


# The payments, generated by SQLite itself: payment x belongs to merchant x % M, captured on
# the trade date between 09:00 and 22:00 Shanghai (01:00–14:00 UTC), in id order; instants are
# stored as UTCDateTime stores them on SQLite.
GENERATED_PAYMENTS: Final = """
INSERT INTO payments (id, merchant_id, terminal_id, method, status, currency, amount,
    captured_amount, fee, net, refunded_amount, redeemed_amount, fee_plan_code, business_date,
    rrn, network, channel_reference, prepayment, description, request_hash, created_at,
    updated_at, captured_at)
WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < :count - 1),
priced AS (
    SELECT x, 100 + x * 7919 % 499900 AS amount,
           strftime('%Y-%m-%d %H:%M:%S', :start, '+' || (x * 46800 / :count) || ' seconds')
               || '.000000' AS at
    FROM n
)
SELECT printf('pay_stl%012d', x), m.merchant_id, m.terminal_id, 'card', 'captured', 'CNY',
       amount, amount, amount * :fee / 10000, amount - amount * :fee / 10000, 0, 0,
       'standard', :day, :rrn_prefix || printf('%07d', x + 1), 'unionpay',
       :rrn_prefix || printf('%07d', x + 1), 0, '', '-', at, at, at
FROM priced JOIN bench_merchants m ON m.k = x % :merchants
"""


def seed_payments(database: Database, merchants: list[tuple[str, str]], count: int) -> None:
    """``count`` captured payments over ``merchants`` in one INSERT … SELECT (SQLite only)."""
    assert database.dialect == "sqlite"
    start = datetime.combine(TRADE_DATE, datetime.min.time(), SHANGHAI) + timedelta(hours=9)
    with database.transaction() as session:
        cursor = DriverSQL(session).cursor
        cursor.execute("CREATE TEMP TABLE bench_merchants (k INTEGER PRIMARY KEY, "
                       "merchant_id TEXT, terminal_id TEXT)")  # fmt: skip
        cursor.executemany("INSERT INTO bench_merchants VALUES (?, ?, ?)",
                           [(k, m, t) for k, (m, t) in enumerate(merchants)])  # fmt: skip
        cursor.execute(GENERATED_PAYMENTS, {
            "count": count, "merchants": len(merchants), "fee": FEE_PER_10K,
            "start": start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "day": TRADE_DATE.isoformat(), "rrn_prefix": compose_rrn(TRADE_DATE, 1)[:5],
        })  # fmt: skip
        cursor.execute("DROP TABLE bench_merchants")


def seed_captures(database: Database) -> int:
    """One capture entry per merchant summing its payments (see the module's docstring).
    Returns the number of entries."""
    with database.read() as session:
        sums = DriverSQL(session).execute(
            "SELECT merchant_id, SUM(captured_amount), SUM(fee), SUM(net) FROM payments"
            " GROUP BY merchant_id ORDER BY merchant_id"
        )
    entries = [
        Transfer(f"bench:capture:{merchant_id}", tuple(p for p in (
            Posting(chart.channel_receivable("unionpay"), int(gross)),
            Posting(chart.merchant_unsettled(merchant_id), -int(net)),
            Posting(chart.fee_revenue("card"), -int(fee)),
        ) if p.amount), code="payment.capture", description="bench: the day's captures")
        for merchant_id, gross, fee, net in sums
    ]  # fmt: skip
    ledger = Ledger(database)
    for start in range(0, len(entries), MAX_BATCH):
        for result in ledger.submit(entries[start : start + MAX_BATCH]):
            result.raise_for_error()
    return len(entries)


# -- baseline data ------------------------------------------------------------------------------
def export_parquet(sqlite_path: Path, folder: Path) -> tuple[Path, Path]:
    """The payments and current settlement accounts as Parquet files (CSV first: no Arrow)."""
    import duckdb

    queries = {
        "payments": ("SELECT id, merchant_id, status, net, captured_at, settled_at FROM payments",
                     "id VARCHAR, merchant_id VARCHAR, status VARCHAR, net BIGINT, "
                     "captured_at TIMESTAMP, settled_at TIMESTAMP"),
        "accounts": ("SELECT merchant_id, id, holder_name, verified FROM "
                     "merchant_settlement_accounts WHERE replaced_at IS NULL",
                     "merchant_id VARCHAR, account_id VARCHAR, holder_name VARCHAR, "
                     "verified BOOLEAN"),
    }  # fmt: skip
    paths = []
    with sqlite3.connect(sqlite_path) as source, duckdb.connect(":memory:") as db:
        for name, (query, columns) in queries.items():
            text = folder / f"{name}.csv"
            with text.open("w", encoding="utf-8", newline="") as out:
                csv.writer(out).writerows(source.execute(query))
            parquet = folder / f"{name}.parquet"
            db.execute(
                f"COPY (SELECT * FROM read_csv(?, header = false, nullstr = '', columns = "
                f"{_struct(columns)})) TO '{parquet}' (FORMAT parquet)",
                [str(text)],
            )
            text.unlink()
            paths.append(parquet)
    return paths[0], paths[1]


def _struct(columns: str) -> str:
    pairs = (c.strip().split(" ", 1) for c in columns.split(","))
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in pairs) + "}"


BASELINE_SQL: Final = """
SELECT p.merchant_id, a.account_id, count(*) AS payments, sum(p.net) AS net
FROM read_parquet(?) p JOIN read_parquet(?) a ON a.merchant_id = p.merchant_id
WHERE p.status = 'captured' AND p.settled_at IS NULL AND p.captured_at < ?
GROUP BY p.merchant_id, a.account_id
"""


# -- children -----------------------------------------------------------------------------------
def _child_ours(url: str) -> dict[str, Any]:
    database = Database(url)
    clock = run_clock()
    try:
        service = SettlementService(database, Ledger(database, clock), bench_vault(), clock)
        started = time.perf_counter()
        run = service.run_t1(RUN_DATE, actor=ACTOR)
        seconds = time.perf_counter() - started
    finally:
        database.dispose()
    return {"seconds": seconds, "summary": _summary(run)}


def _summary(run: SettlementRun) -> dict[str, Any]:
    return {
        "run_id": run.id, "status": run.status, "merchants": run.merchants,
        "payments": run.payments, "settled_amount": run.settled_amount, "payouts": run.payouts,
        "payout_amount": run.payout_amount, "blocked": run.blocked,
    }  # fmt: skip


def _child_baseline(payments: Path, accounts: Path) -> dict[str, Any]:
    import duckdb

    boundary = t1_capture_boundary(RUN_DATE).astimezone(UTC).replace(tzinfo=None)
    started = time.perf_counter()
    with duckdb.connect(":memory:", config={"threads": 2}) as db:
        rows = db.execute(BASELINE_SQL, [str(payments), str(accounts), boundary]).fetchall()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "summary": {
        "merchants": len(rows), "payments": sum(int(r[2]) for r in rows),
        "settled_amount": sum(int(r[3]) for r in rows),
    }}  # fmt: skip


def _measure(args: list[str]) -> tuple[dict[str, Any], float]:
    return measure("shoudan.benchmarks.settlement", args)


# -- the run ------------------------------------------------------------------------------------
def _prepare(folder: Path, payments: int, merchants: int) -> tuple[str, dict[str, Any]]:
    path = folder / "bench.sqlite3"
    url = f"sqlite:///{path}"
    migrations.upgrade(url)
    database = Database(url)
    started = time.perf_counter()
    try:
        bootstrap(database)
        made = seed_merchants(database, merchants)
        merchants_s = time.perf_counter() - started
        seed_payments(database, made, payments)
        entries = seed_captures(database)
        report = Ledger(database).verify()
    finally:
        database.dispose()
    return url, {
        "bench": "settlement", "phase": "setup", "payments": payments, "merchants": merchants,
        "capture_entries": entries, "seconds": round(time.perf_counter() - started, 1),
        "merchants_seconds": round(merchants_s, 1), "ledger_verified": report.ok,
    }  # fmt: skip


def _after(url: str, run_id: str) -> dict[str, Any]:
    """What the run left: the ledger verifies, every due payment is settled, and a second
    run of the same date answers the same run without writing anything."""
    database = Database(url)
    clock = run_clock()
    try:
        ledger = Ledger(database, clock)
        report = ledger.verify()
        service = SettlementService(database, ledger, bench_vault(), clock)
        again = service.run_t1(RUN_DATE, actor=ACTOR)
        with database.read() as session:
            unsettled = DriverSQL(session).execute(
                "SELECT COUNT(*) FROM payments WHERE settled_at IS NULL"
            )[0][0]
            payouts = session.scalar(select(func.count()).select_from(Payout))
        rerun = ledger.verify()
    finally:
        database.dispose()
    return {
        "ledger_verified": report.ok, "violations": len(report.violations),
        "unsettled_payments_left": int(unsettled), "payout_rows": int(payouts or 0),
        "rerun_changes_nothing": again.id == run_id and rerun.entries == report.entries,
    }  # fmt: skip


def run(payments: int, merchants: int = 10_000) -> Iterator[dict[str, Any]]:
    """Seed, then time our run and the baseline; yields JSON-able lines (setup, result)."""
    if not 1 <= merchants <= len(MCCS) * 9_999 or payments < merchants:
        raise ValueError("need 1 to 39,996 merchants and at least one payment each")
    with tempfile.TemporaryDirectory(prefix="shoudan-bench-stl-") as tmp:
        folder = Path(tmp)
        url, setup = _prepare(folder, payments, merchants)
        started = time.perf_counter()
        parquet = export_parquet(folder / "bench.sqlite3", folder)
        setup["export_seconds"] = round(time.perf_counter() - started, 1)
        yield setup
        mine, my_rss = _measure(["ours", url])
        base, base_rss = _measure(["baseline", *map(str, parquet)])
        checks = _after(url, mine["summary"]["run_id"])
        yield {
            "bench": "settlement", "engine": "sqlite", "payments": payments,
            "merchants": merchants, "seconds": round(mine["seconds"], 2),
            "peak_rss_mib": round(my_rss, 1), "baseline": "duckdb aggregate + join only",
            "baseline_seconds": round(base["seconds"], 3),
            "baseline_peak_rss_mib": round(base_rss, 1),
            "ratio": round(mine["seconds"] / base["seconds"], 1),
            "summary": mine["summary"], "baseline_summary": base["summary"],
            "totals_agree": all(mine["summary"][k] == v for k, v in base["summary"].items()),
            **checks, "target_seconds": 60, "target_rss_mib": 1024,
        }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shoudan.benchmarks.settlement")
    parser.add_argument("role", choices=["ours", "baseline"])
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.role == "ours":
        answer = _child_ours(args.paths[0])
    else:
        answer = _child_baseline(Path(args.paths[0]), Path(args.paths[1]))
    print(json.dumps({**answer, "peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main()
