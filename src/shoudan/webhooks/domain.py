"""Webhook rules, pure: event types and subscriptions, endpoint URLs, secrets, signatures.

A delivery carries ``Shoudan-Signature: t=<unix seconds>,v1=<hex>`` where the hex is
HMAC-SHA256 keyed with the endpoint's secret (its UTF-8 bytes, ``whsec_`` prefix included)
over ``f"{t}.{body}"`` (the raw request body, byte for byte). Receivers check it with
``verify_signature`` or the recipe in docs/webhooks.md, and refuse timestamps older (or
newer) than a tolerance, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from shoudan.core.errors import DomainError, ErrorCode

REFUND_EVENT_TYPES = frozenset(
    {
        "refund.created",
        "refund.review_required",
        "refund.needs_info",
        "refund.approved",
        "refund.rejected",
        "refund.pending_funds",
        "refund.processing",
        "refund.succeeded",
        "refund.failed",
        "refund.abnormal",
        "refund.canceled",
    }
)
# one per payment status (payments/domain.py PaymentStatus), for when payments publish
PAYMENT_EVENT_TYPES = frozenset(
    {
        "payment.authorized",
        "payment.captured",
        "payment.declined",
        "payment.voided",
        "payment.reversed",
    }
)
# terminal deposits (押金): deposits/service.py publishes them
DEPOSIT_EVENT_TYPES = frozenset(
    {
        "deposit.charged",
        "deposit.paid",
        "deposit.collected",
        "deposit.blocked",
        "deposit.refunded",
        "deposit.forfeited",
        "deposit.refund_requested",
        "deposit.refund_rejected",
    }
)
# payouts to the merchant's own account (一清): settlement/payouts.py publishes them
PAYOUT_EVENT_TYPES = frozenset(
    {"payout.blocked", "payout.cancelled", "payout.paid", "payout.rejected"}
)
EVENT_TYPES: frozenset[str] = (
    REFUND_EVENT_TYPES | PAYMENT_EVENT_TYPES | DEPOSIT_EVENT_TYPES | PAYOUT_EVENT_TYPES
)
EVENT_FAMILIES = frozenset(event_type.split(".", 1)[0] for event_type in EVENT_TYPES)
ALL_EVENTS = "*"

MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 255
MAX_SUBSCRIPTIONS = 32
SECRET_PREFIX = "whsec_"  # noqa: S105  (a prefix, not a secret)
SECRET_BYTES = 32
SIGNATURE_HEADER = "Shoudan-Signature"
EVENT_ID_HEADER = "Shoudan-Event-Id"
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
RESPONSE_EXCERPT_CHARS = 500
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


class DeliveryStatus(StrEnum):
    """The outcome of one delivery attempt (a retry is a new attempt, a new row)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


# -- event types and subscriptions ------------------------------------------------------------


def validate_event_type(event_type: object) -> str:
    """A concrete, known event type (what ``publish`` accepts)."""
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise DomainError(
            ErrorCode.UNKNOWN_EVENT_TYPE, f"unknown event type {event_type!r}", field="type"
        )
    return event_type


def validate_pattern(pattern: object) -> str:
    """A subscription: a known type, ``<family>.*`` (``refund.*``) or ``*`` for everything."""
    if pattern == ALL_EVENTS:
        return ALL_EVENTS
    if isinstance(pattern, str) and pattern.endswith(".*"):
        if pattern[:-2] in EVENT_FAMILIES:
            return pattern
        raise DomainError(
            ErrorCode.UNKNOWN_EVENT_TYPE, f"unknown event family {pattern!r}", field="event_types"
        )
    if not isinstance(pattern, str) or pattern not in EVENT_TYPES:
        raise DomainError(
            ErrorCode.UNKNOWN_EVENT_TYPE, f"unknown event type {pattern!r}", field="event_types"
        )
    return pattern


def validate_subscriptions(patterns: object) -> list[str]:
    """One or more patterns, returned sorted and without duplicates."""
    if isinstance(patterns, str) or not isinstance(patterns, Iterable):
        raise DomainError(ErrorCode.INVALID_INPUT, "event_types must be a list of event types")
    cleaned = sorted({validate_pattern(pattern) for pattern in patterns})
    if not cleaned:
        raise DomainError(ErrorCode.INVALID_INPUT, "subscribe to at least one event type")
    if len(cleaned) > MAX_SUBSCRIPTIONS:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"at most {MAX_SUBSCRIPTIONS} event types per endpoint"
        )
    return cleaned


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether an endpoint subscribed to ``patterns`` receives ``event_type``."""
    for pattern in patterns:
        if pattern in (ALL_EVENTS, event_type):
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def validate_description(description: object) -> str:
    """One line of printable text (no control characters), at most 255 characters."""
    if (
        not isinstance(description, str)
        or not description.isprintable()
        or len(description.strip()) > MAX_DESCRIPTION_LENGTH
    ):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"description: one line of at most {MAX_DESCRIPTION_LENGTH} printable characters",
            field="description",
        )
    return description.strip()


# -- endpoint URLs ------------------------------------------------------------------------------


def _bad_url(reason: str) -> DomainError:
    # the URL itself stays out of the message: it may carry a token in its query string
    return DomainError(ErrorCode.INVALID_WEBHOOK_URL, f"invalid webhook URL: {reason}", field="url")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_url(url: object, *, allow_plain_http: bool) -> str:
    """An endpoint URL: ``https://`` (``http://`` when ``allow_plain_http`` — development — or
    to a loopback host, where nothing crosses a network), a host, no user name or password
    (secrets belong in the signing secret, not in a URL that ends up in logs), no fragment,
    no whitespace, at most 2048 characters."""
    if not isinstance(url, str) or not url:
        raise _bad_url("a URL is required")
    if len(url) > MAX_URL_LENGTH:
        raise _bad_url(f"longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise _bad_url("use a percent-encoded ASCII URL without spaces")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise _bad_url("it cannot be parsed") from exc
    if parts.scheme not in {"http", "https"}:
        raise _bad_url("the scheme must be https (or http in development)")
    if not host:
        raise _bad_url("a host is required")
    if parts.username is not None or parts.password is not None:
        raise _bad_url("credentials in the URL are not allowed")
    if parts.fragment or url.endswith("#"):
        raise _bad_url("a fragment (#…) is never sent to the server")
    if parts.scheme == "http" and not (allow_plain_http or is_loopback(host)):
        raise _bad_url("https is required outside development (except for a loopback host)")
    return url


# -- secrets and signatures ---------------------------------------------------------------------


def generate_secret() -> str:
    """``whsec_`` + 32 random bytes, URL-safe base64 (43 characters)."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def _as_bytes(body: str | bytes) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def compute_signature(secret: str, timestamp: int, body: str | bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` keyed with the secret."""
    message = f"{timestamp}.".encode() + _as_bytes(body)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: str | bytes) -> str:
    """The ``Shoudan-Signature`` header value for a body sent at ``timestamp``."""
    return f"t={timestamp},{SIGNATURE_SCHEME}={compute_signature(secret, timestamp, body)}"


def parse_signature_header(header: str) -> tuple[int, list[str]] | None:
    """``(t, [v1 signatures])``, or None when the header is malformed. Several ``v1`` values
    are allowed (a sender may sign with two secrets while rotating); unknown schemes are
    ignored so new ones can be added."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            if not value.isascii() or not value.isdigit():
                return None
            timestamp = int(value)
        elif key == SIGNATURE_SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify_signature(
    secret: str,
    header: str,
    body: str | bytes,
    now: datetime | float,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its timestamp is within
    ``tolerance`` seconds of ``now`` (a datetime, or unix seconds such as ``time.time()``).
    Compares in constant time."""
    parsed = parse_signature_header(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    current = now.timestamp() if isinstance(now, datetime) else float(now)
    if abs(current - timestamp) > tolerance:
        return False
    expected = compute_signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


# -- payloads -------------------------------------------------------------------------------


def iso_utc(moment: datetime) -> str:
    """``2026-11-23T02:00:00Z``: ISO 8601 in UTC, as the API renders datetimes."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_document(
    event_id: str, event_type: str, created_at: datetime, merchant_id: str, data: dict[str, Any]
) -> dict[str, Any]:
    """An event as receivers and the API see it."""
    return {
        "id": event_id,
        "type": event_type,
        "created_at": iso_utc(created_at),
        "merchant_id": merchant_id,
        "data": data,
    }


def encode_body(document: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed): compact UTF-8 JSON."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def is_success(status_code: int) -> bool:
    """Only a 2xx acknowledges a delivery (a redirect is not followed, and is a failure)."""
    return 200 <= status_code < 300


def excerpt(text: str, limit: int = RESPONSE_EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
