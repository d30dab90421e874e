"""Onboarding's pure rules: identifiers (correctly formed ones pass, each broken check is
named), the SMS code limits at their boundaries, the sandbox real-name rules, the states."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from stdnum.cn import ric, uscc

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.onboarding import domain
from shoudan.onboarding.domain import (
    ApplicationStatus,
    RealNameSubject,
    SandboxRealNameVerifier,
    credit_code_check_digit,
    validate_credit_code,
    validate_id_number,
)
from shoudan.onboarding.terms import terms_for

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def with_id_check(first17: str) -> str:
    return first17 + ric.calc_check_digit(first17 + "0")


def with_credit_check(first17: str) -> str:
    return first17 + credit_code_check_digit(first17)


def refusal(call: object, *args: object) -> DomainError:
    with pytest.raises(DomainError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# -- ID numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "number",
    ["11010519491231002X", "11010519491231002x", with_id_check("44030519900307123"),
     with_id_check("44030519900307999")],
)  # fmt: skip
def test_well_formed_id_numbers_pass(number: str) -> None:
    assert validate_id_number(number, date(2026, 11, 23)) == number.upper()


@pytest.mark.parametrize(
    ("number", "check"),
    [
        ("1101051949123100", "format"),  # too short
        ("11010519491231002A", "format"),
        (with_id_check("11010519491331002"), "birth_date"),  # month 13
        (with_id_check("11010520300101002"), "birth_date"),  # born in the future
        ("110105194912310021", "checksum"),
        (with_id_check("00000019900307123"), "region"),
    ],
)
def test_broken_id_numbers_name_the_failed_check(number: str, check: str) -> None:
    error = refusal(validate_id_number, number, date(2026, 11, 23))
    assert error.code is ErrorCode.INVALID_ID_NUMBER
    assert error.details["check"] == check
    assert number not in error.message  # never echoed (logs)


# -- credit codes --------------------------------------------------------------------------------
LETTER_LED = [
    with_credit_check("N2110105MA01ABC2X"),  # a farmers' cooperative (N = agriculture)
    with_credit_check("Y1440300MA5D8QXK1"),
    with_credit_check("A1110000MB1234567"),
]


@pytest.mark.parametrize("code", ["91110000600037341L", *LETTER_LED])
def test_well_formed_credit_codes_pass(code: str) -> None:
    assert validate_credit_code(code) == code
    assert validate_credit_code(f" {code[:8]}-{code[8:].lower()} ") == code


@pytest.mark.parametrize("code", LETTER_LED)
def test_letter_led_codes_stdnum_refuses_have_its_own_check_digit(code: str) -> None:
    # the same weights as stdnum's; only its format check differs (digits 1-8)
    assert credit_code_check_digit(code) == uscc.calc_check_digit(code[:17])
    assert not uscc.is_valid(code)


@pytest.mark.parametrize(
    ("code", "check"),
    [
        ("91110000600037341", "format"),
        ("911100006000373411L", "format"),
        ("9111000060003734IL", "format"),  # I is not in the alphabet
        ("91A10000600037341L", "format"),  # the region code is digits
        ("91110000600037341M", "checksum"),
    ],
)
def test_broken_credit_codes_name_the_failed_check(code: str, check: str) -> None:
    error = refusal(validate_credit_code, code)
    assert error.code is ErrorCode.INVALID_CREDIT_CODE
    assert error.details["check"] == check


# -- bank cards ----------------------------------------------------------------------------------
def test_card_luhn_is_a_warning_and_bins_name_the_bank() -> None:
    assert domain.card_warnings("6217000010012345677") == []
    assert domain.card_warnings("6217000010012345678") == ["card_checksum"]
    assert domain.bank_for_card("6217000010012345677") == "中国建设银行"
    assert domain.bank_for_card("6222020000000000018") == "中国工商银行"
    assert domain.bank_for_card("9999990000000000") is None
    assert domain.clean_card_number("6217 0000 1001 2345 677") == "6217000010012345677"
    for bad in ("62170000100", "62170000100123456771", "6217-0000-1001"):
        assert refusal(domain.clean_card_number, bad).code is ErrorCode.INVALID_CARD


def test_masks_and_areas() -> None:
    assert domain.mask_id_number("11010519491231002X") == "1101**********002X"
    assert domain.mask_name("张三") == "张*"
    assert domain.mask_name("欧阳娜娜") == "欧***"
    assert domain.area_code_for("深圳市") == "5840"
    assert domain.area_code_for("拉萨") is None


# -- SMS limits ----------------------------------------------------------------------------------
def test_daily_cap_at_its_boundary() -> None:
    domain.check_can_send(NOW, None, domain.MAX_CODES_PER_DAY - 1)
    error = refusal(domain.check_can_send, NOW, None, domain.MAX_CODES_PER_DAY)
    assert error.code is ErrorCode.TOO_MANY_CODES


def test_resend_interval_at_its_boundary() -> None:
    error = refusal(domain.check_can_send, NOW, NOW - timedelta(seconds=59), 1)
    assert error.code is ErrorCode.RESEND_TOO_SOON
    assert error.details["retry_after"] == 1
    domain.check_can_send(NOW, NOW - timedelta(seconds=60), 1)


def test_code_life_and_attempts_at_their_boundaries() -> None:
    expires = NOW + domain.CODE_TTL
    domain.check_code_usable(expires - timedelta(microseconds=1), expires, 4)
    assert refusal(domain.check_code_usable, expires, expires, 0).code is (
        ErrorCode.VERIFICATION_CODE_EXPIRED
    )
    assert refusal(domain.check_code_usable, NOW, expires, 5).code is ErrorCode.TOO_MANY_ATTEMPTS
    assert domain.wrong_code(1).details["attempts_left"] == 4
    assert domain.wrong_code(5).details["attempts_left"] == 0


def test_codes_are_six_digits_and_the_day_is_shanghais() -> None:
    codes = {domain.new_code() for _ in range(50)}
    assert all(domain.code_shape_ok(c) for c in codes) and len(codes) > 1
    assert not domain.code_shape_ok("12345") and not domain.code_shape_ok("12345a")
    before_midnight = datetime(2026, 11, 23, 15, 59, 59, tzinfo=UTC)  # 23:59:59 in Shanghai
    assert domain.shanghai_day_start(before_midnight) == datetime(2026, 11, 22, 16, tzinfo=UTC)
    midnight = datetime(2026, 11, 23, 16, tzinfo=UTC)
    assert domain.shanghai_day_start(midnight) == midnight


# -- sandbox KYC ---------------------------------------------------------------------------------
GOOD_ID = with_id_check("44030519900307123")
HOLDER_MISMATCH_CARD = "6217000000001030000"  # passes Luhn: only its ending decides


@pytest.mark.parametrize(
    ("subject", "reasons"),
    [
        (RealNameSubject("张三", GOOD_ID, "6217000010012345677", "13812345678"), ()),
        (RealNameSubject("张三", with_id_check("44030519900307999"), "6217000010012345677",
                         "13812345678"), ("id_name_mismatch",)),
        (RealNameSubject("张三", GOOD_ID, "6217000010012345678", "13812345678"),
         ("card_not_found",)),
        (RealNameSubject("张三", GOOD_ID, HOLDER_MISMATCH_CARD, "13800000000"),
         ("card_holder_mismatch", "phone_holder_mismatch")),
    ],
)  # fmt: skip
def test_sandbox_verifier_rules(subject: RealNameSubject, reasons: tuple[str, ...]) -> None:
    result = SandboxRealNameVerifier().verify(subject)
    assert result == domain.KycResult(not reasons, reasons, "sandbox")
    assert all(reason in domain.KYC_REASONS for reason in reasons)


# -- states and contract text --------------------------------------------------------------------
def test_application_transitions() -> None:
    assert domain.transition("in_review", ApplicationStatus.APPROVED) is ApplicationStatus.APPROVED
    for current, target in [
        ("phone_pending", ApplicationStatus.APPROVED),
        ("approved", ApplicationStatus.REJECTED),
        ("rejected", ApplicationStatus.IN_REVIEW),
        ("in_review", ApplicationStatus.IN_REVIEW),
    ]:
        assert refusal(domain.transition, current, target).code is ErrorCode.INVALID_TRANSITION


def test_contract_text_shows_every_term_and_hashes_stably() -> None:
    terms = terms_for("smart")
    text = domain.render_contract_text(
        contract_id="ctr_1", merchant_id="898584054110001", legal_name="老王面馆", terms=terms,
        issued=date(2026, 11, 23),
    )  # fmt: skip
    for shown in ("ctr_1", "898584054110001", "老王面馆", "¥499.00", "¥100,000.00", "180 天",
                  "30 天", "¥50.00", "¥15.00", "365 天", "T1", "standard"):  # fmt: skip
        assert shown in text
    assert domain.text_sha256(text) == domain.text_sha256(str(text))
    assert len(domain.text_sha256(text)) == 64
