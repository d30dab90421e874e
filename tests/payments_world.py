"""A small acquirer for payment tests: two merchants, their terminals, API keys, the sandbox
network, a fixed clock, and an HTTP client on the real app. The ledger is verified when the
test ends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from shoudan.api.app import create_app
from shoudan.auth.domain import Role
from shoudan.auth.service import create_api_key
from shoudan.bootstrap import bootstrap
from shoudan.channels.sandbox import SandboxChannel
from shoudan.container import Container
from shoudan.core.clock import FixedClock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.merchants.service import MerchantInput, create_merchant
from shoudan.terminals.service import TerminalInput, create_terminal

# 2026-11-23 10:00 in Shanghai
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
DEBIT = "6222020000000000018"
CREDIT = "6258070000000017"
PIN = "123456"


@dataclass
class World:
    container: Container
    clock: FixedClock
    client: TestClient
    merchant_a: str
    merchant_b: str
    terminal_a: str  # epos
    terminal_a2: str  # traditional
    terminal_b: str
    admin_key: str
    key_a: str
    key_b: str

    def headers(self, key: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", **extra}

    def pay(self, key: str | None = None, **body: object) -> dict:
        payload = {"terminal_id": self.terminal_a, "amount": 10_000, "method": "card"}
        if "card" not in body and body.get("method", "card") == "card":
            payload["card"] = {"pan": DEBIT, "expiry": "2912", "pin": PIN, "entry_mode": "chip"}
        payload.update(body)
        response = self.client.post(
            "/v1/payments", json=payload, headers=self.headers(key or self.key_a)
        )
        assert response.status_code == 201, response.text
        return response.json()


def build_world(database: Database, tmp_path: Path) -> World:
    clock = FixedClock(NOW)
    settings = Settings(data_dir=tmp_path, secret_key="11" * 32)
    channel = SandboxChannel(latency_seconds=0.0, timeout_seconds=0.01, clock=clock)
    container = Container(settings, database, Vault.from_master(b"\x11" * 32), clock, channel)
    bootstrap(database)
    with database.transaction() as session:

        def merchant(name: str, kind: str, mcc: str, phone: str) -> str:
            data = MerchantInput(name, kind, mcc, "3100", phone)
            view = create_merchant(
                session, container.vault, container.ledger, data, actor="test", clock=clock
            )
            return view.merchant_id

        def terminal(serial: str, terminal_id: str, product: str, owner: str) -> str:
            data = TerminalInput(serial, terminal_id, product, owner, None)
            view, _key = create_terminal(session, container.vault, data, actor="test", clock=clock)
            return view.terminal_id

        a = merchant("老王面馆", "individual", "5812", "13812341234")
        b = merchant("便利小店", "small_business", "5411", "13912345678")
        ta = terminal("SN-A-0001", "TA000001", "epos", a)
        ta2 = terminal("SN-A-0002", "TA000002", "traditional", a)
        tb = terminal("SN-B-0001", "TB000001", "smart", b)
        admin = create_api_key(session, role=Role.ADMIN, name="test admin")[1]
        key_a = create_api_key(session, role=Role.MERCHANT, merchant_id=a, name="a")[1]
        key_b = create_api_key(session, role=Role.MERCHANT, merchant_id=b, name="b")[1]
    client = TestClient(create_app(container=container), raise_server_exceptions=False)
    return World(container, clock, client, a, b, ta, ta2, tb, admin, key_a, key_b)


def check_day_totals(world: World) -> None:
    """The running day totals equal what the payments themselves say (an invariant)."""
    from collections import Counter

    from sqlalchemy import select

    from shoudan.payments.models import Payment, PaymentDayTotal
    from shoudan.payments.service import counted_amount

    expected: Counter[tuple[str, str, str]] = Counter()
    with world.container.database.read() as session:
        for payment in session.scalars(select(Payment)):
            amount = counted_amount(payment)
            expected[(payment.business_date, "merchant", payment.merchant_id)] += amount
            if payment.card_token:
                expected[(payment.business_date, "card", payment.card_token)] += amount
        stored = {
            (row.business_date, row.scope, row.scope_key): row.amount
            for row in session.scalars(select(PaymentDayTotal))
        }
    assert {k: v for k, v in stored.items() if v} == {k: v for k, v in expected.items() if v}
