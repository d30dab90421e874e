"""A writer's turn shared by every process that opens one SQLite file: ``flock(2)`` on a lock
file beside it.

Why: SQLite lets one writer in at a time, and a process that finds the write lock taken waits
in SQLite's busy handler, which sleeps and retries in steps of 1, 2, 5 … up to 100 ms. Two
processes writing all the time (two uvicorn workers; ``serve`` and the ``worker``) then spend
their waits asleep long after the lock came free (docs/benchmarks.md, "More processes"). A
process waiting in ``flock`` is woken by the kernel the moment the holder lets go.

A process takes the lock before it sends ``BEGIN IMMEDIATE`` and lets go after ``COMMIT`` or
``ROLLBACK``, so SQLite's own lock is always free when it asks: the busy handler remains only
for writers that do not take this lock (the ``sqlite3`` shell, a migration).

Within a process, threads are kept apart by the database's own writer lock; this lock counts
its holders so that a nested turn (a raw write inside a group's transaction) does not let go
of the outer one. It is not a thread lock: whoever holds the writer lock may take or release
it, whichever thread took it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class InterProcessLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._pid = 0
        self._holds = 0

    def __repr__(self) -> str:
        return f"InterProcessLock({str(self.path)!r}, holds={self._holds})"

    @property
    def held(self) -> bool:
        return self._holds > 0

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; never waits."""
        self._forget_parent()
        if self._holds:
            self._holds += 1
            return True
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._holds = 1
        return True

    def acquire(self) -> None:
        """Take the lock, waiting (in the kernel, without the GIL) for another process."""
        self._forget_parent()
        if self._holds:
            self._holds += 1
            return
        fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        self._holds = 1

    def release(self) -> None:
        if self._holds <= 0:
            raise RuntimeError("InterProcessLock released more often than taken")
        self._holds -= 1
        if self._holds == 0:
            fcntl.flock(self._descriptor(), fcntl.LOCK_UN)

    def _forget_parent(self) -> None:
        # A forked child shares its parent's open file description, and flock belongs to the
        # description: the child must open its own, or the two would hold one lock together.
        if self._fd is not None and self._pid != os.getpid():
            self._fd, self._holds = None, 0

    def _descriptor(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._holds = None, 0


def lock_path_for(database_file: str | Path) -> Path:
    """The lock file beside a SQLite database file (``app.sqlite3`` → ``app.sqlite3-writer``,
    next to SQLite's own ``-wal`` and ``-shm``)."""
    return Path(f"{database_file}-writer")
