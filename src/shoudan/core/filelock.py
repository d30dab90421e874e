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

import contextlib
import fcntl
import os
import stat
from pathlib import Path


class InterProcessLock:
    """``like``: a file whose permission bits the lock file takes when it creates it (the
    database's, so that every account that may write the database may take turns)."""

    def __init__(self, path: Path, like: Path | None = None) -> None:
        self.path = Path(path)
        self.like = like
        self._fd: int | None = None
        self._pid = 0
        self._holds = 0

    def __repr__(self) -> str:
        return f"InterProcessLock({str(self.path)!r}, holds={self._holds})"

    @property
    def held(self) -> bool:
        self._forget_parent()
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
        self._forget_parent()  # a forked child never lets go of its parent's turn
        if self._holds <= 0:
            raise RuntimeError("InterProcessLock released more often than taken")
        self._holds -= 1
        if self._holds == 0:
            fcntl.flock(self._descriptor(), fcntl.LOCK_UN)

    def _forget_parent(self) -> None:
        # A forked child shares its parent's open file description, and flock belongs to the
        # description: the child opens its own. Closing its copy of the parent's descriptor
        # does not unlock it (the parent's stays open), and a child outliving its parent
        # does not keep the parent's turn alive.
        if self._fd is not None and self._pid != os.getpid():
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):  # still ours
                    os.close(self._fd)
            self._fd, self._holds = None, 0

    def _descriptor(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = 0o600
            if self.like is not None and self.like.exists():
                mode = stat.S_IMODE(self.like.stat().st_mode)
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
            except PermissionError:  # made by another account: flock needs no write access
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        """Close the lock file, unless a turn is still held (a thread that outlived its
        server's shutdown): its own release lets go, and the process's exit closes it."""
        self._forget_parent()
        if self._fd is not None and self._holds == 0:
            os.close(self._fd)
            self._fd = None


def lock_path_for(database_file: str | Path) -> Path:
    """The lock file beside a SQLite database file (``app.sqlite3`` → ``app.sqlite3-writer``,
    next to SQLite's own ``-wal`` and ``-shm``)."""
    return Path(f"{database_file}-writer")
