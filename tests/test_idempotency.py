"""``Idempotency-Key`` on POSTs under /v1: replays, conflicts, concurrency, failures, crash
takeover and purge, on both engines. A tiny app counts how often its use case really runs."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select

from shoudan.api.app import create_app
from shoudan.api.deps import PrincipalDep
from shoudan.api.errors import PROBLEM_JSON
from shoudan.api.idempotency import (
    IDEMPOTENCY_RETENTION,
    IdempotencyMiddleware,
    caller_scope,
    purge_idempotency_keys,
    request_fingerprint,
)
from shoudan.auth.domain import Role
from shoudan.auth.models import IdempotencyKey
from shoudan.auth.service import ClaimOutcome, claim_idempotency_key, create_api_key
from shoudan.core.clock import FixedClock
from shoudan.core.config import Settings
from shoudan.core.db import Database
from tests.web_world import serve

HTTPX_NOTICE = r".*httpx.*starlette\.testclient.*"  # starlette's notice, not about our code
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=HTTPX_NOTICE)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings(f"ignore:{HTTPX_NOTICE}")

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
AUTH = "Bearer sk_s_test-caller"


@dataclass
class Counter:
    calls: dict[str, int] = field(default_factory=dict)
    delay: float = 0.0

    def bump(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]


def tiny_app(
    database: Database, counter: Counter, clock: FixedClock, wait_seconds: float = 10.0
) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/things")
    async def make_thing(request: Request) -> JSONResponse:
        n = counter.bump("things")
        if counter.delay:
            await asyncio.sleep(counter.delay)
        payload = await request.json()
        return JSONResponse(
            {"n": n, "payload": payload, "key": getattr(request.state, "idempotency_key", None)},
            status_code=201,
            headers={"Location": f"/v1/things/{n}", "X-Request-Number": str(n)},
        )

    @app.post("/v1/blob")
    async def blob() -> Response:
        n = counter.bump("blob")
        return Response(b"\xff\x00\xfe" + bytes([n]), media_type="application/octet-stream")

    @app.post("/v1/boom")
    async def boom() -> JSONResponse:
        counter.bump("boom")
        return JSONResponse({"error": "upstream down"}, status_code=503)

    @app.post("/v1/raise")
    async def explode() -> JSONResponse:
        counter.bump("raise")
        raise RuntimeError("bug")

    @app.post("/v1/unauthorized")
    async def unauthorized() -> JSONResponse:
        counter.bump("unauthorized")
        return JSONResponse({"code": "unauthenticated"}, status_code=401)

    @app.post("/v1/refused")
    async def refused() -> JSONResponse:
        counter.bump("refused")
        return JSONResponse({"code": "invalid_amount"}, status_code=422)

    @app.post("/outside")
    async def outside() -> JSONResponse:
        return JSONResponse({"n": counter.bump("outside")})

    app.add_middleware(
        IdempotencyMiddleware,
        database_getter=lambda: database,
        clock=clock,
        wait_seconds=wait_seconds,
        poll_seconds=0.02,
    )
    return app


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def app(database: Database, counter: Counter, clock: FixedClock) -> FastAPI:
    return tiny_app(database, counter, clock)


def client(app: FastAPI, authorization: str | None = AUTH) -> httpx.AsyncClient:
    headers = {"Authorization": authorization} if authorization else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers)


def post(
    app: FastAPI,
    path: str,
    body: Any = None,
    key: str | bytes | None = None,
    authorization: str | None = AUTH,
) -> httpx.Response:
    async def go() -> httpx.Response:
        headers: dict[str, Any] = {} if key is None else {"Idempotency-Key": key}
        async with client(app, authorization) as http:
            return await http.post(path, json=body, headers=headers)

    return asyncio.run(go())


def rows(database: Database) -> list[IdempotencyKey]:
    with database.read() as session:
        found = list(session.execute(select(IdempotencyKey).order_by(IdempotencyKey.id)).scalars())
        session.expunge_all()  # keep the loaded values past the read's rollback
        return found


def count_rows(database: Database) -> int:
    with database.read() as session:
        return int(session.execute(select(func.count()).select_from(IdempotencyKey)).scalar_one())


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == code


# -- replay and conflicts -------------------------------------------------------------------


def test_retry_replays_the_first_response(
    app: FastAPI, database: Database, counter: Counter
) -> None:
    first = post(app, "/v1/things", {"amount": 100}, key="order-1")
    again = post(app, "/v1/things", {"amount": 100}, key="order-1")

    assert counter.calls == {"things": 1}
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert first.json() == {"n": 1, "payload": {"amount": 100}, "key": "order-1"}
    for header in ("content-type", "location", "x-request-number", "content-length"):
        assert first.headers[header] == again.headers[header], header
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"

    (row,) = rows(database)
    assert row.status == "completed" and row.key == "order-1"
    assert row.scope == caller_scope(AUTH.encode()) and AUTH not in row.scope
    assert row.response_status == 201 and row.locked_until is None
    assert json.loads(row.response_body or "") == first.json()
    assert row.created_at == row.completed_at == NOW


def test_binary_bodies_replay_byte_for_byte(
    app: FastAPI, database: Database, counter: Counter
) -> None:
    first = post(app, "/v1/blob", key="blob-1")
    again = post(app, "/v1/blob", key="blob-1")
    assert counter.calls == {"blob": 1}
    assert first.content == again.content == b"\xff\x00\xfe\x01"
    assert again.headers["content-type"] == "application/octet-stream"
    assert rows(database)[0].response_body_encoding == "base64"


def test_same_key_different_request_is_refused(app: FastAPI, counter: Counter) -> None:
    post(app, "/v1/things", {"amount": 100}, key="order-1")
    assert_problem(
        post(app, "/v1/things", {"amount": 999}, key="order-1"), 409, "idempotency_key_reused"
    )
    assert_problem(post(app, "/v1/blob", key="order-1"), 409, "idempotency_key_reused")
    assert_problem(
        post(app, "/v1/things?x=1", {"amount": 100}, key="order-1"), 409, "idempotency_key_reused"
    )
    assert counter.calls == {"things": 1}


def test_keys_are_scoped_to_the_caller(app: FastAPI, database: Database, counter: Counter) -> None:
    a = post(app, "/v1/things", {"amount": 100}, key="k", authorization="Bearer sk_s_a")
    b = post(app, "/v1/things", {"amount": 100}, key="k", authorization="Bearer sk_s_b")
    assert (a.json()["n"], b.json()["n"]) == (1, 2)
    assert "idempotent-replayed" not in b.headers
    assert count_rows(database) == 2


# -- what is not stored ---------------------------------------------------------------------


def test_no_key_or_no_credentials_pass_through(
    app: FastAPI, database: Database, counter: Counter
) -> None:
    for _ in range(2):
        assert post(app, "/v1/things", {"amount": 1}).status_code == 201
        anonymous = post(app, "/v1/things", {"amount": 1}, key="k", authorization=None)
        assert anonymous.status_code == 201
        assert post(app, "/outside", key="k").status_code == 200  # not under /v1
    assert counter.calls == {"things": 4, "outside": 2}
    assert count_rows(database) == 0


def test_failures_a_retry_should_rerun_are_not_stored(
    app: FastAPI, database: Database, counter: Counter
) -> None:
    for _ in range(2):
        assert post(app, "/v1/boom", key="boom-1").status_code == 503
        assert post(app, "/v1/raise", key="raise-1").status_code == 500
        assert post(app, "/v1/unauthorized", key="auth-1").status_code == 401
    assert counter.calls == {"boom": 2, "raise": 2, "unauthorized": 2}
    assert count_rows(database) == 0
    # a client error is the answer to that request: stored and replayed
    first = post(app, "/v1/refused", key="refused-1")
    again = post(app, "/v1/refused", key="refused-1")
    assert (first.status_code, again.status_code, counter.calls["refused"]) == (422, 422, 1)
    assert again.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 256, b"caf\xc3\xa9", "tab\there", "new\x7fline"],
    ids=["empty", "too-long", "non-ascii", "control", "del"],
)
def test_malformed_keys_are_refused(
    app: FastAPI, database: Database, counter: Counter, bad: str | bytes
) -> None:
    assert_problem(post(app, "/v1/things", {"amount": 1}, key=bad), 422, "invalid_input")
    assert counter.calls == {} and count_rows(database) == 0
    ok = post(app, "/v1/things", {"amount": 1}, key="x" * 255)  # the longest allowed
    assert ok.status_code == 201 and rows(database)[0].key == "x" * 255
    assert post(app, "/v1/things", {"amount": 1}, key=" !~").status_code == 201


# -- concurrency ----------------------------------------------------------------------------


def test_twenty_concurrent_requests_run_once(
    app: FastAPI, database: Database, counter: Counter
) -> None:
    counter.delay = 0.3

    async def go() -> list[httpx.Response]:
        async with client(app) as http:
            calls = [
                http.post("/v1/things", json={"amount": 100}, headers={"Idempotency-Key": "race"})
                for _ in range(20)
            ]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(go())
    assert counter.calls == {"things": 1}
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == 19
    assert count_rows(database) == 1


def test_twenty_threads_against_a_real_server(database: Database, counter: Counter) -> None:
    """The same race over real sockets: uvicorn, one thread per client."""
    counter.delay = 0.2
    with serve(tiny_app(database, counter, FixedClock(NOW))) as base:
        results: list[httpx.Response] = []
        barrier = threading.Barrier(20)

        def one() -> None:
            barrier.wait()
            headers = {"Authorization": AUTH, "Idempotency-Key": "threads"}
            url = f"{base}/v1/things"
            results.append(httpx.post(url, json={"amount": 7}, headers=headers, timeout=30))

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(results) == 20
    assert counter.calls == {"things": 1}
    assert {r.status_code for r in results} == {201}
    assert len({r.content for r in results}) == 1


def test_waiting_too_long_is_in_use_then_replays(
    database: Database, counter: Counter, clock: FixedClock
) -> None:
    app = tiny_app(database, counter, clock, wait_seconds=0.2)
    counter.delay = 1.0

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with client(app) as http:

            async def second() -> httpx.Response:
                await asyncio.sleep(0.1)
                return await http.post(
                    "/v1/things", json={"amount": 5}, headers={"Idempotency-Key": "slow"}
                )

            first = http.post("/v1/things", json={"amount": 5}, headers={"Idempotency-Key": "slow"})
            a, b = await asyncio.gather(first, second())
            return a, b

    first, second = asyncio.run(go())
    assert first.status_code == 201
    assert_problem(second, 409, "idempotency_key_in_use")
    again = post(app, "/v1/things", {"amount": 5}, key="slow")
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert counter.calls == {"things": 1}


def test_a_crashed_request_is_taken_over_after_its_lock(
    database: Database, counter: Counter, clock: FixedClock
) -> None:
    """A process died after claiming the key: retries wait, then (60 s on) run it again."""
    body = json.dumps({"amount": 100}).encode()
    with database.transaction() as session:
        claim = claim_idempotency_key(
            session,
            scope=caller_scope(AUTH.encode()),
            key="crashed",
            request_hash=request_fingerprint("POST", "/v1/things", b"", body),
            now=clock.now(),
        )
    assert claim.outcome is ClaimOutcome.ACQUIRED  # and then the process "died"
    app = tiny_app(database, counter, clock, wait_seconds=0.1)

    def retry() -> httpx.Response:
        async def go() -> httpx.Response:
            async with client(app) as http:
                return await http.post(
                    "/v1/things",
                    content=body,
                    headers={"Idempotency-Key": "crashed", "Content-Type": "application/json"},
                )

        return asyncio.run(go())

    assert_problem(retry(), 409, "idempotency_key_in_use")
    clock.advance(timedelta(seconds=59))
    assert_problem(retry(), 409, "idempotency_key_in_use")
    clock.advance(timedelta(seconds=2))
    taken = retry()
    assert taken.status_code == 201 and "idempotent-replayed" not in taken.headers
    replay = retry()
    assert replay.content == taken.content and replay.headers["idempotent-replayed"] == "true"
    assert counter.calls == {"things": 1}
    (row,) = rows(database)
    assert row.status == "completed"


def test_takeover_has_one_winner(database: Database) -> None:
    scope, request_hash = "s" * 64, "h" * 64
    with database.transaction() as session:
        claim_idempotency_key(session, scope=scope, key="k", request_hash=request_hash, now=NOW)
    later = NOW + timedelta(seconds=61)
    outcomes = []
    for _ in range(3):
        with database.transaction() as session:
            outcomes.append(
                claim_idempotency_key(
                    session, scope=scope, key="k", request_hash=request_hash, now=later
                ).outcome
            )
    assert outcomes == [ClaimOutcome.ACQUIRED, ClaimOutcome.BUSY, ClaimOutcome.BUSY]


# -- retention ------------------------------------------------------------------------------


def test_purge_removes_records_older_than_a_day(
    app: FastAPI, database: Database, counter: Counter, clock: FixedClock
) -> None:
    post(app, "/v1/things", {"amount": 1}, key="old")
    clock.advance(timedelta(hours=23))
    post(app, "/v1/things", {"amount": 1}, key="recent")
    clock.advance(timedelta(hours=2))
    with database.transaction() as session:
        assert purge_idempotency_keys(session, clock.now() - IDEMPOTENCY_RETENTION) == 1
    assert [row.key for row in rows(database)] == ["recent"]
    # a purged key is a new request again
    assert post(app, "/v1/things", {"amount": 1}, key="old").json()["n"] == 3
    assert counter.calls == {"things": 3}


# -- the real application -------------------------------------------------------------------


@pytest.fixture
def real_app(database: Database, tmp_path: Path) -> Iterator[tuple[FastAPI, str]]:
    settings = Settings(data_dir=tmp_path, secret_key="11" * 32, database_url=database.url)
    app = create_app(settings, database=database)
    calls: list[str] = []

    @app.post("/v1/echo", status_code=201)
    def echo(principal: PrincipalDep, payload: dict[str, Any]) -> dict[str, Any]:
        calls.append(principal.id)
        return {"n": len(calls), "payload": payload}

    with database.transaction() as session:
        _, key = create_api_key(session, role=Role.ADMIN)
    yield app, key


def test_create_app_installs_the_middleware(
    real_app: tuple[FastAPI, str], database: Database
) -> None:
    app, key = real_app
    installed: list[object] = [m.cls for m in app.user_middleware]
    assert IdempotencyMiddleware in installed
    http = TestClient(app)
    good = {"Authorization": f"Bearer {key}", "Idempotency-Key": "echo-1"}
    first = http.post("/v1/echo", json={"a": 1}, headers=good)
    again = http.post("/v1/echo", json={"a": 1}, headers=good)
    assert first.status_code == again.status_code == 201
    assert first.content == again.content and again.headers["idempotent-replayed"] == "true"
    reused = http.post("/v1/echo", json={"a": 2}, headers=good)
    assert reused.status_code == 409 and reused.json()["code"] == "idempotency_key_reused"
    # a bad key is a 401 that is not remembered
    bad = {"Authorization": "Bearer sk_s_" + "A" * 43, "Idempotency-Key": "echo-1"}
    assert http.post("/v1/echo", json={"a": 1}, headers=bad).status_code == 401
    assert count_rows(database) == 1


def test_a_body_over_the_limit_is_refused_without_being_kept(
    database: Database, counter: Counter, clock: FixedClock
) -> None:
    app = tiny_app(database, counter, clock)
    app.user_middleware[0].kwargs["max_body_bytes"] = 64  # the middleware added last
    app.middleware_stack = None  # rebuilt with the new limit on the next request
    small = post(app, "/v1/things", {"amount": 1}, key="small")
    assert small.status_code == 201
    large = post(app, "/v1/things", {"note": "x" * 100}, key="large")
    assert_problem(large, 413, "request_too_large")
    assert counter.calls == {"things": 1}
    assert count_rows(database) == 1
