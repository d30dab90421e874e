"""Browser tests of the public flows (Playwright driving the machine's Chromium, see
``tests/web_world.py``): an applicant applies and verifies the phone (a wrong code first),
and a merchant resets a forgotten password by SMS code, then logs in with it. Each step is
screenshotted into ``test-artifacts/``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from shoudan.web.service import WebAccounts
from tests.payments_world import World, build_world
from tests.web_world import migrated_sqlite, serve, shot

APPLICANT_PHONE = "13812345678"
MERCHANT_PHONE = "13900000021"
NEW_PASSWORD = "my-new-password-7"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, World]]:
    tmp = tmp_path_factory.mktemp("web_public_flows")
    database = migrated_sqlite(tmp)
    world = build_world(database, tmp)
    try:
        with serve(world.client.app) as base:  # type: ignore[arg-type]
            yield base, world
    finally:
        database.dispose()


def last_code(world: World, phone: str) -> str:
    texts = world.container.sms.list_inbox(phone, limit=1)  # type: ignore[attr-defined]
    match = re.search(r"\d{6}", texts[0].text)
    assert match is not None
    return match.group()


def wrong_code(right: str) -> str:
    return "000000" if right != "000000" else "111111"


def test_applicant_applies_and_verifies_the_phone(page: Any, site: tuple[str, World]) -> None:
    base, world = site
    page.goto(base)
    page.click("a[href='/apply']")
    page.select_option("#merchant_type", "small_business")
    page.fill("#business_name", "张三便利店")
    page.fill("#business_address", "深圳市南山区科技园路 1 号")
    page.fill("#province", "广东")
    page.fill("#city", "深圳")
    page.select_option("#mcc", "5411")
    page.select_option("#product", "smart")
    page.fill("#applicant_name", "张三")
    page.fill("#id_number", "440305199003071235")  # the check digit is wrong
    page.fill("#phone", APPLICANT_PHONE)
    page.fill("#bank_card", "6217000010012345677")
    shot(page, "apply-form")
    page.click("main button[type=submit]")
    assert "校验码" in page.inner_text("#id_number-error")
    assert page.input_value("#business_name") == "张三便利店"  # kept; the ID is not
    assert page.input_value("#id_number") == "" and page.input_value("#bank_card") == ""
    shot(page, "apply-field-error")
    page.fill("#id_number", "440305199003071236")
    page.fill("#bank_card", "6217000010012345677")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/apply/app_[0-9A-Z]+/verify$"))
    assert "138****5678" in page.inner_text("main")
    shot(page, "apply-verify")
    right = last_code(world, APPLICANT_PHONE)
    page.fill("#code", wrong_code(right))
    page.click("main form:first-of-type button[type=submit]")
    assert "还可尝试 4 次" in page.inner_text("#code-error")
    shot(page, "apply-wrong-code")
    page.fill("#code", right)
    page.click("main form:first-of-type button[type=submit]")
    page.wait_for_url(re.compile(r".*/apply/app_[0-9A-Z]+$"))
    assert page.is_visible("#submitted")
    assert page.inner_text("#application-id").startswith("app_")
    shot(page, "apply-submitted")


def test_merchant_resets_a_forgotten_password_and_logs_in(
    page: Any, site: tuple[str, World]
) -> None:
    base, world = site
    c = world.container
    WebAccounts(c.database, c.vault, c.clock).create_merchant_user(world.merchant_a, MERCHANT_PHONE)
    page.goto(f"{base}/merchant/login")
    page.click("a[href='/merchant/forgot-password']")
    page.fill("#phone", MERCHANT_PHONE)
    shot(page, "forgot-phone")
    page.click("main button[type=submit]")
    assert page.is_visible("#message")
    shot(page, "forgot-code-sent")
    code = last_code(world, MERCHANT_PHONE)
    page.fill("#code", wrong_code(code))
    page.fill("#new_password", NEW_PASSWORD)
    page.fill("#confirm_password", NEW_PASSWORD)
    page.click("main form:first-of-type button[type=submit]")
    assert "还可尝试 4 次" in page.inner_text("#code-error")
    shot(page, "forgot-wrong-code")
    page.fill("#code", code)
    page.fill("#new_password", NEW_PASSWORD)
    page.fill("#confirm_password", NEW_PASSWORD)
    page.click("main form:first-of-type button[type=submit]")
    page.wait_for_url(f"{base}/merchant/forgot-password/done")
    assert "密码已修改" in page.inner_text("main")
    shot(page, "forgot-done")
    page.fill("#phone", MERCHANT_PHONE)
    page.fill("#password", NEW_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/merchant")
