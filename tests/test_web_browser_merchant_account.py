"""Browser tests of the merchant platform's 我的设备 / 退押金, 结算 and 开发者 pages: Playwright
driving the machine's Chromium (see ``tests/web_world.py``). A merchant asks for its terminal
deposit back with a wrong ID number (the error shows under the ID field), then the right one
(the request is created and its progress shown). Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

import pytest
from sqlalchemy import select

from shoudan.core.clock import SHANGHAI
from shoudan.core.db import Database
from shoudan.deposits.models import DepositRefundRequest
from shoudan.web.service import WebAccounts
from tests.settlement_world import build_settlement_world
from tests.test_deposits import CARD, ID_NUMBER, Onboarded, onboard, paid_deposit
from tests.web_world import migrated_sqlite, serve, shot

Site = tuple[str, Onboarded, str, Database]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """An onboarded merchant with an activated terminal, its deposit paid, a card sale settled
    and paid out, and a web login."""
    tmp = tmp_path_factory.mktemp("web-account")
    database = migrated_sqlite(tmp)
    sw = build_settlement_world(database, tmp)
    merchant = onboard(sw.rw)
    paid_deposit(sw.rw, merchant)
    sw.pay(datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI), 52_800, key=merchant.key,
           terminal_id=merchant.terminal_id)  # fmt: skip
    sw.settle(date(2026, 11, 24))
    container = sw.world.container
    password = WebAccounts(database, container.vault, container.clock).create_merchant_user(
        merchant.merchant_id, merchant.phone
    ).password
    try:
        with serve(sw.world.client.app) as base:  # type: ignore[arg-type]
            yield base, merchant, password, database
    finally:
        database.dispose()


def sign_in(page: Any, site: Site) -> str:
    base, merchant, password, _ = site
    page.goto(f"{base}/merchant/login")
    page.fill("#phone", merchant.phone)
    page.fill("#password", password)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/merchant")
    return base


def test_merchant_asks_for_the_deposit_with_a_wrong_then_the_right_id(
    page: Any, site: Site
) -> None:
    base = sign_in(page, site)
    merchant, database = site[1], site[3]
    page.goto(f"{base}/merchant/terminals")
    assert merchant.serial in page.inner_text("#terminals")
    assert "¥299.00" in page.inner_text("#terminals")
    shot(page, "account-terminals")
    page.click(f"text={merchant.serial}")
    assert page.inner_text("#deposit-status") == "已缴纳"
    shot(page, "account-terminal")
    page.click("main >> text=申请退押金")
    assert page.input_value("#serial_number") == merchant.serial
    page.fill("#phone", merchant.phone)
    page.fill("#id_number", "110105194912310021")
    page.fill("#bank_card_last4", CARD[-4:])
    page.fill("#reason", "不再经营")
    page.click("main button[type=submit]")
    assert "身份证号与进件资料不符" in page.inner_text("#id_number-error")
    assert page.input_value("#id_number") == ""  # never sent back
    assert page.input_value("#phone") == merchant.phone
    assert page.input_value("#reason") == "不再经营"
    shot(page, "account-deposit-refund-error")
    page.fill("#id_number", ID_NUMBER)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/merchant/deposit-refunds/dr_*")
    assert page.inner_text("#request-status") == "审核中"
    assert "申请已提交" in page.inner_text("#progress")
    shot(page, "account-deposit-refund-progress")
    with database.read() as session:
        [request] = session.scalars(select(DepositRefundRequest)).all()
    assert page.url.endswith(request.id) and request.status == "in_review"


def test_merchant_sees_settlements_and_manages_developer_settings(
    page: Any, site: Site
) -> None:
    base = sign_in(page, site)
    page.goto(f"{base}/merchant/settlements")
    assert "2026-11-24" in page.inner_text("#settlements")
    assert "¥528.00" in page.inner_text("#summary")
    shot(page, "account-settlements")
    page.goto(f"{base}/merchant/developers")
    page.fill("#name", "收银系统")
    page.click("text=创建 API 密钥")
    assert page.inner_text("#new-key code").startswith("sk_m_")
    page.fill("#url", "https://shop.example.com/hooks")
    page.fill("#event_types", "refund.*, deposit.*")
    page.click("text=添加推送地址")
    assert page.inner_text("#new-secret code").startswith("whsec_")
    assert "shop.example.com" in page.inner_text("#endpoints")
    shot(page, "account-developers")
    page.click("#endpoints a")
    assert page.inner_text("#endpoint-status") == "有效"
    shot(page, "account-endpoint")
