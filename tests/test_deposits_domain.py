"""Deposit rules at their boundaries, pure: day counts in Asia/Shanghai, cooling-off day N vs
N+1, the target reached exactly and one fen short, started months of depreciation, never below
zero, the request deadline, the materials, the state table and the payout split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shoudan.core.clock import SHANGHAI
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.deposits.domain import (
    TRANSITIONS,
    Basis,
    DepositStatus,
    Facts,
    Materials,
    Outcome,
    Terms,
    add_months,
    allocate,
    check_deadline,
    check_materials,
    check_reason,
    days_since,
    decide,
    in_activation_window,
    is_blocked,
    merchant_message,
    payout,
    started_months,
    target_reached,
    termination,
    transition,
    window_end,
)

TERMS = Terms(
    amount=29_900, activation_target=10_000_000, activation_window_days=180,
    cooling_off_days=30, termination_penalty=5_000, monthly_depreciation=1_000,
    deposit_refund_deadline_days=365,
)  # fmt: skip


def sh(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    """A Shanghai wall-clock moment, as the UTC datetime the database stores."""
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


def facts(**values: datetime | str | None) -> Facts:
    base: dict[str, datetime | str | None] = dict.fromkeys(
        ("activated_at", "delivered_at", "returned_at", "return_condition", "terminated_at",
         "target_reached_at"),
    )  # fmt: skip
    base.update(values)
    return Facts(**base)  # type: ignore[arg-type]


# -- days -------------------------------------------------------------------------------------
def test_days_are_shanghai_calendar_days() -> None:
    # 23:59 and 00:01 the next day in Shanghai are one day apart, though two minutes apart
    assert days_since(sh(2026, 1, 1, 23, 59), sh(2026, 1, 2, 0, 1)) == 1
    # 00:01 and 23:59 the same Shanghai day are day 0 (16:01 UTC the day before is that day)
    assert days_since(sh(2026, 1, 2, 0, 1), sh(2026, 1, 2, 23, 59)) == 0
    assert sh(2026, 1, 2, 0, 1).date().isoformat() == "2026-01-01"  # UTC date differs


@pytest.mark.parametrize(
    ("returned", "basis", "refund"),
    [
        (sh(2026, 3, 31, 23, 59), Basis.COOLING_OFF, 29_900),  # day 30: last day inside
        (sh(2026, 4, 1, 0, 0), Basis.TERMINATION, 29_900 - 5_000 - 1_000),  # day 31: outside
    ],
)
def test_cooling_off_day_n_in_day_n_plus_one_out(
    returned: datetime, basis: Basis, refund: int
) -> None:
    delivered = sh(2026, 3, 1, 9)
    happened = facts(activated_at=sh(2026, 3, 2), delivered_at=delivered, returned_at=returned,
                     return_condition="unused")  # fmt: skip
    outcome = decide(TERMS, happened, returned)
    assert (outcome.basis, outcome.refund) == (basis, refund)


@pytest.mark.parametrize("condition", ["used", "damaged"])
def test_a_used_or_damaged_return_is_a_termination_even_on_day_one(condition: str) -> None:
    happened = facts(activated_at=sh(2026, 3, 1), delivered_at=sh(2026, 3, 1),
                     returned_at=sh(2026, 3, 2), return_condition=condition)  # fmt: skip
    outcome = decide(TERMS, happened, sh(2026, 3, 2))
    assert outcome == Outcome(Basis.TERMINATION, 29_900 - 5_000 - 1_000, 5_000, 1_000)


def test_cooling_off_on_the_delivery_day_itself() -> None:
    happened = facts(delivered_at=sh(2026, 3, 1, 9), returned_at=sh(2026, 3, 1, 18),
                     return_condition="unused")  # fmt: skip
    assert decide(TERMS, happened, sh(2026, 3, 1, 18)).basis is Basis.COOLING_OFF


def test_a_never_activated_device_has_no_depreciation() -> None:
    outcome = termination(TERMS, None, sh(2027, 3, 1))
    assert outcome == Outcome(Basis.TERMINATION, 24_900, 5_000, 0)


# -- target -----------------------------------------------------------------------------------
def test_target_reached_exactly_and_one_fen_short() -> None:
    assert target_reached(TERMS, 10_000_000)
    assert not target_reached(TERMS, 9_999_999)
    assert target_reached(TERMS, 10_000_001)


def test_no_target_means_no_target_path() -> None:
    no_target = Terms(29_900, 0, 180, 30, 5_000, 1_000, 365)
    assert not target_reached(no_target, 10**9)


def test_the_target_wins_over_every_other_fact() -> None:
    happened = facts(activated_at=sh(2026, 1, 1), target_reached_at=sh(2026, 2, 1),
                     terminated_at=sh(2026, 6, 1))  # fmt: skip
    assert decide(TERMS, happened, sh(2026, 6, 1)) == Outcome(Basis.TARGET_REACHED, 29_900, 0, 0)


def test_activation_window_day_n_in_day_n_plus_one_out() -> None:
    activated = sh(2026, 1, 1, 15)
    assert in_activation_window(TERMS, activated, sh(2026, 1, 1, 8))  # day 0, earlier hour
    last = sh(2026, 1, 1, 23, 59) + timedelta(days=180)
    assert in_activation_window(TERMS, activated, last)  # day 180
    assert not in_activation_window(TERMS, activated, last + timedelta(minutes=2))  # day 181
    # the first instant outside is midnight in Shanghai after day 180
    assert window_end(TERMS, activated) == sh(2026, 7, 1, 0, 0)  # day 180 is 30 June
    assert days_since(activated, window_end(TERMS, activated)) == 181


# -- depreciation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("end", "months"),
    [
        (sh(2026, 1, 15, 0, 1), 1),  # the activation date starts month 1
        (sh(2026, 2, 14, 23, 59), 1),  # the day before the monthiversary: still month 1
        (sh(2026, 2, 15, 0, 0), 2),  # the same day-of-month a month later starts month 2
        (sh(2026, 7, 14, 23, 59), 6),
        (sh(2026, 7, 15, 0, 0), 7),
        (sh(2027, 1, 15, 0, 0), 13),
        (sh(2026, 1, 14, 23, 59), 0),  # before activation: nothing
    ],
)
def test_started_months_at_the_month_boundaries(end: datetime, months: int) -> None:
    assert started_months(sh(2026, 1, 15, 10), end) == months


def test_month_ends_are_clamped() -> None:
    assert add_months(datetime(2026, 1, 31).date(), 1).isoformat() == "2026-02-28"
    assert add_months(datetime(2028, 1, 31).date(), 1).isoformat() == "2028-02-29"
    activated = sh(2026, 1, 31)
    assert started_months(activated, sh(2026, 2, 27)) == 1
    assert started_months(activated, sh(2026, 2, 28)) == 2  # Feb 28 is "31 January + 1 month"
    assert started_months(activated, sh(2026, 3, 30)) == 2
    assert started_months(activated, sh(2026, 3, 31)) == 3


def test_termination_is_linear_and_never_below_zero() -> None:
    activated = sh(2026, 1, 15)
    month_3 = termination(TERMS, activated, sh(2026, 3, 20))
    assert month_3 == Outcome(Basis.TERMINATION, 29_900 - 5_000 - 3_000, 5_000, 3_000)
    month_24 = termination(TERMS, activated, sh(2028, 1, 14))
    assert month_24 == Outcome(Basis.TERMINATION, 900, 5_000, 24_000)
    # month 25 would depreciate 25 000 fen: only the 24 900 left is kept, never more
    late = termination(TERMS, activated, sh(2028, 1, 15))
    assert late == Outcome(Basis.TERMINATION, 0, 5_000, 24_900)
    assert late.kept == 29_900
    # exactly zero: 5 000 + 24 × 1 000 = 29 000 on the first day of month 24
    terms = Terms(29_000, 0, 180, 30, 5_000, 1_000, 365)
    assert termination(terms, activated, sh(2027, 12, 15)).refund == 0  # month 24: 29 000
    assert termination(terms, activated, sh(2027, 12, 14)).refund == 1_000  # month 23
    # a penalty larger than the deposit keeps the deposit, never more
    huge = Terms(29_900, 0, 180, 30, 50_000, 1_000, 365)
    assert termination(huge, activated, sh(2026, 2, 1)) == Outcome(
        Basis.TERMINATION, 0, 29_900, 0
    )


# -- requests ---------------------------------------------------------------------------------
def test_request_deadline_day_n_in_day_n_plus_one_out() -> None:
    start = sh(2026, 1, 1, 10)
    check_deadline(TERMS, start, sh(2027, 1, 1, 23, 59))  # day 365
    with pytest.raises(DomainError) as error:
        check_deadline(TERMS, start, sh(2027, 1, 2, 0, 0))  # day 366
    assert error.value.code is ErrorCode.DEPOSIT_REFUND_DEADLINE_PASSED
    assert error.value.details == {"deadline": "2027-01-01"}


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (Materials("13900000000", "11010519491231002X", "0018"), "phone"),
        (Materials("13812341234", "110105194912310021", "0018"), "id_number"),
        (Materials("13812341234", "11010519491231002X", "0019"), "bank_card_last4"),
    ],
)
def test_each_mismatched_material_is_named(given: Materials, field: str) -> None:
    record = Materials("13812341234", "11010519491231002X", "0018")
    with pytest.raises(DomainError) as error:
        check_materials(given, record)
    assert error.value.code is ErrorCode.DEPOSIT_MATERIALS_MISMATCH
    assert error.value.details == {"field": field}


def test_materials_match_ignoring_spaces_and_case() -> None:
    record = Materials("13812341234", "11010519491231002X", "0018")
    check_materials(Materials(" 138 1234 1234", "11010519491231002x", "0018"), record)
    assert "1381234" not in repr(record)


def test_no_id_number_on_record_matches_nothing() -> None:
    with pytest.raises(DomainError) as error:
        check_materials(Materials("1", "", "2"), Materials("1", "", "2"))
    assert error.value.details == {"field": "id_number"}


def test_reason_is_required() -> None:
    assert check_reason("  stop   using ") == "stop using"
    with pytest.raises(DomainError):
        check_reason("   ")
    with pytest.raises(DomainError):
        check_reason("x" * 501)


# -- states and money -------------------------------------------------------------------------
def test_final_states_are_final_and_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(DepositStatus)
    for final in (DepositStatus.REFUNDED, DepositStatus.FORFEITED):
        with pytest.raises(DomainError) as error:
            transition(final, DepositStatus.HELD)
        assert error.value.code is ErrorCode.INVALID_TRANSITION
    assert transition("blocked_debt", DepositStatus.REFUNDED) is DepositStatus.REFUNDED
    with pytest.raises(DomainError):
        transition(DepositStatus.BLOCKED_DEBT, DepositStatus.IN_REVIEW)


def test_payout_cancels_the_unpaid_part_first() -> None:
    full = Outcome(Basis.TARGET_REACHED, 29_900, 0, 0)
    assert payout(full, 0).to_settled == 29_900
    split = payout(full, 10_000)
    assert (split.debt_offset, split.to_settled) == (10_000, 19_900)
    # refund smaller than the unpaid part: nothing paid out, the rest stays owed
    small = payout(Outcome(Basis.TERMINATION, 3_000, 5_000, 21_900), 29_900)
    assert (small.debt_offset, small.to_settled) == (3_000, 0)


def test_blocked_only_by_debt_beyond_unpaid_deposits() -> None:
    assert not is_blocked(29_900, 29_900)
    assert is_blocked(29_901, 29_900)
    assert not is_blocked(0, 0)


def test_collections_pay_the_oldest_deposit_first() -> None:
    assert allocate(35_000, [("a", 29_900), ("b", 29_900)]) == [("a", 29_900), ("b", 5_100)]
    assert allocate(0, [("a", 1)]) == []
    assert allocate(10, [("a", 0), ("b", 5)]) == [("b", 5)]


def test_messages_name_the_device_and_amount() -> None:
    text = merchant_message("deposit.refunded", "SN1", 29_900, 19_900)
    assert text is not None and "SN1" in text and "¥199.00" in text
    assert merchant_message("deposit.unknown", "SN1", 1, None) is None
