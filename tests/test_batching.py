"""BatchWriter (core/batching.py): items of concurrent callers written together just before
their group commits, each caller with its own result or its own error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, SessionTransaction

from shoudan.core.batching import BatchWriter
from shoudan.core.db import Database
from shoudan.notifications.models import OutboxEvent
from shoudan.notifications.service import emit


class Abort(BaseException):
    """Not an ``Exception``: a writer that fails this way must still fail alone."""


class Pings:
    """Writes each item as an outbox event; refuses the item "bad" (and "abort", with a
    ``BaseException``); records each call."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.calls: list[list[str]] = []
        self.writer: BatchWriter[str, str] = BatchWriter(database, self.write_many)

    def write_many(self, session: Session, items: Sequence[str]) -> list[str]:
        self.calls.append(list(items))
        ids = []
        for item in items:
            if item == "bad":
                raise ValueError("refused: bad")
            if item == "abort":
                raise Abort("aborted")
            if self.database.groups_writes:
                # a transaction opened here joins the group's, as a member's nested one does
                with self.database.transaction() as inner:
                    assert inner is session
            ids.append(emit(session, "system.ping", {"item": item}, dedupe_key=item))
        return ids


@pytest.fixture
def grouped(sqlite_database: Database) -> Iterator[Database]:
    database = Database(sqlite_database.url, group_commit=32)
    yield database
    database.dispose()


def stored(database: Database) -> set[str]:
    with database.read() as session:
        return set(session.scalars(select(OutboxEvent.dedupe_key)))


def in_one_group(
    database: Database, work: list[str], write: object, opener: str | None = None
) -> list[object]:
    """Run ``write(item)`` for each item on its own thread, all queued behind one open
    transaction (which writes the event ``opener``, if given), so that they join one group."""
    group = database._group
    assert group is not None
    results: list[object] = [None] * len(work)

    def run(index: int) -> None:
        try:
            results[index] = write(work[index])  # type: ignore[operator]
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    with database.transaction() as session:
        if opener is not None:
            emit(session, "system.ping", {"item": opener}, dedupe_key=opener)
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while group._queued < len(work):  # every one waits for the writer lock
            assert time.monotonic() < deadline, "the writers did not queue"
            time.sleep(0.005)
    for thread in threads:
        thread.join(10)
    return results


def test_items_of_one_group_are_written_at_once_and_committed_before_they_return(
    grouped: Database,
) -> None:
    pings = Pings(grouped)
    work = [f"item-{n}" for n in range(6)]

    def write(item: str) -> tuple[str, bool]:
        event_id = pings.writer.write(item)
        return event_id, item in stored(grouped)  # returned: committed, visible to anyone

    results = in_one_group(grouped, work, write)
    assert len(pings.calls) == 1 and sorted(pings.calls[0]) == work  # one write of the six
    assert all(isinstance(r, tuple) and r[1] for r in results)
    assert len({r[0] for r in results if isinstance(r, tuple)}) == 6  # each its own result
    assert stored(grouped) == set(work)


def test_items_left_for_the_commit_open_no_transaction_of_their_own(grouped: Database) -> None:
    """A caller of ``write`` leaves its item for the group without a nested transaction of
    its own, however many items join: the bookkeeping of one cost about a tenth of a gateway
    sale's CPU (docs/benchmarks.md)."""
    pings = Pings(grouped)
    nested: list[object] = []

    def count(_session: Session, transaction: SessionTransaction) -> None:
        if transaction.nested:
            nested.append(transaction)

    event.listen(grouped._sessions, "after_transaction_create", count)
    try:
        work = [f"item-{n}" for n in range(6)]
        in_one_group(grouped, work, pings.writer.write, opener="first")
    finally:
        event.remove(grouped._sessions, "after_transaction_create", count)
    assert len(pings.calls) == 1
    # the opener's and the one write_many runs in (before: one more per caller)
    assert len(nested) == 2, nested
    assert stored(grouped) == {"first", *work}


def test_a_refused_item_fails_alone_and_its_neighbours_are_written(grouped: Database) -> None:
    pings = Pings(grouped)
    work = ["a", "b", "bad", "c"]
    results = in_one_group(grouped, work, pings.writer.write)
    assert isinstance(results[2], ValueError)
    assert all(isinstance(results[i], str) for i in (0, 1, 3))
    assert stored(grouped) == {"a", "b", "c"}
    # the batch, then each item again alone: only "bad" failed
    assert sorted(pings.calls[0]) == sorted(work)
    assert sorted(pings.calls[1:]) == [["a"], ["b"], ["bad"], ["c"]]


def test_an_item_alone_in_its_group_gets_its_error_at_once(grouped: Database) -> None:
    pings = Pings(grouped)
    with pytest.raises(ValueError, match="refused"):
        pings.writer.write("bad")
    assert pings.calls == [["bad"]]  # not written a second time
    assert pings.writer.write("good") and stored(grouped) == {"good"}


def test_without_group_commit_each_item_is_its_own_transaction(
    sqlite_database: Database,
) -> None:
    pings = Pings(sqlite_database)  # group_commit=0: write transactions do not group
    assert not sqlite_database.groups_writes
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(pings.writer.write, [f"i{n}" for n in range(8)]))
    assert sorted(pings.calls) == [[f"i{n}"] for n in range(8)]
    assert len(stored(sqlite_database)) == 8


def test_many_concurrent_writers_keep_their_results(grouped: Database) -> None:
    pings = Pings(grouped)
    work = [f"w{n}" if n % 7 else "bad" for n in range(140)]

    def write(item: str) -> str:
        try:
            return pings.writer.write(item)
        except ValueError:
            return "refused"

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(write, work))
    assert results.count("refused") == work.count("bad")
    assert stored(grouped) == {item for item in work if item != "bad"}
    with grouped.read() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 120
    assert any(len(call) > 1 for call in pings.calls)  # some were written together


def test_a_writer_failing_with_a_base_exception_fails_alone(grouped: Database) -> None:
    """Found by review: re-raised from the group's commit, it had failed every member."""
    pings = Pings(grouped)

    def plain(item: str) -> str:
        with grouped.transaction() as session:
            return emit(session, "system.ping", {}, dedupe_key=item)

    work = ["a", "abort", "plain", "b"]
    results = in_one_group(
        grouped, work, lambda item: plain(item) if item == "plain" else pings.writer.write(item)
    )
    assert isinstance(results[1], Abort)
    assert all(isinstance(results[i], str) for i in (0, 2, 3))
    assert stored(grouped) == {"a", "plain", "b"}


def test_inside_an_open_transaction_the_item_is_written_in_it(grouped: Database) -> None:
    """Found by review: left for the group, it was written even when the caller's own
    transaction rolled back."""
    pings = Pings(grouped)
    with grouped.transaction():
        assert pings.writer.write("kept")
    with pytest.raises(RuntimeError), grouped.transaction():
        pings.writer.write("undone")
        raise RuntimeError("the caller fails after the write")
    assert stored(grouped) == {"kept"}
    assert pings.calls == [["kept"], ["undone"]]
