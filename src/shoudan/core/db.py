"""Database layer: engines for SQLite and PostgreSQL, the declarative base, transactions.

SQLite is the embedded default: WAL, ``synchronous=FULL`` (money must survive power loss),
foreign keys on, a busy timeout, and ``BEGIN IMMEDIATE`` for write transactions so that two
writers never deadlock on a lock upgrade (SQLite has one writer at a time).
PostgreSQL is production, reached through psycopg 3.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from sqlalchemy import MetaData, Select, Table, event, select
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from shoudan.core.baton import Baton
from shoudan.core.filelock import InterProcessLock, lock_path_for

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 10_000
# 64 MiB page cache per connection (the default 2 MiB makes big batches re-read index pages)
SQLITE_CACHE_KIB = 65_536
# Connections kept open for SQLite files: as many as the threads that may read at once (the
# HTTP server's 40 worker threads, the gateway's 32). A connection beyond the pool is opened
# and closed around each use, and opening one (with its pragmas) cost a fifth of a payment's
# CPU under load. The page cache grows only with the pages a connection actually reads.
SQLITE_POOL_SIZE = 48


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


B = TypeVar("B", bound=Base)


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and route them to psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _driver_savepoints(engine: Engine) -> None:
    """SAVEPOINT, RELEASE and ROLLBACK TO straight to the driver. SQLAlchemy compiles each of
    them anew (no statement cache for these): group commit runs two per write transaction,
    and the compiling was a twentieth of a payment's CPU (docs/benchmarks.md). The names are
    SQLAlchemy's own (``sa_savepoint_N``), never user input."""
    def statement(template: str) -> Callable[[Connection, str], None]:
        def run(connection: Connection, name: str) -> None:
            connection.connection.driver_connection.execute(template.format(name))  # type: ignore[union-attr]

        return run

    overrides = {
        "do_savepoint": "SAVEPOINT {}",
        "do_release_savepoint": "RELEASE SAVEPOINT {}",
        "do_rollback_to_savepoint": "ROLLBACK TO SAVEPOINT {}",
    }
    for method, template in overrides.items():
        setattr(engine.dialect, method, statement(template))


def create_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs.setdefault("pool_size", SQLITE_POOL_SIZE)
            kwargs.setdefault("max_overflow", SQLITE_POOL_SIZE)
        engine = sa_create_engine(url, **kwargs)
        _install_sqlite_hooks(engine)
        _driver_savepoints(engine)
        _close_driver_cursors_on_checkin(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = sa_create_engine(url, **kwargs)
    _driver_savepoints(engine)
    _close_driver_cursors_on_checkin(engine)
    return engine


_CURSORS_KEY = "shoudan.driver_cursors"


def _close_driver_cursors_on_checkin(engine: Engine) -> None:
    """Close the cursors ``DriverSQL`` opened on a connection when the connection goes back
    to the pool, before another thread can take it. A cursor left to be freed later resets
    the statement it last ran, and ``sqlite3`` shares one compiled statement per SQL text
    and connection: freed after the connection had gone to another thread (the frame that
    held it ends just after the commit), it reset that thread's statement in the middle of
    its ``executemany``. The likeliest cause of "bad parameter or other API misuse" in a
    ledger write, seen twice in about two dozen full test runs (the gateway's fuzz test)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        for cursor in record.info.pop(_CURSORS_KEY, ()):
            with suppress(Exception):  # a cursor of a connection that is gone
                cursor.close()


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let us issue BEGIN ourselves (the driver's implicit BEGIN is DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        # Temporary files in memory: above all the sub-journals of savepoints (every member
        # of a commit group is one), which are never fsynced and never outlive their
        # transaction; as files they were ~30 KB of writes per gateway sale (tenth session).
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        # straight to the driver: this runs once per transaction, on the hot path
        conn.connection.dbapi_connection.execute(f"BEGIN {mode}")  # type: ignore[union-attr]


def load_row(
    session: Session, column: InstrumentedAttribute[Any], key: object, *, for_update: bool = False
) -> Any | None:
    """The row whose ``column`` equals ``key`` (a primary or unique key), or ``None``; with
    ``for_update``, locked for the rest of the transaction and refreshed from the database."""
    query = select(column.class_).where(column == key)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def transient(model: type[B], values: Mapping[str, Any]) -> B:
    """A new object of ``model`` holding ``values`` (every column), as ``model(**values)``
    would make it but without an attribute event per column: for rows written straight to
    the driver, never flushed by a session. A payment's 40 instrumented sets were 35 µs, a
    fiftieth of a gateway sale (docs/benchmarks.md); later sets are instrumented as usual."""
    instance: B = model.__mapper__.class_manager.new_instance()
    instance.__dict__.update(values)
    return instance


Keyset = tuple[datetime, str]  # (created_at, id) of the last row of the previous page


def newest_first(query: Select[Any], model: Any, limit: int, after: Keyset | None) -> Select[Any]:
    """Keyset pagination on ``model``'s (created_at, id), newest first: the rows after the
    previous page's last one, at most ``limit``. Correct while rows are being added."""
    if after is not None:
        created, last_id = after
        query = query.where(
            (model.created_at < created) | ((model.created_at == created) & (model.id < last_id))
        )
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit)


_DRIVER_KEY = "shoudan.driver_sql"


class DriverSQL:
    """The driver cursor (sqlite3 / psycopg) of a session's current transaction, for the hot
    write paths where SQLAlchemy's per-statement machinery costs more than the statement
    (docs/benchmarks.md). Values go through the columns' own bind processors, so rows are
    stored exactly as the ORM would store them; driver errors come out as SQLAlchemy's
    (``IntegrityError`` …), as callers expect. SQL is written with ``?`` placeholders."""

    connection: Connection  # SQLAlchemy's, of the session's transaction (not ``on_pooled``)

    def __new__(cls, session: Session) -> DriverSQL:
        # One per transaction, kept in the session: a use case asks for it many times (each
        # store function, the ledger, the outbox), and the connection it wraps stays the same
        # until the transaction ends. Keyed by the innermost transaction: the first use in a
        # new savepoint must go through ``session.connection()``, which is what emits the
        # SAVEPOINT (SQLAlchemy starts a nested transaction lazily).
        transaction = session.get_nested_transaction() or session.get_transaction()
        cached = session.info.get(_DRIVER_KEY)
        if cached is not None and transaction is not None and cached[0] is transaction:
            driver: DriverSQL = cached[1]
            return driver
        driver = super().__new__(cls)
        connection = session.connection()
        driver.connection = connection
        driver._setup(connection.dialect, connection.connection, connection.invalidate)
        current = session.get_nested_transaction() or session.get_transaction()
        session.info[_DRIVER_KEY] = (current, driver)
        return driver

    def __init__(self, session: Session) -> None:
        pass  # made by __new__ (or found in the session)

    @classmethod
    def on_pooled(cls, pooled: PoolProxiedConnection, dialect: Dialect) -> DriverSQL:
        """On a pooled driver connection of its own (``Database.driver_read``)."""
        driver = object.__new__(cls)
        driver._setup(dialect, pooled, pooled.invalidate)
        return driver

    def _setup(
        self,
        dialect: Dialect,
        pooled: PoolProxiedConnection,
        invalidate: Callable[[BaseException], None],
    ) -> None:
        self.dialect = dialect
        self.is_sqlite = dialect.name == "sqlite"
        self._pooled = pooled
        self._invalidate = invalidate
        self.cursor: Any = pooled.driver_connection.cursor()  # type: ignore[union-attr]
        # closed when the connection goes back to the pool (_close_driver_cursors_on_checkin)
        pooled.info.setdefault(_CURSORS_KEY, []).append(self.cursor)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement; its rows (a statement with ``RETURNING``, a query) or []."""
        if not self.is_sqlite:
            sql = sql.replace("?", "%s")
        try:
            self.cursor.execute(sql, params)
            return list(self.cursor.fetchall()) if self.cursor.description else []
        except self.dialect.loaded_dbapi.Error as error:
            self._raise(sql, params, error)

    def bind(self, column: InstrumentedAttribute[Any], value: Any) -> Any:
        """``value`` as the driver should receive it for ``column`` (its bind processor: a
        datetime becomes SQLite's stored text, for instance)."""
        processor = column.property.columns[0].type._cached_bind_processor(self.dialect)
        return processor(value) if processor else value

    def load(
        self, model: type[B], where: str, params: Sequence[Any] = (), *, for_update: bool = False
    ) -> list[B]:
        """The rows of ``model``'s table matching ``where`` (SQL with ``?`` placeholders), as
        detached objects with every column loaded as the ORM loads it: for hot paths that
        only read them. ``for_update`` locks them on PostgreSQL (SQLite's write transaction
        is exclusive already)."""
        table = model.__table__
        assert isinstance(table, Table)
        sql, columns, processors = _select_statement(self.dialect, table)
        sql += f" WHERE {where}" + (" FOR UPDATE" if for_update and not self.is_sqlite else "")
        loaded = []
        for row in self.execute(sql, params):
            values = zip(columns, processors, row, strict=True)
            loaded.append(model(**{c: process(v) if process else v for c, process, v in values}))
        return loaded

    def insert(
        self,
        model: type[Base],
        row: Mapping[str, Any],
        *,
        unless_taken: tuple[str, ...] = (),
        returning: str | None = None,
    ) -> list[Any]:
        """``INSERT`` one row of ``model``'s table (column name → Python value). With
        ``unless_taken`` (the columns of a unique constraint), a row whose key exists is not
        inserted (``ON CONFLICT … DO NOTHING``); ``returning`` names a column to return, so an
        empty result tells that nothing was inserted."""
        table = model.__table__
        assert isinstance(table, Table)
        sql, processors = _insert_statement(self.dialect, table, tuple(row))
        if unless_taken:
            sql += f" ON CONFLICT ({', '.join(unless_taken)}) DO NOTHING"
        if returning is not None:
            sql += f" RETURNING {returning}"
        return self.execute(
            sql, [p(v) if p else v for p, v in zip(processors, row.values(), strict=True)]
        )

    def insert_many(self, model: type[Base], rows: Sequence[Mapping[str, Any]]) -> None:
        """``INSERT`` rows of ``model``'s table in one ``executemany`` (every row with the
        same columns, in the same order)."""
        if not rows:
            return
        table = model.__table__
        assert isinstance(table, Table)
        sql, processors = _insert_statement(self.dialect, table, tuple(rows[0]))
        params = [
            [p(v) if p else v for p, v in zip(processors, row.values(), strict=True)]
            for row in rows
        ]
        if not self.is_sqlite:
            sql = sql.replace("?", "%s")
        try:
            self.cursor.executemany(sql, params)
        except self.dialect.loaded_dbapi.Error as error:
            self._raise(sql, params, error)

    def _raise(self, sql: str, params: Any, error: Any) -> NoReturn:
        # as SQLAlchemy itself does: a dropped connection must leave the pool at once
        dropped = self.dialect.is_disconnect(error, self._pooled, self.cursor)
        if dropped:
            self._invalidate(error)
        raise DBAPIError.instance(
            sql, params, error, self.dialect.loaded_dbapi.Error, dialect=self.dialect,
            connection_invalidated=dropped,
        ) from error


@lru_cache(maxsize=256)
def _select_statement(
    dialect: Dialect, table: Table
) -> tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]:
    quote = dialect.identifier_preparer.quote
    columns = tuple(column.key for column in table.columns)
    sql = f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table.name)}"
    processors = tuple(
        table.c[c].type._cached_result_processor(dialect, None) for c in columns
    )
    return sql, columns, processors


@lru_cache(maxsize=256)
def _insert_statement(
    dialect: Dialect, table: Table, columns: tuple[str, ...]
) -> tuple[str, tuple[Callable[[Any], Any] | None, ...]]:
    quote = dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)})"
        f" VALUES ({', '.join('?' * len(columns))})"
    )
    processors = tuple(table.c[c].type._cached_bind_processor(dialect) for c in columns)
    return sql, processors


def is_sqlite(bind: Engine | Connection | Session) -> bool:
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name == "sqlite"


class Database:
    """The application's handle on its database: one engine, one session factory.

    ``with db.transaction() as session:`` is the one way a use case writes: it commits when
    the block ends normally and rolls back on any exception.
    """

    def __init__(self, url: str, *, group_commit: int = 0, **engine_kwargs: Any) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url, **engine_kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer. Threads of this process queue here, in order, instead of
        # meeting in SQLite's busy handler, which sleeps and retries (up to 100 ms a try):
        # under load that turns into multi-second tail latencies. Other processes still
        # meet the busy timeout. Re-entrant, so a use case may nest a ledger call.
        self._writer = threading.RLock() if self.engine.dialect.name == "sqlite" else None
        # ... and processes take turns in the kernel (core/filelock.py), not in that handler
        self._turns = _interprocess_lock(self.engine)
        # SQLite: concurrent write transactions of this process share one commit (see
        # GroupCommit); ``group_commit`` is the most transactions one commit may hold.
        self._group = (
            GroupCommit(self._sessions, self._writer, group_commit, self._turns)
            if group_commit > 1 and self._writer is not None
            else None
        )
        # request threads take turns running Python (core/baton.py); with group commit only
        self.baton = self._group.baton if self._group is not None else Baton(enabled=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def groups_writes(self) -> bool:
        """Do this process's write transactions take turns and commit in groups (SQLite with
        group commit), rather than run side by side?"""
        return self._group is not None

    def in_transaction(self) -> bool:
        """Is this thread inside a write transaction of a group (whose commit it waits for at
        its own end)?"""
        return self._group is not None and self._group.inside()

    def before_commit(
        self, key: object, flush: Callable[[Session, list[Any]], None], item: Any
    ) -> None:
        """With group commit (``groups_writes``), outside any transaction: leave ``item`` in
        the group's list for ``key``, which ``flush(session, items)`` writes just before the
        group commits (core/batching.py); returns once that commit is done (or failed: its
        error is raised)."""
        assert self._group is not None and not self._group.inside(), "outside a transaction"
        self._group.leave(key, flush, item)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        if self._group is not None:
            with self._group.member() as session:
                yield session
            return
        with self._write_turn(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def _write_turn(self) -> Iterator[None]:
        if self._writer is None:
            yield
            return
        self.baton.acquire(self._writer)  # a waiting writer lets this process's readers run
        try:
            if self._group is not None and not self._group.inside():
                self._group.commit_open()  # a raw writer must not find a batch in the way
            if self._turns is None:
                yield
                return
            take_turn(self._turns, self.baton)
            try:
                yield
            finally:
                self._turns.release()
        finally:
            self._writer.release()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite it does not take the write lock). Closing the
        session ends it and releases the connection; objects read stay usable (detached,
        not expired) for the caller to render."""
        with self._sessions() as session:
            session.connection(execution_options={"sqlite_begin": "DEFERRED"})
            yield session

    @contextmanager
    def driver_read(self) -> Iterator[DriverSQL]:
        """A read-only transaction on a pooled driver connection, for the hot reads of every
        request (the API key, the terminal, the journal): an ORM session costs more to open
        and close than these statements cost to run (docs/benchmarks.md). Returning the
        connection to the pool rolls the transaction back."""
        pooled = self.engine.raw_connection()
        try:
            driver = DriverSQL.on_pooled(pooled, self.engine.dialect)
            if driver.is_sqlite:
                driver.cursor.execute("BEGIN DEFERRED")  # one snapshot for the block
            yield driver
        finally:
            pooled.close()

    @contextmanager
    def driver_transaction(self) -> Iterator[Any]:
        """A write transaction on a pooled driver connection (sqlite3 / psycopg), for the
        few hot paths where SQLAlchemy's per-transaction bookkeeping costs more than the
        work (the ledger's single-entry commit). Commits on success, rolls back on error."""
        with self._write_turn():
            pooled = self.engine.raw_connection()
            driver: Any = pooled.driver_connection
            try:
                if self.dialect == "sqlite":
                    driver.execute("BEGIN IMMEDIATE")
                yield driver
                driver.commit()
            except BaseException:
                driver.rollback()
                raise
            finally:
                pooled.close()  # back to the pool

    def is_retryable(self, error: BaseException) -> bool:
        """A transaction that lost a race and may simply run again: a serialization failure
        or deadlock on PostgreSQL, a unique violation from a concurrent insert of the same
        key, or SQLite's busy timeout."""
        if isinstance(error, DBAPIError):
            error = error.orig if error.orig is not None else error
        dbapi = self.engine.dialect.loaded_dbapi
        if isinstance(error, dbapi.IntegrityError):
            return True
        sqlstate = getattr(error, "sqlstate", None)
        if sqlstate in {"40001", "40P01"}:
            return True
        return self.dialect == "sqlite" and isinstance(error, dbapi.OperationalError) and (
            "locked" in str(error) or "busy" in str(error)
        )

    def dispose(self) -> None:
        if self._group is not None:
            with self._writer or threading.RLock():
                self._group.commit_open()
        self.engine.dispose()
        if self._turns is not None:
            self._turns.close()


def take_turn(turns: InterProcessLock, baton: Baton) -> None:
    """This process's turn to write (the writer lock held): at once if no other process
    writes (or this one already does), else waited for with the baton set aside, so that the
    process's other requests run meanwhile — and are ready to join the group."""
    if turns.try_acquire():
        return
    with baton.set_aside():
        turns.acquire()


def _interprocess_lock(engine: Engine) -> InterProcessLock | None:
    """The lock file beside a SQLite database file (none for an in-memory database, which
    no other process can open)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return InterProcessLock(lock_path_for(database), like=Path(database))


# The longest a group waits for more members. 50 ms, not 10: under load a group ends when
# nobody is left to join it, long before this; a shorter window cut groups short, and two
# processes then passed the write turn back and forth with small groups (measured: 10 ms gave
# 414 gateway sales/s at p99 326 ms, 50 ms 529/s at p99 132 ms; docs/benchmarks.md).
GROUP_WINDOW_SECONDS = 0.050
LOOK_AGAIN_SECONDS = 0.010  # how often a member waiting for its group's commit looks itself


class _Batch:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.members = 0
        # written just before the commit: key → (flush, its items) (Database.before_commit)
        self.deferred: dict[object, tuple[Callable[[Session, list[Any]], None], list[Any]]] = {}
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.opened = time.monotonic()

    def overdue(self) -> bool:
        return time.monotonic() - self.opened >= GROUP_WINDOW_SECONDS


class GroupCommit:
    """Group commit for SQLite: the write transactions of concurrent threads run one after
    another inside ONE database transaction, each in its own savepoint, and are committed
    together — one fsync for the group instead of one each. Nobody's call returns before the
    commit that contains its work (``synchronous=FULL`` still holds), and each keeps its own
    result: a transaction that raises is rolled back to its savepoint and its caller gets the
    error, while its neighbours commit.

    No timer thread: a member that finishes commits at once when nobody is queued behind it
    (so a lone request pays no wait), and otherwise leaves the transaction open for the next
    one, up to ``limit`` members or ``GROUP_WINDOW_SECONDS`` — checked at each member's end
    and each hand-over of the baton (``settle``). Under load the queue itself forms the groups.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        writer: threading.RLock,
        limit: int,
        turns: InterProcessLock | None = None,
    ) -> None:
        self._sessions = sessions
        self._writer = writer
        self._limit = limit
        self._turns = turns
        self._queued = 0
        self._count_lock = threading.Lock()
        self._batch: _Batch | None = None
        self._local = threading.local()
        self.baton = Baton()
        self.baton.on_give = self.settle

    @contextmanager
    def member(self) -> Iterator[Session]:
        if getattr(self._local, "inside", False):
            # a use case nesting a transaction (a ledger call): part of the caller's savepoint
            yield self._local.session
            return
        failure: BaseException | None = None
        with self._joined(finished=False) as batch:
            savepoint = batch.session.begin_nested()
            self._local.inside, self._local.session = True, batch.session
            try:
                yield batch.session
                batch.session.flush()
                savepoint.commit()
            except BaseException as error:
                # deactivated by a failed flush, or still open: undo this member only
                savepoint.rollback()
                failure = error
            finally:
                self._local.inside = False
                self._local.session = None
        if failure is not None:
            raise failure

    def leave(self, key: object, flush: Callable[[Session, list[Any]], None], item: Any) -> None:
        """Leave ``item`` in the open group's list for ``key`` (``Database.before_commit``)
        without a transaction of its own — no savepoint for a member that writes nothing
        itself — and return once the group has committed. The caller's request ends with
        this write (a new payment's): it finishes without the baton."""
        with self._joined(finished=True):
            self.deferred(key, flush).append(item)

    @contextmanager
    def _joined(self, *, finished: bool) -> Iterator[_Batch]:
        """The open group (opened if none), holding the writer lock, for one member's work;
        then the member counted, and the group's commit waited for. ``finished``: the
        member's request has nothing but its answer left after this write, and does not take
        the baton back after the commit (``Baton.put_down_for_good``)."""
        with self._count_lock:
            self._queued += 1
        # wait for the writer lock with the baton down: its holder may need the baton back
        # (it sets the baton aside while another process writes, in ``_open``)
        self.baton.acquire(self._writer)
        try:
            # from here the baton stays with the member whatever it waits for: the next
            # holder would wait for this writer lock
            self.baton.pin()
            with self._count_lock:
                self._queued -= 1
            try:
                batch = self._open()
                yield batch
            finally:
                self.baton.unpin()
                # always: a member that failed may be the last, and the others wait on it
                self._after_member()
        finally:
            self._writer.release()
        # Even a failed member waits for its group: its caller may look for the row it
        # collided with (an Idempotency-Key's winner) and must find it committed.
        # Whoever would have committed the group may have looked while another thread held
        # the writer lock (``settle`` never waits for it), and a member that holds no baton
        # gives no hand-over to look again at: so the members look themselves, every
        # LOOK_AGAIN_SECONDS.
        if finished:
            self.baton.put_down_for_good()
            self._wait_for(batch)
        else:
            with self.baton.released():
                self._wait_for(batch)
        if batch.error is not None:
            raise batch.error

    def _wait_for(self, batch: _Batch) -> None:
        while not batch.done.wait(LOOK_AGAIN_SECONDS):
            self.settle(0)

    def inside(self) -> bool:
        """Is this thread running a member's transaction now?"""
        return bool(getattr(self._local, "inside", False))

    def deferred(self, key: object, flush: Callable[[Session, list[Any]], None]) -> list[Any]:
        """The open group's items for ``key`` (``Database.before_commit``)."""
        assert self._batch is not None
        found = self._batch.deferred.get(key)
        if found is None:
            found = self._batch.deferred[key] = (flush, [])
        return found[1]

    def _open(self) -> _Batch:
        if self._batch is None:
            self._take_turn()
            try:
                session = self._sessions()
                session.begin()
            except BaseException:
                if self._turns is not None:
                    self._turns.release()
                raise
            self._batch = _Batch(session)
        return self._batch

    def _take_turn(self) -> None:
        # held until the group's commit
        if self._turns is not None:
            take_turn(self._turns, self.baton)

    def _after_member(self) -> None:
        """Holding the writer lock: count the member, commit if the group is full or nobody
        waits to join it."""
        batch = self._batch
        if batch is None:
            return
        batch.members += 1
        with self._count_lock:
            nobody_waiting = self._queued == 0 and not self.baton.waiting()
        if nobody_waiting or batch.members >= self._limit or batch.overdue():
            self.commit_open()

    def settle(self, waiting: int) -> None:
        """The baton was put down with ``waiting`` threads waiting for it: commit the open
        group if none of them may join it, or if it has waited its window — the waiters may
        all be readers, and the members' answers wait for this commit."""
        batch = self._batch
        if batch is None or (waiting and not batch.overdue()):
            return
        # Never wait here: whoever holds the writer lock decides at its own end (a member's
        # ``_after_member``, a raw writer's ``commit_open``).
        if not self._writer.acquire(blocking=False):
            return
        try:
            batch = self._batch
            if batch is None:
                return
            with self._count_lock:
                nobody_waiting = self._queued == 0 and not self.baton.waiting()
            if nobody_waiting or batch.overdue():
                self.commit_open()
        finally:
            self._writer.release()

    def _flush_deferred(self, batch: _Batch) -> None:
        """The items its members left for just before the commit, written in the group's
        session; a transaction they open joins it (as a member's nested one does)."""
        if not batch.deferred:
            return
        was = getattr(self._local, "inside", False), getattr(self._local, "session", None)
        self._local.inside, self._local.session = True, batch.session
        try:
            for flush, items in batch.deferred.values():
                flush(batch.session, items)
        finally:
            self._local.inside, self._local.session = was

    def commit_open(self) -> None:
        """Commit the open group, if any (the writer lock must be held)."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        try:
            self._flush_deferred(batch)
            # the fsync: this process's other requests run meanwhile (the writer lock stays)
            with self.baton.set_aside():
                batch.session.commit()
        except BaseException as error:
            batch.error = error
            batch.session.rollback()
        finally:
            try:
                batch.session.close()
            finally:
                if self._turns is not None:
                    self._turns.release()  # after COMMIT or ROLLBACK: another process's turn
                batch.done.set()
