"""Rules that hold for EVERY page of the web console, checked by walking the app's routes
(so a page added later is covered without anyone remembering to add it here):

- signed out, every merchant and staff page sends the visitor to its login page;
- every POST without a CSRF token is refused with 403 before anything runs;
- a signed-in merchant opening an id that is not theirs gets 404, never 500 or someone
  else's data; a merchant's session cannot open staff pages, nor staff a merchant's;
- every page answers with the security headers.

Per-area tests check the finer cases (merchant B opening merchant A's real object).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from shoudan.core.db import Database
from shoudan.web.security import WEB_PREFIXES
from tests.payments_world import World, build_world
from tests.web_world import accounts, login, staff_login

# pages anyone may open (logins, password reset, public flows)
PUBLIC = re.compile(
    r"^/(|track|verify|apply.*|merchant/login|merchant/forgot-password.*|staff/login)$"
)
PARAM = re.compile(r"\{[^}]+\}")
FOREIGN_ID = "zz_not_yours_0000000000"


def _all_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every route, through included routers (FastAPI keeps those as lazy wrappers; the web
    routers have no include prefix, so a route's own path is its full path)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _all_routes(route.original_router.routes)


def _web_routes(client: TestClient, method: str) -> list[str]:
    paths = [
        route.path for route in _all_routes(client.app.routes)  # type: ignore[attr-defined]
        if method in route.methods and (route.path == "/" or route.path.startswith(WEB_PREFIXES))
    ]  # fmt: skip
    assert paths, "no web routes found"
    return sorted(set(paths))


def _concrete(path: str) -> str:
    return PARAM.sub(FOREIGN_ID, path)


@pytest.fixture
def world(sqlite_database: Database, tmp_path: Path) -> World:
    return build_world(sqlite_database, tmp_path)


def test_signed_out_visitors_are_sent_to_the_login_page(world: World) -> None:
    private = [p for p in _web_routes(world.client, "GET") if not PUBLIC.match(p)]
    assert any(p.startswith("/merchant") for p in private)
    for path in private:
        answer = world.client.get(_concrete(path), follow_redirects=False)
        login_page = "/staff/login" if path.startswith("/staff") else "/merchant/login"
        assert (answer.status_code, answer.headers.get("location")) == (303, login_page), path


def test_every_post_without_a_csrf_token_is_refused(world: World) -> None:
    from shoudan.auth.domain import Role

    posts = _web_routes(world.client, "POST")
    assert "/merchant/login" in posts
    password = accounts(world).create_merchant_user(world.merchant_a, "13900000001").password
    assert login(world.client, "13900000001", password).status_code == 303
    staff = TestClient(world.client.app)
    staff_login(staff, world, "admin.csrf", Role.ADMIN)
    for path in posts:
        client = staff if path.startswith("/staff") else world.client
        answer = client.post(_concrete(path), data={"anything": "1"}, follow_redirects=False)
        assert answer.status_code == 403, (path, answer.status_code)
        assert "csrf_token" not in answer.headers.get("location", ""), path


def test_a_merchant_opening_an_id_that_is_not_theirs_gets_404(world: World) -> None:
    password = accounts(world).create_merchant_user(world.merchant_b, "13900000002").password
    assert login(world.client, "13900000002", password).status_code == 303
    merchant_pages = [p for p in _web_routes(world.client, "GET")
                      if p.startswith("/merchant") and not PUBLIC.match(p)]  # fmt: skip
    for path in merchant_pages:
        answer = world.client.get(_concrete(path), follow_redirects=False)
        # a page without an id in its path may still need query parameters (404/422 then)
        expected = (404,) if PARAM.search(path) else (200, 404, 422)
        assert answer.status_code in expected, (path, answer.status_code)
        assert answer.headers["x-frame-options"] == "DENY", path
    for path in _web_routes(world.client, "GET"):
        if path.startswith("/staff") and not PUBLIC.match(path):
            answer = world.client.get(_concrete(path), follow_redirects=False)
            assert answer.headers.get("location") == "/staff/login", path


def test_staff_cannot_use_merchant_pages(world: World) -> None:
    from shoudan.auth.domain import Role

    staff_login(world.client, world, "admin.routes", Role.ADMIN)
    for path in _web_routes(world.client, "GET"):
        if path.startswith("/merchant") and not PUBLIC.match(path):
            answer = world.client.get(_concrete(path), follow_redirects=False)
            assert answer.headers.get("location") == "/merchant/login", path
        elif path.startswith("/staff") and not PUBLIC.match(path):
            answer = world.client.get(_concrete(path), follow_redirects=False)
            assert answer.status_code in (200, 404), (path, answer.status_code)
            assert "content-security-policy" in answer.headers, path
