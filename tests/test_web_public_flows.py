"""HTTP-level tests of the public flows: apply for a terminal (application → SMS code →
result) and the merchant's 忘记密码 (SMS code → new password). Both run on SQLite and
PostgreSQL; pages are read in English (``?lang=en``) so that assertions read plainly."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shoudan.api.ratelimit import RateLimiter
from shoudan.audit.models import AuditRecord
from shoudan.core.crypto import mask_phone
from shoudan.core.db import Database
from shoudan.onboarding.models import Application, PhoneCode
from shoudan.sms.models import SmsMessage
from shoudan.web.models import MerchantUser, PasswordResetCode, WebSession
from shoudan.web.public_flows import APPLY_COOKIE
from tests.payments_world import World, build_world
from tests.web_world import accounts, csrf, login

APPLICANT_PHONE = "13812345678"
ID_NUMBER = "440305199003071236"  # well formed (Shenzhen Nanshan, 1990-03-07)
CARD = "6217000010012345677"  # CCB, passes Luhn
MERCHANT_PHONE = "13900000011"
UNKNOWN_PHONE = "13900000099"
NEW_PASSWORD = "a-new-secret-42"
FORGOT = "/merchant/forgot-password"


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    return build_world(database, tmp_path)


def english(world: World) -> TestClient:
    world.client.get("/?lang=en")
    return world.client


def count(world: World, model: Any, *where: Any) -> int:
    with world.container.database.read() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def last_code(world: World, phone: str) -> str:
    texts = world.container.sms.list_inbox(phone, limit=1)  # type: ignore[attr-defined]
    match = re.search(r"\d{6}", texts[0].text)
    assert match is not None
    return match.group()


def application_form(token: str, **overrides: str) -> dict[str, str]:
    form = {
        "csrf_token": token, "merchant_type": "small_business", "business_name": "张三便利店",
        "business_address": "深圳市南山区科技园路 1 号", "province": "广东", "city": "深圳",
        "mcc": "5411", "credit_code": "", "product": "smart", "applicant_name": "张三",
        "id_number": ID_NUMBER, "phone": APPLICANT_PHONE, "bank_card": CARD, "bank_name": "",
    }  # fmt: skip
    form.update(overrides)
    return form


def field_error(html: str, field: str) -> str:
    match = re.search(rf'id="{field}-error">([^<]*)<', html)
    assert match, html
    return match.group(1)


def apply(client: TestClient, **overrides: str) -> str:
    """Submit a good application; the verify page's URL."""
    answer = client.post("/apply", data=application_form(csrf(client, "/apply"), **overrides),
                         follow_redirects=False)  # fmt: skip
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"])


# -- apply ------------------------------------------------------------------------------------
def test_apply_with_field_errors_then_verify_the_phone(world: World) -> None:
    client = english(world)
    page = client.get("/apply")
    assert page.status_code == 200 and "<script" not in page.text and " style=" not in page.text
    assert 'value="None"' not in page.text and 'value="None"' not in client.get(FORGOT).text
    token = csrf(client, "/apply")
    # no CSRF token: 403, nothing stored, nothing texted
    assert client.post("/apply", data=application_form("")).status_code == 403
    # a wrong check digit: the field says which check failed; typed values kept, secrets not
    bad_id = ID_NUMBER[:-1] + "5"
    answer = client.post("/apply", data=application_form(token, id_number=bad_id))
    assert answer.status_code == 422
    assert "check digit" in field_error(answer.text, "id_number")
    assert "张三便利店" in answer.text and APPLICANT_PHONE in answer.text
    assert bad_id not in answer.text and CARD not in answer.text
    assert 'id="bank_card-cleared"' in answer.text  # the page says the card was not kept
    answer = client.post("/apply", data=application_form(token, merchant_type="enterprise"))
    assert answer.status_code == 422
    assert field_error(answer.text, "credit_code") == "Required for an enterprise."
    answer = client.post("/apply", data=application_form(token, business_name=""))
    assert answer.status_code == 422 and field_error(answer.text, "business_name") == "Required."
    assert count(world, Application) == 0 and count(world, SmsMessage) == 0
    # a good application: the token goes to an HttpOnly cookie limited to /apply, not the URL
    answer = client.post("/apply", data=application_form(token), follow_redirects=False)
    assert answer.status_code == 303
    verify_url = answer.headers["location"]
    app_id = verify_url.split("/")[2]
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{APPLY_COOKIE}=apt_") and "HttpOnly" in cookie
    assert "Path=/apply" in cookie and "apt_" not in verify_url
    page = client.get(verify_url)
    assert page.status_code == 200 and "138****5678" in page.text
    assert "apt_" not in page.text
    # a wrong code: field error with the attempts left; a typo costs no attempt
    token = csrf(client, verify_url)
    right = last_code(world, APPLICANT_PHONE)
    wrong = "000000" if right != "000000" else "111111"
    answer = client.post(verify_url, data={"csrf_token": token, "code": wrong})
    assert answer.status_code == 422
    assert field_error(answer.text, "code") == "The code is not right: 4 attempts left."
    answer = client.post(verify_url, data={"csrf_token": token, "code": "12ab"})
    assert answer.status_code == 422 and "6 digits" in field_error(answer.text, "code")
    with world.container.database.read() as session:
        assert session.scalars(select(PhoneCode.attempts)).one() == 1
    # another browser (no cookie, or another application's token) sees nothing
    stranger = TestClient(client.app)
    assert stranger.get(f"/apply/{app_id}").status_code == 404
    stranger.cookies.set(APPLY_COOKIE, "apt_forged", path="/apply")
    assert stranger.get(verify_url).status_code == 404
    # the right code: the application is submitted for review
    answer = client.post(verify_url, data={"csrf_token": token, "code": right},
                         follow_redirects=False)  # fmt: skip
    assert answer.status_code == 303 and answer.headers["location"] == f"/apply/{app_id}"
    result = client.get(f"/apply/{app_id}")
    assert result.status_code == 200 and 'id="submitted"' in result.text
    assert app_id in result.text and "Waiting for review" in result.text
    assert ID_NUMBER not in result.text and CARD not in result.text
    with world.container.database.read() as session:
        assert session.get(Application, app_id).status == "in_review"  # type: ignore[union-attr]
    assert client.get(verify_url, follow_redirects=False).status_code == 303
    # the language links of pages answered to a POST lead back to a form, not a 405
    assert client.get(f"/apply/{app_id}/send-code?lang=zh_CN").status_code == 200
    assert client.get(f"{FORGOT}/reset?lang=en").status_code == 200


def test_apply_code_resend_expiry_attempts_and_rate_limit(world: World) -> None:
    client = english(world)
    verify_url = apply(client)
    app_id = verify_url.split("/")[2]
    resend_url = f"/apply/{app_id}/send-code"
    token = csrf(client, verify_url)
    # resend within 60 s: refused with the wait; after 60 s a new code replaces the old one
    world.clock.advance(timedelta(seconds=20))
    answer = client.post(resend_url, data={"csrf_token": token})
    assert answer.status_code == 429 and "can be sent in 40 s" in answer.text
    assert client.post(resend_url, data={}).status_code == 403
    first = last_code(world, APPLICANT_PHONE)
    world.clock.advance(timedelta(seconds=40))
    answer = client.post(resend_url, data={"csrf_token": token})
    assert answer.status_code == 200 and "A new code was sent." in answer.text
    assert count(world, PhoneCode) == 2
    # five minutes later the code has expired
    world.clock.advance(timedelta(minutes=5))
    answer = client.post(verify_url, data={"csrf_token": token, "code": first})
    assert field_error(answer.text, "code") == "The code has expired: send a new one."
    # a fresh code tried five times wrong is dead, even with the right digits
    client.post(resend_url, data={"csrf_token": token})
    right = last_code(world, APPLICANT_PHONE)
    wrong = "000000" if right != "000000" else "111111"
    for left in (4, 3, 2, 1, 0):
        answer = client.post(verify_url, data={"csrf_token": token, "code": wrong})
        assert field_error(answer.text, "code") == f"The code is not right: {left} attempts left."
    answer = client.post(verify_url, data={"csrf_token": token, "code": right})
    assert answer.status_code == 422 and "too many times" in field_error(answer.text, "code")
    # the public rate limit, per client address, as on /v1/applications
    client.app.state.public_limiter = RateLimiter(1)  # type: ignore[attr-defined]
    assert client.post(verify_url, data={"csrf_token": token, "code": right}).status_code == 422
    answer = client.post(verify_url, data={"csrf_token": token, "code": right})
    assert answer.status_code == 429 and "Too many queries" in answer.text
    with world.container.database.read() as session:
        assert session.get(Application, app_id).status == "phone_pending"  # type: ignore[union-attr]


# -- 忘记密码 -----------------------------------------------------------------------------------
def ask_code(client: TestClient, phone: str) -> Any:
    return client.post(FORGOT, data={"csrf_token": csrf(client, FORGOT), "phone": phone})


def reset(client: TestClient, phone: str, code: str, password: str = NEW_PASSWORD,
          confirm: str | None = None) -> Any:  # fmt: skip
    return client.post(f"{FORGOT}/reset", data={
        "csrf_token": csrf(client, FORGOT), "phone": phone, "code": code,
        "new_password": password, "confirm_password": password if confirm is None else confirm,
    }, follow_redirects=False)  # fmt: skip


def test_forgot_password_end_to_end(world: World) -> None:
    old_password = accounts(world).create_merchant_user(world.merchant_a, MERCHANT_PHONE).password
    elsewhere = TestClient(world.client.app)
    assert login(elsewhere, MERCHANT_PHONE, old_password).status_code == 303
    for _ in range(5):  # lock the account: a reset lifts the lockout
        login(world.client, MERCHANT_PHONE, "wrong password 1")
    client = english(world)
    assert "/merchant/forgot-password" in client.get("/merchant/login").text
    # CSRF first; a malformed phone is a field error
    answer = client.post(FORGOT, data={"phone": MERCHANT_PHONE})
    assert answer.status_code == 403 and count(world, PasswordResetCode) == 0
    answer = ask_code(client, "12345")
    assert answer.status_code == 422 and "11 digits" in field_error(answer.text, "phone")
    answer = ask_code(client, MERCHANT_PHONE)
    assert answer.status_code == 200 and "If this phone number has a merchant login" in answer.text
    code = last_code(world, MERCHANT_PHONE)
    # form problems, a wrong code (counted), a weak password (the code stays usable)
    answer = reset(client, MERCHANT_PHONE, code, confirm="something else 1")
    assert answer.status_code == 422 and field_error(answer.text, "confirm_password")
    wrong = "000000" if code != "000000" else "111111"
    answer = reset(client, MERCHANT_PHONE, wrong)
    assert field_error(answer.text, "code") == "The code is not right: 4 attempts left."
    answer = reset(client, MERCHANT_PHONE, code, password="short1")
    assert answer.status_code == 422
    assert field_error(answer.text, "new_password") == "At least 10 characters."
    answer = reset(client, MERCHANT_PHONE, code, password=old_password)
    assert "differ from the current" in field_error(answer.text, "new_password")
    assert client.post(f"{FORGOT}/reset", data={"phone": MERCHANT_PHONE, "code": code,
                       "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
                       ).status_code == 403  # fmt: skip
    # the right code and a good password: changed, everyone signed out, back to the login
    answer = reset(client, MERCHANT_PHONE, code)
    assert answer.status_code == 303 and answer.headers["location"] == f"{FORGOT}/done"
    done = client.get(f"{FORGOT}/done")
    assert "Your password was changed" in done.text and 'action="/merchant/login"' in done.text
    assert elsewhere.get("/merchant", follow_redirects=False).status_code == 303  # revoked
    with world.container.database.read() as session:
        user = session.scalars(select(MerchantUser)).one()
        assert user.failed_count == 0 and user.locked_until is None
        assert session.scalars(select(WebSession.revoked_at)).all() != [None]
        audit = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "web.password_reset")
        ).one()
        assert audit.actor == f"merchant:{user.id}" and '"lockout_cleared":true' in (
            audit.after or ""
        )
    assert reset(client, MERCHANT_PHONE, code).status_code == 422  # a used code is dead
    assert login(client, MERCHANT_PHONE, old_password).status_code == 401
    assert login(client, MERCHANT_PHONE, NEW_PASSWORD).status_code == 303


def test_forgot_password_tells_nobody_which_phones_have_an_account(world: World) -> None:
    accounts(world).create_merchant_user(world.merchant_a, MERCHANT_PHONE)
    client = english(world)

    def same(page: Any, phone: str) -> tuple[int, str]:
        return page.status_code, page.text.replace(phone, "P").replace(mask_phone(phone), "M")

    # asking for a code: same status and page; only a real account gets a text
    known, unknown = ask_code(client, MERCHANT_PHONE), ask_code(client, UNKNOWN_PHONE)
    assert same(known, MERCHANT_PHONE) == same(unknown, UNKNOWN_PHONE)
    assert known.status_code == 200
    assert count(world, SmsMessage) == 1 and count(world, PasswordResetCode) == 2
    # the 60 s rule applies to both alike
    known, unknown = ask_code(client, MERCHANT_PHONE), ask_code(client, UNKNOWN_PHONE)
    assert same(known, MERCHANT_PHONE) == same(unknown, UNKNOWN_PHONE)
    assert known.status_code == 429 and "can be sent in 60 s" in known.text
    # any code for a phone without a login is a wrong code, attempts counted the same
    known, unknown = reset(client, MERCHANT_PHONE, "000001"), reset(client, UNKNOWN_PHONE, "000001")
    if last_code(world, MERCHANT_PHONE) != "000001":
        assert same(known, MERCHANT_PHONE) == same(unknown, UNKNOWN_PHONE)
        assert "4 attempts left" in known.text
    # expiry after five minutes, for both
    world.clock.advance(timedelta(minutes=5))
    code = last_code(world, MERCHANT_PHONE)
    known, unknown = reset(client, MERCHANT_PHONE, code), reset(client, UNKNOWN_PHONE, code)
    assert same(known, MERCHANT_PHONE) == same(unknown, UNKNOWN_PHONE)
    assert field_error(known.text, "code") == "The code has expired: send a new one."
    # five wrong attempts wear a code out, the right one included
    assert ask_code(client, MERCHANT_PHONE).status_code == 200
    code = last_code(world, MERCHANT_PHONE)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        reset(client, MERCHANT_PHONE, wrong)
    answer = reset(client, MERCHANT_PHONE, code)
    assert "too many times" in field_error(answer.text, "code")
    # a phone never texted: the same refusal as a wrong code (no code to try)
    assert reset(client, "13900000077", "123456").status_code == 422
    # the public rate limit per client address
    client.app.state.public_limiter = RateLimiter(1)  # type: ignore[attr-defined]
    ask_code(client, "13900000066")
    assert ask_code(client, "13900000055").status_code == 429
    assert count(world, PasswordResetCode, PasswordResetCode.user_id.is_(None)) == 2


def test_forgot_password_codes_share_the_address_daily_budget(
    sqlite_database: Database, tmp_path: Path
) -> None:
    """Unknown phones count too: the budget is the visitor's, not the accounts'."""
    world = build_world(sqlite_database, tmp_path)
    client = english(world)
    for n in range(20):
        assert ask_code(client, f"1380013{n:04d}").status_code == 200
    answer = ask_code(client, "13900139000")
    assert answer.status_code == 429
    assert "Too many codes from this network today" in answer.text
    assert count(world, PasswordResetCode) == 20
