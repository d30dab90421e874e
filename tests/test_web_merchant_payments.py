"""HTTP tests of the merchant platform's 交易 and 退款 pages and the dashboard chart: sign-in
redirects, tenant isolation on every route, filters and field errors, a partial refund with
evidence through the same services as the API (idempotent on a double submit), domain
refusals in the user's language, uploads refused by content and size, answering a request
for information, and the 30-day chart."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shoudan.auth.domain import Role
from shoudan.core.db import Database
from shoudan.files.models import StoredFile
from shoudan.refunds.models import Refund, RefundEvidence, RefundStatusChange
from shoudan.web import merchant_payments
from tests.payments_world import NOW, World, build_world
from tests.web_world import accounts, form_token, login, staff_login

PHONE_A = "13900000011"
PHONE_B = "13900000012"
# a minimal PDF and PNG as the file domain sniffs them (header + %%EOF; signature + IHDR)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    return build_world(database, tmp_path)


def _signed_in(world: World, merchant_id: str, phone: str) -> TestClient:
    client = TestClient(world.client.app, raise_server_exceptions=False)
    password = accounts(world).create_merchant_user(merchant_id, phone).password
    assert login(client, phone, password).status_code == 303
    return client


def _count(world: World, model: type) -> int:
    with world.container.database.read() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _refund_form(client: TestClient, payment_id: str) -> dict[str, str]:
    """The refund form's hidden fields (CSRF token, out_refund_no) and prefilled amount."""
    page = client.get(f"/merchant/refunds/new?payment_id={payment_id}")
    assert page.status_code == 200, page.text
    out_no = re.search(r'name="out_refund_no" value="([^"]+)"', page.text)
    amount = re.search(r'id="amount" name="amount" type="text" value="([^"]*)"', page.text)
    assert out_no and amount, page.text
    return {"csrf_token": form_token(page.text), "out_refund_no": out_no.group(1),
            "amount": amount.group(1), "reason": "customer_request"}  # fmt: skip


def _check_signed_out_redirects(world: World) -> None:
    """Every route sends a visitor without a merchant session (staff too) to the login."""
    anonymous = world.client
    for path in ("/merchant/payments", "/merchant/payments/pay_x", "/merchant/refunds",
                 "/merchant/refunds/rf_x", "/merchant/refunds/new?payment_id=pay_x"):
        answer = anonymous.get(path, follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (303, "/merchant/login"), path
    for path in ("/merchant/refunds?payment_id=pay_x", "/merchant/refunds/rf_x/evidence"):
        answer = anonymous.post(path, data={}, follow_redirects=False)
        assert answer.status_code == 303, path
    staff = TestClient(world.client.app, raise_server_exceptions=False)
    staff_login(staff, world, "rev.payments", Role.REVIEWER)
    answer = staff.get("/merchant/payments", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (303, "/merchant/login")


def test_transaction_search_receipt_and_tenant_isolation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = world.pay(amount=10_000)
    other = world.pay(amount=12_345)
    qr = world.pay(method="wechat", auth_code="134567890123456789", amount=5_000)
    theirs = world.pay(world.key_b, terminal_id=world.terminal_b, amount=7_777)
    a = _signed_in(world, world.merchant_a, PHONE_A)
    b = _signed_in(world, world.merchant_b, PHONE_B)

    def found(client: TestClient, **query: str) -> set[str]:
        page = client.get("/merchant/payments", params=query)
        assert page.status_code == 200, page.text
        return set(re.findall(r'href="/merchant/payments/(pay_[0-9A-Z]+)"', page.text))

    _check_signed_out_redirects(world)
    mine = {card["id"], other["id"], qr["id"]}
    assert found(a) == mine and found(b) == {theirs["id"]}
    assert found(a, amount="123.45") == {other["id"]}
    assert found(a, method="wechat") == {qr["id"]}
    assert found(a, rrn=card["rrn"]) == {card["id"]}
    assert found(a, rrn=theirs["rrn"]) == set()  # B's RRN is not A's business
    assert found(a, last4="0018") == {card["id"], other["id"]}
    assert found(a, status="captured", date_from="2026-11-23", date_to="2026-11-23") == mine
    assert found(a, date_to="2026-11-22") == set()
    bad = a.get("/merchant/payments", params={"amount": "12.345", "date_from": "2026-11-24",
                                              "date_to": "2026-11-23", "status": "nope"})
    assert bad.status_code == 422
    for field in ("amount", "date_to", "status"):
        assert f'id="{field}-error"' in bad.text
    assert 'value="12.345"' in bad.text  # what the user typed stays

    monkeypatch.setattr(merchant_payments, "PAGE_SIZE", 2)
    first = a.get("/merchant/payments", params={"status": "captured"})
    link = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert link, first.text
    second = a.get(link.group(1).replace("&amp;", "&"))
    seen = re.findall(r'href="/merchant/payments/(pay_[0-9A-Z]+)"', first.text + second.text)
    assert sorted(seen) == sorted(mine) and 'id="next-page"' not in second.text
    assert a.get("/merchant/payments?cursor=tampered").status_code == 200

    receipt = a.get(f"/merchant/payments/{card['id']}")
    assert receipt.status_code == 200
    for shown in ("老王面馆", "SN-A-0001", "622202*********0018", card["rrn"], "¥100.00",
                  card["auth_code"], f"/merchant/refunds/new?payment_id={card['id']}"):
        assert shown in receipt.text, shown
    assert "6222020000000000018" not in receipt.text
    assert b.get(f"/merchant/payments/{card['id']}").status_code == 404
    assert a.get(f"/merchant/payments/{theirs['id']}").status_code == 404
    assert a.get("/merchant/payments/pay_nonsense").status_code == 404
    english = a.get(f"/merchant/payments/{card['id']}?lang=en").text
    assert "<h1>Receipt</h1>" in english and "Bank card" in english


def test_partial_refund_with_evidence_is_created_once_and_shows_a_timeline(world: World) -> None:
    sale = world.pay(amount=10_000)
    a = _signed_in(world, world.merchant_a, PHONE_A)
    b = _signed_in(world, world.merchant_b, PHONE_B)
    assert b.get(f"/merchant/refunds/new?payment_id={sale['id']}").status_code == 404
    assert a.get("/merchant/refunds/new").status_code == 404
    form = _refund_form(a, sale["id"])
    assert form["amount"] == "100.00"  # prefilled with what can still be refunded
    action = f"/merchant/refunds?payment_id={sale['id']}"
    pdf = {"evidence": ("退货单.pdf", PDF, "application/pdf")}

    def send(client: TestClient = a, files: object = None, **changes: str):  # type: ignore[no-untyped-def]
        return client.post(action, data={**form, **changes}, files=files,  # type: ignore[arg-type]
                           follow_redirects=False)

    assert send(csrf_token="forged").status_code == 403
    assert send(b, csrf_token=form_token(b.get("/merchant/refunds").text)).status_code == 404
    refused = send(amount="abc", consumer_phone="123", reason="other")
    assert refused.status_code == 422
    for field in ("amount", "consumer_phone", "reason_text"):
        assert f'id="{field}-error"' in refused.text, field
    assert 'value="abc"' in refused.text
    wrong_type = send(files={"evidence": ("note.pdf", b"just text", "application/pdf")},
                      amount="30.00")
    assert wrong_type.status_code == 422 and 'id="evidence-error"' in wrong_type.text
    void = send()  # the whole amount on the day of the payment: a void, not a refund
    assert void.status_code == 422 and "撤销" in void.text
    over = send(amount="100.01")
    assert over.status_code == 422 and "这笔交易最多还可退 ¥100.00" in over.text
    assert (_count(world, Refund), _count(world, StoredFile)) == (0, 0)

    created = send(files=pdf, amount="30.00", consumer_phone="13812345678",
                   reason="product_return", reason_text="顾客退回一件")
    assert created.status_code == 303, created.text
    location = created.headers["location"]
    again = send(files=pdf, amount="30.00", consumer_phone="13812345678",
                 reason="product_return", reason_text="顾客退回一件")
    assert (again.status_code, again.headers["location"]) == (303, location)
    refund_id = location.rsplit("/", 1)[1]
    with world.container.database.read() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        assert (refund.amount, refund.merchant_id, refund.reason) == (
            3_000, world.merchant_a, "product_return")
        assert refund.consumer_phone_masked == "138****5678"
        evidence = session.scalars(select(RefundEvidence)).all()
        assert [e.refund_id for e in evidence] == [refund_id]
        stored = session.get(StoredFile, evidence[0].file_id)
        assert stored is not None and stored.merchant_id == world.merchant_a
        latest = refund.expected_latest
    assert (_count(world, Refund), _count(world, StoredFile)) == (1, 1)

    page = a.get(location)
    assert page.status_code == 200
    assert "退货单.pdf" in page.text and latest in page.text and "138****5678" in page.text
    timeline = re.search(r'<ol class="timeline" id="timeline">(.*?)</ol>', page.text, re.S)
    assert timeline, page.text
    steps = re.findall(r"<strong>([^<]+)</strong>", timeline.group(1))
    assert steps == ["已申请", "已批准"] and "自动批准" in timeline.group(1)  # low risk
    assert "顾客退回一件" in timeline.group(1)  # the note as the history records it
    assert b.get(location).status_code == 404
    listed = a.get("/merchant/refunds")
    assert refund_id in listed.text
    assert refund_id not in b.get("/merchant/refunds").text
    assert refund_id in a.get("/merchant/refunds?status=approved").text
    assert refund_id not in a.get("/merchant/refunds?status=rejected").text
    assert a.get("/merchant/refunds?status=nope").status_code == 422
    assert _refund_form(a, sale["id"])["amount"] == "70.00"
    receipt = a.get(f"/merchant/payments/{sale['id']}")
    assert f"/merchant/refunds/{refund_id}" in receipt.text


def test_merchant_answers_a_request_for_information(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale = world.pay(amount=10_000)
    # 60 % of the day's sales a minute after the payment: risk 55, so it goes to review
    refund = world.client.post("/v1/refunds", headers=world.headers(world.key_a), json={
        "payment_id": sale["id"], "amount": 6_000, "reason": "customer_request"}).json()
    assert refund["status"] == "in_review", refund
    asked = world.client.post(f"/v1/refunds/{refund['id']}/request-info",
                              headers=world.headers(world.admin_key),
                              json={"message": "请提供退货单"})  # fmt: skip
    assert asked.status_code == 200, asked.text
    a = _signed_in(world, world.merchant_a, PHONE_A)
    b = _signed_in(world, world.merchant_b, PHONE_B)
    path = f"/merchant/refunds/{refund['id']}"
    page = a.get(path)
    assert page.status_code == 200 and "请提供退货单" in page.text
    assert "risk score" not in page.text and "审核中" in page.text  # the step, not the reasons
    token = form_token(page.text)
    answer = f"{path}/evidence"

    def send(client: TestClient = a, files: object = None, **data: str):  # type: ignore[no-untyped-def]
        return client.post(answer, data={"csrf_token": token, **data}, files=files,  # type: ignore[arg-type]
                           follow_redirects=False)

    b_token = form_token(b.get("/merchant/security").text)  # B's own form token
    assert b.post(answer, data={"csrf_token": b_token, "note": "x"},
                  follow_redirects=False).status_code == 404  # fmt: skip
    assert send(b, note="x").status_code == 403  # A's token in B's browser
    assert send(csrf_token="forged", note="x").status_code == 403
    empty = send(note="")
    assert empty.status_code == 422 and 'id="note-error"' in empty.text
    monkeypatch.setattr(world.container.files, "max_bytes", 100)
    big = PDF[:-6] + b" " * 200 + b"\n%%EOF\n"
    too_big = send(files={"evidence": ("slip.pdf", big, "application/pdf")}, note="附件")
    assert too_big.status_code == 422 and 'id="evidence-error"' in too_big.text
    huge = PDF[:-6] + b" " * (70 * 1024) + b"\n%%EOF\n"
    refused = send(files={"evidence": ("slip.pdf", huge, "application/pdf")}, note="附件")
    assert refused.status_code == 413 and 'id="evidence-error"' in refused.text
    monkeypatch.undo()
    assert _count(world, StoredFile) == 0

    done = send(files={"evidence": ("slip.pdf", PDF, "application/pdf")}, note="退货单见附件")
    assert (done.status_code, done.headers["location"]) == (303, path)
    twice = send(note="again")
    assert twice.status_code == 409
    with world.container.database.read() as session:
        stored = session.get(Refund, refund["id"])
        assert stored is not None and stored.status == "in_review"
        notes = session.scalars(select(RefundStatusChange.note).where(
            RefundStatusChange.refund_id == refund["id"])).all()
        assert notes[-1] == "退货单见附件" and "again" not in notes
        assert _count(world, RefundEvidence) == 1
    assert "退货单见附件" in a.get(path).text


def test_dashboard_chart_shows_thirty_days_of_own_sales(world: World) -> None:
    world.clock.set(NOW - timedelta(days=3))
    world.pay(amount=4_200)
    world.clock.set(NOW - timedelta(days=40))  # outside the chart
    world.pay(amount=9_900)
    world.clock.set(NOW)
    world.pay(amount=10_000)
    world.pay(amount=50, method="wechat", auth_code="134567890123456751")  # declined
    world.pay(world.key_b, terminal_id=world.terminal_b, amount=7_777)
    points = merchant_payments.daily_sales(world.container.database, world.clock,
                                           world.merchant_a)  # fmt: skip
    assert len(points) == 30 and points[-1].label == "11-23" and points[0].label == "10-25"
    assert {p.label: p.value for p in points if p.value} == {"11-20": 4_200, "11-23": 10_000}
    a = _signed_in(world, world.merchant_a, PHONE_A)
    page = a.get("/merchant")
    chart = re.search(r'<div id="sales-chart">(<svg.*?</svg>)</div>', page.text, re.S)
    assert chart, page.text
    assert "11-23: ¥100.00" in chart.group(1) and "11-20: ¥42.00" in chart.group(1)
    assert "¥77.77" not in chart.group(1) and "¥99.00" not in chart.group(1)
