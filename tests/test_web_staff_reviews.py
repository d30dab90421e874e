"""The staff console's review queues over HTTP, on SQLite and PostgreSQL: refunds (two
approvals with maker-checker, refusals that change nothing, request-info, reject, evidence
preview, abnormal re-route), deposit refunds, applications and reconciliation exceptions —
roles, CSRF, unknown ids, field errors, and the audit rows every action leaves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shoudan.audit.models import AuditRecord
from shoudan.auth.domain import Principal, Role
from shoudan.core.db import Database
from shoudan.deposits.models import Deposit, DepositRefundRequest
from shoudan.deposits.service import RefundRequestInput
from shoudan.onboarding.models import Application
from shoudan.onboarding.service import ApplicationInput, submit_application, verify_phone
from shoudan.reconciliation.domain import Channel, ChannelStatus, RecordKind
from shoudan.reconciliation.generate import ChannelTxn, write_statement
from shoudan.reconciliation.models import ReconciliationException
from shoudan.reconciliation.service import ReconciliationService, StatementUpload
from shoudan.refunds.models import Refund, RefundApproval
from shoudan.refunds.service import RefundRequest
from tests.payments_world import CREDIT, PIN
from tests.refunds_world import RefundWorld, build_refund_world
from tests.test_deposits import CARD, ID_NUMBER, onboard, paid_deposit
from tests.test_files import PNG
from tests.web_world import form_token, login, staff_login

CARD_CLOSED = "6222020000000000778"
GOOD_ACCOUNT = "6222020000000000018"


@pytest.fixture
def rw(database: Database, tmp_path: Path) -> Iterator[RefundWorld]:
    world = build_refund_world(database, tmp_path)
    yield world
    report = world.world.container.ledger.verify()
    assert report.violations == [], report.violations


def staff(rw: RefundWorld, username: str, *roles: Role) -> tuple[TestClient, str]:
    """A browser-like client signed in as a new staff user (English pages); its user id."""
    client = TestClient(rw.world.client.app, raise_server_exceptions=False)
    client.cookies.set("shoudan_lang", "en")
    user = staff_login(client, rw.world, username, *roles)
    return client, user.user_id


def post(client: TestClient, path: str, page: str, **data: str):  # type: ignore[no-untyped-def]
    """POST a form of ``page`` (its CSRF token) to ``path``, without following redirects."""
    token = form_token(client.get(page).text)
    return client.post(path, data={"csrf_token": token, **data}, follow_redirects=False)


def card(pan: str) -> dict[str, str]:
    return {"pan": pan, "expiry": "2912", "pin": PIN, "entry_mode": "chip"}


def refund_of(rw: RefundWorld, refund_id: str) -> Refund:
    with rw.world.container.database.read() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        return refund


def audit_actions(rw: RefundWorld, subject_id: str) -> list[tuple[str, str]]:
    with rw.world.container.database.read() as session:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.subject_id == subject_id)
            .order_by(AuditRecord.id)
        )  # fmt: skip
        return [(r.action, r.actor) for r in rows]


def large_refund(rw: RefundWorld) -> dict:
    """¥50,000 requested by merchant A through the API: two approvals needed."""
    payment = rw.earlier_payment(amount=5_000_000, card=card(CREDIT))
    rw.earlier_payment(amount=5_000_000)  # the merchant's balance covers it
    refund = rw.refund(payment_id=payment["id"], amount=5_000_000, reason="product_return")
    assert (refund["status"], refund["approvals_required"]) == ("in_review", 2)
    return refund


def test_large_refund_needs_two_people_and_refusals_change_nothing(rw: RefundWorld) -> None:
    refund = large_refund(rw)
    page = f"/staff/refunds/{refund['id']}"
    approve = f"{page}/approve"
    # signed out, or signed in as a merchant: the staff login
    anonymous = TestClient(rw.world.client.app)
    assert anonymous.get(page, follow_redirects=False).headers["location"] == "/staff/login"
    assert anonymous.get("/staff/refunds", follow_redirects=False).status_code == 303
    merchant = TestClient(rw.world.client.app)
    from tests.web_world import accounts

    password = accounts(rw.world).create_merchant_user(rw.world.merchant_a, "13900000001").password
    assert login(merchant, "13900000001", password).status_code == 303
    assert merchant.get(page, follow_redirects=False).headers["location"] == "/staff/login"

    cs, _ = staff(rw, "cs.wang", Role.CS_AGENT)
    queue = cs.get("/staff/refunds?status=in_review")
    assert queue.status_code == 200 and refund["id"] in queue.text
    assert "0 / 2" in queue.text
    detail = cs.get(page)
    assert detail.status_code == 200
    assert "¥50,000.00" in detail.text and 'id="risk"' in detail.text
    assert "Round amount" in detail.text  # the rule that fired, with its fact
    assert cs.get("/staff/refunds/rf_nope").status_code == 404
    assert cs.get("/staff/refunds?status=bogus").status_code == 404
    assert post(cs, approve, page).status_code == 403  # a cs_agent cannot approve

    reviewer, _ = staff(rw, "rev.li", Role.REVIEWER)
    refused = post(reviewer, approve, page)  # a large refund needs approvers
    assert refused.status_code == 403 and 'id="refusal"' in refused.text

    first, first_id = staff(rw, "appr.zhao", Role.APPROVER)
    no_csrf = first.post(approve, data={"note": "ok"}, follow_redirects=False)
    assert no_csrf.status_code == 403
    assert post(first, "/staff/refunds/rf_nope/approve", page).status_code == 404
    with rw.world.container.database.read() as session:
        assert session.scalars(select(RefundApproval)).all() == []

    done = post(first, approve, page, note="documents checked")
    assert done.status_code == 303 and done.headers["location"] == f"{page}?done=approved"
    assert "Approval recorded." in first.get(done.headers["location"]).text
    assert refund_of(rw, refund["id"]).status == "in_review"
    waiting = first.get("/staff/refunds?status=awaiting_second")
    assert refund["id"] in waiting.text and "1 / 2" in waiting.text

    again = post(first, approve, page)  # the maker of the first approval cannot give the second
    assert again.status_code == 409
    assert "the second approval must come from another person" in again.text
    assert refund_of(rw, refund["id"]).status == "in_review"

    second, second_id = staff(rw, "appr.qian", Role.APPROVER, Role.REVIEWER)
    assert "Give the second approval" in second.get(page).text
    assert post(second, approve, page).status_code == 303
    assert refund_of(rw, refund["id"]).status == "approved"
    assert audit_actions(rw, refund["id"]) == [
        ("refund.approve", first_id), ("refund.approve", second_id),
    ]  # fmt: skip
    assert refund["id"] not in second.get("/staff/refunds?status=awaiting_second").text


def test_review_actions_evidence_and_the_makers_own_request(rw: RefundWorld) -> None:
    upload = rw.client.post("/v1/files", headers=rw.headers("a"),
                            files={"file": ("slip.png", PNG, "image/png")})  # fmt: skip
    assert upload.status_code == 201, upload.text
    file_id = upload.json()["id"]
    payment = rw.earlier_payment(amount=1_000_000)
    refund = rw.refund(payment_id=payment["id"], amount=600_000, evidence_ids=[file_id])
    page = f"/staff/refunds/{refund['id']}"

    reviewer, reviewer_id = staff(rw, "rev.sun", Role.REVIEWER)
    detail = reviewer.get(page)
    assert f'src="/staff/files/{file_id}"' in detail.text
    image = reviewer.get(f"/staff/files/{file_id}")
    assert image.status_code == 200 and image.content == PNG
    assert image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert TestClient(rw.world.client.app).get(
        f"/staff/files/{file_id}", follow_redirects=False).status_code == 303  # fmt: skip
    assert reviewer.get("/staff/files/file_nope").status_code == 404

    # bad input: the field says so, nothing changes
    empty = post(reviewer, f"{page}/request-info", page, message="  ")
    assert empty.status_code == 422 and 'id="message-error"' in empty.text
    asked = post(reviewer, f"{page}/request-info", page, message="the return slip, please")
    assert asked.status_code == 303
    assert refund_of(rw, refund["id"]).info_request == "the return slip, please"
    assert refund["id"] in reviewer.get("/staff/refunds?status=needs_info").text
    no_reason = post(reviewer, f"{page}/reject", page, reason="")
    assert no_reason.status_code == 422 and 'id="reason-error"' in no_reason.text
    assert refund_of(rw, refund["id"]).status == "needs_info"
    assert post(reviewer, f"{page}/reject", page, reason="no slip").status_code == 303
    assert refund_of(rw, refund["id"]).status == "rejected"
    assert audit_actions(rw, refund["id"]) == [
        ("refund.request_info", reviewer_id), ("refund.reject", reviewer_id),
    ]  # fmt: skip

    # a refund requested by a staff member: they cannot approve it, another reviewer can
    maker, maker_id = staff(rw, "appr.maker", Role.APPROVER)
    own = rw.world.container.refunds.request(
        Principal(maker_id, Role.APPROVER),
        RefundRequest(payment_id=payment["id"], amount=500_000, reason="duplicate"),
    )
    assert (own.status, own.approvals_required) == ("in_review", 1)
    own_page = f"/staff/refunds/{own.id}"
    refused = post(maker, f"{own_page}/approve", own_page)
    assert refused.status_code == 403 and "You requested this yourself" in refused.text
    assert refund_of(rw, own.id).status == "in_review"
    assert post(reviewer, f"{own_page}/approve", own_page).status_code == 303
    assert refund_of(rw, own.id).status == "approved"


def test_abnormal_refund_is_rerouted(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=20_000, card=card(CARD_CLOSED))
    refund = rw.refund(payment_id=payment["id"], amount=8_000)
    rw.run_worker()
    assert refund_of(rw, refund["id"]).status == "abnormal"
    page = f"/staff/refunds/{refund['id']}"
    reviewer, _ = staff(rw, "rev.zhou", Role.REVIEWER)
    assert refund["id"] in reviewer.get("/staff/refunds?status=abnormal").text
    fields = {"account_number": GOOD_ACCOUNT, "holder_name": "张三", "bank_name": "工商银行"}
    assert post(reviewer, f"{page}/reroute", page, **fields).status_code == 403  # not their role
    cs, cs_id = staff(rw, "cs.li", Role.CS_AGENT)
    bad = post(cs, f"{page}/reroute", page, **{**fields, "account_number": "6222020000000000019"})
    assert bad.status_code == 422 and 'id="account_number-error"' in bad.text
    assert 'value="6222020000000000019"' not in bad.text  # a card number is not echoed
    assert 'value="张三"' in bad.text
    assert post(cs, f"{page}/reroute", page, **fields).status_code == 303
    rerouted = refund_of(rw, refund["id"])
    assert (rerouted.status, rerouted.route, rerouted.reroute_account_last4) == (
        "processing", "bank_transfer", "0018",
    )  # fmt: skip
    assert ("refund.reroute", cs_id) in audit_actions(rw, refund["id"])
    rw.run_worker()
    assert refund_of(rw, refund["id"]).status == "succeeded"


def test_deposit_refund_review(rw: RefundWorld) -> None:
    merchant = onboard(rw)
    deposit = paid_deposit(rw, merchant)
    reviewer, reviewer_id = staff(rw, "rev.dep", Role.REVIEWER)
    # asked by the reviewer on the merchant's behalf: they may not approve it themselves
    request = rw.world.container.deposits.request_refund(
        Principal(reviewer_id, Role.REVIEWER),
        RefundRequestInput(merchant.serial, merchant.phone, ID_NUMBER, CARD[-4:], "closing"),
    )
    page = f"/staff/deposit-refunds/{request.id}"
    queue = reviewer.get("/staff/deposit-refunds")
    assert queue.status_code == 200 and request.id in queue.text
    detail = reviewer.get(page)
    assert "Settlement card verified" in detail.text and "¥299.00" in detail.text
    assert reviewer.get("/staff/deposit-refunds/dr_nope").status_code == 404
    own = post(reviewer, f"{page}/approve", page)
    assert own.status_code == 403 and "You requested this yourself" in own.text
    cs, _ = staff(rw, "cs.dep", Role.CS_AGENT)
    assert post(cs, f"{page}/approve", page).status_code == 403
    approver, approver_id = staff(rw, "appr.dep", Role.APPROVER)
    assert approver.post(f"{page}/approve", follow_redirects=False).status_code == 403  # CSRF
    blank = post(approver, f"{page}/reject", page, note="")
    assert blank.status_code == 422 and 'id="note-error"' in blank.text
    with rw.world.container.database.read() as session:
        assert session.get_one(DepositRefundRequest, request.id).status == "in_review"
    assert post(approver, f"{page}/approve", page).status_code == 303
    with rw.world.container.database.read() as session:
        assert session.get_one(DepositRefundRequest, request.id).status == "approved"
        assert session.get_one(Deposit, deposit.id).status == "refunded"
    assert ("deposit_refund.approved", approver_id) in audit_actions(rw, request.id)
    assert request.id not in approver.get("/staff/deposit-refunds?status=in_review").text


def applied(rw: RefundWorld, phone: str) -> str:
    """An application through SMS verification and KYC: in review."""
    container, clock = rw.world.container, rw.world.clock
    data = ApplicationInput(
        applicant_name="李四", phone=phone, province="上海", city="上海", product="epos",
        merchant_type="individual", id_number=ID_NUMBER, bank_card=CARD,
        business_name="李四面馆", business_address="上海市黄浦区南京东路2号", area_code="3100",
    )  # fmt: skip
    submitted = submit_application(container.database, container.vault, container.sms, data,
                                   clock=clock)  # fmt: skip
    code = re.search(r"\d{6}", container.sms.list_inbox(phone)[-1].text)  # type: ignore[attr-defined]
    assert code is not None
    verify_phone(container.database, container.vault, container.real_name_verifier,
                 submitted.application.id, submitted.application_token, code.group(0),
                 clock=clock)  # fmt: skip
    return submitted.application.id


def test_application_review(rw: RefundWorld) -> None:
    first, second = applied(rw, "13700001111"), applied(rw, "13700002222")
    cs, _ = staff(rw, "cs.app", Role.CS_AGENT)
    assert cs.get("/staff/applications").status_code == 403  # reviewers and admins only
    reviewer, reviewer_id = staff(rw, "rev.app", Role.REVIEWER)
    queue = reviewer.get("/staff/applications?status=in_review")
    assert first in queue.text and second in queue.text
    assert "137****1111" in queue.text and "13700001111" not in queue.text
    page = f"/staff/applications/{first}"
    detail = reviewer.get(page)
    assert ID_NUMBER not in detail.text and CARD not in detail.text  # masked
    assert 'id="kyc"' in detail.text
    assert reviewer.get("/staff/applications/app_nope").status_code == 404
    assert post(reviewer, "/staff/applications/app_nope/approve", page).status_code == 404
    forged = reviewer.post(f"{page}/reject", data={"reason": "x"}, follow_redirects=False)
    assert forged.status_code == 403  # no CSRF token: nothing happens
    blank = post(reviewer, f"{page}/request-info", page, message="")
    assert blank.status_code == 422 and 'id="message-error"' in blank.text
    assert post(reviewer, f"{page}/request-info", page, message="a shop photo").status_code == 303
    assert post(reviewer, f"{page}/reject", page, reason="no shop").status_code == 303
    other = f"/staff/applications/{second}"
    assert post(reviewer, f"{other}/approve", other).status_code == 303
    with rw.world.container.database.read() as session:
        assert session.get_one(Application, first).status == "rejected"
        approved = session.get_one(Application, second)
        assert approved.status == "approved" and approved.merchant_id
    assert [a for a, _ in audit_actions(rw, first)][-2:] == [
        "application.request_info", "application.reject",
    ]  # fmt: skip
    assert ("application.approve", reviewer_id) in audit_actions(rw, second)
    again = post(reviewer, f"{other}/reject", other, reason="too late")
    assert again.status_code == 409  # an approved application is final


def test_reconciliation_exception_resolution(rw: RefundWorld, tmp_path: Path) -> None:
    sale = rw.earlier_payment(amount=10_000)
    path = tmp_path / "unionpay.csv"
    with rw.world.container.database.read() as session:
        from shoudan.payments.models import Payment

        payment = session.get_one(Payment, sale["id"])
        txn = ChannelTxn(RecordKind.PAYMENT, ChannelStatus.SUCCESS, 10_100, payment.created_at,
                         payment.rrn, payment.id)  # fmt: skip
    with path.open("w", encoding="utf-8", newline="") as out:
        write_statement(Channel.UNIONPAY, [txn], out)
    c = rw.world.container
    ReconciliationService(c.database, c.ledger, c.clock).import_statement(
        Principal("finance-key", Role.FINANCE), StatementUpload(path, path.name, Channel.UNIONPAY)
    )
    with c.database.read() as session:
        (found,) = session.scalars(select(ReconciliationException)).all()
    reviewer, _ = staff(rw, "rev.rec", Role.REVIEWER)
    assert reviewer.get("/staff/reconciliation-exceptions").status_code == 403
    finance, finance_id = staff(rw, "fin.he", Role.FINANCE)
    queue = finance.get("/staff/reconciliation-exceptions?status=open")
    assert found.id in queue.text
    page = f"/staff/reconciliation-exceptions/{found.id}"
    assert "¥1.00" in finance.get(page).text
    resolve = f"{page}/resolve"
    forged = finance.post(resolve, data={"action": "mark_resolved"}, follow_redirects=False)
    assert forged.status_code == 403
    no_reason = post(finance, resolve, page, action="write_off", reason="", note="")
    assert no_reason.status_code == 422 and 'id="reason-error"' in no_reason.text
    assert post(finance, resolve, page, action="nope").status_code == 422
    done = post(finance, resolve, page, action="write_off", reason="bank fee", note="agreed")
    assert done.status_code == 303
    with c.database.read() as session:
        resolved = session.get_one(ReconciliationException, found.id)
        assert (resolved.status, resolved.resolution) == ("resolved", "write_off")
    assert ("reconciliation.write_off", finance_id) in audit_actions(rw, found.id)
    twice = post(finance, resolve, page, action="mark_resolved", reason="", note="")
    assert twice.status_code == 409 and "already resolved" in twice.text
