"""Looking at real processes from a test (Linux /proc)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from shoudan.core.db import Database
from shoudan.payments.models import Payment

DEADLINE = 60.0  # seconds for one step of a process (a bound for a broken build, not a timing)


def shoudan_cli() -> str:
    return str(Path(sys.executable).parent / "shoudan")


def stop_gracefully(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, then exit status 0 and none of its children left running."""
    left_behind = children(process.pid)
    process.terminate()
    assert process.wait(timeout=DEADLINE) == 0, log.read_text()[-3000:]
    still = [pid for pid in left_behind if running(pid)]
    assert not still, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in still]


def assert_ledger_verifies(url: str) -> None:
    """``shoudan ledger verify``, the operator's command, run as a process."""
    verify = subprocess.run(
        [shoudan_cli(), "ledger", "verify", "--database-url", url],
        check=False, capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip
    assert verify.returncode == 0 and "ledger OK" in verify.stdout, verify.stdout + verify.stderr


def children(pid: int) -> list[int]:
    """The process's children, zombies included."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped by whoever inherited it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def reap(process: subprocess.Popen[bytes]) -> None:
    """Kill what a failed test left running (in its ``finally``)."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def captured_payments(url: str) -> tuple[set[str], int]:
    """The ids of the captured payments, and how many payments there are in all."""
    database = Database(url)
    try:
        with database.read() as session:
            ids = set(session.scalars(select(Payment.id).where(Payment.status == "captured")))
            count = session.scalar(select(func.count()).select_from(Payment)) or 0
    finally:
        database.dispose()
    return ids, count
