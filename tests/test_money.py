"""Money: strict parsing, formatting, arithmetic, the one rounding rule, and no float anywhere."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shoudan.core import money
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.money import Money, apply_rate, check_minor, round_half_up

WIDE = st.integers(min_value=-(10**18), max_value=10**18)
# what text may carry: up to ¥10,000,000,000,000.00 either way (money.MAX_PARSED_MINOR)
PARSEABLE = st.integers(min_value=-money.MAX_PARSED_MINOR, max_value=money.MAX_PARSED_MINOR)


# -- parse: accepted ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("12.34", 1234),
        ("0.5", 50),
        ("0.05", 5),
        ("¥1,234.56", 123_456),
        ("CNY 5", 500),
        ("CNY5", 500),
        ("-3.20", -320),
        ("-¥0.05", -5),
        ("1,234,567", 123_456_700),
        ("0", 0),
        ("-0", 0),
        ("  7.10  ", 710),  # surrounding whitespace is trimmed
    ],
)
def test_parse_accepts(text: str, fen: int) -> None:
    parsed = Money.parse(text)
    assert parsed == Money(fen)
    assert type(parsed.amount_minor) is int
    assert parsed.currency == "CNY"


# -- parse: refused -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "1e3",
        "1E3",
        "12.345",  # more decimals than CNY has
        "0.001",
        "1,23.00",  # bad grouping
        "12,34",
        "1,2345",
        ",123",
        "",
        " ",
        "$1",
        "12.",
        ".5",
        "+5",
        "¥-1",
        "1 000",
        "0x10",
        "1_000",
        "12.34.56",
        "cny 5",
        "CNY  5",
        "¥ 5",
    ],
)
def test_parse_refuses_invalid_text(text: str) -> None:
    with pytest.raises(DomainError) as caught:
        Money.parse(text)
    assert caught.value.code is ErrorCode.INVALID_AMOUNT


@pytest.mark.parametrize("text", ["USD 1.00", "USD1", "-EUR 3", "HKD 1,000.00"])
def test_parse_refuses_another_currency(text: str) -> None:
    with pytest.raises(DomainError) as caught:
        Money.parse(text)
    assert caught.value.code is ErrorCode.CURRENCY_MISMATCH


@pytest.mark.parametrize(
    "value", [12.34, 12.0, float("nan"), Decimal("12.34"), 1234, True, None, b"12"]
)
def test_parse_refuses_non_strings(value: object) -> None:
    with pytest.raises(DomainError) as caught:
        Money.parse(value)
    assert caught.value.code is ErrorCode.INVALID_AMOUNT


def test_parse_refuses_unknown_expected_currency() -> None:
    with pytest.raises(DomainError) as caught:
        Money.parse("1.00", "XYZ")
    assert caught.value.code is ErrorCode.INVALID_CURRENCY


@pytest.mark.parametrize("text", ["١٢", "１２.３４", "12.٣٤"])
def test_parse_refuses_non_ascii_digits(text: str) -> None:
    with pytest.raises(DomainError):
        Money.parse(text)


def test_parse_of_a_huge_number_raises_domain_error() -> None:
    with pytest.raises(DomainError):
        Money.parse("1" * 5000)


# -- format -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fen", "formatted", "plain"),
    [
        (123_456, "¥1,234.56", "1234.56"),
        (-5, "-¥0.05", "-0.05"),
        (0, "¥0.00", "0.00"),
        (100, "¥1.00", "1.00"),
        (-123_456_789, "-¥1,234,567.89", "-1234567.89"),
    ],
)
def test_format_and_plain(fen: int, formatted: str, plain: str) -> None:
    assert Money(fen).format() == formatted
    assert str(Money(fen)) == formatted
    assert Money(fen).plain() == plain


# -- construction and arithmetic ----------------------------------------------------------------


@pytest.mark.parametrize("value", [1.5, 1.0, True, False, Decimal("1"), "1", None])
def test_money_refuses_non_int_amounts(value: object) -> None:
    with pytest.raises(DomainError) as caught:
        Money(value)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.INVALID_AMOUNT


def test_money_refuses_unknown_currency() -> None:
    with pytest.raises(DomainError) as caught:
        Money(1, "XYZ")
    assert caught.value.code is ErrorCode.INVALID_CURRENCY


def test_check_minor() -> None:
    assert check_minor(7) == 7
    for bad in (7.0, True, Decimal(7), "7"):
        with pytest.raises(DomainError):
            check_minor(bad)


def test_arithmetic_within_one_currency() -> None:
    a, b = Money(1_000), Money(250)
    assert a + b == Money(1_250)
    assert a - b == Money(750)
    assert -a == Money(-1_000)
    assert b < a and b <= a and a > b and a >= b and a >= Money(1_000)
    assert Money(1).is_positive() and not Money(0).is_positive()
    assert Money(3).require_positive() == Money(3)
    with pytest.raises(DomainError):
        Money(0).require_positive()


def test_arithmetic_refuses_mixing_currencies(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only CNY is settled today; register a second currency for the duration of the test.
    monkeypatch.setitem(money.CURRENCIES, "USD", ("$", 2))
    cny, usd = Money(100), Money(100, "USD")
    for operation in (
        lambda: cny + usd,
        lambda: cny - usd,
        lambda: cny < usd,
        lambda: cny <= usd,
        lambda: cny > usd,
        lambda: cny >= usd,
    ):
        with pytest.raises(DomainError) as caught:
            operation()
        assert caught.value.code is ErrorCode.CURRENCY_MISMATCH
    assert cny != usd  # equality compares currency too
    # parse into another currency: its code is accepted, the yuan sign is not
    assert Money.parse("USD 1.50", "USD") == Money(150, "USD")
    with pytest.raises(DomainError) as caught:
        Money.parse("¥1.50", "USD")
    assert caught.value.code is ErrorCode.CURRENCY_MISMATCH


def test_arithmetic_refuses_plain_numbers() -> None:
    with pytest.raises(TypeError):
        Money(1) + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        Money(1) - 0.5  # type: ignore[operator]


# -- rounding and rates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rounded"),
    [
        ("0.5", 1),
        ("1.5", 2),
        ("2.5", 3),  # not banker's rounding
        ("0.4999", 0),
        ("2.4", 2),
        ("2.6", 3),
        # ROUND_HALF_UP rounds ties away from zero, so negatives mirror positives:
        ("-0.5", -1),
        ("-1.5", -2),
        ("-2.5", -3),
        ("-0.4999", 0),
        ("-2.6", -3),
        ("0", 0),
        ("7", 7),
    ],
)
def test_round_half_up_rounds_ties_away_from_zero(value: str, rounded: int) -> None:
    result = round_half_up(Decimal(value))
    assert result == rounded
    assert type(result) is int


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_round_half_up_refuses_non_finite(value: str) -> None:
    with pytest.raises(DomainError):
        round_half_up(Decimal(value))


def test_apply_rate() -> None:
    assert apply_rate(10_000, 60) == 60  # 0.60% of ¥100.00 = ¥0.60
    assert apply_rate(12_345, 38) == 47  # 0.38% of ¥123.45 = 0.46911 → ¥0.47
    assert apply_rate(12_345, Decimal(38)) == 47
    assert apply_rate(10_000, Decimal("55")) == 55
    assert apply_rate(250, 60) == 2  # 1.5 fen → 2 (half-up)
    assert apply_rate(-12_345, 38) == -47  # symmetric
    assert apply_rate(0, 60) == 0
    assert type(apply_rate(12_345, 38)) is int


def test_apply_rate_refuses_non_int_amounts() -> None:
    for bad in (123.45, True, Decimal("12345")):
        with pytest.raises(DomainError):
            apply_rate(bad, 60)  # type: ignore[arg-type]


def test_apply_rate_refuses_float_rates() -> None:
    with pytest.raises((DomainError, TypeError)):
        apply_rate(1_000_000, 1.005)  # type: ignore[arg-type]


@given(amount=st.integers(min_value=0, max_value=10**12), rate=st.integers(0, 10_000))
def test_apply_rate_is_exact_half_up(amount: int, rate: int) -> None:
    # integer-only reference: round(amount * rate / 10_000) with ties away from zero
    quotient, remainder = divmod(amount * rate, 10_000)
    expected = quotient + (1 if remainder * 2 >= 10_000 else 0)
    assert apply_rate(amount, rate) == expected
    assert apply_rate(-amount, rate) == -expected


# -- properties ---------------------------------------------------------------------------------


@given(PARSEABLE)
@example(0)
@example(-1)
@example(-(10**15))
@example(10**15)
def test_plain_and_format_round_trip(fen: int) -> None:
    m = Money(fen)
    assert Money.parse(m.plain()) == m
    assert Money.parse(m.format()) == m
    assert Money.parse(f"CNY {m.plain().lstrip('-')}") == Money(abs(fen))


@st.composite
def decimal_strings(draw: st.DrawFn) -> str:
    sign = draw(st.sampled_from(["", "-"]))
    units = draw(st.integers(min_value=0, max_value=10**13 - 1))
    digits = draw(st.integers(min_value=0, max_value=2))
    grouped = draw(st.booleans())
    int_part = f"{units:,}" if grouped else str(units)
    if digits == 0:
        return f"{sign}{int_part}"
    frac = draw(st.text(alphabet="0123456789", min_size=digits, max_size=digits))
    return f"{sign}{int_part}.{frac}"


@given(decimal_strings())
@example("0.1")
@example("-0.01")
@example("1,000.5")
def test_parse_equals_exact_decimal_times_100(text: str) -> None:
    parsed = Money.parse(text)
    exact = Decimal(text.replace(",", "")) * 100
    assert exact == exact.to_integral_value()
    assert parsed.amount_minor == int(exact)
    assert type(parsed.amount_minor) is int


@given(st.integers(min_value=money.MAX_PARSED_MINOR + 1, max_value=10**30))
def test_parse_refuses_amounts_beyond_the_bound(fen: int) -> None:
    for text in (Money(fen).plain(), Money(-fen).plain()):
        if len(text) > money.MAX_TEXT_LENGTH:
            continue
        with pytest.raises(DomainError) as raised:
            Money.parse(text)
        assert raised.value.code is ErrorCode.INVALID_AMOUNT


AMOUNTISH = st.text(alphabet="0123456789,.-+ ¥$eE_CNYUSDnaif\t", max_size=24)


@given(st.one_of(st.text(max_size=40), AMOUNTISH))
@example("1e3")
@example("NaN")
@example("1,23.00")
@example("¥")
@example("CNY")
@example("-")
def test_parse_never_raises_anything_but_domain_error(text: str) -> None:
    try:
        parsed = Money.parse(text)
    except DomainError as error:
        assert error.code in {ErrorCode.INVALID_AMOUNT, ErrorCode.CURRENCY_MISMATCH}
        return
    assert type(parsed.amount_minor) is int
    assert parsed.currency == "CNY"
    # whatever was accepted is exactly representable and round-trips
    assert Money.parse(parsed.plain()) == parsed


@given(st.one_of(st.floats(allow_nan=True), st.decimals(), st.integers(), st.booleans()))
def test_parse_refuses_every_number_object(value: object) -> None:
    with pytest.raises(DomainError):
        Money.parse(value)


@given(WIDE)
def test_to_decimal_and_from_decimal_are_exact(fen: int) -> None:
    m = Money(fen)
    assert m.to_decimal() == Decimal(fen) / 100
    assert Money.from_decimal(m.to_decimal()) == m
