"""Auth use cases: API keys (create, authenticate, revoke, list) and the idempotency store.

API keys. The plaintext key is returned once, by ``create_api_key``, and never stored: the
table keeps its visible prefix and its SHA-256. ``authenticate`` looks candidates up by prefix
and compares hashes in constant time; every refusal (malformed, unknown, revoked) is the same
``unauthenticated`` error with the same message, so a caller learns nothing about which keys
exist. ``authenticate`` never writes (it runs on every request, in a read transaction).

Idempotency store. The rows behind ``shoudan.api.idempotency``: ``claim_idempotency_key``
inserts an ``in_progress`` row (the UNIQUE(scope, key) constraint decides races between
concurrent requests), ``complete_idempotency_key`` stores the response, and
``release_idempotency_key`` deletes the row when the response must not be replayed. Each
runs in the caller's transaction; the middleware gives each its own short one.
"""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from shoudan.audit import service as audit
from shoudan.auth.domain import (
    SYSTEM,
    ApiKeyView,
    IdempotencyDecision,
    IdempotencyStatus,
    Principal,
    Role,
    api_key_prefix,
    check_key_owner,
    clean_key_name,
    decide_idempotency,
    generate_api_key,
    hash_api_key,
    is_well_formed_api_key,
)
from shoudan.auth.models import ApiKey, IdempotencyKey
from shoudan.core.clock import Clock, SystemClock
from shoudan.core.db import DriverSQL, is_sqlite
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id

# --- API keys -------------------------------------------------------------------------------

UNAUTHENTICATED_MESSAGE = "invalid API key"


def _view(row: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=row.id,
        prefix=row.prefix,
        role=Role(row.role),
        merchant_id=row.merchant_id,
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        person_id=row.person_id,
    )


def create_api_key(
    session: Session,
    *,
    role: Role,
    merchant_id: str | None = None,
    name: str = "",
    clock: Clock | None = None,
    actor: Principal = SYSTEM,
    person_id: str | None = None,
) -> tuple[ApiKeyView, str]:
    """Create a key and return its view and the plaintext key, which is shown this once.

    A merchant key needs an existing merchant; a staff key belongs to no merchant, and to
    ``person_id`` when a staff member holds it (the caller checks that they exist and hold
    ``role``: staff members live in the web console's domain). Only an admin (the default
    actor is the system, for the CLI) may create keys."""
    actor.require_staff(Role.ADMIN)
    return _insert_key(
        session, Role(role), merchant_id, name, clock or SystemClock(), actor.id, person_id
    )


def _insert_key(
    session: Session, role: Role, merchant_id: str | None, name: str, clock: Clock,
    actor_id: str, person_id: str | None = None,
) -> tuple[ApiKeyView, str]:
    check_key_owner(role, merchant_id, person_id)
    name = clean_key_name(name)
    if merchant_id is not None:
        # Lazy: merchants sit below auth in the layers, and only this path needs them.
        from shoudan.merchants.service import get_merchant

        get_merchant(session, merchant_id)  # raises MERCHANT_NOT_FOUND
    token = generate_api_key(role)
    row = ApiKey(
        id=new_id("key_"),
        prefix=api_key_prefix(token),
        secret_hash=hash_api_key(token),
        role=str(role),
        merchant_id=merchant_id,
        person_id=person_id,
        name=name,
        created_at=clock.now(),
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    view = _view(row)
    audit.record(
        session,
        actor=actor_id,
        action="api_key.create",
        subject_type="api_key",
        subject_id=view.id,
        after=view.as_dict(),
        clock=clock,
    )
    return view, token


def authenticate(session: Session, token: str, clock: Clock | None = None) -> Principal:
    """The principal an API key stands for; ``unauthenticated`` for anything else.

    ``clock`` is accepted for symmetry with the other use cases (and for key expiry, should
    keys ever get one); revocation takes effect at once whatever the clock says."""
    del clock
    return authenticate_key(DriverSQL(session), token)


def authenticate_key(driver: DriverSQL, token: str) -> Principal:
    """``authenticate`` on a driver connection (every API request: ``Database.driver_read``).
    Read on every request, never cached, so a revocation takes effect at once."""
    # Hash first, whatever the token looks like, so every refusal costs about the same.
    digest = hash_api_key(token)
    if not is_well_formed_api_key(token):
        raise DomainError(ErrorCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
    candidates = driver.execute(
        "SELECT id, secret_hash, role, merchant_id, revoked_at, person_id FROM api_keys"
        " WHERE prefix = ?",
        (api_key_prefix(token),),
    )
    found = None
    for candidate in candidates:
        if hmac.compare_digest(candidate[1], digest):
            found = candidate
    if found is None or found[4] is not None:
        raise DomainError(ErrorCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
    return Principal(found[0], Role(found[2]), found[3], found[5])


def get_api_key(session: Session, key_id: str) -> ApiKeyView:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise DomainError(ErrorCode.NOT_FOUND, "API key not found")
    return _view(row)


def revoke_api_key(
    session: Session,
    key_id: str,
    *,
    clock: Clock | None = None,
    actor: Principal = SYSTEM,
) -> ApiKeyView:
    """Revoke a key (effective at once). Revoking a revoked key changes nothing."""
    actor.require_staff(Role.ADMIN)
    return _revoke(session, key_id, None, clock or SystemClock(), actor.id)


def _revoke(
    session: Session, key_id: str, merchant_id: str | None, clock: Clock, actor_id: str
) -> ApiKeyView:
    """Revoke a key (of ``merchant_id`` only, when given: another's is "not found")."""
    row = session.execute(
        select(ApiKey).where(ApiKey.id == key_id).with_for_update()
    ).scalar_one_or_none()
    if row is None or (merchant_id is not None and row.merchant_id != merchant_id):
        raise DomainError(ErrorCode.NOT_FOUND, "API key not found")
    if row.revoked_at is not None:
        return _view(row)
    before = _view(row)
    row.revoked_at = clock.now()
    session.flush()
    after = _view(row)
    audit.record(
        session,
        actor=actor_id,
        action="api_key.revoke",
        subject_type="api_key",
        subject_id=key_id,
        before=before.as_dict(),
        after=after.as_dict(),
        clock=clock,
    )
    return after


def _own_merchant(principal: Principal) -> str:
    if principal.role is not Role.MERCHANT or principal.merchant_id is None:
        raise DomainError(ErrorCode.FORBIDDEN, "this operation is for merchants")
    return principal.merchant_id


def create_own_api_key(
    session: Session, principal: Principal, name: str = "", clock: Clock | None = None
) -> tuple[ApiKeyView, str]:
    """A merchant creates a key for itself (the merchant platform's 开发者 page): always a
    merchant key of its own merchant; audited with the merchant user as the actor. The
    plaintext key is returned this once."""
    merchant_id = _own_merchant(principal)
    clock = clock or SystemClock()
    return _insert_key(session, Role.MERCHANT, merchant_id, name, clock, principal.id)


def revoke_own_api_key(
    session: Session, principal: Principal, key_id: str, clock: Clock | None = None
) -> ApiKeyView:
    """A merchant revokes one of its own keys; another merchant's key is "not found"."""
    merchant_id = _own_merchant(principal)
    return _revoke(session, key_id, merchant_id, clock or SystemClock(), principal.id)


def list_api_keys(
    session: Session, merchant_id: str | None = None, *, include_revoked: bool = True
) -> list[ApiKeyView]:
    """Keys, oldest first; only one merchant's when ``merchant_id`` is given."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if merchant_id is not None:
        query = query.where(ApiKey.merchant_id == merchant_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return [_view(row) for row in session.execute(query).scalars()]


# --- Idempotency store ----------------------------------------------------------------------

IDEMPOTENCY_LOCK = timedelta(seconds=60)
IDEMPOTENCY_RETENTION = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyLock:
    """Proof of ownership of an in_progress row: its id and the lock it was claimed with (a
    takeover changes the lock, so a late original cannot overwrite the new owner's row)."""

    id: str
    locked_until: datetime


class ClaimOutcome(StrEnum):
    ACQUIRED = "acquired"  # run the request, then complete or release the lock
    REPLAY = "replay"
    MISMATCH = "mismatch"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    lock: IdempotencyLock | None = None
    response: StoredResponse | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    id: str
    status: IdempotencyStatus
    request_hash: str
    locked_until: datetime | None
    response: StoredResponse | None

    def decide(self, request_hash: str, now: datetime) -> IdempotencyDecision:
        return decide_idempotency(
            status=self.status,
            stored_hash=self.request_hash,
            request_hash=request_hash,
            locked_until=self.locked_until,
            now=now,
        )


def _stored_response(row: IdempotencyKey) -> StoredResponse | None:
    if row.status != IdempotencyStatus.COMPLETED or row.response_status is None:
        return None
    text = row.response_body or ""
    body = base64.b64decode(text) if row.response_body_encoding == "base64" else text.encode()
    pairs = json.loads(row.response_headers or "[]")
    return StoredResponse(row.response_status, [(str(k), str(v)) for k, v in pairs], body)


def _record(row: IdempotencyKey) -> IdempotencyRecord:
    return IdempotencyRecord(
        id=row.id,
        status=IdempotencyStatus(row.status),
        request_hash=row.request_hash,
        locked_until=row.locked_until,
        response=_stored_response(row),
    )


def get_idempotency_record(session: Session, *, scope: str, key: str) -> IdempotencyRecord | None:
    row = session.execute(
        select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
    ).scalar_one_or_none()
    return None if row is None else _record(row)


def claim_idempotency_key(
    session: Session,
    *,
    scope: str,
    key: str,
    request_hash: str,
    now: datetime,
    lock_for: timedelta = IDEMPOTENCY_LOCK,
) -> Claim:
    """Insert the key as in_progress, or say what to do about the row already there.

    INSERT … ON CONFLICT DO NOTHING on both engines: of concurrent claims exactly one
    inserts (on PostgreSQL the others wait for its transaction, then see its row). An
    in_progress row whose lock ran out is taken over by a conditional UPDATE, which again
    only one claimant wins."""
    locked_until = now + lock_for
    insert = sqlite_insert if is_sqlite(session) else pg_insert
    inserted = session.execute(
        insert(IdempotencyKey)
        .values(
            id=new_id("idem_"),
            scope=scope,
            key=key,
            request_hash=request_hash,
            status=str(IdempotencyStatus.IN_PROGRESS),
            created_at=now,
            locked_until=locked_until,
        )
        .on_conflict_do_nothing(index_elements=["scope", "key"])
        .returning(IdempotencyKey.id)
    ).scalar_one_or_none()
    if inserted is not None:
        return Claim(ClaimOutcome.ACQUIRED, IdempotencyLock(inserted, locked_until))
    row = session.execute(
        select(IdempotencyKey)
        .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if row is None:  # deleted between the two statements: the caller simply tries again
        return Claim(ClaimOutcome.BUSY)
    record = _record(row)
    decision = record.decide(request_hash, now)
    if decision is IdempotencyDecision.MISMATCH:
        return Claim(ClaimOutcome.MISMATCH)
    if decision is IdempotencyDecision.REPLAY:
        return Claim(ClaimOutcome.REPLAY, response=record.response)
    if decision is IdempotencyDecision.BUSY:
        return Claim(ClaimOutcome.BUSY)
    # TAKE_OVER: the owner crashed (or overran its lock). Only one claimant wins the UPDATE.
    took = session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.id == record.id,
            IdempotencyKey.status == str(IdempotencyStatus.IN_PROGRESS),
            IdempotencyKey.locked_until.is_(None)
            if record.locked_until is None
            else IdempotencyKey.locked_until == record.locked_until,
        )
        .values(locked_until=locked_until)
        .returning(IdempotencyKey.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if took is None:
        return Claim(ClaimOutcome.BUSY)
    return Claim(ClaimOutcome.ACQUIRED, IdempotencyLock(record.id, locked_until))


def _owned(lock: IdempotencyLock) -> tuple[ColumnElement[bool], ...]:
    return (
        IdempotencyKey.id == lock.id,
        IdempotencyKey.status == str(IdempotencyStatus.IN_PROGRESS),
        IdempotencyKey.locked_until == lock.locked_until,
    )


def complete_idempotency_key(
    session: Session, lock: IdempotencyLock, response: StoredResponse, *, now: datetime
) -> bool:
    """Store the response; False when the lock was lost (another request took over)."""
    try:
        body, encoding = response.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(response.body).decode("ascii"), "base64"
    if "\x00" in body:  # PostgreSQL text cannot hold NUL
        body, encoding = base64.b64encode(response.body).decode("ascii"), "base64"
    done = session.execute(
        update(IdempotencyKey)
        .where(*_owned(lock))
        .values(
            status=str(IdempotencyStatus.COMPLETED),
            response_status=response.status,
            response_body=body,
            response_body_encoding=encoding,
            response_headers=json.dumps([list(pair) for pair in response.headers]),
            completed_at=now,
            locked_until=None,
        )
        .returning(IdempotencyKey.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    return done is not None


def release_idempotency_key(session: Session, lock: IdempotencyLock) -> bool:
    """Forget an in_progress key (the request failed in a way a retry should run again)."""
    gone = session.execute(
        delete(IdempotencyKey)
        .where(*_owned(lock))
        .returning(IdempotencyKey.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    return gone is not None


def purge_idempotency_keys(session: Session, older_than: datetime) -> int:
    """Delete the records created before ``older_than`` and return how many; keys are
    honoured for a day, so a periodic job passes ``now - IDEMPOTENCY_RETENTION``."""
    result = session.execute(
        delete(IdempotencyKey)
        .where(IdempotencyKey.created_at < older_than)
        .returning(IdempotencyKey.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())
