"""Browser tests of the staff review queues (Playwright driving the machine's Chromium, see
``tests/web_world.py``): a reviewer and a second approver approve a large refund requested by
the merchant, the maker of the first approval is refused the second, and a staff member
cannot approve the refund they requested; every queue and detail page is screenshotted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from shoudan.auth.domain import Principal, Role
from shoudan.deposits.service import RefundRequestInput
from shoudan.reconciliation.domain import Channel, ChannelStatus, RecordKind
from shoudan.reconciliation.generate import ChannelTxn, write_statement
from shoudan.reconciliation.models import ReconciliationException
from shoudan.reconciliation.service import ReconciliationService, StatementUpload
from shoudan.refunds.models import Refund, RefundApproval
from shoudan.refunds.service import RefundRequest
from tests.payments_world import CREDIT, PIN
from tests.refunds_world import RefundWorld, build_refund_world
from tests.test_deposits import CARD, ID_NUMBER, onboard, paid_deposit
from tests.test_web_staff_reviews import applied
from tests.web_world import accounts, migrated_sqlite, serve, shot


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RefundWorld]]:
    tmp = tmp_path_factory.mktemp("web-reviews")
    database = migrated_sqlite(tmp)
    rw = build_refund_world(database, tmp)
    try:
        with serve(rw.world.client.app) as base:  # type: ignore[arg-type]
            yield base, rw
    finally:
        database.dispose()


def sign_in(page: Any, base: str, rw: RefundWorld, username: str, *roles: Role) -> str:
    """Create a staff user and sign in through the login form; their user id."""
    user = accounts(rw.world).create_staff_user(username, roles)
    page.goto(f"{base}/staff/login")
    page.fill("#username", username)
    page.fill("#password", user.password)
    page.fill("#totp", pyotp.TOTP(user.totp_secret).at(rw.world.clock.now()))
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/staff")
    return user.user_id


def status_and_approvals(rw: RefundWorld, refund_id: str) -> tuple[str, int]:
    with rw.world.container.database.read() as session:
        refund = session.get_one(Refund, refund_id)
        approvals = session.scalars(
            select(RefundApproval).where(RefundApproval.refund_id == refund_id)
        ).all()
        return refund.status, len(approvals)


def test_two_approvers_approve_a_large_refund_and_makers_are_refused(
    browser: Any, page: Any, site: tuple[str, RefundWorld]
) -> None:
    base, rw = site
    card = {"pan": CREDIT, "expiry": "2912", "pin": PIN, "entry_mode": "chip"}
    payment = rw.earlier_payment(amount=5_000_000, card=card)
    rw.earlier_payment(amount=5_000_000)  # the merchant's balance covers the refund
    refund = rw.refund(payment_id=payment["id"], amount=5_000_000, reason="product_return")
    assert refund["approvals_required"] == 2
    detail = f"{base}/staff/refunds/{refund['id']}"

    sign_in(page, base, rw, "web.approver1", Role.APPROVER)
    page.click("a[href='/staff/refunds?status=in_review']")  # the console home's queue card
    page.wait_for_url(f"{base}/staff/refunds?status=in_review")
    assert refund["id"] in page.inner_text("#queue")
    shot(page, "staff-refunds-queue")
    page.click(f"text={refund['id']}")
    page.wait_for_url(detail)
    assert page.inner_text("#amount") == "¥50,000.00"
    assert page.locator("#risk tbody tr").count() >= 1
    shot(page, "staff-refund-detail")
    page.fill("#note", "退货单已核对")
    page.click("#approve")
    page.wait_for_url(f"{detail}?done=approved")
    assert page.is_visible("#done")
    assert status_and_approvals(rw, refund["id"]) == ("in_review", 1)
    # the first approver tries to give the second approval too: refused, nothing changes
    page.click("#approve")
    assert "第二次批准必须由另一人" in page.inner_text("#refusal")
    assert status_and_approvals(rw, refund["id"]) == ("in_review", 1)
    shot(page, "staff-refund-second-approval-refused")

    second = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        desk = second.new_page()
        sign_in(desk, base, rw, "web.approver2", Role.APPROVER)
        desk.goto(f"{base}/staff/refunds?status=awaiting_second")
        assert refund["id"] in desk.inner_text("#queue")
        shot(desk, "staff-refunds-awaiting-second")
        desk.goto(detail)
        desk.click("#approve")
        desk.wait_for_url(f"{detail}?done=approved")
        assert status_and_approvals(rw, refund["id"]) == ("approved", 2)
        shot(desk, "staff-refund-approved")
    finally:
        second.close()


def test_staff_cannot_approve_the_refund_they_requested(
    page: Any, site: tuple[str, RefundWorld]
) -> None:
    base, rw = site
    payment = rw.earlier_payment(amount=1_000_000)
    maker = sign_in(page, base, rw, "web.maker", Role.APPROVER, Role.REVIEWER)
    own = rw.world.container.refunds.request(
        Principal(maker, Role.APPROVER),
        RefundRequest(payment_id=payment["id"], amount=600_000, reason="duplicate"),
    )
    page.goto(f"{base}/staff/refunds/{own.id}?lang=en")
    page.click("#approve")
    assert "You requested this yourself" in page.inner_text("#refusal")
    assert status_and_approvals(rw, own.id) == ("in_review", 0)
    shot(page, "staff-refund-own-request-refused")


def test_other_queues_and_their_pages(
    page: Any, site: tuple[str, RefundWorld], tmp_path: Path
) -> None:
    base, rw = site
    c = rw.world.container
    merchant = onboard(rw, phone="13700003333", serial="SN-W-0001")
    paid_deposit(rw, merchant)
    request = c.deposits.request_refund(
        Principal("merchant-user", Role.MERCHANT, merchant.merchant_id),
        RefundRequestInput(merchant.serial, merchant.phone, ID_NUMBER, CARD[-4:], "停业"),
    )
    application = applied(rw, "13700004444")
    sale = rw.earlier_payment(amount=10_000)
    with c.database.read() as session:
        from shoudan.payments.models import Payment

        paid = session.get_one(Payment, sale["id"])
        txn = ChannelTxn(RecordKind.PAYMENT, ChannelStatus.SUCCESS, 10_100, paid.created_at,
                         paid.rrn, paid.id)  # fmt: skip
    statement = tmp_path / "unionpay.csv"
    with statement.open("w", encoding="utf-8", newline="") as out:
        write_statement(Channel.UNIONPAY, [txn], out)
    ReconciliationService(c.database, c.ledger, c.clock).import_statement(
        Principal("finance-key", Role.FINANCE),
        StatementUpload(statement, statement.name, Channel.UNIONPAY),
    )

    sign_in(page, base, rw, "web.admin", Role.ADMIN)
    page.goto(f"{base}/staff/deposit-refunds?status=in_review")
    shot(page, "staff-deposit-refunds-queue")
    page.click(f"text={request.id}")
    assert page.is_visible("#materials")
    shot(page, "staff-deposit-refund-detail")
    page.click("#approve")
    assert page.is_visible("#done")

    page.goto(f"{base}/staff/applications?status=in_review")
    shot(page, "staff-applications-queue")
    page.click(f"text={application}")
    assert "137****4444" in page.inner_text("#phone")
    shot(page, "staff-application-detail")

    page.goto(f"{base}/staff/reconciliation-exceptions?status=open")
    shot(page, "staff-reconciliation-exceptions-queue")
    with c.database.read() as session:
        mismatch = session.scalars(
            select(ReconciliationException.id).where(ReconciliationException.our_ref == paid.id)
        ).one()  # other tests' payments of that day are only in our records: more exceptions
    page.click(f"text={mismatch}")
    assert page.inner_text("#difference") == "¥1.00"
    page.select_option("#action", "write_off")
    page.fill("#reason", "银行手续费")
    page.click("#resolve")
    assert page.is_visible("#done") and page.is_visible("#resolution")
    shot(page, "staff-reconciliation-exception-resolved")

    page.goto(f"{base}/staff/refunds?status=abnormal")
    shot(page, "staff-refunds-abnormal-queue")
