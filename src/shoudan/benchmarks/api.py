"""``shoudan bench api``: payments created per second over HTTP, against a trivial endpoint.

The server is ``shoudan serve [--workers N]`` (the real app under uvicorn, its access log
off) in its own process(es), on a fresh SQLite database in the data directory, on loopback.
32 concurrent keep-alive connections (a minimal asyncio HTTP/1.1 client, one process) first
call ``GET /livez`` (no database: the framework's own cost) for the same duration — the
baseline — then ``POST /v1/payments`` with a sandbox debit card. Each line gives requests/s
and p50/p99 latency; the payments line gives the ratio to the baseline.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from shoudan import migrations
from shoudan.auth.domain import Role
from shoudan.auth.service import create_api_key
from shoudan.benchmarks.scratch import ledger_line, scratch_postgres
from shoudan.bootstrap import bootstrap
from shoudan.channels.sandbox import PAN_APPROVE_DEBIT, SANDBOX_PIN
from shoudan.core.clock import Clock, SystemClock
from shoudan.core.config import Settings, get_settings
from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.ledger.service import Ledger
from shoudan.merchants.service import MerchantInput, MerchantView, create_merchant
from shoudan.terminals.service import TerminalInput, create_terminal

CLIENTS = 32
REFUNDS_PER_PAYMENT = 50
SECRET = "42" * 32


START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_on_a_free_port(
    start: Callable[[int], subprocess.Popen[bytes]],
) -> tuple[int, subprocess.Popen[bytes]]:
    """``start(port)`` on a port the kernel says is free. Another process can take the port
    before the server binds it (an outgoing connection's local port, say), and the server
    then fails to start: it is started again on another port."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = _free_port()
        try:
            return port, start(port)
        except RuntimeError:
            if attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def bench_vault() -> Vault:
    return Vault.from_master(bytes.fromhex(SECRET))


def bench_merchant(
    session: Session, database: Database, vault: Vault, clock: Clock, name: str
) -> MerchantView:
    """The benchmarks' merchant: no daily limit gets in the way (reference data must exist:
    ``bootstrap`` first, outside this transaction)."""
    return create_merchant(
        session, vault, Ledger(database, clock),
        MerchantInput(name, "small_business", "5411", "3100", "13800000000", daily_limit=10**12),
        actor="bench", clock=clock,
    )  # fmt: skip


def _prepare(url: str) -> tuple[str, str]:
    """A merchant, a terminal and the merchant's API key in a fresh database."""
    migrations.upgrade(url)
    database = Database(url)
    try:
        bootstrap(database)
        vault, clock = bench_vault(), SystemClock()
        with database.transaction() as session:
            merchant = bench_merchant(session, database, vault, clock, "压测商户")
            terminal = create_terminal(
                session, vault,
                TerminalInput("BENCH-0001", "BT000001", "epos", merchant.merchant_id, None),
                actor="bench", clock=clock,
            )[0]  # fmt: skip
            key = create_api_key(session, role=Role.MERCHANT, merchant_id=merchant.merchant_id)[1]
        return terminal.terminal_id, key
    finally:
        database.dispose()


def _start_server(url: str, data_dir: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SHOUDAN_DATABASE_URL": url,
        "SHOUDAN_DATA_DIR": str(data_dir),
        "SHOUDAN_SECRET_KEY": SECRET,
        # every refund takes the auto-approved path: payments made seconds ago would
        # otherwise score "refund within 10 minutes" and go to review
        "SHOUDAN_REFUND_REVIEW_SCORE": "101",
        "SHOUDAN_ACCESS_LOG": "false",
    }
    command = [
        sys.executable, "-m", "shoudan.cli.main", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    with (data_dir / "server.log").open("ab") as log:  # this command's output is JSON lines
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - our own interpreter and module
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    server.wait()
    raise RuntimeError("the API server did not start")


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a kept-alive connection; returns the status code. A minimal
    client on purpose: a full HTTP library costs more CPU than the server's trivial endpoint,
    and the client shares this 2-core machine with the server."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


def _request_bytes(
    method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str], port: int
) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _load(
    port: int,
    seconds: float,
    method: str,
    path: str,
    body: dict[str, Any] | Callable[[], dict[str, Any]] | None,
    headers: dict[str, str],
    expect: int,
    created: list[str] | None = None,
) -> tuple[int, list[float], int]:
    """CLIENTS connections send requests back to back for ``seconds``; returns
    (ok, latencies, failures). ``body`` may be a function giving each request its own body;
    ``created`` collects the ids the server returns (for a later phase to use)."""
    latencies: list[float] = []
    failures = 0
    fixed = None if callable(body) else _request_bytes(method, path, body, headers, port)
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                request = fixed
                if request is None:
                    assert callable(body)
                    request = _request_bytes(method, path, body(), headers, port)
                started = time.perf_counter()
                status, answer = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                if status != expect:
                    failures += 1
                elif created is not None:
                    created.append(json.loads(answer)["id"])
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return len(latencies) - failures, latencies, failures


def _with_ratio(line: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    line["baseline_per_s"] = baseline["per_s"]
    line["ratio"] = round(line["per_s"] / baseline["per_s"], 3) if baseline["per_s"] else 0
    return line


def _line(
    name: str, ok: int, latencies: list[float], failures: int, seconds: float
) -> dict[str, Any]:
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "bench": "api",
        "endpoint": name,
        "clients": CLIENTS,
        "seconds": seconds,
        "requests": len(latencies),
        "failures": failures,
        "per_s": round(ok / seconds, 1),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
    }


def run(
    seconds: float = 10.0,
    settings: Settings | None = None,
    database_url: str | None = None,
    workers: int = 1,
) -> Iterator[dict[str, Any]]:
    """The phases on SQLite in the data directory, or on a scratch database of the PostgreSQL
    server of ``database_url``; ``workers`` server processes behind the port (on SQLite
    they take turns to write through the lock file beside the database)."""
    data_dir = (settings or get_settings()).data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-", dir=data_dir))
        if database_url is None:
            url = f"sqlite:///{Path(tmp) / 'api.db'}"
        else:
            (url,) = stack.enter_context(scratch_postgres(database_url, "api"))
        yield {"bench": "api", "database": make_url(url).get_backend_name(), "workers": workers}
        yield from _phases(url, Path(tmp), seconds, workers)


def _phases(url: str, tmp: Path, seconds: float, workers: int) -> Iterator[dict[str, Any]]:
    terminal_id, key = _prepare(url)
    port, server = start_on_a_free_port(lambda port: _start_server(url, tmp, port, workers))
    try:
        headers = {"Authorization": f"Bearer {key}"}
        asyncio.run(_load(port, 1.0, "GET", "/livez", None, {}, 200))  # warm up
        ok, lat, bad = asyncio.run(_load(port, seconds, "GET", "/livez", None, {}, 200))
        baseline = _line("GET /livez (baseline)", ok, lat, bad, seconds)
        yield baseline
        body = {
            "terminal_id": terminal_id, "amount": 100, "method": "card",
            "card": {"pan": PAN_APPROVE_DEBIT, "expiry": "2912", "pin": SANDBOX_PIN,
                     "entry_mode": "chip"},
        }  # fmt: skip
        payments: list[str] = []
        ok, lat, bad = asyncio.run(
            _load(port, seconds, "POST", "/v1/payments", body, headers, 201, payments)
        )
        yield _with_ratio(_line("POST /v1/payments", ok, lat, bad, seconds), baseline)
        # Refunds of one fen, each payment at most the policy's 50 times: partial refunds
        # on the day are refunds (only a full one is a void), auto-approved.
        targets = iter([pid for pid in payments for _ in range(REFUNDS_PER_PAYMENT)])

        def refund_body() -> dict[str, Any]:
            return {"payment_id": next(targets, payments[0]), "amount": 1,
                    "reason": "customer_request"}  # fmt: skip

        ok, lat, bad = asyncio.run(
            _load(port, seconds, "POST", "/v1/refunds", refund_body, headers, 201)
        )
        line = _with_ratio(_line("POST /v1/refunds", ok, lat, bad, seconds), baseline)
        line["path"] = "auto-approved (review by score off: SHOUDAN_REFUND_REVIEW_SCORE=101)"
        yield line
    finally:
        server.terminate()
        server.wait(timeout=30)
    yield ledger_line("api", url)


def main(seconds: float = 10.0) -> None:
    for line in run(seconds):
        print(json.dumps(line, ensure_ascii=False), flush=True)
