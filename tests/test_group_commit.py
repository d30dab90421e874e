"""Group commit on SQLite (core/db.py GroupCommit): concurrent write transactions of one
process share a commit, each keeps its own result, nobody returns before the commit."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from shoudan.core import db
from shoudan.core.batching import BatchWriter
from shoudan.core.db import Database
from shoudan.notifications.models import OutboxEvent
from shoudan.notifications.service import emit

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


@pytest.fixture
def grouped(sqlite_database: Database):  # type: ignore[no-untyped-def]
    database = Database(sqlite_database.url, group_commit=32)
    commits: list[int] = []
    event.listen(database.engine, "commit", lambda _conn: commits.append(1))
    database.commits = commits  # type: ignore[attr-defined]
    yield database
    database.dispose()


def count(database: Database, topic: str | None = None) -> int:
    query = select(func.count()).select_from(OutboxEvent)
    if topic:
        query = query.where(OutboxEvent.topic == topic)
    with database.read() as session:
        return int(session.scalar(query) or 0)


def test_a_lone_transaction_is_committed_before_it_returns(grouped: Database) -> None:
    with grouped.transaction() as session:
        emit(session, "system.ping", {"n": 1})
    other = Database(grouped.url)  # another connection sees it at once
    try:
        assert count(other) == 1
    finally:
        other.dispose()


def test_after_its_last_write_a_request_finishes_without_the_baton(grouped: Database) -> None:
    """A write transaction gives the baton back to its request after the commit (more may
    follow); an item left for the group (``BatchWriter``, a new payment: the request's last
    write) does not take it back (Baton.put_down_for_good): the rest, its answer, runs beside
    the next holder, and the request's ``held`` block ends cleanly."""
    baton = grouped.baton

    def write_many(session: Session, items: Sequence[str]) -> list[str]:
        return [emit(session, "system.ping", {"item": item}) for item in items]

    writer: BatchWriter[str, str] = BatchWriter(grouped, write_many)
    with baton.held():
        with grouped.transaction() as session:
            emit(session, "system.ping", {"n": 1})
            assert baton.holding()  # pinned inside the write
        assert baton.holding()  # taken back: the request goes on
        writer.write("last")
        assert not baton.holding()
        taken = threading.Event()

        def other() -> None:
            with baton.held():
                taken.set()

        thread = threading.Thread(target=other)
        thread.start()
        assert taken.wait(5), "another request could not take the baton"
        thread.join(5)
    assert not baton.holding()
    with baton.held():  # and the next request of this thread takes it as usual
        assert baton.holding()


def test_concurrent_transactions_share_commits_and_keep_their_own_results(
    grouped: Database,
) -> None:
    barrier = threading.Barrier(8)

    def work(n: int) -> str:
        if n < 8:
            barrier.wait()
        try:
            with grouped.transaction() as session:
                emit(session, "system.ping" if n % 5 else "doomed.work", {"n": n})
                if n % 5 == 0:
                    raise ValueError(f"refused {n}")
        except ValueError:
            return "refused"
        # returned: committed, visible to anyone
        return "committed" if count(grouped, "system.ping") > 0 else "lost"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(work, range(200)))
    assert outcomes.count("refused") == 40
    assert outcomes.count("committed") == 160
    assert count(grouped, "system.ping") == 160
    assert count(grouped, "doomed.work") == 0  # rolled back to their savepoints
    assert len(grouped.commits) < 160  # type: ignore[attr-defined]


def test_an_integrity_error_fails_only_its_own_transaction(grouped: Database) -> None:
    with grouped.transaction() as session:
        emit(session, "system.ping", {}, dedupe_key="k")
        first = session.scalar(select(OutboxEvent.id))

    def work(n: int) -> str:
        try:
            with grouped.transaction() as session:
                if n == 3:
                    session.add(OutboxEvent(
                        id=first, topic="dup", payload="{}", dedupe_key="x", status="pending",
                        attempts=0, next_attempt_at=NOW, created_at=NOW,
                    ))  # fmt: skip
                else:
                    emit(session, "system.ping", {"n": n})
        except Exception as error:
            return type(error).__name__
        return "ok"

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(work, range(12)))
    assert outcomes.count("ok") == 11
    assert outcomes[3] == "IntegrityError"
    assert count(grouped, "system.ping") == 12


def test_payments_through_group_commit_keep_the_books(
    sqlite_database: Database, tmp_path: Path
) -> None:
    from shoudan.auth.domain import Principal, Role
    from shoudan.payments.domain import EntryMode, Method
    from shoudan.payments.service import CardInput, PaymentRequest
    from tests.payments_world import DEBIT, PIN, build_world, check_day_totals

    world = build_world(Database(sqlite_database.url, group_commit=16), tmp_path)
    merchant = Principal("m", Role.MERCHANT, world.merchant_a)
    card = CardInput(DEBIT, "2912", EntryMode.CHIP, PIN)

    def pay(n: int) -> str:
        request = PaymentRequest(world.terminal_a, 100 + n, Method.CARD, card=card)
        return world.container.payments.create(merchant, request).status

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(pay, range(120)))
    assert statuses == ["captured"] * 120
    assert world.container.ledger.verify().violations == []
    check_day_totals(world)
    world.container.database.dispose()


def test_a_failed_member_returns_only_after_its_group_commits(
    grouped: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that collided with a neighbour's row (an Idempotency-Key's winner) looks the
    winner up at once: it must be committed by then."""
    monkeypatch.setattr(db, "GROUP_WINDOW_SECONDS", 60.0)  # the group waits for its member
    group = grouped._group
    assert group is not None
    with group._count_lock:
        group._queued += 1  # someone "queued": the group stays open after the first member

    def first() -> None:
        with grouped.transaction() as session:
            emit(session, "system.ping", {}, dedupe_key="winner")

    winner = threading.Thread(target=first)
    winner.start()
    while group._batch is None or group._batch.members < 1:
        threading.Event().wait(0.005)
    seen: dict[str, object] = {}

    def loser() -> None:
        try:
            with grouped.transaction() as session:
                session.add(OutboxEvent(
                    id=session.scalar(select(OutboxEvent.id)), topic="dup", payload="{}",
                    dedupe_key="x", status="pending", attempts=0, next_attempt_at=NOW,
                    created_at=NOW,
                ))  # fmt: skip
        except Exception as error:
            seen["error"] = type(error).__name__
            seen["winner_visible"] = count(Database(grouped.url), "system.ping")

    late = threading.Thread(target=loser)
    late.start()
    late.join(timeout=0.5)
    assert late.is_alive()  # failed, but waiting for its group
    with group._count_lock:
        group._queued -= 1
    with grouped.transaction() as session:  # the queued one arrives and closes the group
        emit(session, "system.ping", {})
    late.join(timeout=10)
    winner.join(timeout=10)
    assert seen == {"error": "IntegrityError", "winner_visible": 2}


def test_payments_of_one_group_are_written_together_and_a_limit_fails_only_its_own(
    sqlite_database: Database, tmp_path: Path
) -> None:
    """Five ¥50,000 sales of one card reach the write turn together (core/batching.py): the
    card's ¥200,000 a day lets four through. Written as one batch, the fifth's limit fails
    the batch; each is then written alone, and only the fifth is declined (61), its money
    given back upstream."""
    from shoudan.auth.domain import Principal, Role
    from shoudan.payments.domain import EntryMode, Method
    from shoudan.payments.service import CardInput, PaymentRequest
    from tests.payments_world import CREDIT, DEBIT, PIN, build_world, check_day_totals

    world = build_world(Database(sqlite_database.url, group_commit=16), tmp_path)
    database = world.container.database
    payments = world.container.payments
    merchant = Principal("m", Role.MERCHANT, world.merchant_a)
    card = CardInput(DEBIT, "2912", EntryMode.CHIP, PIN)
    written: list[int] = []
    record = payments._record
    payments._writer._write_many = lambda session, drafts: (  # type: ignore[method-assign]
        written.append(len(drafts)) or record(session, drafts)
    )
    group = database._group
    assert group is not None
    # another card's sale first: the day's first RRNs are drawn (a transaction of their own)
    other = CardInput(CREDIT, "2912", EntryMode.CHIP)
    assert payments.create(merchant, PaymentRequest(world.terminal_a, 100, Method.CARD,
                                                    card=other)).status == "captured"
    written.clear()
    with ThreadPoolExecutor(max_workers=5) as pool:
        with database.transaction():  # the five queue behind this one: one group
            futures = [
                pool.submit(payments.create, merchant,
                            PaymentRequest(world.terminal_a, 5_000_000, Method.CARD, card=card))
                for _ in range(5)
            ]  # fmt: skip
            while group._queued < 5:
                threading.Event().wait(0.005)
        statuses = sorted(future.result().status for future in futures)
    assert statuses == ["captured"] * 4 + ["declined"]
    assert written[0] == 5 and sorted(written[1:]) == [1] * 5  # the batch, then each alone
    assert world.container.ledger.verify().violations == []
    check_day_totals(world)
    database.dispose()
