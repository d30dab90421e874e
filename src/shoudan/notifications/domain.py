"""Pure rules of the outbox: event states, retry backoff, topic names.

Delivery is at least once: a handler may see the same event twice (a worker that dies after
calling it, a lease that runs out), so consumers de-duplicate on ``dedupe_key``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from shoudan.core.errors import DomainError, ErrorCode

TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9_.]{1,63}$")
MAX_DEDUPE_KEY = 128
MAX_ERROR_TEXT = 2000


class EventStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


# pending -> pending is a retry; dead -> pending is staff requeueing a dead letter.
TRANSITIONS: dict[EventStatus, frozenset[EventStatus]] = {
    EventStatus.PENDING: frozenset({EventStatus.PENDING, EventStatus.DELIVERED, EventStatus.DEAD}),
    EventStatus.DELIVERED: frozenset(),
    EventStatus.DEAD: frozenset({EventStatus.PENDING}),
}


def transition(current: str, target: EventStatus) -> EventStatus:
    """``target`` if the move is allowed, else a DomainError (delivered is final)."""
    try:
        state = EventStatus(current)
    except ValueError as exc:
        raise DomainError(ErrorCode.INVALID_INPUT, f"unknown event status {current!r}") from exc
    if target not in TRANSITIONS[state]:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"outbox event cannot go from {state} to {target}",
            current=state.value,
            target=target.value,
        )
    return target


def validate_topic(topic: object) -> str:
    if not isinstance(topic, str) or not TOPIC_PATTERN.match(topic):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"invalid event topic {topic!r}: lowercase letters, digits, '_' and '.', "
            "starting with a letter, 2-64 characters",
        )
    return topic


def encode_payload(payload: object) -> str:
    """The payload as JSON text; refuses anything that is not a JSON object of plain values."""
    if not isinstance(payload, dict):
        raise DomainError(ErrorCode.INVALID_INPUT, "event payload must be a JSON object (dict)")
    try:
        return json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"event payload is not JSON-serialisable: {exc}"
        ) from exc


def decode_payload(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("stored payload is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with a cap and jitter.

    The jitter is derived from the event id and attempt number rather than a random source, so
    a schedule can be replayed in tests, while different events still spread out instead of
    retrying in lock-step after an outage.
    """

    base: timedelta = timedelta(seconds=10)
    factor: float = 2.0
    cap: timedelta = timedelta(hours=1)
    jitter: float = 0.2  # +/- this fraction of the delay

    def __post_init__(self) -> None:
        if self.base <= timedelta(0) or self.cap < self.base:
            raise ValueError("backoff needs 0 < base <= cap")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs factor >= 1 and 0 <= jitter < 1")

    def delay(self, attempt: int, event_id: str) -> timedelta:
        """Wait after failed attempt number ``attempt`` (1-based), never above ``cap``."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        raw = self.base.total_seconds() * self.factor ** min(attempt - 1, 64)
        nominal = min(raw, self.cap.total_seconds())
        digest = hashlib.sha256(f"{event_id}:{attempt}".encode()).digest()
        unit = int.from_bytes(digest[:8], "big") / 2**64  # in [0, 1)
        spread = 1 - self.jitter + 2 * self.jitter * unit
        return timedelta(seconds=min(nominal * spread, self.cap.total_seconds()))


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    status: EventStatus
    next_attempt_at: datetime | None  # None when dead


def after_failure(
    *,
    event_id: str,
    attempts: int,
    max_attempts: int,
    now: datetime,
    policy: BackoffPolicy,
) -> FailureOutcome:
    """What happens after attempt number ``attempts`` failed: retry later, or dead-letter."""
    if attempts >= max_attempts:
        return FailureOutcome(transition(EventStatus.PENDING, EventStatus.DEAD), None)
    return FailureOutcome(
        transition(EventStatus.PENDING, EventStatus.PENDING),
        now + policy.delay(attempts, event_id),
    )


def error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"
