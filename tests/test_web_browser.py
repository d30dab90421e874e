"""Browser tests of the web console's public pages and merchant login: Playwright driving
the machine's Chromium (see ``tests/web_world.py``). The app runs on its own SQLite database
in a thread; screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shoudan.web.service import WebAccounts
from tests.payments_world import World, build_world
from tests.web_world import migrated_sqlite, serve, shot

PHONE = "13900000009"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, World, str]]:
    """The app on a loopback port: a world with a sale and a refund, and a merchant login."""
    tmp = tmp_path_factory.mktemp("web")
    database = migrated_sqlite(tmp)
    world = build_world(database, tmp)
    sale = world.pay(amount=12_345)
    refund = world.client.post("/v1/refunds", headers=world.headers(world.key_a), json={
        "payment_id": sale["id"], "amount": 2_345, "reason": "customer_request"})
    assert refund.status_code == 201, refund.text
    password = WebAccounts(database, world.container.vault, world.clock).create_merchant_user(
        world.merchant_a, PHONE).password
    try:
        with serve(world.client.app) as base:  # type: ignore[arg-type]
            yield base, world, password
    finally:
        database.dispose()


def test_consumer_tracks_a_refund(page: Any, site: tuple[str, World, str]) -> None:
    base, world, _ = site
    with world.container.database.read() as session:
        from shoudan.payments.models import Payment

        payment = session.query(Payment).filter_by(amount=12_345).one()
        rrn, last4 = payment.rrn, payment.card_last4
    page.goto(f"{base}/track")
    page.fill("#rrn", rrn)
    page.fill("#last4", last4)
    page.fill("#amount", "123.45")
    page.click("button[type=submit]")
    assert "¥23.45" in page.inner_text("main")
    shot(page, "track")


def test_someone_verifies_a_terminal(page: Any, site: tuple[str, World, str]) -> None:
    base, _, _ = site
    page.goto(f"{base}/verify")
    page.fill("#serial_number", "SN-A-0001")
    page.fill("#code", "WRONG-CODE")
    page.click("button[type=submit]")
    assert "非正品" in page.inner_text("main")
    shot(page, "verify")


def test_merchant_logs_in_and_sees_its_dashboard(page: Any, site: tuple[str, World, str]) -> None:
    base, _, password = site
    page.goto(f"{base}/merchant/login")
    page.fill("#phone", PHONE)
    page.fill("#password", password)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/merchant")
    assert page.inner_text("#sales-amount") == "¥123.45"
    shot(page, "dashboard")
    page.goto(f"{base}/merchant/security")
    shot(page, "security")


def test_english_switch(page: Any, site: tuple[str, World, str]) -> None:
    base, _, _ = site
    page.goto(f"{base}/")
    shot(page, "landing-zh")
    page.click("text=English")
    assert "Track a refund" in page.inner_text("main")
    page.goto(f"{base}/track")
    assert page.locator("h1").inner_text() == "Track a refund"
    shot(page, "track-en")
