"""Who is asking: a principal with a role, and, for merchants, the one merchant it may see.

Tenant isolation starts here: a merchant principal answers ``can_see(merchant_id)`` only for
its own merchant, and every query filters by it; an edge turns "cannot see" into 404, never
into a 403 that would confirm the object exists.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shoudan.core.errors import DomainError, ErrorCode


class Role(StrEnum):
    MERCHANT = "merchant"
    ADMIN = "admin"
    FINANCE = "finance"
    REVIEWER = "reviewer"
    APPROVER = "approver"
    RISK = "risk"
    CS_AGENT = "cs_agent"


STAFF_ROLES = frozenset(Role) - {Role.MERCHANT}


@dataclass(frozen=True, slots=True)
class Principal:
    id: str  # the API key id, user id, or "system:<name>"
    role: Role
    merchant_id: str | None = None  # set exactly when role is MERCHANT
    person: str | None = None  # the staff member holding this API key, if it has one

    def __post_init__(self) -> None:
        if (self.role is Role.MERCHANT) != (self.merchant_id is not None):
            raise ValueError("a merchant principal has a merchant_id, and only it")
        if self.person is not None and self.role is Role.MERCHANT:
            raise ValueError("only a staff key belongs to a staff member")

    @property
    def who(self) -> str:
        """The person acting, for maker-checker: a staff member is one person whether they
        sign in to the console (their user id) or use an API key of theirs; a key of no one
        in particular (a service key) is its own identity."""
        return self.person or self.id

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    def can_see(self, merchant_id: str) -> bool:
        return self.is_staff or self.merchant_id == merchant_id

    def require_staff(self, *roles: Role) -> None:
        """Staff only (and, when ``roles`` are given, one of them; admin always passes)."""
        if not self.is_staff:
            raise DomainError(ErrorCode.FORBIDDEN, "this operation is for acquirer staff")
        if roles and self.role is not Role.ADMIN and self.role not in roles:
            raise DomainError(
                ErrorCode.FORBIDDEN, f"needs one of the roles {', '.join(sorted(roles))}"
            )

    def require_merchant_access(self, merchant_id: str, what: str = "merchant") -> None:
        """Not found, rather than forbidden, for another tenant's data."""
        if not self.can_see(merchant_id):
            raise DomainError(ErrorCode.NOT_FOUND, f"{what} not found")


SYSTEM = Principal("system", Role.ADMIN)


# --- API keys -------------------------------------------------------------------------------
#
# A key is ``sk_<kind>_<43 urlsafe chars>``: 32 random bytes, ``kind`` is ``m`` for a merchant
# key and ``s`` for a staff key (so a leaked key in a log tells at a glance what it can do).
# Only ``prefix`` (its first 12 characters) and the SHA-256 of the whole key are stored; a
# fast hash is right for 256 random bits (nothing to brute-force), unlike a password.

API_KEY_PREFIX_LENGTH = 12
API_KEY_RANDOM_BYTES = 32
MAX_KEY_NAME_LENGTH = 255
MAX_MERCHANT_ID_LENGTH = 15
_API_KEY_SHAPE = re.compile(r"sk_[ms]_[A-Za-z0-9_-]{43}")


def key_kind(role: Role) -> str:
    return "m" if role is Role.MERCHANT else "s"


def generate_api_key(role: Role) -> str:
    return f"sk_{key_kind(role)}_{secrets.token_urlsafe(API_KEY_RANDOM_BYTES)}"


def is_well_formed_api_key(token: str) -> bool:
    return _API_KEY_SHAPE.fullmatch(token) is not None


def api_key_prefix(token: str) -> str:
    return token[:API_KEY_PREFIX_LENGTH]


def hash_api_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"unknown role {value!r}: one of {', '.join(sorted(Role))}",
        ) from None


def check_key_owner(role: Role, merchant_id: str | None, person_id: str | None = None) -> None:
    """A merchant key belongs to exactly one merchant; a staff key to none, and perhaps to
    one staff member."""
    if role is Role.MERCHANT:
        if not merchant_id:
            raise DomainError(ErrorCode.INVALID_INPUT, "a merchant key needs a merchant_id")
        if len(merchant_id) > MAX_MERCHANT_ID_LENGTH:
            raise DomainError(ErrorCode.MERCHANT_NOT_FOUND, "merchant not found")
        if person_id is not None:
            raise DomainError(ErrorCode.INVALID_INPUT, "a merchant key has no staff member")
    elif merchant_id is not None:
        raise DomainError(ErrorCode.INVALID_INPUT, "a staff key cannot belong to a merchant")


def clean_key_name(name: str) -> str:
    name = name.strip()
    if len(name) > MAX_KEY_NAME_LENGTH:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"key name longer than {MAX_KEY_NAME_LENGTH} characters"
        )
    return name


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    """What may be shown of a key: never the key, never its hash."""

    id: str
    prefix: str
    role: Role
    merchant_id: str | None
    name: str
    created_at: datetime
    revoked_at: datetime | None
    person_id: str | None = None  # the staff member holding it

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prefix": self.prefix,
            "role": str(self.role),
            "merchant_id": self.merchant_id,
            "person_id": self.person_id,
            "name": self.name,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


# --- Idempotency records --------------------------------------------------------------------


class IdempotencyStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class IdempotencyDecision(StrEnum):
    """What to do with a request whose key is already on record."""

    REPLAY = "replay"  # completed, same request: answer with the stored response
    MISMATCH = "mismatch"  # same key, different request: refuse
    BUSY = "busy"  # the first request is still running: wait for it
    TAKE_OVER = "take_over"  # the first request's lock ran out (it crashed): run again


def decide_idempotency(
    *,
    status: IdempotencyStatus,
    stored_hash: str,
    request_hash: str,
    locked_until: datetime | None,
    now: datetime,
) -> IdempotencyDecision:
    if stored_hash != request_hash:
        return IdempotencyDecision.MISMATCH
    if status is IdempotencyStatus.COMPLETED:
        return IdempotencyDecision.REPLAY
    if locked_until is None or locked_until <= now:
        return IdempotencyDecision.TAKE_OVER
    return IdempotencyDecision.BUSY
