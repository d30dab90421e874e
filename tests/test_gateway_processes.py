"""``shoudan gateway --processes N``: N real gateway processes behind one port, under a
supervisor that hands them the connections, on one SQLite file.

- both processes answer sales (each exports its own metrics: ``--metrics-port P`` gives P and
  P+1), every one approved, MACed, and in the ledger once; ``shoudan ledger verify`` passes;
- a gateway killed with SIGKILL is started again, and sales carry on;
- SIGTERM stops the supervisor and every gateway gracefully (exit status 0);
- gateways that cannot start (the port taken by a server that does not share it) stop the
  command with an error instead of being restarted forever.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shoudan.core.db import Database
from shoudan.gateway.simulator import Card, TerminalClient, TerminalState
from tests.payments_world import DEBIT, PIN, build_world
from tests.ports import free_port, free_ports
from tests.process_helpers import (
    assert_ledger_verifies,
    captured_payments,
    children,
    reap,
    running,
    stop_gracefully,
)
from tests.test_gateway_crash import (
    DEADLINE,
    SECRET_KEY,
    shoudan_cli,
    three_terminals,
)

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG, /proc")]

SALES_PER_TERMINAL = 12  # each on a new connection: 36 connections over two processes


def _environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SHOUDAN_SECRET_KEY": SECRET_KEY,
        "SHOUDAN_DATA_DIR": str(tmp_path),
        "SHOUDAN_SANDBOX_STATE_PATH": str(tmp_path / "sandbox-network.sqlite3"),
        "SHOUDAN_ISO_WORKERS": "4",
    }


def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)  # polling for processes and listeners; nothing asserted about time


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _metrics_up(port: int) -> bool:
    try:
        _sales_approved(port)
        return True
    except OSError:
        return False


def _sales_approved(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    prefix = 'shoudan_gateway_responses_total{code="00",mti="0200"} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def _sell(port: int, states: list[TerminalState], count: int) -> list[str]:
    """``count`` sales per terminal, each on a connection of its own; their field 39s."""
    codes = []
    for _ in range(count):
        for state in states:
            client = TerminalClient("127.0.0.1", port, state, timeout=DEADLINE)
            try:
                reply = client.sale(Card(pan=DEBIT, pin=PIN), 1_000)
                codes.append(reply.code if reply.mac_ok else "bad MAC")
            finally:
                client.close()
    return codes


def test_processes_share_the_port_and_are_restarted_and_stopped(
    sqlite_url: str, tmp_path: Path
) -> None:
    terminals = three_terminals(sqlite_url, tmp_path)
    port, metrics = free_port(), free_ports(2)  # P and P+1: the two gateways' metrics
    command = [
        shoudan_cli(), "gateway", "--host", "127.0.0.1", "--iso-port", str(port),
        "--database-url", sqlite_url, "--processes", "2", "--metrics-port", str(metrics),
    ]  # fmt: skip
    log = tmp_path / "gateway.log"
    with log.open("wb") as output:
        supervisor = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=_environment(tmp_path)
        )
    try:
        _wait_for(lambda: len(children(supervisor.pid)) == 2, "two gateway processes")
        _wait_for(lambda: _metrics_up(metrics) and _metrics_up(metrics + 1), "both listening")
        _wait_for(lambda: _accepting(port), "the port accepts")
        states = [TerminalState(terminal, merchant) for terminal, merchant, _ in terminals]
        for state, (_, _, key) in zip(states, terminals, strict=True):
            client = TerminalClient("127.0.0.1", port, state, timeout=DEADLINE)
            assert client.sign_on(key).code == "00"  # the keys are in the database: any process
            client.close()

        codes = _sell(port, states, SALES_PER_TERMINAL)
        assert codes == ["00"] * SALES_PER_TERMINAL * len(states)
        served = [_sales_approved(metrics), _sales_approved(metrics + 1)]
        assert all(count > 0 for count in served), f"one process served nothing: {served}"
        assert sum(served) == len(codes)

        # a gateway dies: the supervisor starts it again, and terminals carry on
        victim = children(supervisor.pid)[0]
        os.kill(victim, signal.SIGKILL)
        _wait_for(
            lambda: len(children(supervisor.pid)) == 2 and victim not in children(supervisor.pid),
            "the killed gateway replaced",
        )
        _wait_for(lambda: _metrics_up(metrics) and _metrics_up(metrics + 1), "both listening")
        after = _sell(port, states, 2)
        assert after == ["00"] * 2 * len(states)

        stop_gracefully(supervisor, log)
    finally:
        reap(supervisor)

    captured, everything = captured_payments(sqlite_url)
    assert len(captured) == everything == len(codes) + len(after)  # every 00 once
    assert_ledger_verifies(sqlite_url)


def test_a_port_taken_or_gateways_that_cannot_start_stop_the_command(
    sqlite_url: str, tmp_path: Path
) -> None:
    build_world(Database(sqlite_url), tmp_path).container.dispose()

    def gateway(port: int, *more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [shoudan_cli(), "gateway", "--host", "127.0.0.1", "--iso-port", str(port),
             "--database-url", sqlite_url, "--processes", "2", *more],
            check=False, capture_output=True, text=True, timeout=DEADLINE,
            env=_environment(tmp_path),
        )  # fmt: skip

    with socket.socket() as taken:  # a listener that does not share its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        finished = gateway(port)  # the supervisor cannot listen
        assert finished.returncode != 0
        assert "cannot listen" in finished.stdout + finished.stderr
        # the gateways cannot start (their metrics port is taken): starting them again
        # would fail the same way
        finished = gateway(free_port(), "--metrics-port", str(port))
    assert finished.returncode != 0
    assert "exited with" in finished.stdout + finished.stderr


def test_the_servers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the supervisor no time to stop anything: the kernel tells each server
    (PR_SET_PDEATHSIG), and each stops gracefully, so none is left serving the port."""
    port = free_port()
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "shoudan.benchmarks.gateway_echo", str(port), "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(lambda: len(children(supervisor.pid)) == 2, "two echo servers")
        _wait_for(lambda: _accepting(port), "the port accepts")
        servers = children(supervisor.pid)
        supervisor.kill()
        supervisor.wait(timeout=DEADLINE)
        _wait_for(lambda: not any(running(pid) for pid in servers), "the servers stopped")
        assert not _accepting(port)
    finally:
        reap(supervisor)
