"""Shared pieces of the web console's tests: HTTP helpers (CSRF token, merchant and staff
logins), a live server for a browser, and the browser itself.

Browser: Playwright for Python driving the machine's Chromium. No browser is ever
downloaded: ``/usr/bin/chromium`` is installed with the system package manager when missing
(apt-get as root, else ``sudo -n``), with a CJK font so Chinese renders in the screenshots
(``test-artifacts/``). One browser per test session (the ``browser`` fixture); each test gets
a phone-sized page (``page``). ``serve(app)`` runs an app in uvicorn on a free loopback port
in a thread. ``browser`` and ``page`` are made available to every test by ``conftest.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pyotp
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shoudan import migrations
from shoudan.auth.domain import Role
from shoudan.core.db import Database
from shoudan.web.service import NewStaffUser, WebAccounts
from tests.payments_world import World
from tests.ports import free_port

os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
SERVER_START_S = 30  # a deadline for start-up on a loaded machine, not a timing assertion
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


# -- HTTP helpers -------------------------------------------------------------------------------
def csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def accounts(world: World) -> WebAccounts:
    c = world.container
    return WebAccounts(c.database, c.vault, c.clock)


def login(client: TestClient, phone: str, password: str):  # type: ignore[no-untyped-def]
    token = csrf(client, "/merchant/login")
    return client.post(
        "/merchant/login", data={"csrf_token": token, "phone": phone, "password": password},
        follow_redirects=False,
    )


def staff_login(
    client: TestClient, world: World, username: str, *roles: Role
) -> NewStaffUser:
    """Create a staff user with ``roles`` and sign ``client`` in as them (password + TOTP)."""
    staff = accounts(world).create_staff_user(username, roles)
    token = csrf(client, "/staff/login")
    code = pyotp.TOTP(staff.totp_secret).at(world.clock.now())
    answer = client.post("/staff/login", data={
        "csrf_token": token, "username": username, "password": staff.password, "totp": code,
    }, follow_redirects=False)  # fmt: skip
    assert answer.status_code == 303, answer.text
    return staff


def form_token(page_html: str) -> str:
    """The CSRF token of the first form of an HTML page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page_html)
    assert match, page_html
    return match.group(1)


# -- browser ------------------------------------------------------------------------------------
def _ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    packages = ["chromium", "fonts-wqy-zenhei"]
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        pytest.fail("/usr/bin/chromium is missing and neither root nor sudo -n can install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        done = subprocess.run([*prefix, *command], env=env, capture_output=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"could not install Chromium ({' '.join(command)}): "
                        f"{done.stderr.decode(errors='replace')[-500:]}")  # fmt: skip


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    yield context.new_page()
    context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def migrated_sqlite(folder: Path) -> Database:
    """A fresh SQLite database in ``folder``, built by the migrations, for a browser site."""
    url = f"sqlite:///{folder / 'web.db'}"
    migrations.upgrade(url)
    return Database(url)


@contextmanager
def serve(app: FastAPI, lifespan: Literal["on", "off", "auto"] = "off") -> Iterator[str]:
    """Run ``app`` in uvicorn on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan=lifespan))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_S
    while not server.started:  # start-up, not timing: waits for the socket to listen
        assert thread.is_alive(), f"uvicorn stopped before listening on port {port}"
        assert time.monotonic() < deadline, f"uvicorn did not listen on port {port}"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()
