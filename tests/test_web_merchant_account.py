"""HTTP-level tests of the merchant platform's 我的设备 / 退押金, 结算 and 开发者 pages (SQLite and
PostgreSQL): sign-in redirects, tenant isolation (another merchant's serial, request, key,
endpoint → 404; lists and statements only one's own), CSRF, field errors, and real outcomes in
the database."""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shoudan.api.app import create_app
from shoudan.auth.models import ApiKey
from shoudan.core.clock import SHANGHAI
from shoudan.core.db import Database
from shoudan.deposits.models import Deposit, DepositRefundRequest
from shoudan.webhooks.models import WebhookDelivery, WebhookEndpoint
from shoudan.webhooks.service import publish
from tests.refunds_world import RefundWorld, build_refund_world
from tests.settlement_world import SettlementWorld, build_settlement_world
from tests.test_deposits import CARD, ID_NUMBER, Onboarded, onboard, paid_deposit
from tests.web_world import accounts, form_token, login

PHONE_A = "13900000011"
PHONE_B = "13900000012"
WRONG_ID = "110105194912310021"

GET_ROUTES = (
    "/merchant/terminals", "/merchant/terminals/SN-A-0001", "/merchant/deposit-refunds/new",
    "/merchant/deposit-refunds", "/merchant/deposit-refunds/dr_x", "/merchant/settlements",
    "/merchant/statements?period=2026-11", "/merchant/developers",
    "/merchant/developers/webhooks/we_x",
)  # fmt: skip
POST_ROUTES = (
    "/merchant/deposit-refunds/new", "/merchant/developers/keys",
    "/merchant/developers/keys/key_x/revoke", "/merchant/developers/webhooks",
    "/merchant/developers/webhooks/we_x/disable",
)  # fmt: skip


def signed_in(rw: RefundWorld, merchant_id: str, phone: str) -> TestClient:
    """A new browser (its own cookies) signed in as a user of ``merchant_id``."""
    password = accounts(rw.world).create_merchant_user(merchant_id, phone).password
    client = TestClient(rw.client.app, raise_server_exceptions=False)
    assert login(client, phone, password).status_code == 303
    return client


def refund_form(client: TestClient, merchant: Onboarded, **changes: str):  # type: ignore[no-untyped-def]
    token = form_token(client.get("/merchant/deposit-refunds/new").text)
    data = {"csrf_token": token, "serial_number": merchant.serial, "phone": merchant.phone,
            "id_number": ID_NUMBER, "bank_card_last4": CARD[-4:], "reason": "closing the shop",
            **changes}  # fmt: skip
    return client.post("/merchant/deposit-refunds/new", data=data, follow_redirects=False)


def requests_of(rw: RefundWorld) -> list[DepositRefundRequest]:
    with rw.world.container.database.read() as session:
        return list(session.scalars(select(DepositRefundRequest)))


@pytest.fixture
def rw(database: Database, tmp_path: Path) -> RefundWorld:
    return build_refund_world(database, tmp_path)


def test_every_page_needs_a_merchant_login(sqlite_database: Database, tmp_path: Path) -> None:
    rw = build_refund_world(sqlite_database, tmp_path)  # no data involved: one database is enough
    client = TestClient(create_app(container=rw.world.container), raise_server_exceptions=False)
    for path in GET_ROUTES:
        answer = client.get(path, follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (303, "/merchant/login"), path
    for path in POST_ROUTES:
        answer = client.post(path, data={}, follow_redirects=False)
        assert answer.status_code == 303, path


def test_terminals_and_a_deposit_refund_with_a_wrong_then_right_id_number(rw: RefundWorld) -> None:
    merchant = onboard(rw)
    deposit = paid_deposit(rw, merchant)
    mine = signed_in(rw, merchant.merchant_id, merchant.phone)
    other = signed_in(rw, rw.world.merchant_b, PHONE_B)

    listed = mine.get("/merchant/terminals")
    assert listed.status_code == 200
    assert merchant.serial in listed.text and "¥299.00" in listed.text
    assert "已缴纳" in listed.text and "SN-B-0001" not in listed.text
    assert merchant.serial not in other.get("/merchant/terminals").text
    detail = mine.get(f"/merchant/terminals/{merchant.serial}")
    assert detail.status_code == 200 and "2027-11-23" in detail.text  # the request deadline
    assert other.get(f"/merchant/terminals/{merchant.serial}").status_code == 404
    assert mine.get("/merchant/terminals/SN-B-0001").status_code == 404
    assert mine.get("/merchant/terminals/bad%20serial!").status_code == 404

    form = mine.get(f"/merchant/deposit-refunds/new?serial={merchant.serial}").text
    assert f'value="{merchant.serial}"' in form and 'value="None"' not in form
    # no CSRF token: refused, nothing changed
    bare = {"serial_number": merchant.serial, "phone": merchant.phone, "id_number": ID_NUMBER,
            "bank_card_last4": CARD[-4:], "reason": "closing"}  # fmt: skip
    assert mine.post("/merchant/deposit-refunds/new", data=bare).status_code == 403
    # empty fields and a malformed card: field errors, the typed values kept
    empty = refund_form(mine, merchant, phone="", bank_card_last4="12a4")
    assert empty.status_code == 422
    assert 'id="phone-error"' in empty.text and 'id="bank_card_last4-error"' in empty.text
    assert 'value="closing the shop"' in empty.text
    # a wrong ID number: the error under the ID field, the number never sent back
    wrong = refund_form(mine, merchant, id_number=WRONG_ID)
    assert wrong.status_code == 422
    error = re.search(r'<input id="id_number"[^>]*>\s*<p class="error" id="id_number-error">',
                      wrong.text)  # fmt: skip
    assert error, wrong.text
    assert WRONG_ID not in wrong.text and ID_NUMBER not in wrong.text
    assert f'value="{merchant.phone}"' in wrong.text and f'value="{merchant.serial}"' in wrong.text
    for field, change in (("phone", "13700009999"), ("bank_card_last4", "0019")):
        answer = refund_form(mine, merchant, **{field: change})
        assert answer.status_code == 422 and f'id="{field}-error"' in answer.text
    # another merchant's serial number: as if it had no deposit
    foreign = refund_form(other, merchant, phone=PHONE_B)
    assert foreign.status_code == 422 and 'id="serial_number-error"' in foreign.text
    assert requests_of(rw) == []

    created = refund_form(mine, merchant)
    assert created.status_code == 303
    request_id = created.headers["location"].rsplit("/", 1)[1]
    [stored] = requests_of(rw)
    assert (stored.id, stored.status, stored.deposit_id) == (request_id, "in_review", deposit.id)
    progress = mine.get(f"/merchant/deposit-refunds/{request_id}")
    assert progress.status_code == 200 and "审核中" in progress.text
    assert request_id in mine.get("/merchant/deposit-refunds").text
    again = refund_form(mine, merchant)
    assert again.status_code == 422 and 'id="serial_number-error"' in again.text
    assert other.get(f"/merchant/deposit-refunds/{request_id}").status_code == 404
    assert request_id not in other.get("/merchant/deposit-refunds").text
    assert mine.get("/merchant/deposit-refunds/dr_nope").status_code == 404
    # staff approve: the progress shows the refund and the expected payout
    approved = rw.client.post(f"/v1/deposit-refunds/{request_id}/approve", json={"note": "ok"},
                              headers=rw.headers("approver1"))  # fmt: skip
    assert approved.status_code == 200, approved.text
    progress = mine.get(f"/merchant/deposit-refunds/{request_id}").text
    assert "已批准" in progress and "¥239.00" in progress
    with rw.world.container.database.read() as session:
        assert session.get(Deposit, deposit.id).status == "refunded"  # type: ignore[union-attr]


@pytest.fixture
def sw(database: Database, tmp_path: Path) -> SettlementWorld:
    return build_settlement_world(database, tmp_path)


def test_settlements_payouts_and_own_statements_only(sw: SettlementWorld) -> None:
    sale = sw.pay(datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI), 12_345)
    sw.settle(date(2026, 11, 24))
    mine = signed_in(sw.rw, sw.world.merchant_a, PHONE_A)
    other = signed_in(sw.rw, sw.world.merchant_b, PHONE_B)

    page = mine.get("/merchant/settlements")
    assert page.status_code == 200
    assert "2026-11-24" in page.text and "¥123.45" in page.text
    assert f"¥{sale['net'] // 100}.{sale['net'] % 100:02d}" in page.text
    assert "6217********5677" in page.text or "5677" in page.text  # the masked account
    assert "6217000010012345677" not in page.text
    assert "2026-11-24" not in other.get("/merchant/settlements").text
    net = f"¥{sale['net'] // 100}.{sale['net'] % 100:02d}"
    dashboard = mine.get("/merchant").text  # the latest settlement, on the dashboard too
    assert f'id="settlement-amount">{net}<' in dashboard and "2026-11-24" in dashboard
    assert 'id="settlement-amount">暂无<' in other.get("/merchant").text

    csv = mine.get("/merchant/statements?period=2026-11&format=csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert f"statement-{sw.world.merchant_a}-2026-11.csv" in csv.headers["content-disposition"]
    assert "123.45" in csv.text
    daily = mine.get("/merchant/statements?period=2026-11-23&format=xlsx")
    assert daily.status_code == 200 and daily.content[:2] == b"PK"
    pdf = mine.get("/merchant/statements?period=2026-11&format=pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    # a merchant id in the query is ignored: the statement is always the signed-in merchant's
    theirs = other.get(f"/merchant/statements?period=2026-11&merchant_id={sw.world.merchant_a}")
    assert sw.world.merchant_b in theirs.headers["content-disposition"]
    assert "123.45" not in theirs.text
    bad = mine.get("/merchant/statements?period=2026-13&format=csv")
    assert bad.status_code == 422 and 'id="period-error"' in bad.text
    assert 'value="2026-13"' in bad.text
    bad_format = mine.get("/merchant/statements?period=2026-11&format=doc")
    assert bad_format.status_code == 422 and 'id="format-error"' in bad_format.text


def keys_of(rw: RefundWorld, merchant_id: str) -> list[ApiKey]:
    with rw.world.container.database.read() as session:
        return list(session.scalars(select(ApiKey).where(ApiKey.merchant_id == merchant_id)))


def test_api_keys_are_shown_once_and_revoked_by_their_owner_only(rw: RefundWorld) -> None:
    a, b = rw.world.merchant_a, rw.world.merchant_b
    mine = signed_in(rw, a, PHONE_A)
    other = signed_in(rw, b, PHONE_B)
    before = len(keys_of(rw, a))
    assert mine.post("/merchant/developers/keys", data={"name": "shop"}).status_code == 403
    assert len(keys_of(rw, a)) == before
    page = mine.get("/merchant/developers").text
    too_long = mine.post("/merchant/developers/keys",
                         data={"csrf_token": form_token(page), "name": "x" * 256})  # fmt: skip
    assert too_long.status_code == 422 and 'id="name-error"' in too_long.text
    created = mine.post("/merchant/developers/keys",
                        data={"csrf_token": form_token(page), "name": "shop"})  # fmt: skip
    assert created.status_code == 200 and created.headers["cache-control"] == "no-store"
    secret = re.search(r"<code>(sk_m_[A-Za-z0-9_-]{43})</code>", created.text)
    assert secret, created.text
    key = secret.group(1)
    assert key not in mine.get("/merchant/developers").text  # shown once
    [new] = [k for k in keys_of(rw, a) if k.name == "shop"]
    api = {"Authorization": f"Bearer {key}"}
    assert rw.client.get("/v1/terminals", headers=api).status_code == 200
    assert new.prefix in mine.get("/merchant/developers").text
    assert new.prefix not in other.get("/merchant/developers").text
    # another merchant cannot revoke it (404), its owner can
    token_b = form_token(other.get("/merchant/developers").text)
    refused = other.post(f"/merchant/developers/keys/{new.id}/revoke",
                         data={"csrf_token": token_b}, follow_redirects=False)  # fmt: skip
    assert refused.status_code == 404
    assert rw.client.get("/v1/terminals", headers=api).status_code == 200
    token = form_token(mine.get("/merchant/developers").text)
    revoked = mine.post(f"/merchant/developers/keys/{new.id}/revoke",
                        data={"csrf_token": token}, follow_redirects=False)  # fmt: skip
    assert revoked.status_code == 303
    assert rw.client.get("/v1/terminals", headers=api).status_code == 401
    with rw.world.container.database.read() as session:
        from shoudan.audit.models import AuditRecord

        actions = session.scalars(select(AuditRecord.action).where(
            AuditRecord.subject_id == new.id)).all()  # fmt: skip
    assert sorted(actions) == ["api_key.create", "api_key.revoke"]


def test_webhook_endpoints_with_url_rules_delivery_log_and_isolation(rw: RefundWorld) -> None:
    a = rw.world.merchant_a
    mine = signed_in(rw, a, PHONE_A)
    other = signed_in(rw, rw.world.merchant_b, PHONE_B)
    token = form_token(mine.get("/merchant/developers").text)

    def add(**fields: str):  # type: ignore[no-untyped-def]
        data = {"csrf_token": token, "url": "http://127.0.0.1:9/hook", "event_types": "*",
                "description": "", **fields}  # fmt: skip
        return mine.post("/merchant/developers/webhooks", data=data)

    with_password = add(url="https://user:pw@shop.example.com/hook")
    assert with_password.status_code == 422 and 'id="url-error"' in with_password.text
    assert 'value="refund.nope"' in add(event_types="refund.nope").text
    assert 'id="event_types-error"' in add(event_types="refund.nope").text
    assert 'id="event_types-error"' in add(event_types="").text
    with rw.world.container.database.read() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEndpoint)) == 0
    created = add()  # a closed loopback port: every delivery fails and is retried
    assert created.status_code == 200 and "whsec_" in created.text
    assert created.headers["cache-control"] == "no-store"
    with rw.world.container.database.read() as session:
        endpoint = session.scalars(select(WebhookEndpoint)).one()
    with rw.world.container.database.transaction() as session:
        publish(session, a, "refund.succeeded", {"refund_id": "re_1"}, clock=rw.world.clock)
    rw.run_worker(rounds=2)
    with rw.world.container.database.read() as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
    page = mine.get(f"/merchant/developers/webhooks/{endpoint.id}")
    assert page.status_code == 200
    log = page.text[page.text.index('id="deliveries"'):]
    assert "refund.succeeded" in log and "失败" in log
    assert re.search(r"<td>1</td><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", log), log
    assert endpoint.url in mine.get("/merchant/developers").text
    assert endpoint.url not in other.get("/merchant/developers").text
    assert other.get(f"/merchant/developers/webhooks/{endpoint.id}").status_code == 404
    token_b = form_token(other.get("/merchant/developers").text)
    refused = other.post(f"/merchant/developers/webhooks/{endpoint.id}/disable",
                         data={"csrf_token": token_b}, follow_redirects=False)  # fmt: skip
    assert refused.status_code == 404
    assert mine.post(f"/merchant/developers/webhooks/{endpoint.id}/disable",
                     data={}).status_code == 403  # fmt: skip
    with rw.world.container.database.read() as session:
        assert session.get(WebhookEndpoint, endpoint.id).enabled  # type: ignore[union-attr]
    disabled = mine.post(f"/merchant/developers/webhooks/{endpoint.id}/disable",
                         data={"csrf_token": token}, follow_redirects=False)  # fmt: skip
    assert disabled.status_code == 303
    with rw.world.container.database.read() as session:
        assert not session.get(WebhookEndpoint, endpoint.id).enabled  # type: ignore[union-attr]
