"""Browser test of the staff console views: a risk officer logs in with password and TOTP,
searches, opens a merchant page, the audit log (verifying the chain) and the charts.
Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyotp
import pytest

from shoudan.auth.domain import Role
from tests.payments_world import World, build_world
from tests.web_world import accounts, migrated_sqlite, serve, shot


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, World]]:
    tmp = tmp_path_factory.mktemp("web-staff-views")
    database = migrated_sqlite(tmp)
    world = build_world(database, tmp)
    sale = world.pay(amount=12_345)
    refund = world.client.post("/v1/refunds", headers=world.headers(world.key_a), json={
        "payment_id": sale["id"], "amount": 2_345, "reason": "product_return"})
    assert refund.status_code == 201, refund.text
    world.pay(amount=6_789, terminal_id=world.terminal_a2)
    try:
        with serve(world.client.app) as base:  # type: ignore[arg-type]
            yield base, world
    finally:
        database.dispose()


def test_staff_searches_and_opens_the_merchant_audit_log_and_charts(
    page: Any, site: tuple[str, World]
) -> None:
    base, world = site
    staff = accounts(world).create_staff_user("wang.risk", (Role.RISK,))
    page.goto(f"{base}/staff/login")
    page.fill("#username", "wang.risk")
    page.fill("#password", staff.password)
    page.fill("#totp", pyotp.TOTP(staff.totp_secret).at(world.clock.now()))
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/staff")

    page.goto(f"{base}/staff/search")
    page.fill("#q", "13812341234")  # merchant A's contact phone
    page.click("main button[type=submit]")
    assert "138****1234" in page.inner_text("main")
    assert "13812341234" not in page.content()
    shot(page, "staff-search")

    page.click(f"a[href='/staff/merchants/{world.merchant_a}']")
    page.wait_for_url(f"{base}/staff/merchants/{world.merchant_a}")
    main = page.inner_text("main")
    assert "老王面馆" in main and "¥123.45" in main and "TA000002" in main
    shot(page, "staff-merchant")

    page.click("a[href='/staff/terminals/TA000002']")
    assert "¥67.89" in page.inner_text("main")
    shot(page, "staff-terminal")

    page.goto(f"{base}/staff/audit")
    page.click("#verify")
    page.wait_for_url(f"{base}/staff/audit")
    assert page.get_attribute("#chain-status", "class") == "ok"
    shot(page, "staff-audit")

    page.goto(f"{base}/staff/dashboard")
    assert page.locator("svg.chart").count() == 4
    assert "¥191.34" in page.inner_text("#days")
    shot(page, "staff-dashboard")
