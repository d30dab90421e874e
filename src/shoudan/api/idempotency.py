"""``Idempotency-Key`` for every POST under ``/v1``, with Stripe's semantics.

A client that sends ``Idempotency-Key: <key>`` with a POST may retry it safely: the first
request runs, and every retry with the same key and the same request gets the first response
again (with ``Idempotent-Replayed: true``) instead of running the use case twice.

How, per request (a pure ASGI middleware, so the body can be read, hashed and handed on):

- no ``Idempotency-Key`` header, or no ``Authorization`` header (the app will answer 401):
  the request passes through untouched. Only POSTs under ``/v1`` are concerned.
- the key must be 1..255 printable ASCII characters, else ``422 invalid_input``.
- ``scope`` is the caller: the SHA-256 of its ``Authorization`` value (keys of two callers
  never collide, and the middleware needs no authentication of its own). ``request_hash`` is
  the SHA-256 of method, path, query string and raw body.
- the row ``(scope, key)`` is inserted ``in_progress`` in its own short transaction; the
  UNIQUE constraint decides races. If the row was already there:
  completed with the same hash → replay; a different hash → ``409 idempotency_key_reused``;
  in progress → wait (polling, up to ``wait_seconds``, 10 s by default) for it to complete and
  replay, or else ``409 idempotency_key_in_use``.
- when the app answers, the status, body and headers (content type, location, …) are stored
  **before the last body chunk is forwarded**, so a response the client received is always
  replayable. 5xx, 401, 408 and 429 answers, and requests that raise, delete the row instead:
  a retry should run again.
- the key itself is handed to the app as ``request.state.idempotency_key``.

Crashes. A process that dies between running the use case and storing the response leaves an
``in_progress`` row. It carries ``locked_until`` (now + 60 s): after that, a retry takes the
row over (one conditional UPDATE, so only one retry wins) and runs the request again. That
second run must not repeat the money movement: the payments router hands the same key to the
payment service, which de-duplicates by (merchant, key) in the same transaction as its effect
(``PaymentService.create``), so a takeover can at most re-answer, never double-charge. The
same holds for a request that overruns its 60 s lock. Any other use case that moves money
must do the same (the key is also in ``request.state.idempotency_key``).

Rows are kept for a day: ``purge_idempotency_keys(session, now - IDEMPOTENCY_RETENTION)``
from a periodic job.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoudan.api.errors import problem, status_for
from shoudan.auth.domain import IdempotencyDecision
from shoudan.auth.service import (
    IDEMPOTENCY_LOCK,
    IDEMPOTENCY_RETENTION,
    Claim,
    ClaimOutcome,
    IdempotencyLock,
    StoredResponse,
    claim_idempotency_key,
    complete_idempotency_key,
    get_idempotency_record,
    purge_idempotency_keys,
    release_idempotency_key,
)
from shoudan.core.clock import Clock, SystemClock
from shoudan.core.db import Database
from shoudan.core.errors import ErrorCode

__all__ = [
    "IDEMPOTENCY_RETENTION",
    "IdempotencyMiddleware",
    "caller_scope",
    "purge_idempotency_keys",
    "request_fingerprint",
    "valid_idempotency_key",
]

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = b"idempotency-key"
AUTHORIZATION_HEADER = b"authorization"
REPLAYED_HEADER = b"idempotent-replayed"
MAX_KEY_LENGTH = 255
DEFAULT_WAIT_SECONDS = 10.0
DEFAULT_POLL_SECONDS = 0.05
# the largest upload (10 MiB evidence files) plus its multipart framing
DEFAULT_MAX_BODY = 10 * 1024 * 1024 + 64 * 1024


class _BodyTooLarge(Exception):
    pass
# Answers a retry should run again for, rather than replay: every 5xx, and these.
NOT_STORED = frozenset({401, 408, 429})
# Headers that belong to one transmission, not to the response: never stored or replayed.
_TRANSIENT_HEADERS = frozenset(
    {
        "content-length",
        "connection",
        "date",
        "server",
        "set-cookie",
        "transfer-encoding",
        REPLAYED_HEADER.decode(),
    }
)


def request_fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """SHA-256 of the request, each part length-prefixed so no two requests share one."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "surrogateescape"), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def caller_scope(authorization: bytes) -> str:
    return hashlib.sha256(authorization).hexdigest()


def valid_idempotency_key(raw: bytes) -> str | None:
    """The key if it is 1..255 printable ASCII characters, else None."""
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or any(not 0x20 <= b <= 0x7E for b in raw):
        return None
    return raw.decode("ascii")


def _storable(status: int) -> bool:
    return status < 500 and status not in NOT_STORED


class IdempotencyMiddleware:
    """``app.add_middleware(IdempotencyMiddleware, database_getter=lambda: database)``."""

    def __init__(
        self,
        app: ASGIApp,
        database_getter: Callable[[], Database],
        *,
        clock: Clock | None = None,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        lock_for: timedelta = IDEMPOTENCY_LOCK,
        path_prefix: str = "/v1",
        max_body_bytes: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.app = app
        self.database_getter = database_getter
        self.clock: Clock = clock or SystemClock()
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self.lock_for = lock_for
        self.path_prefix = path_prefix.rstrip("/")
        self.max_body_bytes = max_body_bytes

    def _applies(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        path: str = scope["path"]
        return path == self.path_prefix or path.startswith(self.path_prefix + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw_keys = [value for name, value in headers if name == IDEMPOTENCY_HEADER]
        authorization = [value for name, value in headers if name == AUTHORIZATION_HEADER]
        if not raw_keys or not authorization:
            await self.app(scope, receive, send)
            return
        key = valid_idempotency_key(raw_keys[0]) if len(raw_keys) == 1 else None
        if key is None:
            await self._problem(
                scope, receive, send, ErrorCode.INVALID_INPUT,
                "Idempotency-Key must be one header of 1 to 255 printable ASCII characters",
            )  # fmt: skip
            return
        # The body is held in memory to be hashed (and replayed): never more than the limit.
        declared = [value for name, value in headers if name == b"content-length"]
        if declared and declared[0].isdigit() and int(declared[0]) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        if body is None:  # the client went away before sending its body
            return
        request_hash = request_fingerprint(
            scope["method"], scope["path"], scope.get("query_string", b""), body
        )
        caller = caller_scope(b"\n".join(authorization))
        database = self.database_getter()
        deadline = time.monotonic() + self.wait_seconds

        while True:
            claim = await run_in_threadpool(self._claim, database, caller, key, request_hash)
            if claim.outcome is ClaimOutcome.ACQUIRED:
                assert claim.lock is not None
                await self._run(scope, receive, send, database, claim.lock, key, body)
                return
            if claim.outcome is ClaimOutcome.REPLAY:
                assert claim.response is not None
                await _replay(claim.response, send)
                return
            if claim.outcome is ClaimOutcome.MISMATCH:
                await self._reused(scope, receive, send)
                return
            waited = await self._wait(database, caller, key, request_hash, deadline)
            if isinstance(waited, StoredResponse):
                await _replay(waited, send)
                return
            if waited is IdempotencyDecision.MISMATCH:
                await self._reused(scope, receive, send)
                return
            if waited is None:
                await self._problem(
                    scope, receive, send, ErrorCode.IDEMPOTENCY_KEY_IN_USE,
                    "a request with this Idempotency-Key is still being processed; retry later",
                )  # fmt: skip
                return
            # TAKE_OVER (or the row disappeared): claim again.

    # -- database steps (each its own short transaction, run in a worker thread holding the
    #    database's baton: core/baton.py) ------------------------------------------------------

    def _claim(self, database: Database, caller: str, key: str, request_hash: str) -> Claim:
        with database.baton.held(), database.transaction() as session:
            return claim_idempotency_key(
                session,
                scope=caller,
                key=key,
                request_hash=request_hash,
                now=self.clock.now(),
                lock_for=self.lock_for,
            )

    def _peek(
        self, database: Database, caller: str, key: str, request_hash: str
    ) -> StoredResponse | IdempotencyDecision:
        with database.baton.held(), database.read() as session:
            record = get_idempotency_record(session, scope=caller, key=key)
        if record is None:
            return IdempotencyDecision.TAKE_OVER  # gone: whoever claims first runs it
        decision = record.decide(request_hash, self.clock.now())
        if decision is IdempotencyDecision.REPLAY:
            assert record.response is not None
            return record.response
        return decision

    def _complete(
        self, database: Database, lock: IdempotencyLock, response: StoredResponse
    ) -> None:
        with database.baton.held(), database.transaction() as session:
            kept = complete_idempotency_key(session, lock, response, now=self.clock.now())
        if not kept:
            log.warning("idempotency record %s was taken over before completion", lock.id)

    def _release(self, database: Database, lock: IdempotencyLock) -> None:
        with database.baton.held(), database.transaction() as session:
            release_idempotency_key(session, lock)

    # -- steps -----------------------------------------------------------------------------

    async def _wait(
        self, database: Database, caller: str, key: str, request_hash: str, deadline: float
    ) -> StoredResponse | IdempotencyDecision | None:
        """Poll until the first request completes (its response), the row can be claimed
        (TAKE_OVER), the request differs (MISMATCH), or the deadline passes (None)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(self.poll_seconds, remaining))
            seen = await run_in_threadpool(self._peek, database, caller, key, request_hash)
            if seen is not IdempotencyDecision.BUSY:
                return seen

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        database: Database,
        lock: IdempotencyLock,
        key: str,
        body: bytes,
    ) -> None:
        """Run the request as the key's owner; store or release the record before the
        client sees the end of the response."""
        scope.setdefault("state", {})["idempotency_key"] = key
        body_given = False
        settled = False  # the record has been stored or released
        status = 0
        response_headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []

        async def replay_receive() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def settle(final: StoredResponse | None) -> None:
            nonlocal settled
            settled = True
            with anyio.CancelScope(shield=True):
                if final is not None and _storable(final.status):
                    await run_in_threadpool(self._complete, database, lock, final)
                else:
                    await run_in_threadpool(self._release, database, lock)

        async def capturing_send(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_headers = [
                    (name.decode("latin-1").lower(), value.decode("latin-1"))
                    for name, value in message.get("headers", [])
                    if name.decode("latin-1").lower() not in _TRANSIENT_HEADERS
                ]
            elif message["type"] == "http.response.body" and not settled:
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    await settle(StoredResponse(status, response_headers, b"".join(chunks)))
            await send(message)

        try:
            await self.app(scope, replay_receive, capturing_send)
        except BaseException:
            if not settled:
                await settle(None)
            raise
        if not settled:  # the app returned without a complete response
            await settle(None)

    async def _problem(
        self, scope: Scope, receive: Receive, send: Send, code: ErrorCode, detail: str
    ) -> None:
        response = problem(code, status_for(code), detail, instance=scope["path"])
        await response(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._problem(
            scope, receive, send, ErrorCode.REQUEST_TOO_LARGE,
            f"a request with an Idempotency-Key has at most {self.max_body_bytes} bytes of body",
        )  # fmt: skip

    async def _reused(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._problem(
            scope, receive, send, ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was used with a different request",
        )  # fmt: skip


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body; None if the client went away; ``_BodyTooLarge`` past ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _replay(stored: StoredResponse, send: Send) -> None:
    headers: list[tuple[bytes, bytes]] = [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in stored.headers
    ]
    headers.append((b"content-length", str(len(stored.body)).encode()))
    headers.append((REPLAYED_HEADER, b"true"))
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})
