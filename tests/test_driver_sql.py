"""The driver-level paths of core/db.py, on both engines: ``Database.driver_read`` (pooled
driver connections for the reads of every request), one ``DriverSQL`` per transaction, and
savepoints sent straight to the driver."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from shoudan.core.db import Database, DriverSQL
from shoudan.notifications.models import OutboxEvent
from shoudan.notifications.service import emit

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def outbox_ids(database: Database) -> list[str]:
    with database.read() as session:
        return list(session.scalars(select(OutboxEvent.id).order_by(OutboxEvent.id)))


def test_driver_read_sees_what_was_committed(database: Database) -> None:
    with database.transaction() as session:
        event_id = emit(session, "system.ping", {"n": 1})
    with database.driver_read() as driver:
        rows = driver.execute("SELECT id, topic FROM outbox_events WHERE id = ?", (event_id,))
    assert rows == [(event_id, "system.ping")]


def test_a_failed_driver_read_raises_sqlalchemy_errors_and_leaves_the_pool_usable(
    database: Database,
) -> None:
    with pytest.raises(DBAPIError), database.driver_read() as driver:
        driver.execute("SELECT no_such_column FROM outbox_events")
    for _ in range(3):  # whichever pooled connection comes back next works
        with database.driver_read() as driver:
            assert driver.execute("SELECT count(*) FROM outbox_events") == [(0,)]


def test_a_driver_read_leaves_no_transaction_open(database: Database) -> None:
    """The connection goes back to the pool rolled back: a writer is not kept waiting and the
    next user of that connection sees the latest commits."""
    for _ in range(3):
        with database.driver_read() as driver:
            driver.execute("SELECT count(*) FROM outbox_events")
    with database.transaction() as session:
        emit(session, "system.ping", {"n": 2})
    with database.driver_read() as driver:
        assert driver.execute("SELECT count(*) FROM outbox_events") == [(1,)]


def test_one_driver_per_transaction_and_a_new_one_after_the_commit(database: Database) -> None:
    session = database._sessions()  # one session over two transactions
    try:
        with session.begin():
            first = DriverSQL(session)
            assert DriverSQL(session) is first
            emit(session, "system.ping", {"n": 1})
        session.begin()
        second = DriverSQL(session)
        assert second is not first
        emit(session, "system.ping", {"n": 2})  # written through the new one...
        session.rollback()  # ...and undone with its transaction
    finally:
        session.close()
    assert len(outbox_ids(database)) == 1


def test_a_savepoint_rolls_back_only_its_own_work(database: Database) -> None:
    """``begin_nested`` on the driver's own SAVEPOINT statements: the failed part is undone,
    what came before it commits."""
    with database.transaction() as session:
        kept = emit(session, "system.ping", {"n": 1})
        nested = session.begin_nested()
        driver = DriverSQL(session)
        try:
            with pytest.raises(IntegrityError):
                driver.insert(OutboxEvent, _outbox_row(kept))  # the same id again
        finally:
            nested.rollback()
        inner = session.begin_nested()
        also = emit(session, "system.ping", {"n": 2})
        inner.commit()
    assert outbox_ids(database) == sorted([kept, also])
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 2


def _outbox_row(event_id: str) -> dict[str, object]:
    return {
        "id": event_id, "topic": "system.ping", "payload": "{}", "dedupe_key": event_id,
        "status": "pending", "attempts": 0, "next_attempt_at": NOW, "locked_by": None,
        "locked_until": None, "last_error": None, "created_at": NOW, "delivered_at": None,
    }  # fmt: skip


def test_load_gives_rows_as_the_orm_loads_them(database: Database) -> None:
    """Datetimes come back timezone-aware in UTC, integers as integers, NULL as None — equal,
    column by column, to what the ORM reads."""
    with database.transaction() as session:
        event_id = emit(session, "system.ping", {"n": 3}, clock=_Fixed())
    with database.transaction() as session:
        (loaded,) = DriverSQL(session).load(
            OutboxEvent, "id = ?", (event_id,), for_update=True
        )
        orm = session.get(OutboxEvent, event_id)
        assert orm is not None and loaded is not orm  # a detached copy, not the session's
        columns = [c.key for c in OutboxEvent.__table__.columns]
        assert {c: getattr(loaded, c) for c in columns} == {c: getattr(orm, c) for c in columns}
    assert loaded.created_at == NOW and loaded.created_at.tzinfo is not None
    assert loaded.locked_until is None and loaded.attempts == 0
    with database.driver_read() as driver:
        assert driver.load(OutboxEvent, "id = ?", ("evt_missing",)) == []


class _Fixed:
    def now(self) -> datetime:
        return NOW


def test_driver_cursors_are_closed_before_their_connection_goes_back_to_the_pool(
    database: Database,
) -> None:
    """A cursor freed after another thread has taken its connection would reset the statement
    that thread is running (sqlite3 shares one compiled statement per SQL text): each driver
    cursor is closed when its connection is checked in, while it is still ours."""
    with database.driver_read() as reading:
        reading.execute("SELECT 1")
        read_cursor = reading.cursor
    with database.transaction() as session:
        writing = DriverSQL(session)
        writing.execute("SELECT 1")
        write_cursor = writing.cursor
    with database.read() as session:
        DriverSQL(session).execute("SELECT 1")
        session_cursor = DriverSQL(session).cursor
    for cursor in (read_cursor, write_cursor, session_cursor):
        with pytest.raises(Exception, match=r"(?i)closed"):
            cursor.execute("SELECT 1")
    with database.driver_read() as again:  # the pool's connections still work
        assert again.execute("SELECT 1") == [(1,)]
