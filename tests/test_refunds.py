"""Refunds end to end through the HTTP API and the worker, on SQLite and PostgreSQL: policy,
review and maker-checker, execution with retries, abnormal refunds and re-routing, pending
funds, prepayments, consumer tracking, notifications — with the ledger verified after each."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from shoudan.auth.domain import Principal, Role
from shoudan.auth.service import create_api_key
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger import chart
from shoudan.notifications.service import stats as outbox_stats
from shoudan.refunds.models import Refund
from shoudan.sms.models import SmsMessage
from shoudan.web.service import WebAccounts
from shoudan.webhooks.models import Event
from tests.payments_world import CREDIT, DEBIT, PIN, check_day_totals
from tests.refunds_world import RefundWorld, build_refund_world, check_refund_day_totals

CARD_CLOSED = "6222020000000000778"
FLAKY_REFUND = "6258070000000785"


@pytest.fixture
def rw(database: Database, tmp_path: Path):
    world = build_refund_world(database, tmp_path)
    yield world
    report = world.world.container.ledger.verify()
    assert report.violations == [], report.violations
    check_day_totals(world.world)
    check_refund_day_totals(world.world)
    world.run_worker()
    with world.world.container.database.read() as session:
        assert outbox_stats(session)["dead"] == 0  # every event had a handler that took it


def card(pan: str) -> dict:
    return {"pan": pan, "expiry": "2912", "pin": PIN if pan.startswith("622202") else None,
            "entry_mode": "chip"}  # fmt: skip


def balance(rw: RefundWorld, account_id: str) -> tuple[int, int]:
    """(posted credit balance, pending debits) of an account."""
    view = rw.world.container.ledger.account(account_id)
    return view.credits_posted - view.debits_posted, view.debits_pending


def event_types(rw: RefundWorld, refund_id: str) -> list[str]:
    with rw.world.container.database.read() as session:
        rows = session.scalars(select(Event).order_by(Event.created_at, Event.id))
        return [e.type for e in rows if refund_id in e.data]


# -- the happy path ------------------------------------------------------------------------------
def test_partial_refund_is_approved_sent_and_booked(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=100_000)
    merchant = chart.merchant_unsettled(rw.world.merchant_a)
    before, _ = balance(rw, merchant)
    refund = rw.refund(payment_id=payment["id"], amount=3_000, out_refund_no="R-1")
    assert refund["status"] == "approved"
    assert refund["expected_arrival"]["basis"] == "debit card: 1-3 working days"
    # held at once: the merchant's money is reserved, not yet gone
    assert balance(rw, merchant) == (before, 3_000)
    assert rw.run_worker() > 0
    done = rw.get(refund["id"])
    assert done["status"] == "succeeded"
    assert [s["status"] for s in done["timeline"]] == [
        "requested", "approved", "processing", "succeeded",
    ]  # fmt: skip
    assert balance(rw, merchant) == (before - 3_000, 0)
    paid = rw.client.get(f"/v1/payments/{payment['id']}", headers=rw.headers("a")).json()
    assert paid["refunded_amount"] == 3_000
    assert event_types(rw, refund["id"]) == [
        "refund.created", "refund.approved", "refund.processing", "refund.succeeded",
    ]  # fmt: skip


def test_a_keyed_payment_is_refunded_and_synced_under_its_upstream_reference(
    rw: RefundWorld,
) -> None:
    """A payment taken with an Idempotency-Key (every terminal sale is) is known upstream by
    the reference derived from the key, not by its id: the refund names that one, and so does
    the sync that finds out what became of a refund whose answer was lost."""
    from shoudan.channels.domain import ChannelTimeout
    from shoudan.payments.domain import keyed_reference

    world = rw.world
    card = {"pan": DEBIT, "expiry": "2912", "pin": PIN, "entry_mode": "chip"}
    body = {"terminal_id": world.terminal_a, "amount": 30_000, "method": "card", "card": card}
    world.clock.advance(timedelta(days=-1))  # yesterday's: no longer voidable
    try:
        headers = world.headers(world.key_a, **{"Idempotency-Key": "till-7"})
        response = world.client.post("/v1/payments", json=body, headers=headers)
    finally:
        world.clock.advance(timedelta(days=1))
    assert response.status_code == 201, response.text
    payment_id = response.json()["id"]
    channel = world.container.channel
    real_refund = channel.refund

    def lost_answer(reference: str, refund_reference: str, amount: int):  # type: ignore[no-untyped-def]
        real_refund(reference, refund_reference, amount)  # applied upstream …
        raise ChannelTimeout("no answer")  # … but the answer never arrives

    channel.refund = lost_answer  # type: ignore[method-assign]
    try:
        lost = rw.refund(payment_id=payment_id, amount=2_000)
        rw.run_worker()
    finally:
        channel.refund = real_refund  # type: ignore[method-assign]
    assert rw.get(lost["id"])["status"] == "processing"
    assert rw.act(lost["id"], "sync", "a")["status"] == "succeeded"  # found under the key's

    sent = rw.refund(payment_id=payment_id, amount=3_000)
    rw.run_worker()
    assert rw.get(sent["id"])["status"] == "succeeded"
    reference = keyed_reference(world.merchant_a, "till-7")
    for refund in (lost, sent):
        upstream = channel.query_refund(reference, refund["id"])
        assert upstream is not None and upstream.succeeded


def test_payment_events_reach_the_merchants_event_log(rw: RefundWorld) -> None:
    payment = rw.world.pay(amount=2_000)
    rw.run_worker()
    rw.run_worker()  # idempotent: a second pass publishes nothing twice
    listed = rw.client.get("/v1/events?type=payment.captured", headers=rw.headers("a")).json()
    assert [e["data"]["payment_id"] for e in listed["data"]] == [payment["id"]]
    assert rw.client.get("/v1/events", headers=rw.headers("b")).json()["data"] == []


def test_qr_refund_arrives_the_same_day(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=5_000, method="wechat", auth_code="134567890123456789")
    refund = rw.refund(payment_id=payment["id"], amount=1_000)
    assert refund["expected_arrival"]["earliest"] == refund["expected_arrival"]["latest"]
    rw.run_worker()
    assert rw.get(refund["id"])["status"] == "succeeded"


# -- policy --------------------------------------------------------------------------------------
def test_same_day_full_refund_must_be_a_void(rw: RefundWorld) -> None:
    payment = rw.world.pay(amount=8_000)
    problem = rw.refund(payment_id=payment["id"], amount=8_000, expect=422)
    assert problem["code"] == "use_void"
    # a partial refund the same day is a refund
    assert rw.refund(payment_id=payment["id"], amount=2_000)["status"] == "approved"


def test_a_refunded_payment_can_no_longer_be_voided_or_reversed(rw: RefundWorld) -> None:
    payment = rw.world.pay(amount=8_000)
    rw.refund(payment_id=payment["id"], amount=2_000)
    void = rw.client.post(f"/v1/payments/{payment['id']}/void", headers=rw.headers("a"))
    assert (void.status_code, void.json()["code"]) == (409, "void_not_allowed")
    reverse = rw.client.post(f"/v1/payments/{payment['id']}/reverse", headers=rw.headers("a"))
    assert (reverse.status_code, reverse.json()["code"]) == (409, "invalid_transition")
    rw.run_worker()  # the refusal came before the network: the refund still goes through
    assert rw.get(rw.client.get(f"/v1/refunds?payment_id={payment['id']}",
                                headers=rw.headers("a")).json()["data"][0]["id"])["status"] == (
        "succeeded"
    )  # fmt: skip
    # a rejected or canceled refund gives the payment back its whole capacity
    other = rw.world.pay(amount=8_000)
    refund = rw.refund(payment_id=other["id"], amount=2_000)
    rw.act(refund["id"], "cancel", "a")
    voided = rw.client.post(f"/v1/payments/{other['id']}/void", headers=rw.headers("a"))
    assert voided.json()["status"] == "voided"


@pytest.mark.parametrize(
    ("amount", "code"),
    [(10_001, "refund_exceeds_refundable"), (0, "invalid_amount"), (-5, "invalid_amount")],
)
def test_amounts_outside_the_refundable_are_refused(
    rw: RefundWorld, amount: int, code: str
) -> None:
    payment = rw.earlier_payment(amount=10_000)
    problem = rw.refund(payment_id=payment["id"], amount=amount, expect=422)
    assert problem["code"] == code
    assert rw.client.get("/v1/refunds", headers=rw.headers("a")).json()["data"] == []


def test_refunds_add_up_to_the_captured_amount_and_no_more(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=10_000)
    rw.refund(payment_id=payment["id"], amount=6_000)
    rw.refund(payment_id=payment["id"], amount=4_000)
    problem = rw.refund(payment_id=payment["id"], amount=1, expect=422)
    assert problem["code"] == "refund_exceeds_refundable"
    assert problem["refundable"] == 0


def test_declined_voided_and_reversed_payments_cannot_be_refunded(rw: RefundWorld) -> None:
    declined = rw.world.pay(amount=5_000, card=card("6222020000000000513"))
    assert declined["status"] == "declined"
    voided = rw.world.pay(amount=5_000)
    rw.client.post(f"/v1/payments/{voided['id']}/void", headers=rw.headers("a"))
    reversed_ = rw.world.pay(amount=5_000)
    rw.client.post(f"/v1/payments/{reversed_['id']}/reverse", headers=rw.headers("a"))
    for payment in (declined, voided, reversed_):
        problem = rw.refund(payment_id=payment["id"], amount=1_000, expect=422)
        assert problem["code"] == "refund_not_allowed"


def test_refund_window_is_180_days(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(days=181, amount=5_000)
    assert rw.refund(payment_id=payment["id"], amount=100, expect=422)["code"] == (
        "refund_window_expired"
    )
    recent = rw.earlier_payment(days=179, amount=5_000)
    assert rw.refund(payment_id=recent["id"], amount=100)["status"] == "approved"


def test_at_most_fifty_refunds_per_payment(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=100_000)
    for _ in range(50):
        rw.refund(payment_id=payment["id"], amount=100)
    assert rw.refund(payment_id=payment["id"], amount=100, expect=422)["code"] == (
        "refund_count_exceeded"
    )


def test_bad_input_changes_nothing(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=10_000)
    cases = [
        ({"reason": "because"}, "invalid_input"),
        ({"reason": "other"}, "invalid_input"),  # `other` needs a text
        ({"consumer_phone": "12345"}, "invalid_phone"),
        ({"out_refund_no": "has space"}, "invalid_input"),
        ({"evidence_ids": ["file_nope"]}, "file_not_found"),
    ]
    for extra, code in cases:
        body = {"payment_id": payment["id"], "amount": 100, **extra}
        assert rw.refund(expect=422 if code != "file_not_found" else 404, **body)["code"] == code
    assert rw.client.get("/v1/refunds", headers=rw.headers("a")).json()["data"] == []
    assert balance(rw, chart.merchant_unsettled(rw.world.merchant_a))[1] == 0


# -- idempotency and tenants
def test_out_refund_no_and_idempotency_key_return_the_same_refund(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=10_000)
    first = rw.refund(payment_id=payment["id"], amount=1_000, out_refund_no="SHOP-77")
    again = rw.refund(payment_id=payment["id"], amount=1_000, out_refund_no="SHOP-77")
    assert again["id"] == first["id"]
    other = rw.refund(payment_id=payment["id"], amount=2_000, out_refund_no="SHOP-77", expect=409)
    assert other["code"] == "out_refund_no_reused"
    headers = {**rw.headers("a"), "Idempotency-Key": "k-1"}
    body = {"payment_id": payment["id"], "amount": 500, "reason": "duplicate"}
    one = rw.client.post("/v1/refunds", json=body, headers=headers)
    two = rw.client.post("/v1/refunds", json=body, headers=headers)
    assert one.status_code == two.status_code == 201
    assert one.json()["id"] == two.json()["id"]
    listed = rw.client.get(f"/v1/refunds?payment_id={payment['id']}", headers=rw.headers("a"))
    assert len(listed.json()["data"]) == 2


def test_merchants_see_only_their_own_refunds(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=10_000)
    refund = rw.refund(payment_id=payment["id"], amount=1_000)
    assert rw.refund("b", payment_id=payment["id"], amount=100, expect=404)["code"] == (
        "payment_not_found"
    )
    hidden = rw.client.get(f"/v1/refunds/{refund['id']}", headers=rw.headers("b"))
    assert hidden.status_code == 404
    assert rw.client.get("/v1/refunds", headers=rw.headers("b")).json()["data"] == []
    assert rw.act(refund["id"], "cancel", "b", expect=404)["code"] == "refund_not_found"


# -- review and approval ------------------------------------------------------------------------
def test_large_refund_is_reviewed_with_maker_checker(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=1_000_000)
    refund = rw.refund(payment_id=payment["id"], amount=600_000)  # ≥ ¥5,000
    assert refund["status"] == "in_review"
    assert refund["approvals_required"] == 1
    assert rw.act(refund["id"], "approve", "a", expect=403)["code"] == "forbidden"
    assert rw.act(refund["id"], "approve", "cs", expect=403)["code"] == "forbidden"
    rw.run_worker()
    assert rw.get(refund["id"])["status"] == "in_review"  # nothing is sent before approval
    approved = rw.act(refund["id"], "approve", "reviewer", note="receipt checked")
    assert approved["status"] == "approved"
    rw.run_worker()
    assert rw.get(refund["id"])["status"] == "succeeded"
    assert "refund.review_required" in event_types(rw, refund["id"])


def test_staff_never_approve_their_own_request(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=1_000_000)
    refund = rw.refund("reviewer", payment_id=payment["id"], amount=600_000)
    assert refund["requester_kind"] == "staff"
    assert rw.act(refund["id"], "approve", "reviewer", expect=403)["code"] == "self_approval"
    assert rw.act(refund["id"], "approve", "approver1")["status"] == "approved"


def test_very_large_refund_needs_two_different_approvers(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=5_000_000, card=card(CREDIT))
    rw.earlier_payment(amount=5_000_000)  # the merchant's balance covers a full refund
    refund = rw.refund(payment_id=payment["id"], amount=5_000_000, reason="product_return")
    assert (refund["status"], refund["approvals_required"]) == ("in_review", 2)
    assert rw.act(refund["id"], "approve", "reviewer", expect=403)["code"] == "forbidden"
    first = rw.act(refund["id"], "approve", "approver1")
    assert first["status"] == "in_review"
    again = rw.act(refund["id"], "approve", "approver1", expect=409)
    assert again["code"] == "already_approved"
    second = rw.act(refund["id"], "approve", "approver2")
    assert second["status"] == "approved"
    assert len(rw.get(second["id"])["approvals"]) == 2
    assert rw.act(refund["id"], "approve", "admin", expect=409)["code"] == "invalid_transition"


def staff_member_with_key(rw: RefundWorld, username: str, role: Role) -> tuple[str, str]:
    """A console staff user and an API key of theirs (``apikey create --staff-user``)."""
    container = rw.world.container
    accounts = WebAccounts(container.database, container.vault, container.clock)
    user_id = accounts.create_staff_user(username, (role,)).user_id
    with container.database.transaction() as session:
        key = create_api_key(session, role=role, name=username, person_id=user_id)[1]
    rw.staff[username] = key
    return user_id, key


def test_one_person_is_one_approver_whether_console_or_key(rw: RefundWorld) -> None:
    """Maker-checker counts people: a staff member's console login and their API key are
    one approver, and never approve what either of them asked for."""
    li, _key = staff_member_with_key(rw, "li.approver", Role.APPROVER)
    console = Principal(li, Role.APPROVER)  # as the console signs her in
    payment = rw.earlier_payment(amount=5_000_000, card=card(CREDIT))
    rw.earlier_payment(amount=5_000_000)
    refund = rw.refund(payment_id=payment["id"], amount=5_000_000, reason="product_return")
    assert refund["approvals_required"] == 2
    rw.world.container.refunds.approve(console, refund["id"], "checked in the console")
    again = rw.act(refund["id"], "approve", "li.approver", expect=409)  # her key: still her
    assert again["code"] == "already_approved"
    assert rw.act(refund["id"], "approve", "approver1")["status"] == "approved"
    assert {a["approver"] for a in rw.get(refund["id"])["approvals"]} == {
        li, rw.staff_ids["approver1"],
    }  # fmt: skip

    # what she asked for with her key, she cannot approve in the console
    other = rw.earlier_payment(amount=1_000_000)
    asked = rw.refund("li.approver", payment_id=other["id"], amount=600_000)
    assert asked["requested_by"] == li
    with pytest.raises(DomainError) as refused:
        rw.world.container.refunds.approve(console, asked["id"])
    assert refused.value.code is ErrorCode.SELF_APPROVAL
    # a service key (no staff member behind it) stays an identity of its own
    assert rw.act(asked["id"], "approve", "approver2")["status"] == "approved"


def test_needs_info_round_trip_and_rejection_release_the_money(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=1_000_000)
    merchant = chart.merchant_unsettled(rw.world.merchant_a)
    before = balance(rw, merchant)
    refund = rw.refund(payment_id=payment["id"], amount=700_000)
    asked = rw.act(refund["id"], "request-info", "reviewer", message="the return slip, please")
    assert (asked["status"], asked["info_request"]) == ("needs_info", "the return slip, please")
    assert rw.act(refund["id"], "approve", "reviewer", expect=409)["code"] == "invalid_transition"
    answered = rw.act(refund["id"], "evidence", "a", note="slip attached by post")
    assert answered["status"] == "in_review"
    rejected = rw.act(refund["id"], "reject", "reviewer", note="goods not returned")
    assert rejected["status"] == "rejected"
    assert balance(rw, merchant) == before
    assert rw.act(refund["id"], "cancel", "a", expect=409)["code"] == "invalid_transition"
    # the capacity is free again: the same amount can be asked for anew
    assert rw.refund(payment_id=payment["id"], amount=700_000)["status"] == "in_review"


def test_merchant_cancels_before_sending(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=1_000_000)
    refund = rw.refund(payment_id=payment["id"], amount=600_000)
    assert rw.act(refund["id"], "cancel", "a")["status"] == "canceled"
    assert balance(rw, chart.merchant_unsettled(rw.world.merchant_a))[1] == 0


# -- execution: retries, abnormal, re-route
def test_transient_failure_is_retried_on_schedule(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=20_000, card=card(FLAKY_REFUND))
    refund = rw.refund(payment_id=payment["id"], amount=5_000)
    rw.run_worker()
    waiting = rw.get(refund["id"])
    assert waiting["status"] == "processing"
    assert (waiting["attempts"], waiting["failure_reason"]) == (1, "issuer_unavailable")
    rw.run_worker()  # not due yet: nothing is sent again
    assert rw.get(refund["id"])["attempts"] == 1
    rw.later(timedelta(seconds=15))
    rw.run_worker()
    done = rw.get(refund["id"])
    assert (done["status"], done["attempts"]) == ("succeeded", 2)


def test_closed_card_goes_abnormal_and_completes_after_reroute(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=20_000, card=card(CARD_CLOSED))
    refund = rw.refund(payment_id=payment["id"], amount=8_000, consumer_phone="13700001234")
    rw.run_worker()
    abnormal = rw.get(refund["id"])
    assert (abnormal["status"], abnormal["failure_reason"]) == ("abnormal", "card_closed")
    bad = rw.act(refund["id"], "reroute", "cs", expect=422, account_number="6222020000000000019",
                 holder_name="张三", bank_name="工商银行")  # fmt: skip
    assert bad["code"] == "invalid_bank_account"
    assert rw.act(refund["id"], "reroute", "a", expect=403, account_number=DEBIT,
                  holder_name="张三", bank_name="工商银行")["code"] == "forbidden"  # fmt: skip
    bank_before = rw.world.container.ledger.account(chart.BANK_SETTLEMENT).balance
    rerouted = rw.act(refund["id"], "reroute", "cs", account_number=DEBIT, holder_name="张三",
                      bank_name="工商银行")  # fmt: skip
    assert (rerouted["status"], rerouted["route"]) == ("processing", "bank_transfer")
    assert rerouted["reroute_account"] == "****0018"
    rw.run_worker()
    assert rw.get(refund["id"])["status"] == "succeeded"
    assert event_types(rw, refund["id"]).count("refund.processing") == 2  # sent, then re-routed
    assert rw.world.container.ledger.account(chart.BANK_SETTLEMENT).balance == bank_before - 8_000
    channel = chart.channel_payable("unionpay")
    assert rw.world.container.ledger.account(channel).debits_pending == 0
    with rw.world.container.database.read() as session:
        stored = session.get(Refund, refund["id"])
        assert stored is not None and DEBIT.encode() not in (stored.reroute_account_enc or b"")
        texts = [m.text for m in session.scalars(select(SmsMessage))]
    assert any("无法退回原卡" in t for t in texts)
    assert any("已退回" in t for t in texts)


def test_unknown_outcome_is_queried_before_any_retry(rw: RefundWorld) -> None:
    from shoudan.channels.domain import ChannelTimeout

    payment = rw.earlier_payment(amount=20_000)
    channel = rw.world.container.channel
    real_refund = channel.refund
    calls: list[str] = []

    def lost_answer(reference: str, refund_reference: str, amount: int):  # type: ignore[no-untyped-def]
        calls.append("refund")
        real_refund(reference, refund_reference, amount)  # applied upstream …
        raise ChannelTimeout("no answer")  # … but the answer never arrives

    channel.refund = lost_answer  # type: ignore[method-assign]
    try:
        refund = rw.refund(payment_id=payment["id"], amount=2_000)
        rw.run_worker()
    finally:
        channel.refund = real_refund  # type: ignore[method-assign]
    assert rw.get(refund["id"])["status"] == "processing"
    synced = rw.act(refund["id"], "sync", "a")  # the network says it was refunded
    assert synced["status"] == "succeeded"
    assert calls == ["refund"]  # never sent twice


# -- pending funds
def test_short_balance_waits_for_funds_then_fails_after_seven_days(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=10_000)  # the merchant holds ¥99.50 after the fee
    refund = rw.refund(payment_id=payment["id"], amount=10_000 - 1)  # fee kept: needs ¥99.99
    assert refund["status"] == "pending_funds"
    assert rw.world.container.refunds.retry_pending_funds() == 0
    rw.later(timedelta(days=7))
    assert rw.world.container.refunds.retry_pending_funds() == 1
    failed = rw.get(refund["id"])
    assert (failed["status"], failed["failure_reason"]) == ("failed", "insufficient_funds")


def test_pending_funds_proceed_when_new_sales_arrive(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=10_000)
    refund = rw.refund(payment_id=payment["id"], amount=9_999)
    assert refund["status"] == "pending_funds"
    rw.world.pay(amount=1_000)
    assert rw.world.container.refunds.retry_pending_funds() == 1
    rw.run_worker()
    assert rw.get(refund["id"])["status"] == "succeeded"


# -- prepayments
def test_prepayment_refunds_only_the_unredeemed_remainder(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=50_000, prepayment=True)
    url = f"/v1/payments/{payment['id']}/redemptions"
    used = rw.client.post(url, json={"amount": 30_000, "note": "3 lessons"},
                          headers=rw.headers("a"))  # fmt: skip
    assert used.status_code == 201, used.text
    problem = rw.refund(payment_id=payment["id"], amount=20_001, expect=422)
    assert problem["code"] == "refund_exceeds_refundable"
    assert rw.refund(payment_id=payment["id"], amount=20_000)["status"] == "approved"
    over = rw.client.post(url, json={"amount": 1}, headers=rw.headers("a"))
    assert over.json()["code"] == "redemption_exceeds_remainder"
    plain = rw.earlier_payment(amount=5_000)
    not_pre = rw.client.post(f"/v1/payments/{plain['id']}/redemptions", json={"amount": 1},
                             headers=rw.headers("a"))  # fmt: skip
    assert not_pre.json()["code"] == "not_a_prepayment"


# -- consumers
def test_consumer_tracks_a_refund_with_rrn_last4_and_amount(rw: RefundWorld) -> None:
    payment = rw.earlier_payment(amount=12_345)
    refund = rw.refund(payment_id=payment["id"], amount=2_345, consumer_phone="13600001111")
    rw.run_worker()
    query = {"rrn": payment["rrn"], "last4": DEBIT[-4:], "amount": 12_345}
    found = rw.client.get("/v1/public/refund-status", params=query)
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["refunded_amount"] == 2_345
    (seen,) = body["refunds"]
    assert seen["status"] == "succeeded"
    assert [s["status"] for s in seen["timeline"]][-1] == "succeeded"
    assert all(s["actor"] is None for s in seen["timeline"])
    misses = [{**query, "last4": "0000"}, {**query, "amount": 12_346}, {**query, "rrn": "1" * 12}]
    answers = [rw.client.get("/v1/public/refund-status", params=q) for q in misses]
    assert {a.status_code for a in answers} == {404}
    assert len({a.json()["detail"] for a in answers}) == 1  # nothing tells which part was wrong
    with rw.world.container.database.read() as session:
        stored = session.get(Refund, refund["id"])
        assert stored is not None and b"13600001111" not in (stored.consumer_phone_enc or b"")
    assert rw.get(refund["id"])["consumer_phone"] == "136****1111"


def test_public_tracking_is_rate_limited(rw: RefundWorld) -> None:
    query = {"rrn": "1" * 12, "last4": "1234", "amount": 1}
    limit = rw.world.container.settings.public_rate_limit_per_minute
    codes = [rw.client.get("/v1/public/refund-status", params=query).status_code
             for _ in range(limit + 1)]  # fmt: skip
    assert codes[:limit] == [404] * limit
    assert codes[-1] == 429


def test_unanswered_refund_is_synced_then_rerouted(
    rw: RefundWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoudan.channels.domain import ChannelTimeout

    container = rw.world.container
    payment = rw.earlier_payment(amount=20_000)

    def down(*_args: object) -> None:
        raise ChannelTimeout("network down")

    monkeypatch.setattr(container.channel, "refund", down)
    monkeypatch.setattr(container.channel, "query_refund", down)
    refund = rw.refund(payment_id=payment["id"], amount=3_000)
    rw.run_worker()
    for seconds in container.settings.refund_retry_seconds:
        rw.later(timedelta(seconds=seconds))
        rw.run_worker()
    assert rw.get(refund["id"])["status"] == "abnormal"
    account = {"account_number": DEBIT, "holder_name": "张三", "bank_name": "工商银行"}
    assert rw.act(refund["id"], "reroute", "cs", expect=409, **account)["code"] == (
        "invalid_transition"  # the network's answer is unknown: it may have paid
    )
    monkeypatch.undo()
    synced = rw.act(refund["id"], "sync", "cs")  # the network never saw it
    assert (synced["status"], synced["failure_reason"]) == ("abnormal", "not_refunded_upstream")
    assert rw.act(refund["id"], "reroute", "cs", **account)["status"] == "processing"
    rw.run_worker()
    assert rw.get(refund["id"])["status"] == "succeeded"


# -- the merchant's live refunds of the day (the risk rule's running total) ---------------------
def test_the_days_live_refunds_are_counted_and_migration_0023_fills_them(
    rw: RefundWorld,
) -> None:
    from sqlalchemy import select

    from shoudan import migrations
    from shoudan.payments.domain import business_date
    from shoudan.refunds.models import RefundDayTotal

    def totals() -> dict[tuple[str, str], int]:
        with rw.world.container.database.read() as session:
            rows = session.scalars(select(RefundDayTotal))
            return {(row.business_date, row.merchant_id): row.amount for row in rows}

    payment = rw.earlier_payment(amount=1_000_000)
    rw.refund(payment_id=payment["id"], amount=1_500)
    reviewed = rw.refund(payment_id=payment["id"], amount=600_000)  # ≥ ¥5,000: review
    day = (business_date(rw.world.clock.now()).isoformat(), rw.world.merchant_a)
    assert totals() == {day: 601_500}
    rw.act(reviewed["id"], "reject", "reviewer", note="no receipt")  # no longer live
    assert totals() == {day: 1_500}
    check_refund_day_totals(rw.world)

    # a database upgraded from before the running totals gets them from its refunds
    url = rw.world.container.database.engine.url.render_as_string(hide_password=False)
    migrations.downgrade(url, "0022")
    migrations.upgrade(url)
    assert totals() == {day: 1_500}
