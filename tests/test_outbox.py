"""The transactional outbox and its relay: emit with the use case, deliver at least once,
retry with backoff, dead-letter, requeue, and concurrent relays on both engines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from shoudan.cli import worker as worker_cli
from shoudan.core.clock import Clock, FixedClock
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.notifications import service
from shoudan.notifications.domain import (
    BackoffPolicy,
    EventStatus,
    after_failure,
    transition,
    validate_topic,
)
from shoudan.notifications.models import OutboxEvent
from shoudan.notifications.service import DeliveredEvent, HandlerRegistry, Relay

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
POLICY = BackoffPolicy(base=timedelta(seconds=10), cap=timedelta(minutes=5), jitter=0.2)


# -- pure rules -------------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jitter_is_deterministic() -> None:
    delays = [POLICY.delay(n, "evt_A") for n in range(1, 12)]
    assert delays == [POLICY.delay(n, "evt_A") for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        nominal = min(10 * 2 ** (n - 1), 300)
        assert nominal * 0.8 <= delay.total_seconds() <= min(nominal * 1.2, 300)
    assert max(delays) <= timedelta(minutes=5)
    assert delays[0] < delays[3]
    # different events spread out instead of retrying in lock-step
    assert len({POLICY.delay(1, f"evt_{i}") for i in range(20)}) > 10
    no_jitter = BackoffPolicy(base=timedelta(seconds=1), jitter=0)
    assert no_jitter.delay(3, "x") == timedelta(seconds=4)
    assert no_jitter.delay(10_000, "x") == timedelta(hours=1)


@pytest.mark.parametrize(
    "kwargs",
    [{"base": timedelta(0)}, {"cap": timedelta(seconds=1)}, {"factor": 0.5}, {"jitter": 1.0}],
)
def test_backoff_policy_refuses_nonsense(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_status_transitions() -> None:
    assert transition("pending", EventStatus.DELIVERED) is EventStatus.DELIVERED
    assert transition("pending", EventStatus.PENDING) is EventStatus.PENDING
    assert transition("dead", EventStatus.PENDING) is EventStatus.PENDING
    for current, target in [
        ("delivered", EventStatus.PENDING),
        ("delivered", EventStatus.DEAD),
        ("dead", EventStatus.DELIVERED),
        ("bogus", EventStatus.PENDING),
    ]:
        with pytest.raises(DomainError):
            transition(current, target)


def test_after_failure_retries_then_dead_letters() -> None:
    retry = after_failure(event_id="e", attempts=2, max_attempts=3, now=T0, policy=POLICY)
    assert retry.status is EventStatus.PENDING
    assert retry.next_attempt_at == T0 + POLICY.delay(2, "e")
    dead = after_failure(event_id="e", attempts=3, max_attempts=3, now=T0, policy=POLICY)
    assert (dead.status, dead.next_attempt_at) == (EventStatus.DEAD, None)


@pytest.mark.parametrize("topic", ["", "a", "Refund.done", "9x", "a-b", "a" * 65, None])
def test_bad_topics_are_refused(topic: object) -> None:
    with pytest.raises(DomainError) as info:
        validate_topic(topic)
    assert info.value.code is ErrorCode.INVALID_INPUT


# -- helpers ----------------------------------------------------------------------------------


def emit(database: Database, topic: str = "refund.succeeded", **payload: object) -> str:
    with database.transaction() as session:
        return service.emit(session, topic, payload or {"refund_id": "R1"}, clock=CLOCK_T0)


CLOCK_T0 = FixedClock(T0)


def event(database: Database, event_id: str) -> OutboxEvent:
    with database.read() as session:
        row = session.get(OutboxEvent, event_id)
        assert row is not None
        session.expunge(row)
        return row


def relay(database: Database, registry: HandlerRegistry, clock: Clock, **kwargs: object) -> Relay:
    kwargs.setdefault("backoff", POLICY)
    return Relay(database, registry, clock=clock, **kwargs)  # type: ignore[arg-type]


def collecting(topic: str = "refund.succeeded") -> tuple[HandlerRegistry, list[DeliveredEvent]]:
    seen: list[DeliveredEvent] = []
    registry = HandlerRegistry()
    registry.register(topic, seen.append)
    return registry, seen


# -- emit -------------------------------------------------------------------------------------


def test_emit_in_a_rolled_back_transaction_leaves_no_event(database: Database) -> None:
    with pytest.raises(RuntimeError), database.transaction() as session:
        service.emit(session, "refund.succeeded", {"refund_id": "R1"})
        raise RuntimeError("the use case failed after emitting")
    with database.read() as session:
        assert service.stats(session) == {"pending": 0, "delivered": 0, "dead": 0}


def test_emit_writes_a_pending_event(database: Database) -> None:
    with database.transaction() as session:
        event_id = service.emit(
            session, "refund.succeeded", {"amount_minor": 5000, "名": "退款"}, dedupe_key="R1:ok"
        )
    row = event(database, event_id)
    assert event_id.startswith("evt_")
    assert (row.topic, row.status, row.attempts, row.dedupe_key) == (
        "refund.succeeded",
        "pending",
        0,
        "R1:ok",
    )
    assert row.payload == '{"amount_minor":5000,"名":"退款"}'
    assert row.next_attempt_at == row.created_at


@pytest.mark.parametrize(
    ("topic", "payload", "dedupe_key"),
    [
        ("Bad Topic", {}, None),
        ("ok.topic", ["not", "a", "dict"], None),
        ("ok.topic", {"x": object()}, None),
        ("ok.topic", {"x": float("nan")}, None),
        ("ok.topic", {}, ""),
        ("ok.topic", {}, "k" * 129),
    ],
)
def test_emit_validates(
    database: Database, topic: str, payload: object, dedupe_key: str | None
) -> None:
    with database.transaction() as session, pytest.raises(DomainError) as info:
        service.emit(session, topic, payload, dedupe_key=dedupe_key)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INVALID_INPUT


def test_emit_many_writes_each_event_with_its_own_id_or_none_when_one_is_refused(
    database: Database,
) -> None:
    clock = FixedClock(datetime(2026, 11, 24, 8, 0, tzinfo=UTC))
    with database.transaction() as session:
        ids = service.emit_many(session, [
            ("payment.captured", {"payment_id": "P1"}, "P1:new"),
            ("payment.declined", {"payment_id": "P2"}, None),
        ], clock)  # fmt: skip
    rows = [event(database, event_id) for event_id in ids]
    assert len(set(ids)) == 2
    assert [(r.topic, r.dedupe_key, r.status) for r in rows] == [
        ("payment.captured", "P1:new", "pending"), ("payment.declined", ids[1], "pending"),
    ]  # fmt: skip
    assert rows[0].payload == '{"payment_id":"P1"}'
    assert all(r.created_at == r.next_attempt_at == clock.now() for r in rows)
    with database.transaction() as session, pytest.raises(DomainError) as info:
        service.emit_many(session, [
            ("payment.captured", {"payment_id": "P3"}, "P3:new"), ("Bad Topic", {}, None),
        ], clock)  # fmt: skip
    assert info.value.code is ErrorCode.INVALID_INPUT
    with database.read() as session:
        assert service.stats(session)["pending"] == 2  # the refused batch wrote nothing


# -- delivery ---------------------------------------------------------------------------------


def test_relay_delivers_each_event_to_its_handlers(database: Database) -> None:
    ids = [emit(database, refund_id=f"R{i}") for i in range(3)]
    registry, seen = collecting()
    also: list[str] = []
    registry.register("refund.succeeded", lambda e: also.append(e.id))
    clock = FixedClock(T0)
    stats = relay(database, registry, clock).run_once()
    assert (stats.delivered, stats.retried, stats.dead, stats.claimed) == (3, 0, 0, 3)
    assert [e.id for e in seen] == ids == also  # creation order
    assert seen[0].payload == {"refund_id": "R0"}
    assert seen[0].attempt == 1 and seen[0].dedupe_key == ids[0]
    row = event(database, ids[0])
    assert (row.status, row.attempts, row.locked_by, row.delivered_at) == (
        "delivered",
        1,
        None,
        T0,
    )
    assert relay(database, registry, clock).run_once().claimed == 0
    with database.read() as session:
        assert service.stats(session) == {"pending": 0, "delivered": 3, "dead": 0}


def test_relay_waits_for_events_that_are_not_due(database: Database) -> None:
    clock = FixedClock(T0 - timedelta(seconds=1))
    emit(database)  # created at T0
    registry, _ = collecting()
    assert relay(database, registry, clock).run_once().claimed == 0
    clock.set(T0)
    assert relay(database, registry, clock).run_once().delivered == 1


def test_batch_size_limits_a_claim(database: Database) -> None:
    for i in range(5):
        emit(database, refund_id=str(i))
    registry, seen = collecting()
    r = relay(database, registry, FixedClock(T0), batch_size=2)
    assert [r.run_once().delivered for _ in range(4)] == [2, 2, 1, 0]
    assert len(seen) == 5


def test_failures_retry_with_backoff_then_dead_letter(database: Database) -> None:
    event_id = emit(database)
    calls: list[int] = []

    def flaky(e: DeliveredEvent) -> None:
        calls.append(e.attempt)
        raise ConnectionError("merchant webhook timed out")

    registry = HandlerRegistry()
    registry.register("refund.succeeded", flaky)
    clock = FixedClock(T0)
    r = relay(database, registry, clock, max_attempts=3)

    assert r.run_once().retried == 1
    row = event(database, event_id)
    assert (row.status, row.attempts, row.locked_by) == ("pending", 1, None)
    assert row.next_attempt_at == T0 + POLICY.delay(1, event_id)
    assert row.last_error == "ConnectionError: merchant webhook timed out"

    # not due yet: nothing happens, however often the relay runs
    clock.set(row.next_attempt_at - timedelta(microseconds=1))
    assert r.run_once().claimed == 0

    clock.set(row.next_attempt_at)
    assert r.run_once().retried == 1
    row = event(database, event_id)
    assert row.attempts == 2
    assert row.next_attempt_at == clock.now() + POLICY.delay(2, event_id)

    clock.set(row.next_attempt_at)
    assert r.run_once().dead == 1
    row = event(database, event_id)
    assert (row.status, row.attempts) == ("dead", 3)
    assert calls == [1, 2, 3]

    clock.advance(timedelta(days=1))
    assert r.run_once().claimed == 0


def test_a_success_after_failures_delivers(database: Database) -> None:
    event_id = emit(database)
    outcomes = iter([RuntimeError("boom"), None])

    def handler(_e: DeliveredEvent) -> None:
        error = next(outcomes)
        if error:
            raise error

    registry = HandlerRegistry()
    registry.register("refund.succeeded", handler)
    clock = FixedClock(T0)
    r = relay(database, registry, clock)
    assert r.run_once().retried == 1
    clock.advance(timedelta(hours=2))
    assert r.run_once().delivered == 1
    row = event(database, event_id)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 2, None)


def test_an_event_without_handler_is_dead_lettered(database: Database) -> None:
    event_id = emit(database, topic="nobody.listens")
    registry, _ = collecting()
    stats = relay(database, registry, FixedClock(T0)).run_once()
    assert (stats.dead, stats.delivered) == (1, 0)
    row = event(database, event_id)
    assert row.status == "dead" and row.last_error is not None
    assert row.last_error.startswith("no handler for topic")


def test_requeue_dead_gives_a_fresh_start(database: Database) -> None:
    event_id = emit(database, topic="later.handled")
    clock = FixedClock(T0)
    relay(database, HandlerRegistry(), clock).run_once()
    assert event(database, event_id).status == "dead"

    clock.advance(timedelta(minutes=5))
    with database.transaction() as session:
        service.requeue_dead(session, event_id, clock=clock)
    row = event(database, event_id)
    assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, clock.now())

    registry, seen = collecting("later.handled")
    assert relay(database, registry, clock).run_once().delivered == 1
    assert [e.id for e in seen] == [event_id]

    with database.transaction() as session, pytest.raises(DomainError) as info:
        service.requeue_dead(session, event_id)  # delivered is final
    assert info.value.code is ErrorCode.INVALID_INPUT
    with database.transaction() as session, pytest.raises(DomainError) as info:
        service.requeue_dead(session, "evt_missing")
    assert info.value.code is ErrorCode.NOT_FOUND


def test_a_crashed_worker_lease_expires_and_the_event_is_delivered_again(
    database: Database,
) -> None:
    event_id = emit(database)
    clock = FixedClock(T0)
    registry, seen = collecting()
    crashed = relay(database, registry, clock, worker_id="crashed", lease_seconds=30)
    claimed, _, _ = crashed._claim()  # claimed, then the process died before delivering
    assert [e.id for e in claimed] == [event_id]
    assert event(database, event_id).locked_by == "crashed"

    other = relay(database, registry, clock, worker_id="other", lease_seconds=30)
    assert other.run_once().claimed == 0  # the lease still holds
    clock.advance(timedelta(seconds=30))
    assert other.run_once().delivered == 1
    assert [(e.id, e.attempt) for e in seen] == [(event_id, 2)]


def test_a_lease_lost_on_the_last_attempt_dead_letters(database: Database) -> None:
    event_id = emit(database)
    clock = FixedClock(T0)
    registry, seen = collecting()
    crashed = relay(database, registry, clock, max_attempts=1, lease_seconds=30)
    crashed._claim()
    clock.advance(timedelta(minutes=1))
    assert relay(database, registry, clock, max_attempts=1).run_once().dead == 1
    row = event(database, event_id)
    assert row.status == "dead" and "lease" in (row.last_error or "")
    assert seen == []


def test_events_left_when_the_lease_runs_out_are_handed_back(database: Database) -> None:
    ids = [emit(database, refund_id=str(i)) for i in range(3)]
    clock = FixedClock(T0)
    seen: list[str] = []

    def slow(e: DeliveredEvent) -> None:
        seen.append(e.id)
        clock.advance(timedelta(seconds=31))  # the first delivery outlives the lease

    registry = HandlerRegistry()
    registry.register("refund.succeeded", slow)
    r = relay(database, registry, clock, lease_seconds=30)
    stats = r.run_once()
    assert (stats.delivered, stats.released) == (1, 2)
    assert seen == ids[:1]
    row = event(database, ids[1])
    assert (row.status, row.attempts, row.locked_by) == ("pending", 0, None)
    r.run_once()
    assert seen == ids[:2]  # one per batch while the handler keeps outliving the lease


def test_relays_running_concurrently_deliver_each_event_exactly_once(
    database: Database,
) -> None:
    total = 120
    with database.transaction() as session:
        ids = [service.emit(session, "load.test", {"n": n}) for n in range(total)]
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    by_worker: Counter[str] = Counter()

    def handler(e: DeliveredEvent) -> None:
        time.sleep(0.001)  # let the workers interleave
        with lock:
            seen[e.id] += 1

    registry = HandlerRegistry()
    registry.register("load.test", handler)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        r = Relay(database, registry, worker_id=name, batch_size=7)
        try:
            idle = 0
            while idle < 3:
                stats = r.run_once()
                with lock:
                    by_worker[name] += stats.delivered
                idle = idle + 1 if stats.claimed == 0 else 0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert set(seen) == set(ids), "an event was lost"
    assert set(seen.values()) == {1}, "an event was delivered twice"
    assert sum(by_worker.values()) == total
    with database.read() as session:
        assert service.stats(session) == {"pending": 0, "delivered": total, "dead": 0}
    if database.dialect == "postgresql":
        # SKIP LOCKED lets workers claim side by side rather than one doing everything
        assert sum(1 for n in by_worker.values() if n) >= 2


def test_run_forever_stops_when_asked(database: Database) -> None:
    registry, seen = collecting()
    r = Relay(database, registry, batch_size=2)
    stop = threading.Event()
    loops: list[int] = []
    thread = threading.Thread(
        target=r.run_forever, args=(stop, 0.01), kwargs={"each_loop": lambda s: loops.append(1)}
    )
    thread.start()
    with database.transaction() as session:
        for n in range(5):
            service.emit(session, "refund.succeeded", {"n": n})
    deadline = time.monotonic() + 30
    while len(seen) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(seen) == 5 and loops


def test_run_forever_survives_a_failing_batch(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = collecting()
    r = Relay(database, registry)
    stop = threading.Event()
    calls: list[int] = []

    def broken() -> service.RelayStats:
        calls.append(1)
        if len(calls) >= 3:
            stop.set()
        raise OSError("database went away")

    monkeypatch.setattr(r, "run_once", broken)
    r.run_forever(stop, 0.001)
    assert len(calls) == 3


def test_registry() -> None:
    registry = HandlerRegistry()

    @registry.on("a.b")
    def handler(_e: DeliveredEvent) -> None:
        return None

    assert "a.b" in registry and registry.topics() == ["a.b"]
    assert registry.handlers_for("a.b") == (handler,)
    assert registry.handlers_for("c.d") == ()
    with pytest.raises(DomainError):
        registry.register("Not A Topic", handler)
    assert "system.ping" in service.default_registry()


# -- worker command ---------------------------------------------------------------------------


def worker_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(worker_cli.worker)
    return app


def test_worker_once_delivers_and_calls_the_hold_expiry_hook(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with database.transaction() as session:
        ping = service.emit(session, "system.ping", {"hello": "世界"})
        stray = service.emit(session, "nobody.listens", {})
    expired: list[object] = []

    def expire_due_holds(db: Database, clock: Clock) -> int:
        expired.append(clock.now())
        return 2

    monkeypatch.setattr(worker_cli, "_expire_hook", lambda: expire_due_holds)
    result = CliRunner().invoke(worker_app(), ["--database-url", database.url, "--once"])
    assert result.exit_code == 0, result.output
    assert "delivered=1" in result.output and "dead=1" in result.output
    assert "ledger holds expired: 2" in result.output
    assert len(expired) == 1
    assert event(database, ping).status == "delivered"
    assert event(database, stray).status == "dead"


def test_worker_runs_without_a_ledger_hook(
    sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_cli, "_expire_hook", lambda: None)
    result = CliRunner().invoke(worker_app(), ["--database-url", sqlite_database.url, "--once"])
    assert result.exit_code == 0, result.output
    assert "delivered=0" in result.output


def test_expire_hook_lookup_is_guarded() -> None:
    hook = worker_cli._expire_hook()
    assert hook is None or callable(hook)


def test_worker_stops_gracefully_on_sigterm(sqlite_database: Database, tmp_path: Path) -> None:
    code = "import typer; from shoudan.cli.worker import worker; typer.run(worker)"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--database-url", sqlite_database.url, "--poll", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "started" in first, first
        with sqlite_database.transaction() as session:
            event_id = service.emit(session, "system.ping", {})
        deadline = time.monotonic() + 30
        while event(sqlite_database, event_id).status != "delivered":
            assert time.monotonic() < deadline, "worker did not deliver"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "stopping after this batch" in output
    assert "worker stopped; total outbox delivered=1" in output


def test_stats_counts_every_status(database: Database) -> None:
    emit(database)
    emit(database, topic="nobody.listens")
    registry, _ = collecting()
    relay(database, registry, FixedClock(T0), batch_size=1).run_once()
    with database.read() as session:
        counts = service.stats(session)
        assert counts == {"pending": 1, "delivered": 1, "dead": 0}
        assert session.execute(select(OutboxEvent.status)).scalars().all()


def test_outbox_cli_lists_dead_letters_and_requeues_them(database: Database) -> None:
    from shoudan.audit.models import AuditRecord
    from shoudan.cli.main import app as cli

    with database.transaction() as session:
        stray = service.emit(session, "nobody.listens", {}, clock=CLOCK_T0)
    relay(database, HandlerRegistry(), FixedClock(T0)).run_once()
    url = ["--database-url", database.url]
    listed = CliRunner().invoke(cli, ["outbox", "dead", *url])
    assert stray in listed.output and "no handler" in listed.output
    assert "dead=1" in CliRunner().invoke(cli, ["outbox", "stats", *url]).output
    done = CliRunner().invoke(cli, ["outbox", "requeue", stray, "--actor", "ops:li", *url])
    assert done.exit_code == 0, done.output
    assert event(database, stray).status == "pending"
    with database.read() as session:
        actions = session.scalars(select(AuditRecord.action).where(AuditRecord.actor == "ops:li"))
        assert list(actions) == ["outbox.requeue"]
    again = CliRunner().invoke(cli, ["outbox", "requeue", stray, *url])
    assert again.exit_code != 0  # a pending event is not dead: refused, nothing changed
