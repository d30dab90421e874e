"""Regression tests from the security review of the web console (issue #8): each test pins
one defect that was found and fixed.

- Every form's body is bounded before it is read: no POST (public ones included) parses a
  body over the form limit, nor one without a declared length — before, any POST spooled
  an unbounded multipart body to disk (or an urlencoded one to memory) before the CSRF check.
- The 账户安全 change-password form counts a wrong current password toward the login lockout:
  before, a stolen session could guess the password there without limit.
- Signed-in pages and downloads are never stored by a browser or proxy cache: the same URL
  (``/merchant/statements?period=…``) serves every merchant its own data.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shoudan.audit.models import AuditRecord
from shoudan.auth.domain import Role
from shoudan.core.db import Database
from shoudan.web.context import FORM_MAX_BYTES
from tests.payments_world import World, build_world
from tests.web_world import accounts, csrf, login, staff_login

PHONE = "13900000031"
NEW_PASSWORD = "a new pass 2026"


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    return build_world(database, tmp_path)


@pytest.fixture
def sqlite_world(sqlite_database: Database, tmp_path: Path) -> World:
    return build_world(sqlite_database, tmp_path)


def _other_client(world: World) -> TestClient:
    return TestClient(world.client.app)


# -- bodies are bounded before they are read ---------------------------------------------------
def test_an_oversized_public_form_is_refused_before_it_is_read(sqlite_world: World) -> None:
    client = sqlite_world.client
    token = csrf(client, "/track")
    padded = {"csrf_token": token, "rrn": "123456789012", "last4": "1234", "amount": "1.00",
              "padding": "x" * (FORM_MAX_BYTES + 1)}  # fmt: skip
    answer = client.post("/track", data=padded)
    assert answer.status_code == 413
    assert "x" * 100 not in answer.text
    # a multipart body with a large file, on a form that takes no file: refused unread
    upload = client.post("/merchant/login", data={"csrf_token": token},
                         files={"junk": ("a.bin", b"\0" * (FORM_MAX_BYTES + 1))})  # fmt: skip
    assert upload.status_code == 413
    # no declared length (chunked): the size cannot be checked first, so it is refused
    chunked = client.post(
        "/track", content=iter([f"csrf_token={token}&rrn=123456789012".encode()]),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert chunked.status_code == 413
    # a normal form still works
    normal = client.post("/track", data={k: v for k, v in padded.items() if k != "padding"})
    assert normal.status_code == 404  # "no refund matches": it was read and answered


def test_an_oversized_signed_in_form_changes_nothing(sqlite_world: World) -> None:
    world = sqlite_world
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE)
    other = _other_client(world)
    assert login(other, PHONE, user.password).status_code == 303
    assert login(world.client, PHONE, user.password).status_code == 303
    token = csrf(world.client, "/merchant/security")
    answer = world.client.post("/merchant/security/sign-out-others",
                               data={"csrf_token": token, "padding": "x" * FORM_MAX_BYTES})
    assert answer.status_code == 413
    assert other.get("/merchant", follow_redirects=False).status_code == 200  # still signed in


# -- the change-password form is no password oracle --------------------------------------------
def _change(client: TestClient, token: str, current: str) -> int:
    return client.post("/merchant/security/password", data={
        "csrf_token": token, "current_password": current, "new_password": NEW_PASSWORD,
        "confirm_password": NEW_PASSWORD}).status_code  # fmt: skip


def test_wrong_current_passwords_count_toward_the_lockout(world: World) -> None:
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE)
    assert login(world.client, PHONE, user.password).status_code == 303
    token = csrf(world.client, "/merchant/security")
    for attempt in range(4):
        assert _change(world.client, token, f"guess-number-{attempt}") == 422
    assert _change(world.client, token, "guess-number-5") == 429  # the fifth locks
    with world.container.database.read() as session:
        locked = session.scalars(select(AuditRecord.subject_id)
                                 .where(AuditRecord.action == "web.login.locked")).all()
    assert locked == [user.user_id]
    assert _change(world.client, token, user.password) == 429  # even the right one now
    other = _other_client(world)
    assert login(other, PHONE, user.password).status_code == 429  # the login is locked too
    assert login(other, PHONE, NEW_PASSWORD).status_code == 429
    world.clock.advance(timedelta(minutes=15))
    assert _change(world.client, token, user.password) == 200  # the owner, after the wait
    assert login(other, PHONE, NEW_PASSWORD).status_code == 303


def test_a_right_current_password_clears_the_failure_count(world: World) -> None:
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE)
    assert login(world.client, PHONE, user.password).status_code == 303
    token = csrf(world.client, "/merchant/security")
    for attempt in range(4):
        assert _change(world.client, token, f"guess-number-{attempt}") == 422
    assert _change(world.client, token, user.password) == 200
    assert login(_other_client(world), PHONE, "wrong-password-1").status_code == 401  # not 429


# -- signed-in pages are not cached --------------------------------------------------------------
def _no_store(client: TestClient, path: str) -> bool:
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 200, (path, answer.status_code)
    return "no-store" in answer.headers.get("cache-control", "")


def test_signed_in_pages_and_downloads_are_not_cached(sqlite_world: World) -> None:
    world = sqlite_world
    user = accounts(world).create_merchant_user(world.merchant_a, PHONE)
    assert login(world.client, PHONE, user.password).status_code == 303
    for path in ("/merchant", "/merchant/settlements", "/merchant/payments",
                 "/merchant/statements?period=2026-11&format=csv"):  # fmt: skip
        assert _no_store(world.client, path), path
    staff = _other_client(world)
    staff_login(staff, world, "risk.cache", Role.RISK)
    for path in ("/staff", "/staff/audit", f"/staff/merchants/{world.merchant_a}"):
        assert _no_store(staff, path), path
    # the stylesheet keeps being cached
    assert not _no_store(world.client, "/static/web/web.css")
