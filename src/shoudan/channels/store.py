"""The sandbox networks' own books: where the simulators keep what they have seen.

A real card network or bank is a different system with its own records, so the simulators
never write to our database. Two stores behave the same way:

- ``MemoryStore``: one process's memory (tests, and ``sandbox_state_path = ":memory:"``);
- ``SqliteStore``: a small SQLite file of its own (``var/sandbox-network.sqlite3`` by
  default), so ``shoudan serve``, ``shoudan worker`` and the gateway — separate processes —
  see one network: a refund executed by the worker finds the payment ``serve`` authorised.

Both are a namespaced key-value map of JSON texts, changed only inside ``session()``, which
is atomic: across threads (a lock) and, for the file, across processes (``BEGIN IMMEDIATE``
takes SQLite's write lock before reading, so a read-modify-write never interleaves with
another one). Nothing is applied when the block raises.

Each store also holds the key the simulators use to tokenise card and account numbers
(HMAC-SHA256), so no number is kept in clear. The file keeps its key in its own ``meta``
table, generated once, so every process computes the same tokens. Delete the file to reset
the sandbox.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Final, Protocol

from shoudan.core import baton
from shoudan.core.filelock import InterProcessLock, lock_path_for

MEMORY: Final = ":memory:"
KEY_BYTES: Final = 32
BUSY_TIMEOUT_SECONDS: Final = 30.0

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records ("
    " kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
    " PRIMARY KEY (kind, key)) WITHOUT ROWID",
)


class StoreSession(Protocol):
    """Reads and writes inside one atomic session."""

    def get(self, kind: str, key: str) -> str | None: ...

    def put(self, kind: str, key: str, value: str) -> None: ...


class SandboxStore(Protocol):
    @property
    def token_key(self) -> bytes:
        """The key for HMAC tokens of card and account numbers; stable for the store's life."""
        ...

    def session(self) -> AbstractContextManager[StoreSession]:
        """An atomic session: its writes apply together at the end, or not at all."""
        ...

    def records(self) -> list[tuple[str, str, str]]:
        """Every ``(kind, key, value)``, for tests and debugging."""
        ...


class _BufferedSession:
    """Writes are kept aside until the session ends well, then applied all at once."""

    def __init__(self, records: dict[tuple[str, str], str]) -> None:
        self._records = records
        self.pending: dict[tuple[str, str], str] = {}

    def get(self, kind: str, key: str) -> str | None:
        found = self.pending.get((kind, key))
        return found if found is not None else self._records.get((kind, key))

    def put(self, kind: str, key: str, value: str) -> None:
        self.pending[(kind, key)] = value


class MemoryStore:
    """One process's memory under one lock: lost on restart, invisible to other processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], str] = {}
        self._key = secrets.token_bytes(KEY_BYTES)

    def __repr__(self) -> str:
        return "MemoryStore()"

    @property
    def token_key(self) -> bytes:
        return self._key

    @contextmanager
    def session(self) -> Iterator[StoreSession]:
        with self._lock:
            session = _BufferedSession(self._records)
            yield session
            self._records.update(session.pending)

    def records(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [(kind, key, value) for (kind, key), value in sorted(self._records.items())]


class _SqliteSession:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def get(self, kind: str, key: str) -> str | None:
        row = self._connection.execute(
            "SELECT value FROM records WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def put(self, kind: str, key: str, value: str) -> None:
        self._connection.execute(
            "INSERT INTO records (kind, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
            (kind, key, value),
        )


class SqliteStore:
    """A SQLite file shared by every process that opens it (WAL, so readers never block).

    Each instance keeps one connection, used under a lock: this process's threads queue in
    Python instead of in SQLite's busy loop, and the WAL is not checkpointed away after every
    operation (as it is when the last connection closes). A forked child opens its own.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # processes take turns in the kernel, not in SQLite's sleeping busy handler
        self._turns = InterProcessLock(lock_path_for(self.path), like=self.path)
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        with self._transaction() as connection:
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('token_key', ?)",
                (secrets.token_hex(KEY_BYTES),),
            )
            row = connection.execute("SELECT value FROM meta WHERE name = 'token_key'").fetchone()
        self._key = bytes.fromhex(row[0])

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    @property
    def token_key(self) -> bytes:
        return self._key

    def _connected(self) -> sqlite3.Connection:
        """This process's connection (call with the lock held)."""
        if self._connection is None or self._pid != os.getpid():
            # isolation_level=None: no implicit transactions; ours are BEGIN IMMEDIATE
            connection = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._turn():
            connection = self._connected()
            connection.execute("BEGIN IMMEDIATE")  # the write lock before the first read
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """This thread's turn at the file: the process's lock, then the processes' one.

        A request thread calls the simulators holding its baton (core/baton.py). When both
        locks are free it keeps the baton for its few statements; when either is taken, the
        wait and the work run with the baton down, as a call to a remote network would, so
        the process's other requests run meanwhile. Either way, no thread holding these locks
        ever waits for a baton: a thread that cannot put its baton down (pinned) and waits
        for them cannot deadlock."""
        if self._lock.acquire(blocking=False):
            try:
                free = self._turns.try_acquire()
            except BaseException:
                self._lock.release()
                raise
            if free:
                try:
                    yield
                finally:
                    self._turns.release()
                    self._lock.release()
                return
            self._lock.release()
        with baton.put_down(), self._lock:
            self._turns.acquire()
            try:
                yield
            finally:
                self._turns.release()

    @contextmanager
    def session(self) -> Iterator[StoreSession]:
        with self._transaction() as connection:
            yield _SqliteSession(connection)

    def records(self) -> list[tuple[str, str, str]]:
        with self._transaction() as connection:
            rows = connection.execute("SELECT kind, key, value FROM records ORDER BY kind, key")
            return [(str(kind), str(key), str(value)) for kind, key, value in rows]


def open_store(location: str | Path) -> MemoryStore | SqliteStore:
    """``":memory:"`` for a ``MemoryStore``, else the path of a ``SqliteStore`` file."""
    if str(location) == MEMORY:
        return MemoryStore()
    return SqliteStore(Path(location))
