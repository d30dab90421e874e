"""The baton (core/baton.py): one holder at a time, put down around waits, never a deadlock;
and group commit driven by it (core/db.py): a seated member's group commits when the baton
goes idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest
from sqlalchemy import text

from shoudan.channels.bank import SandboxBank
from shoudan.channels.domain import AuthorizeRequest, CardData
from shoudan.channels.sandbox import PAN_APPROVE_CREDIT, SandboxChannel
from shoudan.channels.store import SqliteStore
from shoudan.core import baton as baton_module
from shoudan.core.baton import Baton, releasing
from shoudan.core.db import Database

WAIT = 10.0  # seconds: a join that takes this long is a deadlock


def run(target: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def finished(*threads: threading.Thread) -> bool:
    for thread in threads:
        thread.join(WAIT)
    return not any(thread.is_alive() for thread in threads)


def wait_until(condition: object) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


def test_one_holder_at_a_time() -> None:
    baton = Baton()
    inside, most = [0], [0]
    guard = threading.Lock()

    def request() -> None:
        for _ in range(50):
            with baton.held():
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0)  # let the others try
                with guard:
                    inside[0] -= 1

    assert finished(*[run(request) for _ in range(8)])
    assert most[0] == 1 and not baton.holding() and baton.waiting() == 0


def hold(baton: Baton, until: threading.Event, log: list[str] | None = None) -> None:
    with baton.held():
        if log is not None:
            log.append("in")
        until.wait(WAIT)
        if log is not None:
            log.append("out")


def test_released_hands_the_baton_over_and_takes_it_back() -> None:
    baton = Baton()
    log: list[str] = []
    go = threading.Event()
    with baton.held():
        with baton.held():  # re-entrant: the inner block does not give it away
            assert baton.holding()
        assert baton.holding()
        other = run(hold, baton, go, log)
        wait_until(lambda: baton.waiting() == 1)
        assert log == []  # waits while we hold it
        with baton.released():
            assert not baton.holding()
            wait_until(lambda: log == ["in"])
            go.set()
        # back only once the other thread gave it up
        assert log == ["in", "out"] and baton.holding()
    assert finished(other) and not baton.holding()


def test_acquire_waits_with_the_baton_down() -> None:
    """A holds lock L and needs the baton; B holds the baton and needs L. B must put the
    baton down while it waits for L, or both wait forever."""
    baton = Baton()
    lock = threading.Lock()
    steps: list[str] = []

    def a() -> None:
        with lock:
            wait_until(lambda: baton.waiting() == 0 and "b holds" in steps)
            with baton.held():
                steps.append("a ran")

    def b() -> None:
        with baton.held():
            steps.append("b holds")
            wait_until(lock.locked)
            baton.acquire(lock)
            steps.append("b got the lock")
            lock.release()

    first = run(a)
    wait_until(lock.locked)
    assert finished(run(b), first)
    assert steps == ["b holds", "a ran", "b got the lock"]


def test_on_give_is_told_how_many_wait_and_its_failure_breaks_nothing() -> None:
    baton = Baton()
    given: list[int] = []
    baton.on_give = given.append
    with baton.held():
        pass
    assert given == [0]
    go, log = threading.Event(), []
    with baton.held():
        waiter = run(hold, baton, go, log)
        wait_until(lambda: baton.waiting() == 1)
    assert given == [0, 1]  # someone was waiting
    wait_until(lambda: log == ["in"])
    go.set()
    assert finished(waiter) and given == [0, 1, 0]

    def broken(_waiting: int) -> None:
        raise RuntimeError("hook failed")

    baton.on_give = broken
    with baton.held():
        with baton.released():
            assert not baton.holding()
        assert baton.holding()  # taken back despite the hook
    assert not baton.holding() and finished(run(lambda: baton.held().__enter__()))


def test_pinned_keeps_the_baton_and_disabled_does_nothing() -> None:
    baton = Baton()
    with baton.held():
        baton.pin()
        with baton.released():
            assert baton.holding()
        baton.unpin()
        with baton.released():
            assert not baton.holding()
    off = Baton(enabled=False)
    with off.held(), off.released():
        assert not off.holding() and off.waiting() == 0


def test_set_aside_puts_even_a_pinned_baton_down_and_restores_the_pin() -> None:
    baton = Baton()
    other_held = threading.Event()

    def other() -> None:
        with baton.held():
            other_held.set()

    with baton.held():
        baton.pin()
        with baton.set_aside():
            assert not baton.holding()
            assert finished(run(other)) and other_held.is_set()  # another thread ran
        assert baton.holding()
        with baton.released():  # still pinned after it
            assert baton.holding()
        baton.unpin()
    with baton.set_aside():  # not holding it: nothing to put down
        assert not baton.holding()


@runtime_checkable
class Pinger(Protocol):
    def ping(self) -> str: ...


class Remote:
    region = "cn-east"

    def __init__(self, baton: Baton) -> None:
        self.baton = baton

    def ping(self) -> str:
        return "held" if self.baton.holding() else "down"


def test_releasing_calls_with_the_baton_down() -> None:
    baton = Baton()
    remote = Remote(baton)
    proxy = releasing(remote, baton)
    with baton.held():
        assert remote.ping() == "held"
        assert proxy.ping() == "down"  # the wait on the network, with the baton down
        assert baton.holding()  # and back afterwards
    assert proxy.region == "cn-east" and isinstance(proxy, Pinger)
    assert releasing(remote, Baton(enabled=False)) is remote


def test_an_in_process_simulator_is_called_holding_the_baton() -> None:
    """The sandbox network and bank run in this process: putting the baton down around their
    microseconds of work cost more than the work (docs/benchmarks.md)."""
    baton = Baton()
    channel, bank = SandboxChannel(), SandboxBank()
    assert releasing(channel, baton) is channel and releasing(bank, baton) is bank
    assert isinstance(releasing(Remote(baton), baton), Pinger)  # a remote client is wrapped


def test_sleep_puts_the_baton_down_for_the_wait() -> None:
    """A simulated wait (the sandbox's latency, its no-answer card) must not stop the
    process's other requests: another thread takes the baton while the sleeper sleeps."""
    baton = Baton()
    sleeping, woke = threading.Event(), threading.Event()
    seen: list[bool] = []

    def sleeper() -> None:
        with baton.held():
            sleeping.set()
            baton_module.sleep(0.5)
            woke.set()
            assert baton.holding()  # taken back after the wait

    def other() -> None:
        sleeping.wait(WAIT)
        with baton.held():
            seen.append(woke.is_set())

    assert finished(run(sleeper), run(other))
    assert seen == [False]  # it had the baton while the sleeper was still asleep
    assert not baton.holding()
    baton_module.sleep(0)  # holding no baton: a plain sleep


def test_the_sandbox_keeps_the_baton_for_its_work_and_puts_it_down_to_wait(
    tmp_path: Path,
) -> None:
    """Uncontended, a call to the sandbox network costs no hand-over; one that must wait
    for its file (another process's turn) waits with the baton down, so the process's other
    requests run meanwhile."""
    path = tmp_path / "sandbox.sqlite3"
    this, other_process = SandboxChannel(store=SqliteStore(path)), SqliteStore(path)
    baton, gives = Baton(), []
    baton.on_give = gives.append
    card = CardData(pan=PAN_APPROVE_CREDIT, expiry="3012")

    def sale(reference: str) -> bool:
        request = AuthorizeRequest(
            reference=reference, amount=100, currency="CNY", card=card, auth_code=None,
            capture=True,
        )
        return this.authorize(request).approved

    with baton.held():
        assert sale("S1")
        assert gives == []  # kept throughout
    approved: list[bool] = []
    holding = threading.Event()

    def waiting_sale() -> None:
        with baton.held():
            holding.set()
            approved.append(sale("S2"))

    def another_request() -> None:
        with baton.held():
            pass

    with other_process.session():  # the other process's turn at the file
        waiter = run(waiting_sale)
        assert holding.wait(WAIT)
        assert finished(run(another_request))  # the waiting sale put the baton down
        assert approved == []  # still waiting for the file
    assert finished(waiter) and approved == [True]


def test_a_sleep_inside_a_pinned_block_keeps_the_baton() -> None:
    """Inside a write transaction the baton stays (the next holder would wait for the
    writer lock), as for any other wait."""
    baton = Baton()
    got: list[str] = []

    def other() -> None:
        with baton.held():
            got.append("other")

    with baton.held():
        baton.pin()
        try:
            thread = run(other)
            wait_until(lambda: baton.waiting() == 1)
            baton_module.sleep(0.05)
            got.append("pinned")
        finally:
            baton.unpin()
    assert finished(thread)
    assert got == ["pinned", "other"]


# -- group commit with the baton -----------------------------------------------------------------
@pytest.fixture
def grouped(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url, group_commit=32)
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE baton_rows (n INTEGER PRIMARY KEY)"))
    try:
        yield database
    finally:
        database.dispose()


def committed(database: Database) -> set[int]:
    with database.read() as session:  # a reader: never waits for the open group
        return {row[0] for row in session.execute(text("SELECT n FROM baton_rows"))}


def insert(database: Database, n: int) -> None:
    with database.baton.held(), database.transaction() as session:
        session.execute(text("INSERT INTO baton_rows (n) VALUES (:n)"), {"n": n})


def test_a_seated_member_waits_for_its_group_and_the_idle_baton_commits_it(
    grouped: Database,
) -> None:
    baton = grouped.baton
    assert baton.enabled
    inside = threading.Event()

    def write() -> None:
        with baton.held(), grouped.transaction() as session:
            session.execute(text("INSERT INTO baton_rows (n) VALUES (1)"))
            inside.set()
            wait_until(lambda: baton.waiting() == 1)  # we are back in the queue

    with baton.held():
        writer = run(write)
        wait_until(lambda: baton.waiting() == 1)
        with baton.released():
            inside.wait(WAIT)  # the writer runs its transaction; we queue for the baton, so ...
        # ... it left its group open for us and waits for the commit with the baton down
        assert committed(grouped) == set() and writer.is_alive()
    # we gave the baton up with nobody waiting for it: the open group commits
    assert finished(writer)
    assert committed(grouped) == {1}


def test_readers_keeping_the_baton_busy_do_not_hold_a_commit_back(grouped: Database) -> None:
    """A writer's group is committed within its window even when other requests, which
    only read, keep the baton handed from one to the next without a pause."""
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with grouped.baton.held(), grouped.driver_read() as driver:
                driver.execute("SELECT count(*) FROM baton_rows")
                sum(range(2_000))  # a little Python, as a request has

    readers = [run(reader) for _ in range(3)]
    try:
        wait_until(lambda: grouped.baton.waiting() >= 1)
        writer = run(insert, grouped, 7)
        writer.join(WAIT)
        assert not writer.is_alive(), "the commit waited for the readers to stop"
        assert committed(grouped) == {7}
    finally:
        stop.set()
        assert finished(*readers)


def test_seated_members_share_commits_and_all_land(grouped: Database) -> None:
    commits = [0]
    original = grouped._group.commit_open  # type: ignore[union-attr]

    def counting() -> None:
        if grouped._group._batch is not None:  # type: ignore[union-attr]
            commits[0] += 1
        original()

    grouped._group.commit_open = counting  # type: ignore[union-attr, method-assign]
    threads = [run(lambda k=k: [insert(grouped, k * 100 + i) for i in range(20)]) for k in range(8)]
    assert finished(*threads)
    assert committed(grouped) == {k * 100 + i for k in range(8) for i in range(20)}
    assert 1 <= commits[0] < 160  # grouped: fewer commits than transactions


def test_a_failed_seated_member_is_undone_alone(grouped: Database) -> None:
    def failing() -> None:
        with pytest.raises(RuntimeError), grouped.baton.held(), grouped.transaction() as s:
            s.execute(text("INSERT INTO baton_rows (n) VALUES (999)"))
            raise RuntimeError("refused")

    threads = [run(insert, grouped, n) for n in range(5)] + [run(failing)]
    assert finished(*threads)
    assert committed(grouped) == set(range(5))


def test_a_writer_without_the_baton_is_not_left_waiting_on_its_open_group(
    grouped: Database,
) -> None:
    """A writer that holds no baton (a web page) leaves its group open because a reader waits
    for the baton; the reader takes and gives the baton while the writer still holds the
    writer lock, so that hand-over's ``settle`` cannot commit, and nothing else would: the
    writer must close its group itself once the window has passed (found by review)."""
    group, baton = grouped._group, grouped.baton
    assert group is not None
    decided, go = threading.Event(), threading.Event()
    after_member = group._after_member

    def after_member_then_pause() -> None:  # widens the window a GIL switch can open
        after_member()
        decided.set()
        go.wait(WAIT)

    group._after_member = after_member_then_pause  # type: ignore[method-assign]
    holder_may_go, seated = threading.Event(), []
    holder = run(hold, baton, holder_may_go, seated)
    wait_until(lambda: seated == ["in"])

    def read() -> None:
        with baton.held():
            pass

    reader = run(read)
    wait_until(lambda: baton.waiting() == 1)

    def write() -> None:  # holds no baton
        with grouped.transaction() as session:
            session.execute(text("INSERT INTO baton_rows (n) VALUES (1)"))

    writer = run(write)
    assert decided.wait(WAIT)
    assert group._batch is not None  # left open: a reader was waiting to join
    holder_may_go.set()  # the reader takes the baton and gives it: settle finds the lock held
    assert finished(holder, reader)
    go.set()  # the writer lets go of the writer lock only now, and waits for its group
    assert finished(writer), "the writer waits for a commit nobody makes"
    assert committed(grouped) == {1}


def test_a_group_commits_with_the_baton_down(grouped: Database) -> None:
    """The commit's fsync is a wait like any other: another request runs meanwhile (its
    Python, its reads), it does not wait for the disk."""
    group = grouped._group
    assert group is not None
    committing, go, took = threading.Event(), threading.Event(), threading.Event()
    sessions = group._sessions

    def sessions_with_a_slow_commit():  # type: ignore[no-untyped-def]
        session = sessions()
        commit = session.commit

        def slow_commit() -> None:
            committing.set()
            go.wait(WAIT)
            commit()

        session.commit = slow_commit  # type: ignore[method-assign]
        return session

    group._sessions = sessions_with_a_slow_commit  # type: ignore[assignment]
    writer = run(insert, grouped, 1)
    assert committing.wait(WAIT)

    def other_request() -> None:
        with grouped.baton.held():
            took.set()

    other = run(other_request)
    try:
        assert took.wait(WAIT), "the baton stayed with the committing writer"
    finally:
        go.set()
    assert finished(writer, other)
    assert committed(grouped) == {1}
