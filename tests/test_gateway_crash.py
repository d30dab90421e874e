"""Crash test of the ISO 8583 gateway: SIGKILL under load, restart, nothing lost or doubled.

The gateway runs as a real process (``shoudan gateway``) on a SQLite file database, with the
sandbox network's books in their own file. Three terminals, each on its own connection, send
sales as fast as the gateway answers; once enough are approved the gateway is killed with
SIGKILL — in the middle of requests of every connection — and started again. Then:

- every sale answered ``00`` is in the payments table, captured, with its RRN and amount, its
  journal row and its capture entry in the ledger; no request made two payments;
- ``shoudan ledger verify`` passes (the operator's command, run as a process);
- the terminals carry on: they sign on again, send the reversal of the sale left without an
  answer (acknowledged ``00``; whatever it applied is undone) and sell again.

SIGKILL does not lose the OS page cache, so this proves atomicity and recovery after a crash,
not power-loss durability (that is ``synchronous=FULL``'s job).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from shoudan.core.db import Database
from shoudan.gateway.domain import Identity
from shoudan.gateway.models import GatewayRequest
from shoudan.gateway.simulator import Card, NoResponse, TerminalClient, TerminalState
from shoudan.ledger.models import LedgerEntry
from shoudan.payments.domain import PaymentStatus
from shoudan.payments.models import Payment
from shoudan.terminals.service import load_master_key
from tests.payments_world import DEBIT, PIN, build_world
from tests.ports import free_port

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL"),
    pytest.mark.slow,  # still part of `make test`: the Makefile does not deselect slow tests
]

SECRET_KEY = "11" * 32  # the test world's vault key: the gateway must read the same TMKs
KILL_AFTER = 60  # approved sales, over all connections, before the SIGKILL
DEADLINE = 60.0  # seconds for any one phase (a bound for a broken build, not a timing check)
SALE = "0200"


def shoudan_cli() -> str:
    return str(Path(sys.executable).parent / "shoudan")


@contextmanager
def gateway_process(
    url: str, port: int, tmp_path: Path, log_name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``shoudan gateway`` on ``url`` and ``port``, accepting connections; killed at the end if
    the test has not stopped it."""
    env = {
        **os.environ,
        "SHOUDAN_SECRET_KEY": SECRET_KEY,
        "SHOUDAN_DATA_DIR": str(tmp_path),
        "SHOUDAN_SANDBOX_STATE_PATH": str(tmp_path / "sandbox-network.sqlite3"),
        "SHOUDAN_ISO_WORKERS": "8",
    }
    with open(tmp_path / log_name, "wb") as log:
        process = subprocess.Popen(
            [shoudan_cli(), "gateway", "--host", "127.0.0.1", "--iso-port", str(port),
             "--database-url", url],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        wait_until_accepting(process, port, tmp_path / log_name)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def wait_until_accepting(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the gateway exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling for the listener; nothing is asserted about time
    pytest.fail("the gateway never accepted a connection")


@dataclass
class Sale:
    identity: Identity
    amount: int
    rrn: str
    code: str


@dataclass
class Lane:
    """One terminal on its own connection, and what it saw."""

    client: TerminalClient
    master_key: bytes
    answered: list[Sale] = field(default_factory=list)
    unanswered: list[Identity] = field(default_factory=list)

    def identity(self, stan: str) -> Identity:
        state = self.client.state
        return Identity(SALE, state.terminal_id, state.merchant_id, state.batch, stan)

    def sell_until_no_answer(self, approved: threading.Semaphore) -> None:
        card = Card(pan=DEBIT, pin=PIN)
        for number in range(100_000):
            amount = 100 + number % 900
            try:
                reply = self.client.sale(card, amount)
            except NoResponse:  # the gateway died with this sale in flight
                self.unanswered.append(self.identity(self.client.state.stan))
                return
            stan = reply.request.text(11) or ""
            rrn = reply.response.text(37) or ""
            self.answered.append(Sale(self.identity(stan), amount, rrn, reply.code))
            if reply.code == "00":
                approved.release()


def three_terminals(sqlite_url: str, tmp_path: Path) -> list[tuple[str, str, bytes]]:
    """The payments world in ``sqlite_url``: its three terminals as (terminal, merchant,
    master key), for a gateway started as a process to serve."""
    world = build_world(Database(sqlite_url), tmp_path)
    terminals = (world.terminal_a, world.terminal_a2, world.terminal_b)
    owners = (world.merchant_a, world.merchant_a, world.merchant_b)
    with world.container.database.read() as session:
        keys = [load_master_key(session, world.container.vault, t) for t in terminals]
    world.container.dispose()
    return list(zip(terminals, owners, keys, strict=True))


def test_sigkill_under_load_loses_and_doubles_nothing(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    lanes = [
        Lane(TerminalClient("127.0.0.1", port, TerminalState(t, m), timeout=DEADLINE), key)
        for t, m, key in three_terminals(sqlite_url, tmp_path)
    ]

    # -- under load, then SIGKILL ------------------------------------------------------------------
    approved = threading.Semaphore(0)
    with gateway_process(sqlite_url, port, tmp_path, "gateway-1.log") as gateway:
        for lane in lanes:
            assert lane.client.sign_on(lane.master_key).code == "00"
        workers = [threading.Thread(target=lane.sell_until_no_answer, args=(approved,))
                   for lane in lanes]  # fmt: skip
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + DEADLINE
        for _ in range(KILL_AFTER):
            assert approved.acquire(timeout=max(deadline - time.monotonic(), 0.01)), "too slow"
        assert gateway.poll() is None
        gateway.send_signal(signal.SIGKILL)
        for worker in workers:
            worker.join(DEADLINE)
        assert gateway.wait(timeout=30) == -signal.SIGKILL
    assert not any(worker.is_alive() for worker in workers)
    answered = [sale for lane in lanes for sale in lane.answered]
    assert {sale.code for sale in answered} == {"00"} and len(answered) >= KILL_AFTER
    in_flight = [identity for lane in lanes for identity in lane.unanswered]
    assert in_flight, "the kill should interrupt requests in flight"

    # the file is sound, and the killed writer's WAL is recovered
    path = make_url(sqlite_url).database
    assert path is not None
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # -- restart: sign on again, reversals acknowledged, business as usual ------------------------
    with gateway_process(sqlite_url, port, tmp_path, "gateway-2.log") as gateway:
        for lane in lanes:
            assert lane.client.sign_on(lane.master_key).code == "00"
            pending = lane.client.state.pending_reversal is not None
            reversal = lane.client.flush_reversal()
            assert (reversal is not None) is pending
            assert reversal is None or (reversal.code == "00" and reversal.mac_ok)
            assert lane.client.state.pending_reversal is None
            after = lane.client.sale(Card(pan=DEBIT, pin=PIN), 1_234)
            assert after.code == "00" and after.mac_ok
            stan = after.request.text(11) or ""
            rrn = after.response.text(37) or ""
            answered.append(Sale(lane.identity(stan), 1_234, rrn, after.code))
            lane.client.close()
        gateway.send_signal(signal.SIGTERM)  # graceful this time
        assert gateway.wait(timeout=DEADLINE) == 0

    # -- what the books say ---------------------------------------------------------------------
    database = Database(sqlite_url)
    try:
        with database.read() as session:
            payments = list(session.scalars(select(Payment)))
            journal = {
                (row.terminal_id, row.batch, row.stan): row
                for row in session.scalars(select(GatewayRequest).where(GatewayRequest.mti == SALE))
            }
            entries = set(session.scalars(select(LedgerEntry.id)))
    finally:
        database.dispose()
    by_key = {payment.idempotency_key: payment for payment in payments}
    assert len(by_key) == len(payments)  # one payment per terminal request: none twice
    sent = {sale.identity.idempotency_key for sale in answered} | {
        identity.idempotency_key for identity in in_flight
    }
    assert set(by_key) <= sent  # and none that no terminal asked for
    for sale in answered:  # every 00 is in the payments table, the journal and the ledger
        payment = by_key[sale.identity.idempotency_key]
        assert (payment.status, payment.rrn, payment.amount) == (
            PaymentStatus.CAPTURED.value, sale.rrn, sale.amount,
        )  # fmt: skip
        identity = sale.identity
        assert journal[(identity.terminal_id, identity.batch, identity.stan)].payment_id == (
            payment.id
        )
        assert f"pay:{payment.id}:capture" in entries
    for identity in in_flight:  # reversed: whatever the lost request applied is undone
        payment = by_key.get(identity.idempotency_key)
        assert payment is None or payment.status != PaymentStatus.CAPTURED.value
        if payment is not None and payment.status == PaymentStatus.REVERSED.value:
            assert {f"pay:{payment.id}:capture", f"pay:{payment.id}:reverse"} <= entries

    cli = subprocess.run(
        [shoudan_cli(), "ledger", "verify", "--database-url", sqlite_url],
        check=False, capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "ledger OK" in cli.stdout
