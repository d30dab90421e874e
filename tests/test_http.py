"""The HTTP edge: the real ``shoudan serve`` process, offline docs, and problem+json errors."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shoudan.api.app import create_app
from shoudan.api.errors import PROBLEM_JSON, STATUS_BY_CODE, status_for
from shoudan.core.config import Settings
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from tests.ports import free_port

HTTPX_NOTICE = r".*httpx.*starlette\.testclient.*"  # starlette's notice, not about our code
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=HTTPX_NOTICE)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings(f"ignore:{HTTPX_NOTICE}")

SHOUDAN = str(Path(sys.executable).with_name("shoudan"))
START_TIMEOUT_S = 30.0
DEMO_START_TIMEOUT_S = 300
EXTERNAL_URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}""")


def _env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SHOUDAN_DATABASE_URL=database_url, SHOUDAN_DATA_DIR=str(tmp_path))
    return env


def _shoudan(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHOUDAN, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


class Server:
    """A ``shoudan`` subprocess listening on a free port, stopped with SIGINT like Ctrl-C."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [SHOUDAN, *args, "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited {self.process.returncode}:\n{self.output()}")
            try:
                response = httpx.get(f"{self.base}/healthz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            return response
        pytest.fail(f"server not up after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The documented workflow: ``shoudan db upgrade``, then ``shoudan serve``."""
    tmp = tmp_path_factory.mktemp("served")
    env = _env(tmp, f"sqlite:///{tmp / 'shoudan.db'}")
    upgrade = _shoudan(["db", "upgrade"], env)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    server = Server(["serve"], env, tmp / "server.log")
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def test_served_healthz(served: Server) -> None:
    response = httpx.get(f"{served.base}/healthz", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "sqlite"
    assert body["version"]


def test_served_openapi(served: Server) -> None:
    response = httpx.get(f"{served.base}/openapi.json", timeout=5)
    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["title"] == "shoudan"
    assert "/healthz" in spec["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside(served: Server, page: str) -> None:
    """The docs must work on a network with no way out: every asset is served by us."""
    response = httpx.get(f"{served.base}{page}", timeout=5)
    assert response.status_code == 200
    html = response.text
    assert EXTERNAL_URL.findall(html) == []
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(asset.endswith(".js") for asset in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = httpx.get(f"{served.base}{asset}", timeout=10)
        assert fetched.status_code == 200, asset


def test_served_unknown_path_is_problem_json(served: Server) -> None:
    response = httpx.get(f"{served.base}/no/such/thing", timeout=5)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "not_found"


def test_serve_refuses_a_missing_database(tmp_path: Path) -> None:
    """serve never creates or migrates a database silently."""
    path = tmp_path / "missing.db"
    result = _shoudan(["serve", "--port", str(free_port())], _env(tmp_path, f"sqlite:///{path}"))
    assert result.returncode != 0
    assert "shoudan db upgrade" in result.stderr
    assert not path.exists()


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    result = _shoudan(["serve", "--port", str(free_port())], _env(tmp_path, f"sqlite:///{path}"))
    assert result.returncode != 0
    assert "shoudan db upgrade" in result.stderr


def test_demo_migrates_and_serves(tmp_path: Path) -> None:
    server = Server(["demo"], _env(tmp_path, f"sqlite:///{tmp_path / 'demo.db'}"), tmp_path / "log")
    try:
        # the demo seeds ~500 payments before it serves: allow for a loaded CI machine
        response = server.wait_healthy(timeout=DEMO_START_TIMEOUT_S)
        assert response.status_code == 200, server.output()
        assert response.json()["database"] == "sqlite"
    finally:
        server.stop()
    assert "/docs" in server.output()
    assert "staff admin API key: sk_s_" in server.output()
    assert (tmp_path / "demo-credentials.json").exists()


# --- the error mapping, in process -------------------------------------------------------


def _app_with_test_routes(database: Database) -> FastAPI:
    app = create_app(Settings(database_url=database.url), database=database)

    @app.get("/test/raise/{code}")
    def raise_domain_error(code: str) -> None:
        raise DomainError(ErrorCode(code), f"refused: {code}", account_id="assets:x")

    @app.get("/test/validate")
    def validate(amount: int) -> dict[str, int]:
        return {"amount": amount}

    @app.get("/test/crash")
    def crash() -> None:
        raise RuntimeError("secret internals")

    return app


@pytest.fixture
def client(sqlite_database: Database) -> Iterator[TestClient]:
    with TestClient(
        _app_with_test_routes(sqlite_database), raise_server_exceptions=False
    ) as test_client:
        yield test_client


EXPECTED_STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ACCOUNT_NOT_FOUND: 404,
    ErrorCode.HOLD_NOT_FOUND: 404,
    ErrorCode.ENTRY_ID_CONFLICT: 409,
    ErrorCode.ACCOUNT_EXISTS: 409,
    ErrorCode.ACCOUNT_CONFLICT: 409,
    ErrorCode.HOLD_ALREADY_RESOLVED: 409,
    ErrorCode.LIMIT_EXCEEDED: 422,
    ErrorCode.HOLD_EXPIRED: 422,
    ErrorCode.HOLD_AMOUNT_EXCEEDED: 422,
    ErrorCode.INVALID_AMOUNT: 422,
    ErrorCode.INTERNAL_ERROR: 500,
}


@pytest.mark.parametrize(("code", "status"), EXPECTED_STATUS.items(), ids=str)
def test_domain_error_is_problem_json(client: TestClient, code: ErrorCode, status: int) -> None:
    response = client.get(f"/test/raise/{code.value}")
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body == {
        "type": f"https://shoudan.dev/problems/{code.value}",
        "title": body["title"],
        "status": status,
        "detail": f"refused: {code.value}",
        "code": code.value,
        "instance": f"/test/raise/{code.value}",
        "account_id": "assets:x",
    }
    assert body["title"]


def test_every_code_has_a_status() -> None:
    for code in ErrorCode:
        assert 400 <= status_for(code) < 600
    assert set(STATUS_BY_CODE) <= set(ErrorCode)


def test_validation_error_is_problem_json_without_echoing_input(client: TestClient) -> None:
    response = client.get("/test/validate", params={"amount": "6222020000000018"[:-1] + "x"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["code"] == "invalid_input"
    assert body["type"] == "https://shoudan.dev/problems/invalid_input"
    assert body["errors"] and body["errors"][0]["loc"] == ["query", "amount"]
    assert "622202" not in response.text


def test_unhandled_error_is_a_500_problem_that_hides_internals(client: TestClient) -> None:
    response = client.get("/test/crash")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "internal_error"
    assert "secret internals" not in response.text


def test_healthz_reports_the_engine(database: Database) -> None:
    with TestClient(create_app(Settings(database_url=database.url), database=database)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == database.dialect


def test_healthz_is_503_problem_when_the_database_is_down() -> None:
    database = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        with TestClient(create_app(Settings(), database=database)) as client:
            response = client.get("/healthz")
    finally:
        database.dispose()
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["database"] == "postgresql"


def test_nul_in_a_url_is_invalid_input_not_a_server_error(sqlite_database) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from shoudan.api.app import create_app

    client = TestClient(create_app(database=sqlite_database))
    for url in ("/v1/payments?merchant_id=%00", "/v1/refunds/rf%00x"):
        response = client.get(url)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_input"
