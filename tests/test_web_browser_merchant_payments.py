"""Browser test of the merchant's 交易 and 退款 pages (issue #8): a merchant logs in, finds a
payment, partially refunds it with an evidence file written here, and sees the timeline.
Playwright drives the machine's Chromium (see ``tests/web_world.py``); the app runs on its
own SQLite database; screenshots go to ``test-artifacts/``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shoudan.refunds.models import Refund, RefundEvidence
from shoudan.web.service import WebAccounts
from tests.payments_world import World, build_world
from tests.web_world import migrated_sqlite, serve, shot

PHONE = "13900000021"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, World, str, Path]]:
    """The app on a loopback port: merchant A with two sales and a web login."""
    tmp = tmp_path_factory.mktemp("web-payments")
    database = migrated_sqlite(tmp)
    world = build_world(database, tmp)
    world.pay(amount=12_345)
    world.pay(method="wechat", auth_code="134567890123456789", amount=5_000)
    password = WebAccounts(database, world.container.vault, world.clock).create_merchant_user(
        world.merchant_a, PHONE).password
    evidence = tmp / "退货单.pdf"
    evidence.write_bytes(PDF)
    try:
        with serve(world.client.app) as base:  # type: ignore[arg-type]
            yield base, world, password, evidence
    finally:
        database.dispose()


def test_merchant_partially_refunds_with_evidence_and_sees_the_timeline(
    page: Any, site: tuple[str, World, str, Path]
) -> None:
    base, world, password, evidence = site
    page.goto(f"{base}/merchant/login")
    page.fill("#phone", PHONE)
    page.fill("#password", password)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/merchant")
    assert page.locator("#sales-chart svg").count() == 1
    shot(page, "merchant-dashboard-chart")

    page.click("header >> text=交易")
    page.wait_for_url(f"{base}/merchant/payments")
    assert page.locator("#payments tbody tr").count() == 2
    shot(page, "merchant-transactions")
    page.fill("#amount", "123.45")
    page.click("form.filters button[type=submit]")
    assert page.locator("#payments tbody tr").count() == 1
    page.click("#payments tbody a")
    assert page.inner_text("#amount") == "¥123.45"
    shot(page, "merchant-receipt")

    page.click("#refund-link")
    assert page.input_value("#amount") == "123.45"  # prefilled with the refundable rest
    page.fill("#amount", "23.45")
    page.select_option("#reason", "product_return")
    page.fill("#reason_text", "顾客退回一件")
    page.set_input_files("#evidence", str(evidence))
    shot(page, "merchant-refund-form")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/merchant/refunds/rf_*")
    timeline = page.inner_text("#timeline")
    assert "已申请" in timeline and "顾客退回一件" in timeline
    assert "退货单.pdf" in page.inner_text("#evidence-files")
    assert page.inner_text("#arrival")
    shot(page, "merchant-refund-timeline")

    with world.container.database.read() as session:
        refund = session.scalars(select(Refund)).one()
        assert refund.amount == 2_345
        assert session.scalars(select(RefundEvidence.refund_id)).all() == [refund.id]
    page.goto(f"{base}/merchant/refunds")
    assert page.locator("#refunds tbody tr").count() == 1
    shot(page, "merchant-refunds")
