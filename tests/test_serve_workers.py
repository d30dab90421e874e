"""``shoudan serve --workers N``: N real HTTP processes behind the supervisor (which listens
and hands them the connections), on one port and one SQLite file. Payments made over many
connections are all recorded once and the ledger verifies; SIGTERM stops every process;
``--iso-port`` with ``--workers`` is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from shoudan.cli.main import app
from shoudan.core.db import Database
from tests.payments_world import DEBIT, PIN, build_world
from tests.ports import free_port
from tests.process_helpers import (
    assert_ledger_verifies,
    captured_payments,
    children,
    reap,
    stop_gracefully,
)
from tests.test_gateway_crash import DEADLINE, SECRET_KEY, shoudan_cli

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="/proc")]

PAYMENTS = 16  # each on a connection of its own




def test_workers_share_the_port_and_the_database(sqlite_url: str, tmp_path: Path) -> None:
    world = build_world(Database(sqlite_url), tmp_path)
    terminal, key = world.terminal_a, world.key_a
    world.container.dispose()
    port = free_port()
    env = {**os.environ, "SHOUDAN_SECRET_KEY": SECRET_KEY, "SHOUDAN_DATA_DIR": str(tmp_path),
           "SHOUDAN_SANDBOX_STATE_PATH": str(tmp_path / "sandbox-network.sqlite3")}  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [shoudan_cli(), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--database-url", sqlite_url, "--workers", "2"],
            stdout=output, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the server never answered"
            try:
                if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)  # polling for the listener; nothing asserted about time
        assert len(children(server.pid)) >= 2  # the workers (and uvicorn's own helpers)

        card = {"pan": DEBIT, "expiry": "2912", "pin": PIN, "entry_mode": "chip"}
        body = {"terminal_id": terminal, "amount": 1_000, "method": "card", "card": card}
        created = []
        for _ in range(PAYMENTS):
            with httpx.Client(base_url=base, timeout=DEADLINE) as client:  # a new connection
                answer = client.post(
                    "/v1/payments", json=body, headers={"Authorization": f"Bearer {key}"}
                )
            assert answer.status_code == 201, answer.text
            assert answer.json()["status"] == "captured"
            created.append(answer.json()["id"])

        stop_gracefully(server, log)
    finally:
        reap(server)

    ids, count = captured_payments(sqlite_url)
    assert set(created) <= ids and len(created) == len(set(created)) == PAYMENTS
    assert count == len(ids)
    assert_ledger_verifies(sqlite_url)


def test_the_gateway_inside_several_http_processes_is_refused(sqlite_url: str) -> None:
    result = CliRunner().invoke(
        app, ["serve", "--database-url", sqlite_url, "--workers", "2", "--iso-port", "18583"]
    )
    assert result.exit_code == 1
    assert "shoudan gateway --processes" in result.output
