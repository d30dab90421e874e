"""Deposits through the service, the outbox handlers, the worker's check and the HTTP API, on
SQLite and PostgreSQL: charge at activation, every refund path, blocked_debt and its
resumption by a later settlement, merchant requests and their review, concurrency — with the
ledger verified after each scenario."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from shoudan.auth.domain import Principal, Role
from shoudan.auth.service import create_api_key
from shoudan.core.db import Database
from shoudan.core.errors import DomainError
from shoudan.deposits import service as deposit_service
from shoudan.deposits.models import Deposit, DepositRefundRequest
from shoudan.deposits.service import DepositService, RefundRequestInput
from shoudan.gateway.simulator import Card
from shoudan.ledger import chart
from shoudan.ledger.domain import transfer
from shoudan.notifications.service import emit
from shoudan.notifications.service import stats as outbox_stats
from shoudan.onboarding.models import Contract
from shoudan.onboarding.service import (
    ApplicationInput,
    accept_contract,
    approve_application,
    generate_contract,
    submit_application,
    verify_phone,
)
from shoudan.onboarding.terms import DEFAULT_TERMS, ContractTerms, DepositCollection
from shoudan.pricing.domain import Product
from shoudan.sms.models import SmsMessage
from shoudan.terminals.service import TerminalInput, create_terminal
from shoudan.web.service import WebAccounts
from shoudan.webhooks.models import Event
from tests.gateway_world import start_gateway
from tests.payments_world import NOW
from tests.refunds_world import RefundWorld, build_refund_world

EPOS = DEFAULT_TERMS[Product.EPOS]  # ¥299 deposit, ¥50 penalty, ¥10 a month
SERIAL = "SN-A-0001"  # terminal TA000001 of merchant a in the payments world
ID_NUMBER = "11010519491231002X"
CARD = "6222020000000000018"


@pytest.fixture
def rw(database: Database, tmp_path: Path):
    world = build_refund_world(database, tmp_path)
    yield world
    world.run_worker()
    report = world.world.container.ledger.verify()
    assert report.violations == [], report.violations
    with world.world.container.database.read() as session:
        assert outbox_stats(session)["dead"] == 0  # every event had a handler that took it


def service(rw: RefundWorld) -> DepositService:
    return rw.world.container.deposits


def terms(**changes: object) -> ContractTerms:
    return replace(EPOS, **changes)  # type: ignore[arg-type]


def activate(
    rw: RefundWorld, *, at: datetime = NOW, contract: str = "ctr_a1", **changes: object
) -> Deposit:
    deposit = service(rw).activated(
        merchant_id=rw.world.merchant_a, serial_number=SERIAL, terminal_id=rw.world.terminal_a,
        contract_id=contract, terms=terms(**changes), activated_at=at,
    )  # fmt: skip
    assert deposit is not None
    return deposit


def upfront(rw: RefundWorld, serial: str = SERIAL, contract: str = "ctr_a1") -> Deposit:
    finance = Principal("finance-1", Role.FINANCE)
    return service(rw).record_upfront(
        finance, merchant_id=rw.world.merchant_a, serial_number=serial, contract_id=contract,
        terms=terms(deposit_collection=DepositCollection.UPFRONT),
        terminal_id=rw.world.terminal_a if serial == SERIAL else None,
    )  # fmt: skip


def credit(rw: RefundWorld, account_id: str) -> int:
    return rw.world.container.ledger.account(account_id).credit_balance


def debt(rw: RefundWorld) -> int:
    return rw.world.container.ledger.account(chart.merchant_debt(rw.world.merchant_a)).balance


def held(rw: RefundWorld) -> int:
    return credit(rw, chart.merchant_deposit(rw.world.merchant_a))


def settled(rw: RefundWorld) -> int:
    return credit(rw, chart.merchant_settled(rw.world.merchant_a))


def reload(rw: RefundWorld, deposit_id: str) -> Deposit:
    with rw.world.container.database.read() as session:
        row = session.get(Deposit, deposit_id)
        assert row is not None
        return row


def timeline(rw: RefundWorld, deposit_id: str) -> list[str]:
    detail = service(rw).get(Principal("admin", Role.ADMIN), deposit_id)
    return [h.to_status for h in detail.history]


def event_types(rw: RefundWorld, deposit_id: str) -> list[str]:
    with rw.world.container.database.read() as session:
        rows = session.scalars(select(Event).order_by(Event.created_at, Event.id))
        return [e.type for e in rows if deposit_id in e.data]


def owe(
    rw: RefundWorld, amount: int, entry_id: str = "fees-owed-1", merchant_id: str | None = None
) -> None:
    """The merchant (a, unless named) owes us something else (unpaid fees carried as debt)."""
    entry = transfer(entry_id, chart.merchant_debt(merchant_id or rw.world.merchant_a),
                     chart.fee_revenue("card"), amount)  # fmt: skip
    with rw.world.container.database.transaction() as session:
        rw.world.container.ledger.post(session, entry)


def pay_debt(rw: RefundWorld, amount: int, entry_id: str, merchant_id: str | None = None) -> None:
    """The merchant pays its debt by bank transfer (not through a settlement)."""
    entry = transfer(entry_id, chart.BANK_SETTLEMENT,
                     chart.merchant_debt(merchant_id or rw.world.merchant_a), amount)  # fmt: skip
    with rw.world.container.database.transaction() as session:
        rw.world.container.ledger.post(session, entry)


def settle(rw: RefundWorld, collection_id: str) -> None:
    """A later settlement: it collects the merchant's debt from its balance."""
    service(rw).collect_merchant_debt(rw.world.merchant_a, collection_id)


# -- charge ------------------------------------------------------------------------------------
def test_activation_charges_the_deposit_as_debt_once(rw: RefundWorld) -> None:
    deposit = activate(rw)
    again = activate(rw)
    assert again.id == deposit.id
    assert (deposit.status, deposit.outstanding, deposit.amount) == ("charged", 29_900, 29_900)
    assert (debt(rw), held(rw)) == (29_900, 29_900)
    rw.run_worker()
    assert event_types(rw, deposit.id) == ["deposit.charged"]
    with rw.world.container.database.read() as session:
        texts = [m.text for m in session.scalars(select(SmsMessage))]
    assert any("SN-A-0001" in t and "¥299.00" in t for t in texts)


def test_no_deposit_when_the_contract_has_none(rw: RefundWorld) -> None:
    result = service(rw).activated(
        merchant_id=rw.world.merchant_a, serial_number=SERIAL, terminal_id=rw.world.terminal_a,
        contract_id="ctr_free", terms=terms(deposit_amount=0), activated_at=NOW,
    )  # fmt: skip
    assert result is None and debt(rw) == 0


def test_upfront_payment_then_activation(rw: RefundWorld) -> None:
    bank = rw.world.container.ledger.account(chart.BANK_SETTLEMENT).balance
    deposit = upfront(rw)
    assert upfront(rw).id == deposit.id  # recorded twice: once
    assert (deposit.status, deposit.outstanding) == ("held", 0)
    assert rw.world.container.ledger.account(chart.BANK_SETTLEMENT).balance == bank + 29_900
    activated = activate(rw, deposit_collection=DepositCollection.UPFRONT)
    assert activated.id == deposit.id and activated.activated_at is not None
    assert (debt(rw), held(rw)) == (0, 29_900)


def test_upfront_payment_only_for_finance_staff(rw: RefundWorld) -> None:
    merchant = Principal("k", Role.MERCHANT, rw.world.merchant_a)
    with pytest.raises(DomainError) as error:
        service(rw).record_upfront(merchant, merchant_id=rw.world.merchant_a,
                                   serial_number=SERIAL, contract_id="c", terms=EPOS)  # fmt: skip
    assert error.value.code.value == "forbidden"


# -- target reached ------------------------------------------------------------------------------
def test_target_reached_exactly_after_one_fen_short(rw: RefundWorld) -> None:
    deposit = activate(rw, at=NOW - timedelta(hours=1), activation_target=30_000)
    rw.world.pay(amount=20_000)
    rw.world.pay(amount=9_999)
    rw.world.pay(amount=5_000, method="wechat", card=None, auth_code="134567890123456789")
    rw.run_worker()
    short = reload(rw, deposit.id)
    assert (short.status, short.card_volume) == ("charged", 29_999)  # QR does not count
    rw.world.pay(amount=1)
    rw.run_worker()
    done = reload(rw, deposit.id)
    assert (done.status, done.basis, done.refund_amount) == ("refunded", "target_reached", 29_900)
    assert done.card_volume == 30_000
    # never paid: the refund cancels the debt, nothing reaches the settled balance
    assert (debt(rw), held(rw), settled(rw)) == (0, 0, 0)
    assert timeline(rw, deposit.id) == ["charged", "refunded"]
    assert event_types(rw, deposit.id) == ["deposit.charged", "deposit.refunded"]


def test_a_later_settlement_collects_then_the_target_refunds_to_settled(rw: RefundWorld) -> None:
    deposit = activate(rw, at=NOW - timedelta(hours=1), activation_target=200_000)
    rw.world.pay(amount=100_000)
    rw.run_worker()
    unsettled = credit(rw, chart.merchant_unsettled(rw.world.merchant_a))
    settle(rw, "settle-2026-11-23")
    settle(rw, "settle-2026-11-23")  # the same run again: nothing more
    assert credit(rw, chart.merchant_unsettled(rw.world.merchant_a)) == unsettled - 29_900
    paid = reload(rw, deposit.id)
    assert (paid.status, paid.outstanding, debt(rw)) == ("held", 0, 0)
    rw.world.pay(amount=100_000)
    rw.run_worker()
    assert reload(rw, deposit.id).status == "refunded"
    assert (settled(rw), held(rw)) == (29_900, 0)
    assert timeline(rw, deposit.id) == ["charged", "held", "refunded"]


def test_volume_outside_the_window_or_voided_does_not_count(rw: RefundWorld) -> None:
    # activated 181 days ago (Shanghai days): today is outside the window
    deposit = activate(rw, at=NOW - timedelta(days=181), activation_target=10_000)
    rw.world.pay(amount=50_000)
    rw.run_worker()
    assert reload(rw, deposit.id).status == "charged"
    inside = service(rw).activated(
        merchant_id=rw.world.merchant_a, serial_number="SN-A-0002",
        terminal_id=rw.world.terminal_a2, contract_id="ctr_a2",
        terms=terms(activation_target=10_000), activated_at=NOW - timedelta(hours=2),
    )  # fmt: skip
    assert inside is not None
    payment = rw.world.pay(amount=50_000, terminal_id=rw.world.terminal_a2)
    response = rw.client.post(f"/v1/payments/{payment['id']}/void", headers=rw.headers("a"))
    assert response.status_code == 200, response.text
    assert service(rw).run_checks().refunded == 0  # the periodic job agrees
    assert reload(rw, inside.id).card_volume == 0


def test_the_periodic_job_finds_the_target(rw: RefundWorld) -> None:
    rw.world.pay(amount=40_000)  # before the deposit exists: only the job can see it
    deposit = activate(rw, at=NOW - timedelta(hours=1), activation_target=40_000)
    stats = service(rw).run_checks()
    assert stats.refunded == 1
    assert reload(rw, deposit.id).status == "refunded"


# -- cooling-off and termination ------------------------------------------------------------------
@pytest.mark.parametrize(("days", "refund"), [(30, 29_900), (31, 24_900)])
def test_cooling_off_day_n_and_n_plus_one(rw: RefundWorld, days: int, refund: int) -> None:
    deposit = upfront(rw)
    delivered = NOW - timedelta(days=days)  # same Shanghai time of day: day `days`
    service(rw).returned(serial_number=SERIAL, contract_id="ctr_a1", condition="unused",
                         delivered_at=delivered, returned_at=NOW)  # fmt: skip
    closed = reload(rw, deposit.id)
    assert (closed.status, closed.refund_amount) == ("refunded", refund)
    assert settled(rw) == refund
    assert credit(rw, chart.DEPOSIT_PENALTY_REVENUE) == 29_900 - refund
    assert closed.basis == ("cooling_off" if days == 30 else "termination")


def test_termination_takes_penalty_and_started_months(rw: RefundWorld) -> None:
    deposit = upfront(rw)
    activate(rw, at=NOW - timedelta(days=40), deposit_collection=DepositCollection.UPFRONT)
    service(rw).terminated(serial_number=SERIAL, contract_id="ctr_a1", terminated_at=NOW)
    closed = reload(rw, deposit.id)
    # 40 days after activation: month 2 has started
    assert (closed.refund_amount, closed.penalty_amount, closed.depreciation_amount) == (
        29_900 - 5_000 - 2_000, 5_000, 2_000,
    )  # fmt: skip
    assert credit(rw, chart.DEPOSIT_DEPRECIATION_REVENUE) == 2_000
    assert settled(rw) == 22_900
    # a later termination event (after the return, say) changes nothing
    service(rw).terminated(serial_number=SERIAL, contract_id="ctr_a1", terminated_at=NOW)
    assert settled(rw) == 22_900


def test_old_device_forfeits_everything(rw: RefundWorld) -> None:
    deposit = upfront(rw)
    activate(rw, at=NOW - timedelta(days=800), deposit_collection=DepositCollection.UPFRONT)
    service(rw).returned(serial_number=SERIAL, contract_id="ctr_a1", condition="damaged",
                         delivered_at=NOW - timedelta(days=801), returned_at=NOW)  # fmt: skip
    closed = reload(rw, deposit.id)
    assert (closed.status, closed.refund_amount) == ("forfeited", 0)
    assert credit(rw, chart.DEPOSIT_PENALTY_REVENUE) == 5_000
    assert credit(rw, chart.DEPOSIT_DEPRECIATION_REVENUE) == 24_900
    assert (settled(rw), held(rw)) == (0, 0)


def test_termination_of_an_unpaid_deposit_leaves_the_kept_part_owed(rw: RefundWorld) -> None:
    deposit = activate(rw, at=NOW - timedelta(days=10))
    service(rw).terminated(serial_number=SERIAL, contract_id="ctr_a1", terminated_at=NOW)
    closed = reload(rw, deposit.id)
    assert (closed.status, closed.refund_amount, closed.outstanding) == ("refunded", 23_900, 6_000)
    assert (debt(rw), settled(rw)) == (6_000, 0)  # penalty + one month, still owed
    rw.world.pay(amount=10_000)
    settle(rw, "settle-1")
    assert debt(rw) == 0 and reload(rw, deposit.id).outstanding == 0


def test_a_device_without_deposit_is_ignored(rw: RefundWorld) -> None:
    result = service(rw).returned(serial_number="SN-NONE", contract_id="c", condition="unused",
                                  delivered_at=NOW, returned_at=NOW)  # fmt: skip
    assert result is None


# -- blocked by debt ---------------------------------------------------------------------------
def test_blocked_while_owing_and_resumed_by_the_settlement(rw: RefundWorld) -> None:
    deposit = upfront(rw)
    owe(rw, 1_500)
    service(rw).returned(serial_number=SERIAL, contract_id="ctr_a1", condition="unused",
                         delivered_at=NOW - timedelta(days=3), returned_at=NOW)  # fmt: skip
    blocked = reload(rw, deposit.id)
    assert (blocked.status, blocked.refund_amount) == ("blocked_debt", 29_900)
    assert held(rw) == 29_900 and settled(rw) == 0
    assert service(rw).run_checks().resumed == 0  # still owing
    rw.world.pay(amount=10_000)
    settle(rw, "settle-a")  # collects 1 500 and resumes at once
    done = reload(rw, deposit.id)
    assert done.status == "refunded"
    assert (debt(rw), held(rw), settled(rw)) == (0, 0, 29_900)
    assert timeline(rw, deposit.id) == ["held", "blocked_debt", "refunded"]
    rw.run_worker()
    assert event_types(rw, deposit.id) == ["deposit.paid", "deposit.blocked", "deposit.refunded"]


def test_the_periodic_job_resumes_when_the_debt_is_paid_otherwise(rw: RefundWorld) -> None:
    deposit = upfront(rw)
    owe(rw, 700)
    service(rw).terminated(serial_number=SERIAL, contract_id="ctr_a1", terminated_at=NOW)
    assert reload(rw, deposit.id).status == "blocked_debt"
    paid = transfer("bank-paid-debt", chart.BANK_SETTLEMENT,
                    chart.merchant_debt(rw.world.merchant_a), 700)  # fmt: skip
    with rw.world.container.database.transaction() as session:
        rw.world.container.ledger.post(session, paid)
    assert service(rw).run_checks().resumed == 1
    assert reload(rw, deposit.id).status == "refunded"


def test_an_unpaid_deposit_alone_does_not_block(rw: RefundWorld) -> None:
    first = activate(rw, at=NOW - timedelta(hours=1), activation_target=10_000)
    other = service(rw).activated(
        merchant_id=rw.world.merchant_a, serial_number="SN-A-0002",
        terminal_id=rw.world.terminal_a2, contract_id="ctr_a3", terms=EPOS, activated_at=NOW,
    )  # fmt: skip
    assert other is not None
    rw.world.pay(amount=10_000)
    rw.run_worker()
    assert reload(rw, first.id).status == "refunded"  # the other terminal's deposit is no debt
    assert debt(rw) == 29_900


# -- merchant requests: the onboarded merchant ---------------------------------------------------
@dataclass
class Onboarded:
    merchant_id: str
    contract_id: str
    key: str
    serial: str
    terminal_id: str
    phone: str


def onboard(
    rw: RefundWorld, phone: str = "13700001234", serial: str = "SN-C-0001", terminal: bool = True
) -> Onboarded:
    """An applicant through onboarding: apply, verify the phone by SMS code, KYC, approval,
    contract accepted; then (``terminal``) a terminal for it, created directly."""
    container, clock = rw.world.container, rw.world.clock
    application = ApplicationInput(
        applicant_name="张三", phone=phone, province="上海", city="上海", product="epos",
        merchant_type="individual", id_number=ID_NUMBER, bank_card=CARD,
        business_name="张三小吃", business_address="上海市黄浦区南京东路1号", area_code="3100",
    )  # fmt: skip
    submitted = submit_application(container.database, container.vault, container.sms,
                                   application, clock=clock)  # fmt: skip
    code = re.search(r"\d{6}", container.sms.list_inbox(phone)[0].text)  # type: ignore[attr-defined]
    assert code is not None
    app_id = submitted.application.id
    verify_phone(container.database, container.vault, container.real_name_verifier, app_id,
                 submitted.application_token, code.group(0), clock=clock)  # fmt: skip
    with container.database.transaction() as session:
        approved = approve_application(session, container.vault, container.ledger, app_id,
                                       actor="staff-1", clock=clock)  # fmt: skip
        merchant_id = approved.merchant_id
        assert merchant_id is not None
        contract_id = session.scalars(
            select(Contract.contract_id).where(Contract.merchant_id == merchant_id)
        ).one()
        accept_contract(session, contract_id, merchant_id=merchant_id, ip="127.0.0.1",
                        user_agent="pytest", clock=clock)  # fmt: skip
        terminal_id = "TC" + serial[-6:].replace("-", "0")
        if terminal:
            create_terminal(session, container.vault,
                            TerminalInput(serial, terminal_id, "epos", merchant_id, None),
                            actor="test", clock=clock)  # fmt: skip
        key = create_api_key(session, role=Role.MERCHANT, merchant_id=merchant_id, name="c")[1]
    return Onboarded(merchant_id, contract_id, key, serial, terminal_id, phone)


def paid_deposit(rw: RefundWorld, merchant: Onboarded) -> Deposit:
    response = rw.client.post(
        f"/v1/terminals/{merchant.serial}/deposit/upfront",
        json={"merchant_id": merchant.merchant_id, "contract_id": merchant.contract_id},
        headers=rw.headers("finance"),
    )
    assert response.status_code == 200, response.text
    deposit = service(rw).activated_under_contract(
        merchant_id=merchant.merchant_id, serial_number=merchant.serial,
        terminal_id=merchant.terminal_id, contract_id=merchant.contract_id, activated_at=NOW,
    )  # fmt: skip
    assert deposit is not None
    return deposit


def ask(rw: RefundWorld, merchant: Onboarded, expect: int = 201, **changes: str) -> dict:
    body = {"serial_number": merchant.serial, "phone": merchant.phone, "id_number": ID_NUMBER,
            "bank_card_last4": CARD[-4:], "reason": "closing the shop", **changes}  # fmt: skip
    response = rw.client.post("/v1/deposit-refunds", json=body,
                              headers={"Authorization": f"Bearer {merchant.key}"})  # fmt: skip
    assert response.status_code == expect, response.text
    return response.json()


def test_request_reviewed_and_refunded_to_the_verified_card(rw: RefundWorld) -> None:
    merchant = onboard(rw)
    deposit = paid_deposit(rw, merchant)
    mine = {"Authorization": f"Bearer {merchant.key}"}
    shown = rw.client.get(f"/v1/terminals/{merchant.serial}/deposit", headers=mine).json()
    assert (shown["status"], shown["amount"], shown["request_deadline"]) == (
        "held", 29_900, "2027-11-23",
    )  # fmt: skip
    request = ask(rw, merchant)
    assert (request["status"], request["deposit"]["status"]) == ("in_review", "in_review")
    assert ask(rw, merchant, 409)["code"] == "deposit_refund_in_progress"
    # another merchant sees nothing; a merchant cannot review
    other = rw.client.get(f"/v1/deposit-refunds/{request['id']}", headers=rw.headers("b"))
    assert other.status_code == 404
    assert rw.client.get(f"/v1/terminals/{merchant.serial}/deposit",
                         headers=rw.headers("b")).status_code == 404  # fmt: skip
    denied = rw.client.post(f"/v1/deposit-refunds/{request['id']}/approve", headers=mine)
    assert denied.status_code == 403
    approved = rw.client.post(f"/v1/deposit-refunds/{request['id']}/approve",
                              json={"note": "ok"}, headers=rw.headers("approver1"))  # fmt: skip
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert (body["status"], body["deposit"]["status"]) == ("approved", "refunded")
    # asked on the activation day: penalty and the first month
    assert body["deposit"]["refund_amount"] == 29_900 - 5_000 - 1_000
    account = chart.merchant_settled(merchant.merchant_id)
    assert credit(rw, account) == 23_900
    again = rw.client.post(f"/v1/deposit-refunds/{request['id']}/approve",
                           headers=rw.headers("approver2"))  # fmt: skip
    assert again.status_code == 409
    rw.run_worker()
    types = event_types(rw, deposit.id)
    assert types == ["deposit.paid", "deposit.refund_requested", "deposit.refunded"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"phone": "13700009999"}, "phone"),
        ({"id_number": "110105194912310021"}, "id_number"),
        ({"bank_card_last4": "0019"}, "bank_card_last4"),
    ],
)
def test_mismatched_materials_are_named_and_change_nothing(
    rw: RefundWorld, change: dict[str, str], field: str
) -> None:
    merchant = onboard(rw)
    deposit = paid_deposit(rw, merchant)
    problem = ask(rw, merchant, 422, **change)
    assert (problem["code"], problem["field"]) == ("deposit_materials_mismatch", field)
    assert reload(rw, deposit.id).status == "held"
    with rw.world.container.database.read() as session:
        assert session.scalars(select(DepositRefundRequest)).all() == []


def test_request_deadline_and_rejection(rw: RefundWorld) -> None:
    merchant = onboard(rw)
    deposit = paid_deposit(rw, merchant)
    request = ask(rw, merchant)
    rejected = rw.client.post(f"/v1/deposit-refunds/{request['id']}/reject",
                              json={"note": "still in use"}, headers=rw.headers("reviewer"))
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["deposit"]["status"] == "held"
    no_reason = rw.client.post(f"/v1/deposit-refunds/{request['id']}/reject", json={},
                               headers=rw.headers("reviewer"))  # fmt: skip
    assert no_reason.status_code == 422
    rw.later(timedelta(days=365))  # day 365: still in time
    second = ask(rw, merchant)
    rw.client.post(f"/v1/deposit-refunds/{second['id']}/reject", json={"note": "no"},
                   headers=rw.headers("reviewer"))  # fmt: skip
    rw.later(timedelta(days=1))  # day 366
    assert ask(rw, merchant, 422)["code"] == "deposit_refund_deadline_passed"
    assert reload(rw, deposit.id).status == "held"


def test_approval_needs_a_verified_card_and_another_person(rw: RefundWorld) -> None:
    merchant = onboard(rw, phone="13700000000", serial="SN-C-0002")  # KYC fails: unverified
    paid_deposit(rw, merchant)
    reviewer = Principal(rw.staff_ids["reviewer"], Role.REVIEWER)
    request = service(rw).request_refund(reviewer, RefundRequestInput(
        merchant.serial, merchant.phone, ID_NUMBER, CARD[-4:], "on the merchant's behalf",
    ))  # fmt: skip
    own = rw.client.post(f"/v1/deposit-refunds/{request.id}/approve",
                         headers=rw.headers("reviewer"))  # fmt: skip
    assert own.json()["code"] == "self_approval"
    unverified = rw.client.post(f"/v1/deposit-refunds/{request.id}/approve",
                                headers=rw.headers("approver1"))  # fmt: skip
    assert unverified.status_code == 422
    assert unverified.json()["code"] == "settlement_account_not_verified"


def test_a_staff_member_never_approves_what_they_asked_for_with_another_login(
    rw: RefundWorld,
) -> None:
    """Asked in the console, approved with an API key of the same person: refused."""
    container = rw.world.container
    accounts = WebAccounts(container.database, container.vault, container.clock)
    li = accounts.create_staff_user("li.reviewer", (Role.REVIEWER,)).user_id
    with container.database.transaction() as session:
        key = create_api_key(session, role=Role.REVIEWER, person_id=li)[1]
    merchant = onboard(rw, phone="13700000000", serial="SN-C-0002")
    paid_deposit(rw, merchant)
    request = service(rw).request_refund(Principal(li, Role.REVIEWER), RefundRequestInput(
        merchant.serial, merchant.phone, ID_NUMBER, CARD[-4:], "on the merchant's behalf",
    ))  # fmt: skip
    own = rw.client.post(f"/v1/deposit-refunds/{request.id}/approve",
                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert own.status_code == 403 and own.json()["code"] == "self_approval"


def test_two_requests_at_once_make_one(rw: RefundWorld) -> None:
    merchant = onboard(rw)
    paid_deposit(rw, merchant)
    principal = Principal("merchant-user", Role.MERCHANT, merchant.merchant_id)
    data = RefundRequestInput(merchant.serial, merchant.phone, ID_NUMBER, CARD[-4:], "two")

    def request(_: int) -> str:
        try:
            service(rw).request_refund(principal, data)
        except DomainError as error:
            return error.code.value
        return "accepted"

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = Counter(pool.map(request, range(4)))
    assert outcomes == {"accepted": 1, "deposit_refund_in_progress": 3}
    with rw.world.container.database.read() as session:
        assert len(session.scalars(select(DepositRefundRequest)).all()) == 1


def test_handlers_turn_terminal_events_into_deposit_moves(rw: RefundWorld) -> None:
    merchant = onboard(rw)
    with rw.world.container.database.transaction() as session:
        common = {"serial_number": merchant.serial, "terminal_id": merchant.terminal_id,
                  "merchant_id": merchant.merchant_id, "contract_id": merchant.contract_id,
                  "product": "epos"}  # fmt: skip
        emit(session, "terminal.activated", {**common, "activated_at": NOW.isoformat()},
             clock=rw.world.clock)  # fmt: skip
    rw.run_worker()
    mine = {"Authorization": f"Bearer {merchant.key}"}
    shown = rw.client.get(f"/v1/terminals/{merchant.serial}/deposit", headers=mine).json()
    assert (shown["status"], shown["outstanding"]) == ("charged", 29_900)
    with rw.world.container.database.transaction() as session:
        emit(session, "terminal.returned", {
            **common, "condition": "unused", "delivered_at": NOW.isoformat(),
            "activated_at": NOW.isoformat(), "returned_at": (NOW + timedelta(days=2)).isoformat(),
        }, clock=rw.world.clock)  # fmt: skip
    rw.run_worker()
    shown = rw.client.get(f"/v1/terminals/{merchant.serial}/deposit", headers=mine).json()
    assert (shown["status"], shown["basis"], shown["refund_amount"]) == (
        "refunded", "cooling_off", 29_900,
    )  # fmt: skip
    assert credit(rw, chart.merchant_debt(merchant.merchant_id)) == 0


# -- end to end: onboarding, the device lifecycle, the gateway, settlement --------------------
def test_apply_to_deposit_refunded_end_to_end(rw: RefundWorld) -> None:
    """Application → approval → contract accepted → import → allocate → ship → deliver →
    first sign-on through the gateway → deposit charged → card sales → a settlement collects
    the deposit → the target is reached → deposit refunded to the settled balance."""
    merchant = onboard(rw, serial="SN-E-0001", terminal=False)
    container, clock = rw.world.container, rw.world.clock
    with container.database.transaction() as session:  # a contract with a small target
        contract = generate_contract(
            session, merchant_id=merchant.merchant_id, product="epos", clock=clock,
            actor="staff-1", terms=terms(activation_target=60_000),
        )  # fmt: skip
        accept_contract(session, contract.contract_id, merchant_id=merchant.merchant_id,
                        ip="127.0.0.1", user_agent="pytest", clock=clock)  # fmt: skip
    staff = rw.headers("admin")
    imported = rw.client.post("/v1/terminals/import", content=b"serial_number,product\n"
                              b"SN-E-0001,epos\n", headers={**staff, "Content-Type": "text/csv"})
    assert imported.status_code == 201, imported.text
    allocation = rw.client.post("/v1/terminals/SN-E-0001/allocate", headers=staff, json={
        "merchant_id": merchant.merchant_id, "contract_id": contract.contract_id})
    assert allocation.status_code == 200, allocation.text
    terminal_id = allocation.json()["terminal_id"]
    master_key = bytes.fromhex(allocation.json()["master_key"])
    for action, body in (("ship", {"carrier": "SF", "tracking_number": "SF123456"}),
                         ("deliver", {})):
        moved = rw.client.post(f"/v1/terminals/SN-E-0001/{action}", headers=staff, json=body)
        assert moved.status_code == 200, moved.text
    mine = {"Authorization": f"Bearer {merchant.key}"}
    gateway = start_gateway(rw.world)
    try:
        pos = gateway.terminal(terminal_id, merchant.merchant_id)
        clock.advance(timedelta(minutes=5))
        assert pos.client.sign_on(master_key).code == "00"
        rw.run_worker()
        deposit = rw.client.get("/v1/terminals/SN-E-0001/deposit", headers=mine).json()
        assert (deposit["status"], deposit["outstanding"]) == ("charged", 29_900)
        assert pos.client.sale(Card(pan=CARD, pin="123456"), 50_000).code == "00"
        rw.run_worker()
        settle_id = f"settle:{merchant.merchant_id}:2026-11-23"
        service(rw).collect_merchant_debt(merchant.merchant_id, settle_id)
        deposit = rw.client.get("/v1/terminals/SN-E-0001/deposit", headers=mine).json()
        assert (deposit["status"], deposit["card_volume"]) == ("held", 50_000)
        assert pos.client.sale(Card(pan=CARD, pin="123456"), 10_000).code == "00"
        rw.run_worker()
    finally:
        gateway.background.stop()
    deposit = rw.client.get("/v1/terminals/SN-E-0001/deposit", headers=mine).json()
    assert (deposit["status"], deposit["basis"], deposit["refund_amount"]) == (
        "refunded", "target_reached", 29_900,
    )  # fmt: skip
    assert [s["status"] for s in deposit["timeline"]] == ["charged", "held", "refunded"]
    assert credit(rw, chart.merchant_settled(merchant.merchant_id)) == 29_900
    assert credit(rw, chart.merchant_deposit(merchant.merchant_id)) == 0
    assert rw.world.container.ledger.verify().violations == []


# -- review fixes: money received twice, events out of order, late facts, locks, paging ----------
@pytest.mark.parametrize("sales", [100_000, 10_000], ids=["all-collected", "part-collected"])
def test_an_upfront_payment_after_a_settlement_collected_is_booked_in_full(
    rw: RefundWorld, sales: int
) -> None:
    """Charged at activation, then (partly) collected by the first settlement; the merchant's
    ¥299 bank transfer arrives after that: all of it is booked, the excess is the merchant's."""
    deposit = activate(rw, at=NOW - timedelta(hours=1))
    rw.world.pay(amount=sales)
    settle(rw, "settle-1")
    owed = reload(rw, deposit.id).outstanding
    assert owed == 0 if sales == 100_000 else 0 < owed < 29_900
    bank = rw.world.container.ledger.account(chart.BANK_SETTLEMENT).balance
    before = settled(rw)
    paid = upfront(rw)
    assert upfront(rw).id == paid.id  # the same payment recorded again: nothing more
    assert rw.world.container.ledger.account(chart.BANK_SETTLEMENT).balance == bank + 29_900
    assert settled(rw) - before == 29_900 - owed  # returned to the merchant by its payout
    assert (paid.status, paid.outstanding, debt(rw), held(rw)) == ("held", 0, 0, 29_900)


def terminal_event(rw: RefundWorld, merchant: Onboarded, topic: str, **data: object) -> None:
    common = {"serial_number": merchant.serial, "terminal_id": merchant.terminal_id,
              "merchant_id": merchant.merchant_id, "contract_id": merchant.contract_id,
              "product": "epos"}  # fmt: skip
    moments = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}
    with rw.world.container.database.transaction() as session:
        emit(session, topic, {**common, **moments}, clock=rw.world.clock)


def test_a_return_handled_before_its_activation_waits_for_it(rw: RefundWorld) -> None:
    merchant = onboard(rw)
    terminal_event(rw, merchant, "terminal.returned", condition="unused", delivered_at=NOW,
                   activated_at=NOW, returned_at=NOW + timedelta(days=2))  # fmt: skip
    rw.run_worker()
    with rw.world.container.database.read() as session:
        assert session.scalars(select(Deposit)).all() == []
        assert outbox_stats(session)["pending"] == 1  # retried later, not consumed
    terminal_event(rw, merchant, "terminal.activated", activated_at=NOW)
    rw.run_worker()
    rw.later(timedelta(hours=2))  # past the retry's backoff
    rw.run_worker()
    mine = {"Authorization": f"Bearer {merchant.key}"}
    shown = rw.client.get(f"/v1/terminals/{merchant.serial}/deposit", headers=mine).json()
    assert (shown["status"], shown["basis"], shown["refund_amount"]) == (
        "refunded", "cooling_off", 29_900,
    )  # fmt: skip
    assert debt_of(rw, merchant.merchant_id) == 0


def debt_of(rw: RefundWorld, merchant_id: str) -> int:
    return rw.world.container.ledger.account(chart.merchant_debt(merchant_id)).balance


def test_an_upfront_deposit_returned_before_its_activation_counts_depreciation(
    rw: RefundWorld,
) -> None:
    merchant = onboard(rw)
    response = rw.client.post(
        f"/v1/terminals/{merchant.serial}/deposit/upfront",
        json={"merchant_id": merchant.merchant_id, "contract_id": merchant.contract_id},
        headers=rw.headers("finance"),
    )
    assert response.status_code == 200, response.text
    activated = NOW - timedelta(days=40)  # month 2 started
    terminal_event(rw, merchant, "terminal.returned", condition="used",
                   delivered_at=activated, activated_at=activated, returned_at=NOW)  # fmt: skip
    rw.run_worker()
    terminal_event(rw, merchant, "terminal.activated", activated_at=activated)  # late
    rw.run_worker()
    closed = reload(rw, response.json()["id"])
    assert (closed.status, closed.refund_amount, closed.depreciation_amount) == (
        "refunded", 29_900 - 5_000 - 2_000, 2_000,
    )  # fmt: skip
    assert closed.activated_at == activated
    assert credit(rw, chart.merchant_settled(merchant.merchant_id)) == 22_900
    assert debt_of(rw, merchant.merchant_id) == 0  # the late activation charged nothing


def test_a_blocked_request_pays_the_cooling_off_of_a_later_return(rw: RefundWorld) -> None:
    """Approved on day 5 while owing a ¥3 fee (blocked: −¥50 −¥10); returned unused on day 10
    (cooling-off: all of it); the debt cleared: the merchant gets ¥299."""
    merchant = onboard(rw)
    deposit = paid_deposit(rw, merchant)
    owe(rw, 300, merchant_id=merchant.merchant_id)
    rw.later(timedelta(days=5))
    request = ask(rw, merchant)
    approved = rw.client.post(f"/v1/deposit-refunds/{request['id']}/approve",
                              headers=rw.headers("approver1"))  # fmt: skip
    assert approved.json()["deposit"]["status"] == "blocked_debt", approved.text
    assert approved.json()["deposit"]["refund_amount"] == 23_900
    rw.later(timedelta(days=5))
    service(rw).returned(serial_number=merchant.serial, contract_id=merchant.contract_id,
                         condition="unused", delivered_at=NOW,
                         returned_at=rw.world.clock.now())  # fmt: skip
    blocked = reload(rw, deposit.id)
    assert (blocked.status, blocked.basis, blocked.refund_amount) == (
        "blocked_debt", "cooling_off", 29_900,
    )  # fmt: skip
    pay_debt(rw, 300, "bank-paid-fee", merchant.merchant_id)
    assert service(rw).run_checks().resumed == 1
    assert reload(rw, deposit.id).status == "refunded"
    assert credit(rw, chart.merchant_settled(merchant.merchant_id)) == 29_900


def test_a_target_found_while_blocked_refunds_in_full(rw: RefundWorld) -> None:
    rw.world.pay(amount=40_000)  # before the deposit exists: only the periodic job sees it
    deposit = activate(rw, at=NOW - timedelta(hours=1), activation_target=40_000)
    owe(rw, 300)
    service(rw).terminated(serial_number=SERIAL, contract_id="ctr_a1", terminated_at=NOW)
    assert (reload(rw, deposit.id).status, reload(rw, deposit.id).basis) == (
        "blocked_debt", "termination",
    )  # fmt: skip
    service(rw).run_checks()
    found = reload(rw, deposit.id)
    assert (found.status, found.basis, found.refund_amount) == (
        "blocked_debt", "target_reached", 29_900,
    )  # fmt: skip
    pay_debt(rw, 300, "bank-paid-fee")
    assert service(rw).run_checks().resumed == 1
    assert reload(rw, deposit.id).status == "refunded"
    assert (debt(rw), held(rw), settled(rw)) == (0, 0, 0)  # never paid: all of it cancelled


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll for a state the test needs (not a timing assumption): fail if it never comes."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the expected state never came"
        time.sleep(0.01)


def test_an_approval_waits_for_a_settlement_collecting_the_debt(
    pg_database: Database, tmp_path: Path
) -> None:
    """PostgreSQL (SQLite has one writer at a time: no race there). A settlement holds the
    merchant's accounts and clears its debt; an approval at that moment waits for it and then
    pays, instead of reading the old debt and blocking the deposit with nothing to resume it."""
    rw = build_refund_world(pg_database, tmp_path)
    merchant = onboard(rw)
    deposit = paid_deposit(rw, merchant)
    owe(rw, 300, merchant_id=merchant.merchant_id)
    request = ask(rw, merchant)
    approver = Principal(rw.staff_ids["approver1"], Role.APPROVER)
    container = rw.world.container

    def approval_waits() -> bool:
        with container.database.read() as session:
            waiting = session.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )).scalar_one()  # fmt: skip
        return bool(waiting)

    with ThreadPoolExecutor(max_workers=1) as pool:
        with container.database.transaction() as session:
            container.ledger.post(session, transfer(
                "settled-fee", chart.BANK_SETTLEMENT, chart.merchant_debt(merchant.merchant_id),
                300,
            ))  # fmt: skip
            approval = pool.submit(service(rw).approve, approver, request["id"])
            wait_until(lambda: approval.done() or approval_waits())
        approval.result()
    closed = reload(rw, deposit.id)
    assert (closed.status, closed.refund_amount) == ("refunded", 23_900)
    assert container.ledger.verify().violations == []


def test_the_periodic_job_pages_through_every_target(
    rw: RefundWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deposit_service, "CHECK_BATCH", 1)
    rw.world.pay(amount=40_000)
    rw.world.pay(amount=40_000, terminal_id=rw.world.terminal_a2)
    first = activate(rw, at=NOW - timedelta(hours=1), activation_target=40_000)
    second = service(rw).activated(
        merchant_id=rw.world.merchant_a, serial_number="SN-A-0002",
        terminal_id=rw.world.terminal_a2, contract_id="ctr_a2",
        terms=terms(activation_target=40_000), activated_at=NOW - timedelta(hours=1),
    )  # fmt: skip
    assert second is not None
    assert service(rw).run_checks().refunded == 2
    assert {reload(rw, d.id).status for d in (first, second)} == {"refunded"}


def test_the_periodic_job_resumes_every_blocked_merchant(
    rw: RefundWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deposit_service, "CHECK_BATCH", 1)
    finance = Principal("finance-1", Role.FINANCE)
    ids = []
    for merchant_id, serial in ((rw.world.merchant_a, SERIAL), (rw.world.merchant_b, "SN-B-0001")):
        deposit = service(rw).record_upfront(
            finance, merchant_id=merchant_id, serial_number=serial, contract_id=f"ctr-{serial}",
            terms=terms(deposit_collection=DepositCollection.UPFRONT),
        )  # fmt: skip
        owe(rw, 300, f"fees-{serial}", merchant_id)
        service(rw).terminated(serial_number=serial, contract_id=f"ctr-{serial}",
                               terminated_at=NOW)  # fmt: skip
        assert reload(rw, deposit.id).status == "blocked_debt"
        pay_debt(rw, 300, f"paid-{serial}", merchant_id)
        ids.append(deposit.id)
    assert service(rw).run_checks().resumed == 2
    assert {reload(rw, i).status for i in ids} == {"refunded"}


def test_a_reused_serial_shows_each_merchant_its_own_deposit(rw: RefundWorld) -> None:
    mine = activate(rw)
    rw.later(timedelta(days=1))
    theirs = service(rw).activated(
        merchant_id=rw.world.merchant_b, serial_number=SERIAL, terminal_id=rw.world.terminal_b,
        contract_id="ctr_b1", terms=EPOS, activated_at=rw.world.clock.now(),
    )  # fmt: skip
    assert theirs is not None
    for key, expected in (("a", mine.id), ("b", theirs.id), ("admin", theirs.id)):
        shown = rw.client.get(f"/v1/terminals/{SERIAL}/deposit", headers=rw.headers(key))
        assert shown.status_code == 200, shown.text
        assert shown.json()["id"] == expected
