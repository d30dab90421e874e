"""Webhooks: publish events, manage endpoints, and deliver — signed, retried, logged.

How an event reaches a merchant's endpoints:

1. ``publish`` (in the caller's transaction, next to the state change it reports) writes the
   ``events`` row and one outbox event ``webhook.dispatch``.
2. The ``webhook.dispatch`` handler fans out: one outbox event ``webhook.deliver`` per enabled
   endpoint subscribed to the type. Each endpoint then retries on its own schedule, so an
   endpoint that fails never makes the others receive the event twice.
3. The ``webhook.deliver`` handler reads the endpoint (one short read), POSTs the signed body
   with no transaction open, writes the attempt to ``webhook_deliveries`` (its own short
   transaction), and raises on a non-2xx answer or a transport error: the outbox relay then
   retries with its backoff and dead-letters after ``outbox_max_attempts``.

Delivery is at least once: receivers de-duplicate on the event id (``Shoudan-Event-Id``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan import __version__
from shoudan.audit.service import record
from shoudan.auth.domain import Principal, Role
from shoudan.core.clock import Clock, SystemClock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault
from shoudan.core.db import Database, DriverSQL, Keyset, load_row, newest_first
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.notifications.domain import MAX_DEDUPE_KEY, encode_payload, error_text
from shoudan.notifications.models import OutboxEvent
from shoudan.notifications.service import DeliveredEvent, HandlerRegistry, emit
from shoudan.webhooks.domain import (
    ALL_EVENTS,
    EVENT_ID_HEADER,
    PAYMENT_EVENT_TYPES,
    SIGNATURE_HEADER,
    DeliveryStatus,
    encode_body,
    event_document,
    excerpt,
    generate_secret,
    is_success,
    matches,
    signature_header,
    validate_description,
    validate_event_type,
    validate_pattern,
    validate_subscriptions,
    validate_url,
)
from shoudan.webhooks.models import Event, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

DISPATCH_TOPIC = "webhook.dispatch"
DELIVER_TOPIC = "webhook.deliver"
SECRET_CONTEXT = "webhook:secret"  # noqa: S105  (a vault context, not a secret)
USER_AGENT = f"shoudan-webhooks/{__version__}"
MAX_ENABLED_ENDPOINTS = 16  # per merchant: each one multiplies the deliveries of every event
EXCERPT_READ_BYTES = 2048  # read no more of an answer than the excerpt can show
ENDPOINT_ADMINS = (Role.CS_AGENT,)  # staff who may manage a merchant's endpoints (and admin)



# -- views --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What may be shown of an endpoint: never its secret."""

    id: str
    merchant_id: str
    url: str
    description: str
    event_types: tuple[str, ...]
    enabled: bool
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedEndpoint:
    endpoint: EndpointView
    secret: str  # shown this once; only its ciphertext is stored

    def __repr__(self) -> str:  # the secret must never reach a log
        return f"CreatedEndpoint({self.endpoint.id})"


@dataclass(frozen=True, slots=True)
class EventView:
    id: str
    merchant_id: str
    type: str
    data: dict[str, Any]
    created_at: datetime

    def document(self) -> dict[str, Any]:
        """The JSON body POSTed to endpoints (and ``GET /v1/events/{id}``)."""
        return event_document(self.id, self.type, self.created_at, self.merchant_id, self.data)


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: str
    event_id: str
    endpoint_id: str
    attempt: int
    status: DeliveryStatus
    http_status: int | None
    response_excerpt: str | None
    error: str | None
    duration_ms: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryLogEntry:
    delivery: DeliveryView
    event_type: str
    next_retry_at: datetime | None  # when the event is tried again; None when nothing is due


def _endpoint_view(row: WebhookEndpoint) -> EndpointView:
    return EndpointView(
        id=row.id,
        merchant_id=row.merchant_id,
        url=row.url,
        description=row.description,
        event_types=tuple(json.loads(row.event_types)),
        enabled=row.enabled,
        created_at=row.created_at,
        disabled_at=row.disabled_at,
    )


def _event_view(row: Event) -> EventView:
    return EventView(row.id, row.merchant_id, row.type, json.loads(row.data), row.created_at)


def _delivery_view(row: WebhookDelivery) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        event_id=row.event_id,
        endpoint_id=row.endpoint_id,
        attempt=row.attempt,
        status=DeliveryStatus(row.status),
        http_status=row.http_status,
        response_excerpt=row.response_excerpt,
        error=row.error,
        duration_ms=row.duration_ms,
        created_at=row.created_at,
    )


# -- publish --------------------------------------------------------------------------------


def publish(
    session: Session,
    merchant_id: str,
    event_type: str,
    data: dict[str, Any],
    dedupe_key: str | None = None,
    clock: Clock | None = None,
) -> str:
    """Record a business event for ``merchant_id`` and queue its webhooks, in the caller's
    transaction (nothing is published if it rolls back). Returns the event id.

    ``dedupe_key`` (say ``"refund:re_1:succeeded"``) makes publishing the same business event
    again a no-op that returns the first event's id — also under concurrency, where the
    UNIQUE (merchant_id, dedupe_key) constraint decides. ``data`` is a JSON object of plain
    values, shown to the merchant as is: never put personal data in it unmasked.
    """
    validate_event_type(event_type)
    body = encode_payload(data)
    if dedupe_key is not None and not 0 < len(dedupe_key) <= MAX_DEDUPE_KEY:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"dedupe_key must be 1-{MAX_DEDUPE_KEY} characters"
        )
    clock = clock or SystemClock()
    event_id = new_id("evt_")
    row = {
        "id": event_id,
        "merchant_id": merchant_id,
        "type": event_type,
        "data": body,
        "dedupe_key": dedupe_key,
        "created_at": clock.now(),
        "dispatched_at": None,
    }
    # a driver statement: every refund publishes twice or more (docs/benchmarks.md)
    inserted = DriverSQL(session).insert(
        Event, row, unless_taken=("merchant_id", "dedupe_key"), returning="id"
    )
    if not inserted:  # the key was taken
        existing: str = session.execute(
            select(Event.id).where(Event.merchant_id == merchant_id, Event.dedupe_key == dedupe_key)
        ).scalar_one()
        return existing
    emit(session, DISPATCH_TOPIC, {"event_id": event_id}, dedupe_key=event_id, clock=clock)
    return event_id


# -- endpoints, events and deliveries: the use cases ---------------------------------------------


def _endpoint_not_found() -> DomainError:
    return DomainError(ErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND, "webhook endpoint not found")


class WebhookService:
    def __init__(self, database: Database, vault: Vault, clock: Clock, settings: Settings) -> None:
        self.database = database
        self.vault = vault
        self.clock = clock
        self.settings = settings

    def create_endpoint(
        self,
        principal: Principal,
        url: str,
        event_types: list[str],
        description: str = "",
        merchant_id: str | None = None,
    ) -> CreatedEndpoint:
        """A merchant adds an endpoint for itself; staff (cs_agent, admin) for any merchant.
        The signing secret is returned here and never again."""
        owner = self._owner(principal, merchant_id)
        url = validate_url(url, allow_plain_http=self.settings.environment == "development")
        patterns = validate_subscriptions(event_types)
        description = validate_description(description)
        secret = generate_secret()
        now = self.clock.now()
        endpoint = WebhookEndpoint(
            id=new_id("we_"),
            merchant_id=owner,
            url=url,
            description=description,
            event_types=json.dumps(patterns),
            secret_enc=self.vault.encrypt(secret, SECRET_CONTEXT),
            enabled=True,
            created_at=now,
            disabled_at=None,
        )
        with self.database.transaction() as session:
            enabled = session.execute(
                select(func.count())
                .select_from(WebhookEndpoint)
                .where(WebhookEndpoint.merchant_id == owner, WebhookEndpoint.enabled.is_(True))
            ).scalar_one()
            if enabled >= MAX_ENABLED_ENDPOINTS:
                raise DomainError(
                    ErrorCode.INVALID_INPUT,
                    f"at most {MAX_ENABLED_ENDPOINTS} enabled endpoints per merchant",
                )
            session.add(endpoint)
            try:
                session.flush()
            except IntegrityError as exc:  # the merchant foreign key
                raise DomainError(ErrorCode.MERCHANT_NOT_FOUND, "merchant not found") from exc
            view = _endpoint_view(endpoint)
            self._audit(session, principal, "webhook_endpoint.created", view)
        return CreatedEndpoint(view, secret)

    def list_endpoints(
        self,
        principal: Principal,
        limit: int,
        after: Keyset | None = None,
        merchant_id: str | None = None,
    ) -> list[EndpointView]:
        """Newest first; a merchant's own only, staff may filter by merchant."""
        query = select(WebhookEndpoint).where(*self._scope(principal, WebhookEndpoint, merchant_id))
        with self.database.read() as session:
            rows = session.scalars(newest_first(query, WebhookEndpoint, limit, after))
            return [_endpoint_view(row) for row in rows]

    def get_endpoint(self, principal: Principal, endpoint_id: str) -> EndpointView:
        with self.database.read() as session:
            return _endpoint_view(self._visible_endpoint(session, principal, endpoint_id))

    def disable_endpoint(self, principal: Principal, endpoint_id: str) -> EndpointView:
        """Stop sending to an endpoint (deliveries already queued are skipped). Idempotent.
        The row stays, with its delivery log; a disabled endpoint is not enabled again —
        create a new one (with a new secret)."""
        self._require_manager(principal)
        with self.database.transaction() as session:
            row = self._visible_endpoint(session, principal, endpoint_id, for_update=True)
            if row.enabled:
                row.enabled = False
                row.disabled_at = self.clock.now()
                session.flush()
                self._audit(session, principal, "webhook_endpoint.disabled", _endpoint_view(row))
            return _endpoint_view(row)

    def list_deliveries(
        self, principal: Principal, endpoint_id: str, limit: int, after: Keyset | None = None
    ) -> list[DeliveryView]:
        """Every attempt to reach an endpoint, newest first."""
        query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        with self.database.read() as session:
            self._visible_endpoint(session, principal, endpoint_id)
            rows = session.scalars(newest_first(query, WebhookDelivery, limit, after))
            return [_delivery_view(row) for row in rows]

    def delivery_log(
        self, principal: Principal, endpoint_id: str, limit: int = 20
    ) -> list[DeliveryLogEntry]:
        """An endpoint's latest attempts, newest first, each with its event's type; the newest
        failed attempt of an event still being retried carries when the relay tries again
        (the outbox's schedule of its ``webhook.deliver`` event)."""
        query = (
            select(WebhookDelivery, Event.type)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .limit(limit)
        )
        with self.database.read() as session:
            self._visible_endpoint(session, principal, endpoint_id)
            rows = [(_delivery_view(row), str(kind)) for row, kind in session.execute(query)]
            keys = {f"{view.event_id}:{endpoint_id}" for view, _ in rows}
            retries: dict[str, datetime] = {key: at for key, at in session.execute(
                select(OutboxEvent.dedupe_key, OutboxEvent.next_attempt_at)
                .where(OutboxEvent.topic == DELIVER_TOPIC, OutboxEvent.status == "pending",
                       OutboxEvent.dedupe_key.in_(keys))
            )}  # fmt: skip
        entries, seen = [], set()
        for view, kind in rows:
            key = f"{view.event_id}:{endpoint_id}"
            newest_failure = view.event_id not in seen and view.status is DeliveryStatus.FAILED
            seen.add(view.event_id)
            entries.append(DeliveryLogEntry(view, kind, retries.get(key) if newest_failure
                                            else None))  # fmt: skip
        return entries

    def list_events(
        self,
        principal: Principal,
        limit: int,
        after: Keyset | None = None,
        event_type: str | None = None,
        merchant_id: str | None = None,
    ) -> list[EventView]:
        """The event log, newest first; ``event_type`` is a type, ``family.*`` or ``*``."""
        query = select(Event).where(*self._scope(principal, Event, merchant_id))
        if event_type is not None:
            pattern = validate_pattern(event_type)
            if pattern.endswith(".*"):
                query = query.where(Event.type.startswith(pattern[:-1], autoescape=True))
            elif pattern != ALL_EVENTS:
                query = query.where(Event.type == pattern)
        with self.database.read() as session:
            rows = session.scalars(newest_first(query, Event, limit, after))
            return [_event_view(row) for row in rows]

    def get_event(self, principal: Principal, event_id: str) -> EventView:
        with self.database.read() as session:
            row = session.get(Event, event_id)
            if row is None or not principal.can_see(row.merchant_id):
                raise DomainError(ErrorCode.NOT_FOUND, "event not found")
            return _event_view(row)

    # -- helpers --------------------------------------------------------------------------

    def _require_manager(self, principal: Principal) -> None:
        if principal.is_staff:
            principal.require_staff(*ENDPOINT_ADMINS)

    def _owner(self, principal: Principal, merchant_id: str | None) -> str:
        """Whose endpoint: a merchant's own (naming another merchant is "not found")."""
        self._require_manager(principal)
        if not principal.is_staff:
            assert principal.merchant_id is not None
            if merchant_id is not None and merchant_id != principal.merchant_id:
                raise DomainError(ErrorCode.MERCHANT_NOT_FOUND, "merchant not found")
            return principal.merchant_id
        if not merchant_id:
            raise DomainError(
                ErrorCode.INVALID_INPUT, "staff must say which merchant (merchant_id)"
            )
        return merchant_id

    @staticmethod
    def _scope(
        principal: Principal, model: type[WebhookEndpoint] | type[Event], merchant_id: str | None
    ) -> list[Any]:
        if not principal.is_staff:
            return [model.merchant_id == principal.merchant_id]
        return [model.merchant_id == merchant_id] if merchant_id else []

    @staticmethod
    def _visible_endpoint(
        session: Session, principal: Principal, endpoint_id: str, *, for_update: bool = False
    ) -> WebhookEndpoint:
        row = load_row(session, WebhookEndpoint.id, endpoint_id, for_update=for_update)
        if row is None or not principal.can_see(row.merchant_id):
            raise _endpoint_not_found()
        endpoint: WebhookEndpoint = row
        return endpoint

    def _audit(
        self, session: Session, principal: Principal, action: str, view: EndpointView
    ) -> None:
        # no URL: it may carry a token, and the audit log is kept forever
        after = {
            "merchant_id": view.merchant_id,
            "event_types": list(view.event_types),
            "enabled": view.enabled,
        }
        record(
            session, actor=principal.id, action=action, subject_type="webhook_endpoint",
            subject_id=view.id, after=after, clock=self.clock,
        )  # fmt: skip


# -- the outbox handlers ------------------------------------------------------------------------


class WebhookDeliveryFailed(Exception):
    """An attempt failed; raised so that the outbox relay retries it later."""


@dataclass(frozen=True, slots=True)
class _Target:
    endpoint_id: str
    merchant_id: str
    url: str
    secret: str
    event: EventView

    def __repr__(self) -> str:
        return f"_Target({self.endpoint_id}, {self.event.id})"


@dataclass(frozen=True, slots=True)
class _Attempt:
    status: DeliveryStatus
    http_status: int | None
    response_excerpt: str | None
    error: str | None
    duration_ms: int


class WebhookSender:
    """The two outbox handlers: fan an event out to endpoints, deliver to one endpoint."""

    def __init__(self, database: Database, vault: Vault, clock: Clock, settings: Settings) -> None:
        self.database = database
        self.vault = vault
        self.clock = clock
        self.timeout = settings.webhook_timeout_seconds

    def dispatch(self, outbox_event: DeliveredEvent) -> None:
        event_id = str(outbox_event.payload["event_id"])
        with self.database.transaction() as session:
            event = load_row(session, Event.id, event_id, for_update=True)
            if event is None:
                log.warning("webhook dispatch: no event %s", event_id)
                return
            if event.dispatched_at is not None:
                return  # this dispatch ran before (the relay delivers at least once)
            endpoints = session.scalars(
                select(WebhookEndpoint)
                .where(
                    WebhookEndpoint.merchant_id == event.merchant_id,
                    WebhookEndpoint.enabled.is_(True),
                )
                .order_by(WebhookEndpoint.id)
            )
            for endpoint in endpoints:
                if matches(json.loads(endpoint.event_types), event.type):
                    emit(
                        session, DELIVER_TOPIC, {"event_id": event.id, "endpoint_id": endpoint.id},
                        dedupe_key=f"{event.id}:{endpoint.id}", clock=self.clock,
                    )  # fmt: skip
            event.dispatched_at = self.clock.now()

    def deliver(self, outbox_event: DeliveredEvent) -> None:
        event_id = str(outbox_event.payload["event_id"])
        endpoint_id = str(outbox_event.payload["endpoint_id"])
        target = self._target(event_id, endpoint_id)
        if target is None:
            return
        attempt = self._post(target)
        with self.database.transaction() as session:
            session.add(
                WebhookDelivery(
                    id=new_id("whd_"), merchant_id=target.merchant_id, event_id=event_id,
                    endpoint_id=endpoint_id, attempt=outbox_event.attempt,
                    status=attempt.status.value, http_status=attempt.http_status,
                    response_excerpt=attempt.response_excerpt, error=attempt.error,
                    duration_ms=attempt.duration_ms, created_at=self.clock.now(),
                )
            )  # fmt: skip
        if attempt.status is DeliveryStatus.FAILED:
            raise WebhookDeliveryFailed(
                f"webhook {event_id} to {endpoint_id} failed: {attempt.error}"
            )

    def _target(self, event_id: str, endpoint_id: str) -> _Target | None:
        """What to send where, read in one short transaction (closed before any I/O)."""
        with self.database.read() as session:
            endpoint = session.get(WebhookEndpoint, endpoint_id)
            event = session.get(Event, event_id)
            if endpoint is None or event is None:
                log.warning("webhook deliver: %s or %s is gone", event_id, endpoint_id)
                return None
            if not endpoint.enabled:
                log.info("webhook deliver: endpoint %s disabled, %s skipped", endpoint_id, event_id)
                return None
            secret = self.vault.decrypt(endpoint.secret_enc, SECRET_CONTEXT)
            view = _event_view(event)
            return _Target(endpoint.id, endpoint.merchant_id, endpoint.url, secret, view)

    def _post(self, target: _Target) -> _Attempt:
        body = encode_body(target.event.document())
        timestamp = int(self.clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(target.secret, timestamp, body),
            EVENT_ID_HEADER: target.event.id,
        }
        started = time.monotonic()  # a duration, not a business time: no Clock
        try:
            with (
                httpx.Client(timeout=self.timeout, follow_redirects=False) as client,
                client.stream("POST", target.url, content=body, headers=headers) as response,
            ):
                answer = _read_excerpt(response)
                status_code = response.status_code
        except Exception as exc:  # any failure to get an answer is a failed attempt, retried
            elapsed = _milliseconds_since(started)
            return _Attempt(DeliveryStatus.FAILED, None, None, error_text(exc), elapsed)
        elapsed = _milliseconds_since(started)
        if is_success(status_code):
            return _Attempt(DeliveryStatus.SUCCEEDED, status_code, answer, None, elapsed)
        error = f"endpoint answered HTTP {status_code}"
        return _Attempt(DeliveryStatus.FAILED, status_code, answer, error, elapsed)


def _read_excerpt(response: httpx.Response) -> str:
    received = b""
    for chunk in response.iter_bytes():
        received += chunk
        if len(received) >= EXCERPT_READ_BYTES:
            break
    return excerpt(received[:EXCERPT_READ_BYTES].decode("utf-8", errors="replace"))


def _milliseconds_since(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


def register_handlers(
    registry: HandlerRegistry, database: Database, vault: Vault, clock: Clock, settings: Settings
) -> None:
    """Wire ``webhook.dispatch`` and ``webhook.deliver`` into the worker's registry, and turn
    the payments' internal outbox events (``payment.captured`` …) into public events."""
    sender = WebhookSender(database, vault, clock, settings)
    registry.register(DISPATCH_TOPIC, sender.dispatch)
    registry.register(DELIVER_TOPIC, sender.deliver)

    def make_public(event: DeliveredEvent) -> None:
        # the payments domain sits beside this one and only writes to the outbox: its
        # events reach the merchant's event log and webhooks here, once (dedupe on the key)
        with database.transaction() as session:
            publish(session, str(event.payload["merchant_id"]), event.topic, event.payload,
                    dedupe_key=f"outbox:{event.dedupe_key}", clock=clock)  # fmt: skip

    for topic in sorted(PAYMENT_EVENT_TYPES):
        registry.register(topic, make_public)
