"""Pure payment rules: transitions, the void window in Shanghai time, the completion
ceiling, RRNs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.payments.domain import (
    TRANSITIONS,
    PaymentFacts,
    PaymentStatus,
    check_capture,
    check_completion_reversal,
    check_void,
    check_void_reversal,
    compose_rrn,
    masked_card_number,
    transition,
)

# 2026-11-23 23:59 in Shanghai is 15:59 UTC
LATE_EVENING = datetime(2026, 11, 23, 15, 59, tzinfo=UTC)


def facts(status=PaymentStatus.CAPTURED, amount=10_000, created=LATE_EVENING, settled=False):
    return PaymentFacts(status, amount, created, settled)


def test_transition_table_is_closed() -> None:
    for current, allowed in TRANSITIONS.items():
        for target in PaymentStatus:
            if target in allowed:
                assert transition(current, target) is target
            else:
                with pytest.raises(DomainError) as refused:
                    transition(current, target)
                assert refused.value.code is ErrorCode.INVALID_TRANSITION


def test_a_void_is_undone_on_its_payments_day_and_a_completion_on_its_own() -> None:
    same_day = LATE_EVENING + timedelta(seconds=59)  # 23:59:59 in Shanghai
    next_day = LATE_EVENING + timedelta(minutes=1)
    check_void_reversal(facts(PaymentStatus.VOIDED), same_day)
    check_completion_reversal(facts(), True, LATE_EVENING, same_day)
    refusals = [
        lambda: check_void_reversal(facts(PaymentStatus.VOIDED), next_day),
        lambda: check_void_reversal(facts(PaymentStatus.REVERSED), same_day),
        lambda: check_void_reversal(facts(PaymentStatus.CAPTURED), same_day),
        lambda: check_completion_reversal(facts(), False, LATE_EVENING, same_day),  # a sale
        lambda: check_completion_reversal(facts(), True, LATE_EVENING, next_day),
        lambda: check_completion_reversal(facts(settled=True), True, LATE_EVENING, same_day),
        lambda: check_completion_reversal(
            facts(PaymentStatus.AUTHORIZED), True, None, same_day
        ),
    ]
    for refused in refusals:
        with pytest.raises(DomainError) as error:
            refused()
        assert error.value.code is ErrorCode.INVALID_TRANSITION


def test_void_window_is_the_shanghai_business_day() -> None:
    check_void(facts(), LATE_EVENING + timedelta(seconds=59))  # still 23:59:59 in Shanghai
    with pytest.raises(DomainError) as next_day:
        check_void(facts(), LATE_EVENING + timedelta(minutes=1, seconds=1))  # 00:00:01
    assert next_day.value.code is ErrorCode.VOID_NOT_ALLOWED


@pytest.mark.parametrize(
    "payment",
    [
        facts(settled=True),
        facts(status=PaymentStatus.VOIDED),
        facts(status=PaymentStatus.REVERSED),
        facts(status=PaymentStatus.DECLINED),
    ],
)
def test_void_refusals(payment: PaymentFacts) -> None:
    with pytest.raises(DomainError) as refused:
        check_void(payment, LATE_EVENING)
    assert refused.value.code is ErrorCode.VOID_NOT_ALLOWED


@given(st.integers(1, 10**10), st.integers(1, 10**11))
def test_completion_ceiling_is_115_percent_rounded_down(authorised: int, amount: int) -> None:
    payment = facts(status=PaymentStatus.AUTHORIZED, amount=authorised)
    ceiling = authorised * 115 // 100
    if amount <= ceiling:
        check_capture(payment, amount)
    else:
        with pytest.raises(DomainError) as refused:
            check_capture(payment, amount)
        assert refused.value.code is ErrorCode.CAPTURE_EXCEEDS_AUTHORIZED


def test_completion_needs_an_authorised_pre_auth_and_a_positive_amount() -> None:
    with pytest.raises(DomainError) as captured:
        check_capture(facts(status=PaymentStatus.CAPTURED), 100)
    assert captured.value.code is ErrorCode.CAPTURE_NOT_ALLOWED
    for bad in (0, -1, True):
        with pytest.raises(DomainError) as refused:
            check_capture(facts(status=PaymentStatus.AUTHORIZED), bad)
        assert refused.value.code is ErrorCode.INVALID_AMOUNT
    check_capture(facts(status=PaymentStatus.AUTHORIZED, amount=100), 120, Decimal(120))


def test_rrn_is_twelve_digits_unique_per_day() -> None:
    assert compose_rrn(date(2026, 11, 23), 1) == "263270000001"
    assert compose_rrn(date(2027, 1, 1), 9_999_999) == "270019999999"
    assert len({compose_rrn(date(2026, 11, 23), n) for n in range(1, 1000)}) == 999
    with pytest.raises(DomainError):
        compose_rrn(date(2026, 11, 23), 10_000_000)


def test_masked_card_number() -> None:
    assert masked_card_number("622202", "0018", 19) == "622202*********0018"
    assert masked_card_number("625807", "0017", 16) == "625807******0017"
