"""Processes take turns to write to one SQLite file through a lock file (core/filelock.py),
waiting in the kernel instead of in SQLite's sleeping busy handler: real processes, a real
file, and a busy timeout of zero in the waiting process, so that any write reaching SQLite's
lock while another process holds it fails at once."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from shoudan.core import db as db_module
from shoudan.core.db import Database
from shoudan.core.filelock import InterProcessLock, lock_path_for

_TRY_FROM_ANOTHER_PROCESS = """
import sys
from shoudan.core.filelock import InterProcessLock
print(InterProcessLock(sys.argv[1]).try_acquire())
"""


def _another_process_may_take(path: Path) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", _TRY_FROM_ANOTHER_PROCESS, str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip() == "True"


def test_the_lock_excludes_other_processes_until_the_last_release(tmp_path: Path) -> None:
    lock = InterProcessLock(tmp_path / "db.sqlite3-writer")
    assert _another_process_may_take(lock.path)
    lock.acquire()
    assert lock.try_acquire()  # this process already holds it: counted, not waited for
    assert not _another_process_may_take(lock.path)
    lock.release()
    assert lock.held and not _another_process_may_take(lock.path)  # one hold remains
    lock.release()
    assert not lock.held and _another_process_may_take(lock.path)
    with pytest.raises(RuntimeError):
        lock.release()
    lock.close()


def test_a_forked_child_does_not_share_its_parents_lock(tmp_path: Path) -> None:
    lock = InterProcessLock(tmp_path / "db.sqlite3-writer")
    lock.acquire()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            lock.release()  # as a commit of a group it inherited would: it holds nothing
            os._exit(3)
        except RuntimeError:
            pass
        os._exit(0 if not lock.try_acquire() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child let go of, or took, its parent's"
    assert not _another_process_may_take(lock.path)  # the parent's turn is still held
    lock.release()
    lock.close()


def test_the_lock_file_takes_the_databases_permissions(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    database.write_bytes(b"")
    database.chmod(0o640)
    lock = InterProcessLock(lock_path_for(database), like=database)
    assert lock.try_acquire()
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o640
    lock.release()
    lock.acquire()
    lock.close()  # held: left open for its own release
    lock.release()
    lock.close()


def test_the_lock_file_sits_beside_the_database() -> None:
    assert lock_path_for("/var/shoudan/app.sqlite3") == Path("/var/shoudan/app.sqlite3-writer")
    assert Database("sqlite://")._turns is None  # in memory: no other process can open it


_HOLD_A_WRITE = """
import sys, time
from sqlalchemy import text
from shoudan.core.db import Database
database = Database(sys.argv[1], group_commit=int(sys.argv[2]))
with database.transaction() as session:
    session.execute(text("INSERT INTO turns (who) VALUES ('other process')"))
    session.flush()
    print("holding", flush=True)
    time.sleep(0.5)
database.dispose()
"""


@pytest.mark.parametrize("group_commit", [0, 8], ids=["plain", "group-commit"])
def test_a_writer_waits_for_another_processs_turn_not_in_sqlites_busy_handler(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, group_commit: int
) -> None:
    setup = Database(sqlite_url)
    with setup.transaction() as session:
        session.execute(text("CREATE TABLE turns (n INTEGER PRIMARY KEY, who TEXT NOT NULL)"))
    setup.dispose()
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLD_A_WRITE), sqlite_url, str(group_commit)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "holding"
        # From here the other process holds SQLite's write lock for 0.5 s. With no busy
        # timeout, our BEGIN IMMEDIATE would fail at once with "database is locked" if we
        # reached SQLite before the other process had committed.
        monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 0)
        database = Database(sqlite_url, group_commit=group_commit)
        started = time.monotonic()
        with database.baton.held(), database.transaction() as session:
            seen = session.execute(text("SELECT who FROM turns ORDER BY n")).scalars().all()
            session.execute(text("INSERT INTO turns (who) VALUES ('this process')"))
        waited = time.monotonic() - started
        database.dispose()
    finally:
        assert other.wait(timeout=60) == 0
    assert seen == ["other process"]  # our transaction began after the other one committed
    assert waited > 0.2  # ... because it waited for it
