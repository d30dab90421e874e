"""The demo seed: real merchants, terminals and ~500 payments through the payment service;
seeded once; balanced ledger; credentials that work; exportable to a valid beancount file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from shoudan import demo
from shoudan.api.app import create_app
from shoudan.container import Container
from shoudan.core.clock import FixedClock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


def bean_check() -> str:
    found = shutil.which("bean-check") or str(Path(sys.executable).parent / "bean-check")
    if not Path(found).exists():
        pytest.fail("bean-check not found (install the dev extras: beancount)")
    return found


def count(container: Container, table: str) -> int:
    with container.database.read() as session:
        return session.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


@pytest.fixture
def container(database, tmp_path) -> Container:
    settings = Settings(data_dir=tmp_path, secret_key="33" * 32)
    return Container(settings, database, Vault.from_master(b"\x33" * 32), FixedClock(NOW))


def grouped(container: Container, table: str, column: str) -> list[tuple[str, int]]:
    from sqlalchemy import text

    with container.database.read() as session:
        query = f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}"
        return [(str(k), int(n)) for k, n in session.execute(text(query))]


def test_seed_once_with_real_payments_and_working_keys(container: Container, tmp_path) -> None:
    credentials = demo.seed(container)
    assert credentials is not None
    payments = count(container, "payments")
    assert 300 <= payments <= 501  # the day's payments and the banquet
    refunds = {status: n for status, n in grouped(container, "refunds", "status")}
    assert refunds["in_review"] == 1 and refunds["succeeded"] >= 10
    assert count(container, "merchants") == 4  # three shops and the onboarded fruit shop
    assert count(container, "terminals") == 6
    with container.database.read() as session:
        statuses = dict(
            session.execute(text("SELECT status, COUNT(*) FROM payments GROUP BY status")).all()
        )
        days = session.execute(text("SELECT COUNT(DISTINCT business_date) FROM payments")).scalar()
    assert {"captured", "declined", "voided"} <= set(statuses)
    assert days >= 25  # spread over the last 30 days
    assert container.ledger.verify().ok

    # seeding again changes nothing and says so
    assert demo.seed(container) is None
    assert count(container, "payments") == payments

    saved = json.loads((tmp_path / "demo-credentials.json").read_text())
    assert saved == credentials
    client = TestClient(create_app(container=container))
    mine = client.get(
        "/v1/payments", headers={"Authorization": f"Bearer {saved['merchant_api_key']}"}
    )
    assert mine.status_code == 200 and mine.json()["data"]
    assert {p["merchant_id"] for p in mine.json()["data"]} == {saved["merchant_id"]}
    merchants = client.get(
        "/v1/merchants", headers={"Authorization": f"Bearer {saved['admin_api_key']}"}
    )
    assert merchants.status_code == 200 and len(merchants.json()["data"]) == 4


def test_seed_tells_the_back_office_story(container: Container) -> None:
    credentials = demo.seed(container)
    assert credentials is not None
    assert grouped(container, "onboarding_applications", "status") == [
        ("approved", 1), ("in_review", 1)
    ] or sorted(grouped(container, "onboarding_applications", "status")) == [
        ("approved", 1), ("in_review", 1)
    ]
    assert sorted(grouped(container, "devices", "status")) == [("activated", 1), ("in_stock", 1)]
    assert grouped(container, "deposits", "status") == [("charged", 1)]
    # yesterday's settlement paid two shops; the stall's account is the owner's, not the
    # stall's: its payout waits (一清)
    assert sorted(grouped(container, "payouts", "status")) == [("blocked", 1), ("paid", 2)]
    assert grouped(container, "settlement_runs", "status") == [("completed", 1)]
    # yesterday's card statement: exactly the two differences written into it, nothing else
    assert sorted(grouped(container, "reconciliation_exceptions", "exception_class")) == [
        ("amount_mismatch", 1), ("missing_in_ours", 1)
    ]
    assert container.ledger.verify().ok
    client = TestClient(create_app(container=container))
    [(serial, code)] = [
        (s, c) for s, c in credentials["verification_codes"].items() if s == "DEMO-EPOS-0102"
    ]
    checked = client.get(
        "/v1/public/verify-terminal", params={"serial_number": serial, "code": code}
    )
    assert checked.status_code == 200 and checked.json()["genuine"] is True
    admin = {"Authorization": f"Bearer {credentials['admin_api_key']}"}
    deposit = client.get(f"/v1/terminals/{'DEMO-EPOS-0101'}/deposit", headers=admin)
    assert deposit.status_code == 200, deposit.text
    logins = credentials["console_logins"]
    assert set(logins["staff"]) == {"reviewer", "approver", "admin"}
    assert logins["merchant"]["password"] and logins["staff"]["admin"]["totp_secret"]


def test_demo_books_pass_bean_check(container: Container, tmp_path) -> None:
    demo.seed(container)
    out = tmp_path / "demo.beancount"
    with out.open("w", encoding="utf-8") as handle:
        container.ledger.export_beancount(handle)
    checked = subprocess.run(
        [bean_check(), str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
