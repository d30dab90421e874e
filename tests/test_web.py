"""HTTP-level tests of the web console: security headers, CSRF, login lockout, password
policy, session cookies, tenant scoping of the dashboard, language, amounts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shoudan.core.db import Database
from shoudan.web.domain import PasswordProblem, password_problems
from shoudan.web.i18n import format_fen, format_shanghai, parse_yuan
from shoudan.web.models import WebSession
from tests.payments_world import World, build_world
from tests.web_world import accounts, csrf, login

PHONE_A = "13900000001"
PHONE_B = "13900000002"


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    return build_world(database, tmp_path)


def test_amounts_and_times_format_honestly() -> None:
    assert format_fen(123456) == "¥1,234.56"
    assert format_fen(5) == "¥0.05"
    assert format_fen(-100) == "-¥1.00"
    assert format_fen(100_000_000_00) == "¥100,000,000.00"
    with pytest.raises(TypeError):
        format_fen(1.5)  # type: ignore[arg-type]
    assert parse_yuan("1,234.5") == 123450
    assert parse_yuan("0.00") is None and parse_yuan("1.234") is None and parse_yuan("²") is None
    assert format_shanghai(datetime(2026, 11, 23, 16, 30, tzinfo=UTC)) == "2026-11-24 00:30"


def test_password_policy() -> None:
    assert password_problems("short1") == [PasswordProblem.TOO_SHORT]
    assert PasswordProblem.ALL_DIGITS in password_problems("12345678901")
    assert PasswordProblem.TOO_FEW_KINDS in password_problems("abcdefghijkl")
    assert PasswordProblem.CONTAINS_IDENTITY in password_problems(
        "x13900000001y", identities=("13900000001",)
    )
    assert password_problems("correct horse 42") == []


def test_security_headers_on_every_page(world: World) -> None:
    for path in ("/", "/track", "/verify", "/merchant/login", "/merchant/nope",
                 "/static/web/web.css"):
        response = world.client.get(path, follow_redirects=False)
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert "unsafe-inline" not in response.headers["content-security-policy"]
    assert world.client.get("/merchant/nope").status_code == 404


def test_pages_have_no_inline_script_or_style_or_external_asset(world: World) -> None:
    for path in ("/", "/track", "/verify", "/merchant/login"):
        html = world.client.get(path).text
        assert "<script" not in html and "<style" not in html and " style=" not in html
        assert "http://" not in html and "https://" not in html


def test_csrf_missing_or_wrong_is_403_and_changes_nothing(world: World) -> None:
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE_A)
    client = world.client
    csrf(client, "/merchant/login")  # an anonymous binding cookie exists
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post("/merchant/login", data={
            **data, "phone": PHONE_A, "password": user.password}, follow_redirects=False)
        assert response.status_code == 403
    with world.container.database.read() as session:
        assert session.scalar(select(func.count()).select_from(WebSession)) == 0


def test_login_sets_a_safe_session_cookie_and_shows_the_own_dashboard(world: World) -> None:
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE_A)
    world.pay(amount=123_456)
    world.pay(key=world.key_b, terminal_id=world.terminal_b, amount=999)
    response = login(world.client, PHONE_A, user.password)
    assert response.status_code == 303 and response.headers["location"] == "/merchant"
    cookie = next(c for c in response.headers.get_list("set-cookie")
                  if c.startswith("shoudan_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    page = world.client.get("/merchant")
    assert page.status_code == 200
    assert "¥1,234.56" in page.text  # merchant A's sale
    assert "¥9.99" not in page.text  # merchant B's sale stays B's


def test_logout_ends_the_session_and_needs_the_csrf_token(world: World) -> None:
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE_A)
    login(world.client, PHONE_A, user.password)
    token = csrf(world.client, "/merchant")
    refused = world.client.post("/merchant/logout", data={"csrf_token": "forged"},
                                follow_redirects=False)  # fmt: skip
    assert refused.status_code == 403
    assert world.client.get("/merchant", follow_redirects=False).status_code == 200
    out = world.client.post("/merchant/logout", data={"csrf_token": token},
                            follow_redirects=False)  # fmt: skip
    assert out.status_code == 303 and out.headers["location"] == "/merchant/login"
    assert world.client.get("/merchant", follow_redirects=False).status_code == 303


def test_dashboard_needs_a_login(world: World) -> None:
    response = world.client.get("/merchant", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/merchant/login"


def test_lockout_after_five_failures_for_fifteen_minutes(world: World) -> None:
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE_A)
    for _ in range(4):
        assert login(world.client, PHONE_A, "wrong-password-1").status_code == 401
    assert login(world.client, PHONE_A, "wrong-password-1").status_code == 429  # the fifth
    assert login(world.client, PHONE_A, user.password).status_code == 429  # even the right one
    world.clock.advance(timedelta(minutes=14, seconds=59))
    assert login(world.client, PHONE_A, user.password).status_code == 429
    world.clock.advance(timedelta(seconds=1))
    assert login(world.client, PHONE_A, user.password).status_code == 303


def test_unknown_phone_gets_the_same_answer_as_a_wrong_password(world: World) -> None:
    accounts(world).create_merchant_user(world.merchant_a, PHONE_A)
    unknown = login(world.client, PHONE_B, "whatever-123")
    wrong = login(world.client, PHONE_A, "whatever-123")
    assert unknown.status_code == wrong.status_code == 401
    assert PHONE_B in unknown.text  # the typed phone is kept; the password never is
    assert "whatever-123" not in unknown.text


def test_change_password_policy_and_sign_out_others(world: World) -> None:
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE_A)
    other = TestClient(world.client.app)
    assert login(other, PHONE_A, user.password).status_code == 303
    assert login(world.client, PHONE_A, user.password).status_code == 303
    token = csrf(world.client, "/merchant/security")
    weak = world.client.post("/merchant/security/password", data={
        "csrf_token": token, "current_password": user.password,
        "new_password": "1234567890123", "confirm_password": "1234567890123"})
    assert weak.status_code == 422 and "不能全是数字" in weak.text
    assert other.get("/merchant", follow_redirects=False).status_code == 200
    done = world.client.post("/merchant/security/password", data={
        "csrf_token": token, "current_password": user.password,
        "new_password": "a new pass 2026", "confirm_password": "a new pass 2026"})
    assert done.status_code == 200
    assert other.get("/merchant", follow_redirects=False).status_code == 303  # signed out
    assert world.client.get("/merchant").status_code == 200


def test_language_switch_sets_a_cookie(world: World) -> None:
    assert "退款查询" in world.client.get("/track").text
    english = world.client.get("/track?lang=en")
    assert "Track a refund" in english.text and 'lang="en"' in english.text
    assert "shoudan_lang=en" in english.headers["set-cookie"]
    assert "Track a refund" in world.client.get("/").text  # the cookie keeps it
    errors = world.client.post("/track", data={
        "csrf_token": csrf(world.client, "/track"), "rrn": "12", "last4": "1", "amount": "x"})
    assert errors.status_code == 422 and "12-digit reference number" in errors.text
    assert 'value="12"' in errors.text  # what was typed is kept


def test_track_unknown_refund_is_the_uniform_not_found(world: World) -> None:
    response = world.client.post("/track", data={
        "csrf_token": csrf(world.client, "/track"), "rrn": "123456789012", "last4": "0018",
        "amount": "100.00"})
    assert response.status_code == 404 and "没有与这些信息匹配的退款" in response.text


def test_verify_unknown_terminal_says_not_genuine_only(world: World) -> None:
    response = world.client.post("/verify", data={
        "csrf_token": csrf(world.client, "/verify"), "serial_number": "NOPE-1",
        "code": "ABCD-EFGH"})
    assert response.status_code == 200 and "非正品" in response.text


def test_every_message_has_a_chinese_translation() -> None:
    from babel.messages.pofile import read_po

    from shoudan.web.i18n import catalog_files

    root = Path(__file__).parents[1] / "src" / "shoudan" / "web"
    translated: dict[str, str] = {}
    owners: dict[str, list[str]] = {}
    for path in catalog_files("zh_CN"):
        with path.open("rb") as po:
            for message in read_po(po):
                if message.id:
                    translated[str(message.id)] = str(message.string)
                    owners.setdefault(str(message.id), []).append(path.name)
    used = set()
    for f in [*root.glob("templates/**/*.html"), *root.glob("**/*.py")]:
        used |= set(re.findall(r'_\(\s*"([^"]+)"\s*\)', f.read_text()))
    missing = sorted(m for m in used if not translated.get(m))
    assert not missing
    # one message, one home: the same id in two area catalogs would shadow one of them
    assert {m: files for m, files in owners.items() if len(files) > 1} == {}


def test_staff_login_needs_password_and_a_fresh_totp_code(world: World) -> None:
    import pyotp

    from shoudan.auth.domain import Role

    staff = accounts(world).create_staff_user("rev.li", (Role.REVIEWER,))
    code = pyotp.TOTP(staff.totp_secret).at(world.clock.now())

    def attempt(client: TestClient, totp: str):  # type: ignore[no-untyped-def]
        token = csrf(client, "/staff/login")
        return client.post("/staff/login", data={
            "csrf_token": token, "username": "rev.li", "password": staff.password,
            "totp": totp}, follow_redirects=False)

    assert attempt(world.client, "000000" if code != "000000" else "111111").status_code == 401
    assert attempt(world.client, code).status_code == 303
    home = world.client.get("/staff")
    assert home.status_code == 200 and 'id="q-refunds">0<' in home.text
    assert attempt(TestClient(world.client.app), code).status_code == 401  # a code is used once
    assert TestClient(world.client.app).get("/staff", follow_redirects=False).status_code == 303


def test_bar_chart_draws_each_point_to_scale_and_escapes_labels() -> None:
    from shoudan.web.charts import Point, bar_chart

    svg = str(bar_chart("Sales <30 days>", [Point("11-01", 100), Point("<b>", 50),
                                             Point("11-03", 0)], show=format_fen))
    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]* height="([0-9.]+)"', svg)]
    assert heights[0] == 2 * heights[1] and heights[2] == 0 and len(heights) == 3
    assert "<b>" not in svg and "&lt;b&gt;: ¥0.50" in svg and "Sales &lt;30 days&gt;" in svg
    assert "style=" not in svg  # the CSP forbids inline styles
    assert "<rect" not in str(bar_chart("empty", []))


def test_the_language_switch_keeps_the_page_and_its_query(world: World) -> None:
    page = world.client.get("/track?status=x&lang=zh_CN")
    assert 'href="/track?status=x&amp;lang=en"' in page.text
    english = world.client.get("/track?status=x&lang=en")
    assert 'href="/track?status=x&amp;lang=zh_CN"' in english.text
