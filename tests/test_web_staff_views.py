"""HTTP tests of the staff console views: search by every kind (phones masked), merchant and
terminal pages (404 for unknown ids), the audit log (roles, filters, pages, chain status
turning to broken when a row is tampered with), and the charts' figures against sums computed
here from the database."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from shoudan.audit.models import AuditRecord
from shoudan.auth.domain import Role
from shoudan.core.db import Database
from shoudan.deposits.domain import FINAL
from shoudan.deposits.models import Deposit
from shoudan.merchants.service import set_status
from shoudan.payments.models import Payment
from shoudan.refunds.models import Refund
from shoudan.web import staff_views
from shoudan.web.staff_views import QueryKind, query_kind, refund_rate_bp, shanghai_days
from tests.payments_world import NOW
from tests.refunds_world import RefundWorld, build_refund_world
from tests.test_audit import drop_triggers
from tests.test_deposits import onboard, paid_deposit
from tests.web_world import accounts, csrf, form_token, login, staff_login

APPLICANT_PHONE = "13700001234"
USER_PHONE = "13900000011"
CONTACT_PHONE_A = "13812341234"  # merchant A's contact phone (payments world)


@pytest.fixture
def rw(database: Database, tmp_path: Path) -> RefundWorld:
    return build_refund_world(database, tmp_path)


def fresh(rw: RefundWorld) -> TestClient:
    return TestClient(rw.world.client.app, raise_server_exceptions=False)


def cell(html: str, element_id: str) -> str:
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', html)
    assert match, element_id
    return match.group(1).strip()


# -- pure rules ----------------------------------------------------------------------------------
def test_query_kinds_and_refund_rate_and_shanghai_days() -> None:
    assert query_kind("898310058120001") is QueryKind.MERCHANT_ID
    assert query_kind("13812341234") is QueryKind.PHONE
    assert query_kind("123456789012") is QueryKind.RRN
    assert query_kind("TA000001") is QueryKind.TERMINAL_ID
    assert query_kind("面馆") is QueryKind.TEXT
    assert query_kind("SN-A-0001") is QueryKind.TEXT
    assert refund_rate_bp(0, 0) == 0
    assert refund_rate_bp(1, 3) == 3333  # 3333.33 bp
    assert refund_rate_bp(1, 40_000) == 0  # 0.25 bp rounds down
    assert refund_rate_bp(2, 40_000) == 1  # 0.5 bp rounds half up
    days = shanghai_days(NOW, 30)  # NOW is 2026-11-23 10:00 in Shanghai
    assert len(days) == 30 and days[-1].label.isoformat() == "2026-11-23"
    assert days[-1].start.isoformat() == "2026-11-23T00:00:00+08:00"
    assert all(a.end == b.start for a, b in itertools.pairwise(days))


# -- search --------------------------------------------------------------------------------------
def test_search_finds_every_kind_and_shows_phones_masked(rw: RefundWorld) -> None:
    world = rw.world
    signed_out = fresh(rw)
    answer = signed_out.get("/staff/search?q=x", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/staff/login"
    merchant_client = fresh(rw)
    accounts(world).create_merchant_user(world.merchant_a, USER_PHONE)
    password = accounts(world).create_merchant_user(world.merchant_b, "13900000012").password
    assert login(merchant_client, "13900000012", password).status_code == 303
    answer = merchant_client.get("/staff/search?q=x", follow_redirects=False)
    assert answer.headers["location"] == "/staff/login"  # a merchant is not staff

    onboard(rw, phone=APPLICANT_PHONE)  # an application with that phone
    payment = world.pay(amount=4_321)
    client = world.client
    staff_login(client, world, "cs.search", Role.CS_AGENT)

    def search(q: str) -> str:
        response = client.get("/staff/search", params={"q": q})
        assert response.status_code == 200, response.text
        return response.text

    html = search(world.merchant_a)
    assert f'href="/staff/merchants/{world.merchant_a}"' in html
    assert world.merchant_b not in html

    html = search("面馆")  # name contains
    assert "老王面馆" in html and "便利小店" not in html
    assert 'id="nothing"' in search("100%")  # LIKE wildcards are escaped

    html = search("TA000001")
    assert 'href="/staff/terminals/TA000001"' in html and "SN-A-0001" in html
    html = search("SN-B-0001")  # a serial number
    assert 'href="/staff/terminals/TB000001"' in html

    html = search(payment["rrn"])
    assert "¥43.21" in html and f'href="/staff/merchants/{world.merchant_a}"' in html

    for phone, masked in ((CONTACT_PHONE_A, "138****1234"), (USER_PHONE, "139****0011"),
                          (APPLICANT_PHONE, "137****1234")):  # fmt: skip
        html = search(phone)
        assert masked in html, phone
        assert phone not in html  # nowhere, not even in the search box
    html = search(USER_PHONE)
    assert f'href="/staff/merchants/{world.merchant_a}"' in html
    assert 'id="applications"' in search(APPLICANT_PHONE)

    too_long = client.get("/staff/search", params={"q": "x" * 65})
    assert too_long.status_code == 422 and 'id="q-error"' in too_long.text
    assert 'value="' + "x" * 65 + '"' in too_long.text  # what was typed stays


# -- merchant and terminal pages -----------------------------------------------------------------
def test_merchant_and_terminal_pages_with_history_and_404s(rw: RefundWorld) -> None:
    world = rw.world
    assert fresh(rw).get(f"/staff/merchants/{world.merchant_a}",
                         follow_redirects=False).status_code == 303  # fmt: skip
    assert fresh(rw).get("/staff/terminals/TA000001", follow_redirects=False).status_code == 303
    world.pay(amount=1_234)
    world.pay(terminal_id=world.terminal_a2, amount=5_678)
    container = world.container
    with container.database.transaction() as session:
        set_status(session, world.merchant_a, "suspended", actor="staff:li", reason="checking",
                   clock=world.clock)  # fmt: skip
    client = world.client
    staff_login(client, world, "reviewer.pages", Role.REVIEWER)

    page = client.get(f"/staff/merchants/{world.merchant_a}")
    assert page.status_code == 200, page.text
    html = page.text
    assert cell(html, "phone") == "138****1234" and CONTACT_PHONE_A not in html
    assert "TA000001" in html and "TA000002" in html and "TB000001" not in html
    assert "¥12.34" in html and "¥56.78" in html
    assert "status: active → suspended" in html and "checking" in html
    assert "merchant.status" in html  # the audit entry too
    assert cell(html, "fee-plan")

    for key in ("TA000002", "SN-A-0002"):  # by terminal id or serial number
        page = client.get(f"/staff/terminals/{key}")
        assert page.status_code == 200, key
        assert "¥56.78" in page.text and "¥12.34" not in page.text
        assert "terminal.create" in page.text

    for path in ("/staff/merchants/898310058129998", "/staff/merchants/nope",
                 "/staff/terminals/ZZ999999", "/staff/terminals/NO-SUCH-SERIAL"):  # fmt: skip
        assert client.get(path).status_code == 404, path


def test_terminal_page_shows_the_deposit_and_merchant_page_the_balances(rw: RefundWorld) -> None:
    merchant = onboard(rw)
    paid_deposit(rw, merchant)
    client = rw.world.client
    staff_login(client, rw.world, "finance.pages", Role.FINANCE)
    page = client.get(f"/staff/terminals/{merchant.serial}")
    assert page.status_code == 200
    assert "¥299.00" in page.text and 'id="deposits"' in page.text
    page = client.get(f"/staff/merchants/{merchant.merchant_id}")
    assert cell(page.text, "deposit-held") == "¥299.00"
    assert merchant.phone not in page.text


# -- audit log -----------------------------------------------------------------------------------
def test_audit_log_roles_filters_pages_and_chain_status(
    rw: RefundWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = rw.world
    database = world.container.database
    cs = fresh(rw)
    staff_login(cs, world, "cs.audit", Role.CS_AGENT)
    assert cs.get("/staff/audit").status_code == 403  # admin and risk only
    token = form_token(cs.get("/staff/search").text)
    assert cs.post("/staff/audit/verify", data={"csrf_token": token}).status_code == 403

    client = world.client
    staff_login(client, world, "risk.audit", Role.RISK)
    html = client.get("/staff/audit").text
    assert 'id="chain-status"' in html and "ok" not in cell(html, "chain-status").lower()

    def verifications() -> int:
        with database.read() as session:
            return int(session.scalar(select(func.count()).where(
                AuditRecord.action == "audit.verify")) or 0)  # fmt: skip

    assert client.post("/staff/audit/verify", data={}).status_code == 403  # no CSRF
    assert verifications() == 0
    token = csrf(client, "/staff/audit")
    done = client.post("/staff/audit/verify", data={"csrf_token": token}, follow_redirects=False)
    assert done.status_code == 303 and verifications() == 1
    html = client.get("/staff/audit?lang=en").text
    assert "verified OK" in cell(html, "chain-status") and cell(html, "since") == "0"

    # filters: only terminal creations (three in the world), newest first
    html = client.get("/staff/audit", params={"action": "terminal.create"}).text
    assert html.count('<tr id="entry-') == 3 and "merchant.create" not in html
    html = client.get("/staff/audit", params={"subject_type": "terminal",
                                              "subject_id": "TB000001"}).text  # fmt: skip
    assert html.count("<tr id=\"entry-") == 1
    bad = client.get("/staff/audit", params={"from": "2026-13-01", "actor": "x"})
    assert bad.status_code == 422 and 'id="from-error"' in bad.text and 'value="x"' in bad.text
    today = NOW.date().isoformat()
    assert "entry-" in client.get("/staff/audit", params={"from": today, "to": today}).text
    assert "entry-" not in client.get("/staff/audit", params={"to": "2026-01-01"}).text

    # pages, keyset on seq
    monkeypatch.setattr(staff_views, "AUDIT_PAGE", 2)
    first = client.get("/staff/audit").text
    older = re.search(r'href="/staff/audit\?(before=\d+)"', first)
    assert older
    second = client.get(f"/staff/audit?{older.group(1)}").text
    seqs = [int(s) for s in re.findall(r'<tr id="entry-(\d+)"', first + second)]
    assert len(seqs) == 4 and seqs == sorted(seqs, reverse=True)

    # someone edits entry 2 behind the application's back: the next verification says so
    drop_triggers(database)
    with database.transaction() as session:
        session.execute(text("UPDATE audit_log SET actor = 'staff:mallory' WHERE seq = 2"))
    token = csrf(client, "/staff/audit")
    client.post("/staff/audit/verify", data={"csrf_token": token})
    html = client.get("/staff/audit?lang=en").text
    assert "BROKEN" in cell(html, "chain-status") and cell(html, "broken-at") == "2"


# -- charts --------------------------------------------------------------------------------------
def test_dashboard_figures_equal_the_database_sums(rw: RefundWorld) -> None:
    world = rw.world
    assert fresh(rw).get("/staff/dashboard", follow_redirects=False).status_code == 303
    sale = rw.earlier_payment(days=3, amount=20_000)
    rw.earlier_payment(days=1, amount=7_000)
    world.pay(amount=3_000)
    world.pay(amount=1_500, terminal_id=world.terminal_b, key=world.key_b)
    rw.refund(payment_id=sale["id"], amount=2_500)
    rw.refund(payment_id=sale["id"], amount=1_000, reason="product_return")
    rw.run_worker()
    paid_deposit(rw, onboard(rw))
    client = world.client
    staff_login(client, world, "cs.charts", Role.CS_AGENT)
    page = client.get("/staff/dashboard")
    assert page.status_code == 200
    html = page.text
    assert html.count("<svg") == 4 and "<script" not in html

    days = shanghai_days(world.clock.now(), 30)
    with world.container.database.read() as session:
        payments = session.scalars(select(Payment).where(Payment.status == "captured")).all()
        refunds = session.scalars(select(Refund)).all()
        deposits = session.scalars(select(Deposit)).all()
    assert any(r.status == "succeeded" for r in refunds)
    for day in days:
        sales = sum(p.captured_amount for p in payments
                    if p.captured_at and day.start <= p.captured_at < day.end)  # fmt: skip
        refunded = sum(r.amount for r in refunds if r.status == "succeeded" and r.completed_at
                       and day.start <= r.completed_at < day.end)  # fmt: skip
        held = sum(d.amount for d in deposits if d.created_at < day.end
                   and (d.closed_at is None or d.closed_at >= day.end))  # fmt: skip
        row = re.search(rf'<tr id="day-{day.label.isoformat()}">(.*?)</tr>', html, re.S)
        assert row, day.label
        assert f'class="sales">¥{sales // 100:,}.{sales % 100:02d}<' in row.group(1)
        assert f'class="refunds">¥{refunded // 100:,}.{refunded % 100:02d}<' in row.group(1)
        assert f'class="rate">{refund_rate_bp(refunded, sales)}<' in row.group(1)
        assert f'class="deposits">¥{held // 100:,}.{held % 100:02d}<' in row.group(1)
    today = re.search(rf'id="day-{days[-1].label.isoformat()}">(.*?)</tr>', html, re.S)
    assert today and 'class="sales">¥45.00<' in today.group(1)
    reasons = Counter(r.reason for r in refunds if r.created_at >= days[0].start)
    for reason, count in reasons.items():
        assert cell(html, f"reason-{reason}") == str(count)
    open_now = [d for d in deposits if d.status not in {s.value for s in FINAL}]
    assert cell(html, "deposits-now") == f"¥{sum(d.amount for d in open_now) / 100:,.2f}"
    assert cell(html, "deposits-now") == "¥299.00"
