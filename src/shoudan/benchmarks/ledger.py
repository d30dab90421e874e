"""``shoudan bench ledger``: transfers per second through the ledger, against a raw baseline.

Ours: ``Ledger.submit`` with batches of two-posting transfers among 20 accounts whose balance
limits are on (every transfer is limit-checked), one commit per batch.
Baseline: the same number of rows of the same width (1 entry + 2 postings per transfer), into
the same schema (built by the same migrations), written by the plain driver with
``executemany`` and one commit per batch, same pragmas — the floor our own work sits on.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoudan import migrations
from shoudan.benchmarks.scratch import scratch_postgres
from shoudan.core.config import get_settings
from shoudan.core.db import Database
from shoudan.core.ids import new_id
from shoudan.ledger.domain import AccountType, Transfer, transfer
from shoudan.ledger.service import AccountSpec, Ledger
from shoudan.ledger.writer import GroupCommitWriter

ACCOUNTS = 20
ROUNDS = 3
FUNDING = "asset:bench:funding"


@dataclass(frozen=True)
class Result:
    engine: str
    batch_size: int
    transfers: int
    seconds: float
    baseline_seconds: float
    clients: int = 1
    commits: int | None = None

    def line(self) -> dict[str, Any]:
        ours = self.transfers / self.seconds
        raw = self.transfers / self.baseline_seconds
        line: dict[str, Any] = {
            "bench": "ledger",
            "engine": self.engine,
            "mode": "sequential" if self.clients == 1 else "group_commit",
            "clients": self.clients,
            "batch_size": self.batch_size,
            "transfers_per_round": self.transfers,
            "rounds": ROUNDS,
            "transfers_per_s": round(ours, 1),
            "baseline": "raw driver executemany of the same rows, same schema and pragmas, "
            "one commit per batch, one client",
            "baseline_transfers_per_s": round(raw, 1),
            "ratio": round(ours / raw, 3),
        }
        if self.commits is not None:
            line["commits"] = self.commits
        return line


def _account(i: int) -> str:
    return f"liability:bench:{i:02d}"


def _batches(count: int, size: int, rng: random.Random) -> list[list[Transfer]]:
    batches = []
    for _ in range(count // size):
        batch = []
        for _ in range(size):
            a, b = rng.sample(range(ACCOUNTS), 2)
            batch.append(transfer(new_id("t"), _account(a), _account(b), rng.randint(1, 10_000)))
        batches.append(batch)
    return batches


def _setup(ledger: Ledger) -> None:
    specs = [AccountSpec(FUNDING, AccountType.ASSET)] + [
        AccountSpec(_account(i), AccountType.LIABILITY, max_debit_balance=0)
        for i in range(ACCOUNTS)
    ]
    ledger.create_accounts(specs)
    ledger.submit(
        [transfer(new_id("fund"), FUNDING, _account(i), 10**13) for i in range(ACCOUNTS)]
    )


def _rows(batch: list[Transfer], now: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    from shoudan.ledger.domain import content_hash

    entries = [(t.id, "transfer", None, "", "", content_hash(t), None, now) for t in batch]
    postings = [
        (t.id, seq, p.account_id, p.currency, p.amount)
        for t in batch
        for seq, p in enumerate(t.postings)
    ]
    return entries, postings


def _raw_writer(url: str) -> tuple[Callable[[list[Transfer]], None], Callable[[], None]]:
    """A plain-driver connection writing the same rows as the ledger would."""
    database = Database(url)
    _setup(Ledger(database))  # same accounts, so the foreign keys hold
    raw_pool = database.engine.raw_connection()
    raw: Any = raw_pool.driver_connection
    sqlite = database.dialect == "sqlite"
    mark = "?" if sqlite else "%s"
    insert_entry = (
        "INSERT INTO ledger_entries (id, kind, resolves_id, code, description, content_hash,"
        f" expires_at, created_at) VALUES ({', '.join([mark] * 8)})"
    )
    insert_posting = (
        "INSERT INTO ledger_postings (entry_id, seq, account_id, currency, amount)"
        f" VALUES ({', '.join([mark] * 5)})"
    )
    now_value: Any = (
        datetime.now(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        if sqlite
        else datetime.now(UTC)
    )

    def write(batch: list[Transfer]) -> None:
        entries, postings = _rows(batch, now_value)
        cursor = raw.cursor()
        if sqlite:
            cursor.execute("BEGIN IMMEDIATE")
        cursor.executemany(insert_entry, entries)
        cursor.executemany(insert_posting, postings)
        raw.commit() if not sqlite else cursor.execute("COMMIT")

    def close() -> None:
        raw_pool.close()
        database.dispose()

    return write, close


def _time(run: Callable[[list[Transfer]], Any], batches: list[list[Transfer]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return time.perf_counter() - started


@contextmanager
def _fresh_databases(database_url: str | None) -> Iterator[tuple[str, str]]:
    """Two empty, migrated databases: one for the ledger, one for the baseline."""
    if database_url is None:
        # on the disk where the data lives (the data directory), not wherever /tmp is
        data_dir = get_settings().data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bench-", dir=data_dir) as tmp:
            urls = (f"sqlite:///{Path(tmp) / 'ours.db'}", f"sqlite:///{Path(tmp) / 'raw.db'}")
            for url in urls:
                migrations.upgrade(url)
            yield urls
        return
    # PostgreSQL: two scratch databases on the given server, dropped afterwards.
    with scratch_postgres(database_url, "ours", "raw") as (ours, raw):
        yield ours, raw


def _time_clients(
    writer: GroupCommitWriter, batches: list[list[Transfer]], clients: int
) -> float:
    """Each client thread submits its share of the batches, one at a time, and waits."""
    shares = [batches[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(share: list[list[Transfer]]) -> None:
        barrier.wait()
        for batch in share:
            writer.submit(batch)

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def run(
    database_url: str | None = None,
    batch_sizes: tuple[int, ...] = (1, 100, 1000),
    transfers: dict[int, int] | None = None,
    seed: int = 8583,
    clients: int = 16,
) -> Iterator[dict[str, Any]]:
    """Sequential runs (one client) against the raw baseline; then, with ``clients`` > 1,
    the same load from concurrent clients through the group-commit writer."""
    counts = transfers or {1: 3_000, 100: 30_000, 1000: 60_000}
    rng = random.Random(seed)
    with _fresh_databases(database_url) as (ours_url, raw_url):
        database = Database(ours_url)
        ledger = Ledger(database)
        _setup(ledger)
        write_raw, close_raw = _raw_writer(raw_url)
        try:
            for size in batch_sizes:
                count = counts.get(size, max(size * 20, 2_000))
                # warm both paths (statement caches, page cache) outside the timing
                ledger.submit(_batches(size, size, rng)[0])
                write_raw(_batches(size, size, rng)[0])
                # Rounds alternate ours / baseline / group commit, so that a noisy neighbour
                # slows all three alike; each figure is the median of its rounds.
                share = max(count // ROUNDS // size, 1) * size
                ours_s: list[float] = []
                raw_s: list[float] = []
                group_s: list[float] = []
                commits = 0
                for _ in range(ROUNDS):
                    ours_s.append(_time(ledger.submit, _batches(share, size, rng)))
                    raw_s.append(_time(write_raw, _batches(share, size, rng)))
                    if clients > 1:
                        with GroupCommitWriter(ledger) as writer:
                            group_s.append(
                                _time_clients(writer, _batches(share, size, rng), clients)
                            )
                            commits += writer.commits
                baseline = statistics.median(raw_s)
                yield Result(
                    database.dialect, size, share, statistics.median(ours_s), baseline
                ).line()
                if group_s:
                    yield Result(
                        database.dialect, size, share, statistics.median(group_s), baseline,
                        clients, commits // ROUNDS,
                    ).line()  # fmt: skip
        finally:
            close_raw()
            database.dispose()


def main(database_url: str | None = None) -> None:
    for line in run(database_url):
        print(json.dumps(line), flush=True)
