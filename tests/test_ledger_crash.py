"""Crash durability on SQLite: what ``Ledger.submit`` acknowledged survives a SIGKILL.

A child process (``tests/crash_child.py``) posts batches in a loop and prints every entry id
once ``submit`` has returned. The parent kills it with SIGKILL at an arbitrary moment (almost
always in the middle of a batch), then reopens the database: every acknowledged id must be
there, the ledger must verify (zero sums, balances equal the replay, limits, holds), and the
``shoudan ledger verify`` command must agree. Three rounds kill the same database in turn.

SIGKILL does not lose the OS page cache, so this proves atomicity and that the WAL recovers,
not power-loss durability (that is ``synchronous=FULL``'s job, set by ``Database``).
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shoudan.core.db import Database
from shoudan.ledger.domain import AccountType
from shoudan.ledger.service import AccountSpec, Ledger
from tests import crash_child

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parent.parent
ROUND_TIMEOUT = 60.0  # seconds for a child to acknowledge enough entries
KILL_AFTER = (200, 263, 331)  # acknowledged ids per round before the SIGKILL


def shoudan_cli() -> str:
    return str(Path(sys.executable).parent / "shoudan")


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Forward the child's complete lines; ``None`` marks the end of its output."""
    for line in stream:
        if line.endswith("\n"):  # a line cut by the kill was never acknowledged
            lines.put(line.rstrip("\n"))
    lines.put(None)


def run_until_killed(url: str, prefix: str, kill_after: int) -> list[str]:
    """Start the child, collect acknowledged ids, SIGKILL it; bounded by ROUND_TIMEOUT."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), url, prefix, "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert child.stdout is not None and child.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
    reader.start()
    acknowledged: list[str] = []
    deadline = time.monotonic() + ROUND_TIMEOUT
    try:
        while len(acknowledged) < kill_after:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"child acknowledged only {len(acknowledged)} ids in time")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                child.wait(timeout=10)
                pytest.fail(
                    f"child exited early with {child.returncode}: {child.stderr.read()[-2000:]}"
                )
            acknowledged.append(line)
        assert child.poll() is None, "the child must still be running when it is killed"
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        reader.join(timeout=10)
    assert child.returncode == -signal.SIGKILL
    # ids printed between our last read and the kill were acknowledged too
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            acknowledged.append(line)
    child.stdout.close()
    child.stderr.close()
    return acknowledged


def stored_ids(database: Database) -> set[str]:
    with database.read() as session:
        return set(session.scalars(text("SELECT id FROM ledger_entries")))


def test_acknowledged_entries_survive_sigkill(sqlite_url: str) -> None:
    setup = Database(sqlite_url)
    try:
        receivable, first, second, fees = crash_child.ACCOUNTS
        Ledger(setup).create_accounts(
            [
                AccountSpec(receivable, AccountType.ASSET),
                AccountSpec(first, AccountType.LIABILITY, max_debit_balance=0),
                AccountSpec(second, AccountType.LIABILITY, max_debit_balance=0),
                AccountSpec(fees, AccountType.REVENUE),
            ]
        )
    finally:
        setup.dispose()

    path = make_url(sqlite_url).database
    assert path is not None
    acknowledged_total: set[str] = set()
    for round_number, kill_after in enumerate(KILL_AFTER):
        acknowledged = run_until_killed(sqlite_url, f"r{round_number}", kill_after)
        assert len(acknowledged) >= kill_after
        assert len(set(acknowledged)) == len(acknowledged)
        acknowledged_total.update(acknowledged)

        # the file is sound, and the WAL left by the killed writer is recovered on open
        with closing(sqlite3.connect(path)) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        database = Database(sqlite_url)
        try:
            missing = acknowledged_total - stored_ids(database)
            assert not missing, f"{len(missing)} acknowledged entries lost, e.g. {min(missing)}"
            report = Ledger(database).verify()
            assert report.ok, report.violations
            with database.read() as session:
                orphans = session.execute(
                    text(
                        "SELECT COUNT(*) FROM ledger_entries e WHERE e.kind = 'transfer'"
                        " AND NOT EXISTS (SELECT 1 FROM ledger_postings p WHERE p.entry_id = e.id)"
                    )
                ).scalar_one()
            assert orphans == 0  # no half-written batch
        finally:
            database.dispose()

    # and the operator's command agrees (run once: it costs a process start)
    cli = subprocess.run(
        [shoudan_cli(), "ledger", "verify", "--database-url", sqlite_url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "ledger OK" in cli.stdout
