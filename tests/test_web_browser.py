"""Browser tests of the web console: Playwright for Python driving the machine's Chromium.

No browser is ever downloaded: ``/usr/bin/chromium`` is installed with the system package
manager when missing (apt-get as root, else ``sudo -n``), with a CJK font so Chinese renders
in the screenshots (``test-artifacts/``). One browser per session; the app runs in uvicorn
on a free loopback port in a thread, on its own SQLite database.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from shoudan import migrations
from shoudan.core.db import Database
from shoudan.web.service import WebAccounts
from tests.payments_world import World, build_world

os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PHONE = "13900000009"


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, World, str]]:
    """The app on a loopback port: a world with a sale and a refund, and a merchant login."""
    tmp = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{tmp / 'web.db'}"
    migrations.upgrade(url)
    database = Database(url)
    world = build_world(database, tmp)
    sale = world.pay(amount=12_345)
    refund = world.client.post("/v1/refunds", headers=world.headers(world.key_a), json={
        "payment_id": sale["id"], "amount": 2_345, "reason": "customer_request"})
    assert refund.status_code == 201, refund.text
    password = WebAccounts(database, world.container.vault, world.clock).create_merchant_user(
        world.merchant_a, PHONE).password
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(world.client.app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # start-up, not timing: waits for the socket to listen
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", world, password
    finally:
        server.should_exit = True
        thread.join()
        database.dispose()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    yield context.new_page()
    context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


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
