"""Pure refund rules, no database: the transition table, the refund policy, the fee a refund
gives back, the risk score and its reasons, who approves, when the money arrives (China's
working-day calendar), the retry schedule and the consumer's text message."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.refunds.domain import (
    CARD_REFUNDS_COUNTED,
    FINAL,
    LIVE,
    SHANGHAI,
    TRANSITIONS,
    ArrivalRules,
    PaymentForRefund,
    Policy,
    RefundStatus,
    ReviewThresholds,
    RiskFacts,
    RiskRules,
    Route,
    approvals_required,
    assess,
    card_refunds_bound,
    check_approval,
    check_out_refund_no,
    check_request,
    check_text,
    consumer_message,
    expected_arrival,
    fee_returned,
    parse_business_hours,
    refundable,
    retry_delay,
    transition,
)

S = RefundStatus
# 2026-11-23 10:00 in Shanghai
PAID = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
PAID_DAY = date(2026, 11, 23)
NEXT_DAY = PAID + timedelta(days=1)
SCHEDULE = (15, 30, 60, 300, 1800, 7200, 21600)  # the default (DESIGN.md §4)


def refused(code: ErrorCode):  # type: ignore[no-untyped-def]
    """``pytest.raises`` for a DomainError; the caller checks ``.value.code``."""
    return pytest.raises(DomainError, match=f"^{code.value}: ")


# -- the transition table ----------------------------------------------------------------------
EDGES = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
NON_EDGES = [(a, b) for a in S for b in S if b not in TRANSITIONS[a]]


def test_the_table_names_every_status() -> None:
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize(("current", "target"), EDGES, ids=[f"{a}->{b}" for a, b in EDGES])
def test_every_allowed_edge_works(current: RefundStatus, target: RefundStatus) -> None:
    assert transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"), NON_EDGES, ids=[f"{a}-x-{b}" for a, b in NON_EDGES]
)
def test_every_other_pair_is_an_invalid_transition(
    current: RefundStatus, target: RefundStatus
) -> None:
    with refused(ErrorCode.INVALID_TRANSITION) as error:
        transition(current, target)
    assert error.value.details == {"status": current.value}


def test_the_expected_edges_and_only_those() -> None:
    # the review loop, re-routing, and who can still be canceled
    assert S.NEEDS_INFO in TRANSITIONS[S.IN_REVIEW] and S.IN_REVIEW in TRANSITIONS[S.NEEDS_INFO]
    assert TRANSITIONS[S.ABNORMAL] == {S.PROCESSING}
    assert TRANSITIONS[S.PROCESSING] == {S.SUCCEEDED, S.FAILED, S.ABNORMAL}
    cancelable = {a for a, targets in TRANSITIONS.items() if S.CANCELED in targets}
    assert cancelable == {S.PENDING_FUNDS, S.IN_REVIEW, S.NEEDS_INFO, S.APPROVED}
    assert S.CANCELED not in TRANSITIONS[S.PROCESSING]  # once sent, it cannot be called back


def test_final_states_have_no_exits() -> None:
    assert {S.SUCCEEDED, S.FAILED, S.REJECTED, S.CANCELED} == FINAL
    for final in FINAL:
        assert TRANSITIONS[final] == frozenset()
        for target in S:
            with refused(ErrorCode.INVALID_TRANSITION):
                transition(final, target)


def test_live_refunds_are_all_but_failed_rejected_and_canceled() -> None:
    assert frozenset(S) - {S.FAILED, S.REJECTED, S.CANCELED} == LIVE
    # an abnormal refund still holds the money (it is re-routed, not given up)
    assert {S.SUCCEEDED, S.ABNORMAL, S.PENDING_FUNDS} <= LIVE


# -- check_request -----------------------------------------------------------------------------
def payment(**changes: object) -> PaymentForRefund:
    base = PaymentForRefund(
        status="captured", captured_amount=10_000, captured_at=PAID, business_date=PAID_DAY,
        settled=False, redeemed=0, live_refunded=0, live_count=0,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def request(facts: PaymentForRefund, amount: int, now: datetime = NEXT_DAY) -> None:
    check_request(facts, amount, now, now.astimezone(SHANGHAI).date(), Policy())


def test_a_partial_refund_the_next_day_is_accepted() -> None:
    request(payment(), 3_000)
    request(payment(), 10_000)  # full, but no longer the day of the payment


@pytest.mark.parametrize("amount", [0, -1, True, 1.5, "100"])
def test_amount_must_be_a_positive_integer(amount: object) -> None:
    with refused(ErrorCode.INVALID_AMOUNT):
        request(payment(), amount)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["authorized", "declined", "voided", "reversed", "pending"])
def test_only_a_captured_payment_is_refunded(status: str) -> None:
    with refused(ErrorCode.REFUND_NOT_ALLOWED) as error:
        request(payment(status=status), 100)
    assert error.value.details == {"payment_status": status}


def test_a_payment_never_captured_is_not_refunded() -> None:
    with refused(ErrorCode.REFUND_NOT_ALLOWED):
        request(payment(captured_at=None), 100)


def test_window_is_180_days_to_the_second() -> None:
    request(payment(), 100, now=PAID + timedelta(days=180))
    with refused(ErrorCode.REFUND_WINDOW_EXPIRED):
        request(payment(), 100, now=PAID + timedelta(days=180, seconds=1))


def test_window_is_configurable() -> None:
    late = PAID + timedelta(days=200)
    check_request(payment(), 100, late, late.date(), Policy(window_days=365))
    with refused(ErrorCode.REFUND_WINDOW_EXPIRED):
        check_request(payment(), 100, late, late.date(), Policy(window_days=199))


def test_at_most_fifty_live_refunds() -> None:
    request(payment(live_count=49, live_refunded=4_900), 100)
    with refused(ErrorCode.REFUND_COUNT_EXCEEDED):
        request(payment(live_count=50, live_refunded=5_000), 100)


def test_full_refund_on_the_day_before_settlement_is_a_void() -> None:
    same_day = PAID + timedelta(hours=11)  # 21:00 in Shanghai, still the payment's day
    with refused(ErrorCode.USE_VOID):
        check_request(payment(), 10_000, same_day, PAID_DAY, Policy())


@pytest.mark.parametrize(
    ("facts", "amount", "today"),
    [
        (payment(), 9_999, PAID_DAY),  # partial
        (payment(settled=True), 10_000, PAID_DAY),  # settled: voiding is no longer possible
        (payment(), 10_000, PAID_DAY + timedelta(days=1)),  # another day
        (payment(live_count=1, live_refunded=0), 10_000, PAID_DAY),  # not the first refund
    ],
    ids=["partial", "settled", "next-day", "not-first"],
)
def test_use_void_only_for_a_same_day_unsettled_full_first_refund(
    facts: PaymentForRefund, amount: int, today: date
) -> None:
    check_request(facts, amount, PAID + timedelta(hours=1), today, Policy())


def test_exceeding_the_refundable_names_what_is_left() -> None:
    with refused(ErrorCode.REFUND_EXCEEDS_REFUNDABLE) as error:
        request(payment(live_refunded=6_000, live_count=2), 4_001)
    assert error.value.details == {"refundable": 4_000}
    request(payment(live_refunded=6_000, live_count=2), 4_000)


def test_prepayment_refunds_only_the_unredeemed_remainder() -> None:
    redeemed = payment(redeemed=3_000)
    assert refundable(redeemed) == 7_000
    request(redeemed, 7_000)
    with refused(ErrorCode.REFUND_EXCEEDS_REFUNDABLE) as error:
        request(redeemed, 7_001)
    assert error.value.details == {"refundable": 7_000}
    # redemptions and live refunds together
    both = payment(redeemed=3_000, live_refunded=5_000, live_count=1)
    assert refundable(both) == 2_000
    with refused(ErrorCode.REFUND_EXCEEDS_REFUNDABLE):
        request(both, 2_001)
    assert refundable(payment(redeemed=10_000)) == 0


def test_same_day_full_request_of_a_redeemed_prepayment_exceeds_the_refundable() -> None:
    with refused(ErrorCode.REFUND_EXCEEDS_REFUNDABLE):
        check_request(payment(redeemed=3_000), 10_000, PAID, PAID_DAY, Policy())


def test_refusals_come_in_order_status_window_count_amount_void() -> None:
    late = PAID + timedelta(days=181)
    with refused(ErrorCode.REFUND_NOT_ALLOWED):
        check_request(payment(status="voided", live_count=50), 99_999, late, late.date(), Policy())
    with refused(ErrorCode.REFUND_WINDOW_EXPIRED):
        check_request(payment(live_count=50), 99_999, late, late.date(), Policy())
    with refused(ErrorCode.REFUND_COUNT_EXCEEDED):
        request(payment(live_count=50), 99_999)
    with refused(ErrorCode.REFUND_EXCEEDS_REFUNDABLE):  # not use_void: part is redeemed
        check_request(payment(redeemed=1), 10_000, PAID, PAID_DAY, Policy())


# -- fee_returned ------------------------------------------------------------------------------
def test_fee_is_kept_by_default() -> None:
    assert fee_returned("keep", 60, 10_000, 10_000, 0, 0) == 0
    assert fee_returned("return_pro_rata", 0, 10_000, 5_000, 0, 0) == 0


@pytest.mark.parametrize(
    ("fee", "captured", "amount", "expected"),
    [
        (60, 10_000, 5_000, 30),
        (61, 10_000, 5_000, 31),  # 30.5 → 31 (half up)
        (59, 10_000, 5_000, 30),  # 29.5 → 30 (half up, not to even)
        (60, 10_000, 2_499, 15),  # 14.994 → 15
        (60, 10_000, 2_416, 14),  # 14.496 → 14
        (3, 10_000, 1, 0),  # 0.0003 → 0
    ],
)
def test_pro_rata_rounds_half_up(fee: int, captured: int, amount: int, expected: int) -> None:
    assert fee_returned("return_pro_rata", fee, captured, amount, 0, 0) == expected


def test_the_refund_completing_the_payment_returns_exactly_the_rest() -> None:
    # a 2 fen fee over three thirds: 0.67 rounds up to 1 twice, the last third gets the 0 left
    fee, captured = 2, 300
    first = fee_returned("return_pro_rata", fee, captured, 100, 0, 0)  # 0.667 → 1
    second = fee_returned("return_pro_rata", fee, captured, 100, 100, first)  # 0.667 → 1
    third = fee_returned("return_pro_rata", fee, captured, 100, 200, first + second)
    assert (first, second, third) == (1, 1, 0)
    # the last one gives back the remainder even when pro rata would say otherwise
    assert fee_returned("return_pro_rata", 61, 10_000, 5_000, 5_000, 30) == 31
    assert fee_returned("return_pro_rata", 61, 10_000, 10_000, 0, 0) == 61


@given(
    captured=st.integers(1, 10_000_000),
    fee=st.integers(0, 200_000),
    cuts=st.lists(st.floats(0, 1, allow_nan=False), max_size=8),
)
def test_returned_fees_of_any_split_sum_to_the_fee(
    captured: int, fee: int, cuts: list[float]
) -> None:
    # split the captured amount at random points into refunds of at least one fen
    points = sorted({int(c * captured) for c in cuts} - {0, captured})
    bounds = [0, *points, captured]
    amounts = [b - a for a, b in itertools.pairwise(bounds)]
    refunded = returned = 0
    for amount in amounts:
        part = fee_returned("return_pro_rata", fee, captured, amount, refunded, returned)
        assert part >= 0
        refunded += amount
        returned += part
        assert returned <= fee
    assert returned == fee


# -- assess ------------------------------------------------------------------------------------
# Nothing fires: ¥100 the day after a 10:00 payment, small against the day's sales and the
# merchant's average ticket, first refund to the card.
QUIET = RiskFacts(
    amount=10_000, payment_captured_at=PAID, requested_at=NEXT_DAY,
    merchant_refunds_today=10_000, merchant_sales_today=10_000_000,
    merchant_average_ticket=10_000, card_refunds_24h=1,
)  # fmt: skip
# ¥10,000 against a ¥10,000 average ticket: only its roundness can fire
BIG_ROUND = dataclasses.replace(
    QUIET, amount=1_000_000, merchant_refunds_today=1_000_000, merchant_average_ticket=1_000_000
)


def facts(base: RiskFacts = QUIET, **changes: object) -> RiskFacts:
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# rule, weight field, facts that fire it, facts just below its threshold, words of the fact
RULES = [
    ("quick_refund", "quick_refund_weight",
     facts(requested_at=PAID + timedelta(minutes=9, seconds=59)),
     facts(requested_at=PAID + timedelta(minutes=10)),
     "requested 9 min after the payment (< 10 min)"),
    ("refund_ratio", "refund_ratio_weight",
     facts(merchant_refunds_today=3_000_001),
     facts(merchant_refunds_today=3_000_000),
     "refunds today ¥30,000.01 are 30% of sales today ¥100,000.00 (> 30%)"),
    ("large_ticket", "large_ticket_weight",
     facts(amount=30_001, merchant_refunds_today=30_001),
     facts(amount=30_000, merchant_refunds_today=30_000),
     "¥300.01 is over 3x the merchant's average ticket ¥100.00"),
    ("card_velocity", "card_velocity_weight",
     facts(card_refunds_24h=3),
     facts(card_refunds_24h=2),
     "the same card has 3 refunds in 24 h across merchants (>= 3)"),
    ("off_hours", "off_hours_weight",
     facts(payment_captured_at=datetime(2026, 11, 22, 23, 59, tzinfo=UTC)),  # 07:59 Shanghai
     facts(payment_captured_at=datetime(2026, 11, 23, 0, 0, tzinfo=UTC)),  # 08:00 Shanghai
     "paid at 07:59, outside business hours 08:00-22:00"),
    ("round_amount", "round_amount_weight",
     facts(BIG_ROUND),
     facts(BIG_ROUND, amount=900_000, merchant_refunds_today=900_000),
     "round amount ¥10,000.00 (>= ¥10,000.00)"),
]  # fmt: skip
RULE_IDS = [r[0] for r in RULES]


def test_quiet_facts_score_zero() -> None:
    assert assess(QUIET, RiskRules()).score == 0
    # no history, no card (QR): those two rules cannot fire
    unknown = facts(merchant_average_ticket=None, card_refunds_24h=None, amount=10**9 + 1,
                    merchant_refunds_today=10**9 // 10, merchant_sales_today=10**9)  # fmt: skip
    assert [r.rule for r in assess(unknown, RiskRules()).reasons] == []


@pytest.mark.parametrize(("rule", "weight_field", "firing", "below", "fact"), RULES, ids=RULE_IDS)
def test_each_rule_fires_alone_with_its_weight_and_fact(
    rule: str, weight_field: str, firing: RiskFacts, below: RiskFacts, fact: str
) -> None:
    rules = RiskRules()
    result = assess(firing, rules)
    (reason,) = result.reasons
    assert (reason.rule, reason.weight, reason.fact) == (rule, getattr(rules, weight_field), fact)
    assert result.score == reason.weight


@pytest.mark.parametrize(("rule", "weight_field", "firing", "below", "fact"), RULES, ids=RULE_IDS)
def test_each_rule_is_quiet_just_below_its_threshold(
    rule: str, weight_field: str, firing: RiskFacts, below: RiskFacts, fact: str
) -> None:
    assert assess(below, RiskRules()) == assess(QUIET, RiskRules())


@pytest.mark.parametrize(("rule", "weight_field", "firing", "below", "fact"), RULES, ids=RULE_IDS)
def test_weight_zero_turns_a_rule_off(
    rule: str, weight_field: str, firing: RiskFacts, below: RiskFacts, fact: str
) -> None:
    off = dataclasses.replace(RiskRules(), **{weight_field: 0})
    assert assess(firing, off).score == 0
    assert assess(firing, off).reasons == ()


def test_a_large_amount_that_is_not_round_is_not_flagged() -> None:
    odd = facts(BIG_ROUND, amount=1_000_001, merchant_refunds_today=1_000_001)
    assert assess(odd, RiskRules()).reasons == ()
    thousand_yuan = facts(BIG_ROUND, amount=1_100_000, merchant_refunds_today=1_100_000)
    assert [r.rule for r in assess(thousand_yuan, RiskRules()).reasons] == ["round_amount"]


def test_weights_and_thresholds_are_configuration() -> None:
    rules = RiskRules(quick_refund_weight=7, quick_refund_minutes=60)
    result = assess(facts(requested_at=PAID + timedelta(minutes=59)), rules)
    assert [(r.rule, r.weight) for r in result.reasons] == [("quick_refund", 7)]
    assert "(< 60 min)" in result.reasons[0].fact


def test_scores_add_up() -> None:
    everything = facts(
        amount=1_000_000, merchant_refunds_today=1_000_000, merchant_sales_today=0,
        merchant_average_ticket=10_000, card_refunds_24h=5,
        payment_captured_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),  # 23:00 Shanghai
        requested_at=datetime(2026, 11, 23, 15, 1, tzinfo=UTC),
    )  # fmt: skip
    result = assess(everything, RiskRules())
    assert [r.rule for r in result.reasons] == [
        "quick_refund", "refund_ratio", "large_ticket", "card_velocity", "off_hours",
        "round_amount",
    ]  # fmt: skip
    assert result.score == 30 + 25 + 20 + 40 + 15 + 15
    ratio = result.reasons[1]
    assert ratio.fact == "refunds today ¥10,000.00 with no sales today (> 30%)"
    two = facts(card_refunds_24h=4, requested_at=PAID + timedelta(minutes=1))
    assert assess(two, RiskRules()).score == 30 + 40


@pytest.mark.parametrize(
    ("captured_utc", "fires"),
    [
        (datetime(2026, 11, 23, 0, 0), False),  # 08:00 Shanghai: opens
        (datetime(2026, 11, 23, 13, 59), False),  # 21:59 Shanghai
        (datetime(2026, 11, 23, 14, 0), True),  # 22:00 Shanghai: closed (UTC says 14:00)
        (datetime(2026, 11, 23, 23, 30), True),  # 07:30 Shanghai the next day
        (datetime(2026, 11, 23, 9, 0), False),  # 17:00 Shanghai
    ],
)
def test_off_hours_is_the_payment_time_in_shanghai(captured_utc: datetime, fires: bool) -> None:
    at = captured_utc.replace(tzinfo=UTC)
    result = assess(facts(payment_captured_at=at, requested_at=at + timedelta(days=1)),
                    RiskRules())  # fmt: skip
    assert [r.rule for r in result.reasons] == (["off_hours"] if fires else [])


def test_business_hours_are_parsed() -> None:
    assert parse_business_hours("08:00-22:00") == (time(8), time(22))
    assert parse_business_hours(" 09:30 - 21:15 ") == (time(9, 30), time(21, 15))
    for bad in ("8-22", "08:00", "08:00-22:00-23:00", "25:00-26:00", ""):
        with refused(ErrorCode.CONFIGURATION_ERROR):
            parse_business_hours(bad)


# -- approvals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("amount", "score", "required"),
    [
        (499_999, 49, 0),
        (500_000, 0, 1),  # ¥5,000 exactly: review
        (499_999, 50, 1),  # score 50 exactly: review
        (4_999_999, 0, 1),
        (5_000_000, 0, 2),  # ¥50,000 exactly: two approvals
        (5_000_000, 200, 2),
        (1, 150, 1),  # a high score alone asks for one approval, never two
    ],
)
def test_approvals_required_thresholds(amount: int, score: int, required: int) -> None:
    assert approvals_required(amount, score, ReviewThresholds()) == required


def approve(**changes: object) -> None:
    args: dict[str, object] = {
        "requested_by": "key_merchant", "approver": "key_reviewer", "role": "reviewer",
        "approved_by": (), "required": 1, **changes,
    }  # fmt: skip
    check_approval(**args)  # type: ignore[arg-type]


def test_a_reviewer_gives_the_single_approval_of_an_ordinary_review() -> None:
    approve()
    approve(role="approver", approver="key_approver")
    approve(role="admin", approver="key_admin")


@pytest.mark.parametrize("role", ["cs_agent", "finance", "risk", "merchant"])
def test_other_roles_cannot_approve(role: str) -> None:
    with refused(ErrorCode.FORBIDDEN):
        approve(role=role)


def test_nobody_approves_their_own_request() -> None:
    with refused(ErrorCode.SELF_APPROVAL):
        approve(requested_by="key_reviewer")
    with refused(ErrorCode.SELF_APPROVAL):
        approve(requested_by="key_approver", approver="key_approver", role="approver",
                required=2)  # fmt: skip


def test_nobody_approves_twice() -> None:
    with refused(ErrorCode.ALREADY_APPROVED):
        approve(approver="key_a1", role="approver", approved_by=("key_a1",), required=2)
    approve(approver="key_a2", role="approver", approved_by=("key_a1",), required=2)


def test_a_reviewer_cannot_give_the_approvals_of_a_two_approval_refund() -> None:
    with refused(ErrorCode.FORBIDDEN) as error:
        approve(required=2)
    assert "approver" in error.value.message
    approve(required=2, role="approver", approver="key_a1")
    approve(required=2, role="admin", approver="key_admin", approved_by=("key_a1",))


# -- arrival -----------------------------------------------------------------------------------
# Wednesday 2026-09-30, 10:00 Shanghai: the National Day week (Oct 1-7) follows; Saturday
# Oct 10 is a make-up working day (调休).
BEFORE_NATIONAL_DAY = datetime(2026, 9, 30, 2, 0, tzinfo=UTC)


def arrival(method: str, funding: str | None, route: Route = Route.ORIGINAL,
            start: datetime = BEFORE_NATIONAL_DAY) -> tuple[date, date, str]:  # fmt: skip
    result = expected_arrival(method, funding, route, start, ArrivalRules())
    return result.earliest, result.latest, result.basis


def test_qr_refunds_arrive_the_same_day() -> None:
    day = date(2026, 9, 30)
    assert arrival("wechat", None) == (day, day, "QR wallet: instant")
    assert arrival("alipay", None)[:2] == (day, day)


def test_debit_card_counts_one_to_three_working_days_over_the_holiday() -> None:
    assert arrival("card", "debit") == (
        date(2026, 10, 8), date(2026, 10, 10), "debit card: 1-3 working days",
    )  # fmt: skip


def test_credit_card_counts_three_to_seven_working_days_over_the_holiday() -> None:
    assert arrival("card", "credit") == (
        date(2026, 10, 10), date(2026, 10, 15), "credit card: 3-7 working days",
    )  # fmt: skip
    # unknown funding is treated as credit: the longer promise
    assert arrival("card", None)[:2] == (date(2026, 10, 10), date(2026, 10, 15))


def test_bank_transfer_counts_one_to_two_working_days_whatever_the_method() -> None:
    expected = (date(2026, 10, 8), date(2026, 10, 9), "bank transfer: 1-2 working days")
    assert arrival("card", "credit", Route.BANK_TRANSFER) == expected
    assert arrival("wechat", None, Route.BANK_TRANSFER) == expected


def test_arrival_starts_from_the_shanghai_date() -> None:
    # 2026-09-29 17:00 UTC is already Wednesday 30 September 01:00 in Shanghai
    late = datetime(2026, 9, 29, 17, 0, tzinfo=UTC)
    assert arrival("card", "debit", start=late)[:2] == (date(2026, 10, 8), date(2026, 10, 10))
    assert arrival("wechat", None, start=late)[:2] == (date(2026, 9, 30), date(2026, 9, 30))


def test_an_ordinary_week_skips_the_weekend() -> None:
    friday = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    assert arrival("card", "debit", start=friday)[:2] == (date(2026, 11, 30), date(2026, 12, 2))


# -- retries -----------------------------------------------------------------------------------
def test_retry_delays_follow_the_default_schedule_then_stop() -> None:
    delays = [retry_delay(n, SCHEDULE) for n in range(1, len(SCHEDULE) + 2)]
    assert delays == [
        timedelta(seconds=15), timedelta(seconds=30), timedelta(minutes=1),
        timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2), timedelta(hours=6),
        None,
    ]  # fmt: skip
    assert retry_delay(0, SCHEDULE) is None
    assert retry_delay(1, ()) is None


# -- input checks ------------------------------------------------------------------------------
def test_text_is_trimmed_and_bounded() -> None:
    assert check_text("  receipt  ", 10, "note") == "receipt"
    assert check_text(None, 10, "note") == ""
    with refused(ErrorCode.INVALID_INPUT):
        check_text("x" * 11, 10, "note")


def test_out_refund_no_is_printable_without_spaces() -> None:
    assert check_out_refund_no(None) is None
    assert check_out_refund_no("SHOP-77") == "SHOP-77"
    assert check_out_refund_no("x" * 64) == "x" * 64
    for bad in ("", "has space", "x" * 65, "tab\there", "新\n"):
        with refused(ErrorCode.INVALID_INPUT):
            check_out_refund_no(bad)


# -- consumer messages -------------------------------------------------------------------------
def test_consumer_message_names_amount_arrival_and_refund() -> None:
    text = consumer_message("refund.created", 123_456, "2026-10-10", "rf_01ABC")
    assert text == "【收单】您的退款¥1,234.56已受理，预计2026-10-10前到账。退款单号rf_01ABC。"
    approved = consumer_message("refund.approved", 5, "2026-10-10", "rf_1")
    assert approved is not None and "¥0.05" in approved and "2026-10-10" in approved


@pytest.mark.parametrize(
    "event",
    ["refund.created", "refund.approved", "refund.rejected", "refund.succeeded",
     "refund.failed", "refund.abnormal"],
)  # fmt: skip
def test_every_consumer_event_has_a_signed_message(event: str) -> None:
    text = consumer_message(event, 10_000, "2026-10-10", "rf_9")
    assert text is not None
    assert text.startswith("【收单】") and text.endswith("退款单号rf_9。")
    assert "¥100.00" in text


@pytest.mark.parametrize(
    "event", ["refund.review_required", "refund.needs_info", "refund.processing", "nope"]
)
def test_events_that_do_not_concern_the_consumer_send_nothing(event: str) -> None:
    assert consumer_message(event, 10_000, "2026-10-10", "rf_9") is None


def test_business_hours_may_run_past_midnight() -> None:
    from datetime import UTC, datetime, timedelta

    from shoudan.refunds.domain import RiskFacts, RiskRules, assess, parse_business_hours

    rules = RiskRules(business_hours=parse_business_hours("18:00-02:00"))

    def fired(local_hour: int) -> bool:
        paid = datetime(2026, 11, 20, local_hour, 30, tzinfo=UTC) - timedelta(hours=8)
        facts = RiskFacts(100, paid, paid + timedelta(days=2), 100, 10_000, None, None)
        return any(r.rule == "off_hours" for r in assess(facts, rules).reasons)

    assert [fired(h) for h in (19, 23, 1, 3, 12)] == [False, False, False, True, True]


def test_a_card_counted_to_the_bound_says_at_least() -> None:
    """The card's refunds are counted only up to a bound (each request reads at most that
    many rows), so the fact says what is known — and a threshold above the bound raises it."""
    rules = RiskRules()
    bound = card_refunds_bound(rules)
    assert bound == CARD_REFUNDS_COUNTED
    (reason,) = assess(facts(card_refunds_24h=bound), rules).reasons
    assert reason.fact.startswith(f"the same card has at least {bound} refunds in 24 h")
    (reason,) = assess(facts(card_refunds_24h=bound - 1), rules).reasons
    assert reason.fact.startswith(f"the same card has {bound - 1} refunds in 24 h")
    strict = RiskRules(card_velocity_count=CARD_REFUNDS_COUNTED + 50)
    assert card_refunds_bound(strict) == CARD_REFUNDS_COUNTED + 50
    assert assess(facts(card_refunds_24h=CARD_REFUNDS_COUNTED + 49), strict).reasons == ()
