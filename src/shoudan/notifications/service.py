"""The transactional outbox: ``emit`` in the caller's transaction, ``Relay`` delivers.

The relay works in three short steps so that no lock is held while a handler does network I/O:

1. claim: one transaction takes up to ``batch_size`` due events and leases them to this worker
   (``locked_by``/``locked_until``, attempts + 1). On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets
   several relays claim side by side without blocking or double-claiming; on SQLite the write
   transaction (``BEGIN IMMEDIATE``) is already exclusive.
2. deliver: call the handlers with no transaction open.
3. record: one transaction writes the outcomes (delivered, retry later, dead).

A worker that dies between 1 and 3 leaves a lease that simply runs out; another relay then
delivers the event again. Hence at least once, and consumers de-duplicate on ``dedupe_key``.
Attempts are counted at claim time so that an event that crashes its worker still ends up dead
after ``max_attempts`` instead of looping forever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from shoudan.core.clock import Clock, SystemClock
from shoudan.core.db import Database, DriverSQL
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.notifications.domain import (
    MAX_DEDUPE_KEY,
    BackoffPolicy,
    EventStatus,
    after_failure,
    decode_payload,
    encode_payload,
    error_text,
    transition,
    validate_topic,
)
from shoudan.notifications.models import OutboxEvent

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 60.0
NO_HANDLER_ERROR = "no handler for topic"


@dataclass(frozen=True, slots=True)
class DeliveredEvent:
    """What a handler receives. ``attempt`` is 1 on first delivery."""

    id: str
    topic: str
    payload: dict[str, Any]
    dedupe_key: str
    attempt: int
    created_at: datetime


Handler = Callable[[DeliveredEvent], None]


class HandlerRegistry:
    """Topic -> handlers. Every handler of a topic runs for each event, in registration order;
    if one fails the event is retried and all run again (handlers must be idempotent)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}

    def register(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(validate_topic(topic), []).append(handler)

    def on(self, topic: str) -> Callable[[Handler], Handler]:
        """Decorator form of ``register``."""

        def decorate(handler: Handler) -> Handler:
            self.register(topic, handler)
            return handler

        return decorate

    def handlers_for(self, topic: str) -> tuple[Handler, ...]:
        return tuple(self._handlers.get(topic, ()))

    def topics(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, topic: object) -> bool:
        return topic in self._handlers


def _log_ping(event: DeliveredEvent) -> None:
    log.info("system.ping %s (attempt %d): %s", event.id, event.attempt, event.payload)


def default_registry() -> HandlerRegistry:
    """The handlers the worker runs. Domains add theirs here as they come."""
    registry = HandlerRegistry()
    registry.register("system.ping", _log_ping)
    return registry


def emit(
    session: Session,
    topic: str,
    payload: dict[str, Any],
    dedupe_key: str | None = None,
    clock: Clock | None = None,
    not_before: datetime | None = None,
) -> str:
    """Write an event in the caller's transaction; it exists only if that transaction commits.

    Returns the event id. ``dedupe_key`` defaults to the event id; pass a business key (say
    ``refund:R1:succeeded``) when consumers should also collapse events emitted twice.
    ``not_before`` delays the first delivery (a retry scheduled for later).
    """
    now = (clock or SystemClock()).now()
    row = _event_row(topic, payload, dedupe_key, now, not_before)
    # One driver INSERT, not an ORM add and flush: every payment and refund emits, and the
    # unit of work cost more than the row (docs/benchmarks.md).
    DriverSQL(session).insert(OutboxEvent, row)
    return str(row["id"])


def emit_many(
    session: Session, events: Sequence[tuple[str, dict[str, Any], str | None]], clock: Clock
) -> list[str]:
    """``emit`` for each (topic, payload, dedupe_key), in one statement: a batch of new
    payments emits one event each."""
    now = clock.now()
    rows = [_event_row(topic, payload, key, now, None) for topic, payload, key in events]
    DriverSQL(session).insert_many(OutboxEvent, rows)
    return [str(row["id"]) for row in rows]


def _event_row(
    topic: str,
    payload: dict[str, Any],
    dedupe_key: str | None,
    now: datetime,
    not_before: datetime | None,
) -> dict[str, object]:
    validate_topic(topic)
    body = encode_payload(payload)
    event_id = new_id("evt_")
    if dedupe_key is None:
        dedupe_key = event_id
    elif not isinstance(dedupe_key, str) or not dedupe_key or len(dedupe_key) > MAX_DEDUPE_KEY:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"dedupe_key must be 1-{MAX_DEDUPE_KEY} characters"
        )
    return {
        "id": event_id, "topic": topic, "payload": body, "dedupe_key": dedupe_key,
        "status": EventStatus.PENDING.value, "attempts": 0,
        "next_attempt_at": max(now, not_before) if not_before is not None else now,
        "locked_by": None, "locked_until": None, "last_error": None,
        "created_at": now, "delivered_at": None,
    }  # fmt: skip


@dataclass(frozen=True, slots=True)
class RelayStats:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0  # claimed but handed back unattempted (lease ran out mid-batch)

    @property
    def claimed(self) -> int:
        return self.delivered + self.retried + self.dead + self.released

    def __add__(self, other: RelayStats) -> RelayStats:
        return RelayStats(
            self.delivered + other.delivered,
            self.retried + other.retried,
            self.dead + other.dead,
            self.released + other.released,
        )


@dataclass(frozen=True, slots=True)
class _Outcome:
    event_id: str
    status: EventStatus | None  # None: release the lease, the attempt did not happen
    next_attempt_at: datetime | None = None
    error: str | None = None


def default_worker_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{new_id()[-8:]}"


class Relay:
    def __init__(
        self,
        database: Database,
        registry: HandlerRegistry,
        *,
        clock: Clock | None = None,
        worker_id: str | None = None,
        batch_size: int = 100,
        max_attempts: int = 8,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        if batch_size < 1 or max_attempts < 1 or lease_seconds <= 0:
            raise ValueError("batch_size, max_attempts and lease_seconds must be positive")
        self.database = database
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.worker_id = (worker_id or default_worker_id())[:64]
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        self.backoff = backoff or BackoffPolicy()

    def run_once(self) -> RelayStats:
        """Claim one batch, deliver it, record the outcomes."""
        events, stale, lease_end = self._claim()
        outcomes = [*stale, *self._deliver(events, lease_end)]
        if outcomes:
            self._record(outcomes)
        counts = {status: 0 for status in (*EventStatus, None)}
        for outcome in outcomes:
            counts[outcome.status] += 1
        return RelayStats(
            delivered=counts[EventStatus.DELIVERED],
            retried=counts[EventStatus.PENDING],
            dead=counts[EventStatus.DEAD],
            released=counts[None],
        )

    def run_forever(
        self,
        stop_event: threading.Event,
        poll_seconds: float = 1.0,
        each_loop: Callable[[RelayStats], None] | None = None,
    ) -> None:
        """Loop until ``stop_event`` is set; a batch in progress is always finished first.

        A full batch means more may be waiting, so the next one starts at once; otherwise wait
        ``poll_seconds``. Database errors are logged and retried, not fatal.
        """
        while not stop_event.is_set():
            try:
                stats = self.run_once()
            except Exception:
                log.exception("outbox relay batch failed; retrying after %.1fs", poll_seconds)
                stats = RelayStats()
            if each_loop is not None:
                try:
                    each_loop(stats)
                except Exception:
                    log.exception("outbox relay loop hook failed")
            if stats.claimed < self.batch_size:
                stop_event.wait(poll_seconds)

    # -- steps -------------------------------------------------------------------------------

    def _claim(self) -> tuple[list[DeliveredEvent], list[_Outcome], datetime]:
        now = self.clock.now()
        due = (
            select(OutboxEvent)
            .where(
                OutboxEvent.status == EventStatus.PENDING.value,
                OutboxEvent.next_attempt_at <= now,
                or_(OutboxEvent.locked_until.is_(None), OutboxEvent.locked_until <= now),
            )
            .order_by(OutboxEvent.next_attempt_at, OutboxEvent.id)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
        )
        events: list[DeliveredEvent] = []
        stale: list[_Outcome] = []
        with self.database.transaction() as session:
            for row in session.execute(due).scalars():
                if row.attempts >= self.max_attempts:
                    # Its last attempt started but never reported (worker died, lease ran out).
                    stale.append(
                        _Outcome(row.id, EventStatus.DEAD, error="lease expired on last attempt")
                    )
                    row.locked_by = self.worker_id
                    continue
                row.attempts += 1
                row.locked_by = self.worker_id
                row.locked_until = now + self.lease
                try:
                    payload = decode_payload(row.payload)
                except ValueError as exc:
                    stale.append(_Outcome(row.id, EventStatus.DEAD, error=error_text(exc)))
                    continue
                events.append(
                    DeliveredEvent(
                        id=row.id,
                        topic=row.topic,
                        payload=payload,
                        dedupe_key=row.dedupe_key,
                        attempt=row.attempts,
                        created_at=row.created_at,
                    )
                )
        return events, stale, now + self.lease

    def _deliver(self, events: list[DeliveredEvent], lease_end: datetime) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        for index, event in enumerate(events):
            if self.clock.now() >= lease_end:
                # Another relay may own these now: hand the rest back without calling anyone.
                outcomes.extend(_Outcome(e.id, None) for e in events[index:])
                break
            handlers = self.registry.handlers_for(event.topic)
            if not handlers:
                # Dead-letter at once: retrying cannot help, and staff should see it.
                error = f"{NO_HANDLER_ERROR} {event.topic!r}"
                outcomes.append(_Outcome(event.id, EventStatus.DEAD, error=error))
                continue
            try:
                for handler in handlers:
                    handler(event)
            except Exception as exc:
                log.warning("outbox event %s (%s) failed: %s", event.id, event.topic, exc)
                result = after_failure(
                    event_id=event.id,
                    attempts=event.attempt,
                    max_attempts=self.max_attempts,
                    now=self.clock.now(),
                    policy=self.backoff,
                )
                outcomes.append(
                    _Outcome(event.id, result.status, result.next_attempt_at, error_text(exc))
                )
            else:
                outcomes.append(_Outcome(event.id, EventStatus.DELIVERED))
        return outcomes

    def _record(self, outcomes: list[_Outcome]) -> None:
        now = self.clock.now()
        with self.database.transaction() as session:
            for outcome in outcomes:
                mine = (
                    OutboxEvent.id == outcome.event_id,
                    OutboxEvent.status == EventStatus.PENDING.value,
                )
                owned = (*mine, OutboxEvent.locked_by == self.worker_id)
                if outcome.status is EventStatus.DELIVERED:
                    # Delivered is delivered, even if our lease ran out and another relay has
                    # claimed the event meanwhile (it will find it no longer pending).
                    query = (
                        update(OutboxEvent)
                        .where(*mine)
                        .values(
                            status=EventStatus.DELIVERED.value,
                            delivered_at=now,
                            locked_by=None,
                            locked_until=None,
                            last_error=None,
                        )
                    )
                elif outcome.status is None:
                    query = (
                        update(OutboxEvent)
                        .where(*owned)
                        .values(
                            attempts=OutboxEvent.attempts - 1, locked_by=None, locked_until=None
                        )
                    )
                else:
                    values: dict[str, Any] = {
                        "status": outcome.status.value,
                        "last_error": outcome.error,
                        "locked_by": None,
                        "locked_until": None,
                    }
                    if outcome.next_attempt_at is not None:
                        values["next_attempt_at"] = outcome.next_attempt_at
                    query = update(OutboxEvent).where(*owned).values(**values)
                session.execute(query.execution_options(synchronize_session=False))


def requeue_dead(session: Session, event_id: str, clock: Clock | None = None) -> None:
    """Staff: give a dead event a fresh set of attempts, due now. The caller records who did
    it in the audit log, in the same transaction."""
    row = session.execute(
        select(OutboxEvent).where(OutboxEvent.id == event_id).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        raise DomainError(ErrorCode.NOT_FOUND, f"no outbox event {event_id!r}", id=event_id)
    row.status = transition(row.status, EventStatus.PENDING).value
    row.attempts = 0
    row.next_attempt_at = (clock or SystemClock()).now()
    row.locked_by = None
    row.locked_until = None
    session.flush()


def stats(session: Session) -> dict[str, int]:
    """Number of events in each status (every status present, zero included)."""
    counts = {status.value: 0 for status in EventStatus}
    rows = session.execute(
        select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status)
    ).all()
    for status, count in rows:
        counts[str(status)] = int(count)
    return counts
