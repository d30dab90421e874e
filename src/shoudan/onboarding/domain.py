"""Onboarding rules, pure: identifiers, the SMS code limits, the sandbox real-name check, the
application's states and the contract text.

Identifiers:

* ID number (居民身份证号码, GB 11643): ``stdnum.cn.ric``'s pieces, run one at a time so the
  refusal says which check failed (``format``, ``birth_date``, ``checksum``, ``region``).
* Unified social credit code (统一社会信用代码, GB 32100): computed here. ``stdnum.cn.uscc``
  refuses codes whose first two characters (registering authority, entity type) are letters
  — ``N2…`` farmers' cooperatives, ``Y1…`` others — although GB 32100 allows them; the check
  digit is the same: ``31 - Σ(value(cᵢ) × 3ⁱ mod 31) mod 31`` over the first 17 characters,
  the values being the positions in ``0-9A-Y`` without I, O, Z, S, V.
* Bank card: 12–19 digits; a failed Luhn check is a *warning* (``card_checksum``), not a
  refusal; the bank's name comes from ``bins.csv`` (a few public BINs of major banks).
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Protocol

from stdnum.cn import ric
from stdnum.exceptions import ValidationError

from shoudan.core.clock import SHANGHAI
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.identifiers import luhn_valid
from shoudan.core.money import Money
from shoudan.onboarding.terms import ContractTerms

# -- application states --------------------------------------------------------------------------


class ApplicationStatus(StrEnum):
    PHONE_PENDING = "phone_pending"  # submitted; the phone is not verified yet
    IN_REVIEW = "in_review"  # phone verified, KYC run: waiting for staff
    INFO_REQUESTED = "info_requested"  # staff asked the applicant for more information
    APPROVED = "approved"  # merchant and contract created (final)
    REJECTED = "rejected"  # final


class KycStatus(StrEnum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


TRANSITIONS: dict[ApplicationStatus, frozenset[ApplicationStatus]] = {
    ApplicationStatus.PHONE_PENDING: frozenset(
        {ApplicationStatus.IN_REVIEW, ApplicationStatus.REJECTED}
    ),
    ApplicationStatus.IN_REVIEW: frozenset(
        {ApplicationStatus.APPROVED, ApplicationStatus.REJECTED, ApplicationStatus.INFO_REQUESTED}
    ),
    ApplicationStatus.INFO_REQUESTED: frozenset(
        {ApplicationStatus.IN_REVIEW, ApplicationStatus.REJECTED}
    ),
    ApplicationStatus.APPROVED: frozenset(),
    ApplicationStatus.REJECTED: frozenset(),
}


def transition(current: str, target: ApplicationStatus) -> ApplicationStatus:
    """``target``, or ``invalid_transition`` when an application in ``current`` cannot move."""
    source = ApplicationStatus(current)
    if target not in TRANSITIONS[source]:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION,
            f"an application cannot go from {source} to {target}",
            current=source.value,
            target=target.value,
        )
    return target


class ContractStatus(StrEnum):
    GENERATED = "generated"
    ACCEPTED = "accepted"


# -- ID number (GB 11643) ------------------------------------------------------------------------
_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")


def _id_error(check: str, message: str) -> DomainError:
    return DomainError(
        ErrorCode.INVALID_ID_NUMBER, f"ID number: {message}", field="id_number", check=check
    )


def validate_id_number(value: object, today: date | None = None) -> str:
    """An 18-character resident ID number, upper-case ``X``; refusals name the failed check
    (format, birth date, checksum, region) and never echo the number."""
    if not isinstance(value, str):
        raise _id_error("format", "must be a string")
    number = ric.compact(value)
    if not _ID_SHAPE.fullmatch(number):
        raise _id_error("format", "18 characters: 17 digits and a digit or X")
    try:
        born = ric.get_birth_date(number)
    except ValidationError:
        raise _id_error("birth_date", "the birth date (digits 7-14) is not a date") from None
    if born.year < 1900 or (today is not None and born > today):
        raise _id_error("birth_date", "the birth date (digits 7-14) is not plausible")
    if number[-1] != ric.calc_check_digit(number):
        raise _id_error("checksum", "the check digit (the last one) does not match")
    try:
        ric.get_birth_place(number)
    except ValidationError:
        raise _id_error("region", "the region code (digits 1-6) is unknown") from None
    return number


def id_sequence_code(id_number: str) -> str:
    """Digits 15-17: the order code of people born the same day in the same county."""
    return id_number[14:17]


# -- unified social credit code (GB 32100) -------------------------------------------------------
CREDIT_CODE_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters: no I, O, Z, S, V
_CREDIT_CODE_SHAPE = re.compile(r"[0-9A-HJ-NP-RTUWXY]{2}[0-9]{6}[0-9A-HJ-NP-RTUWXY]{10}")


def credit_code_check_digit(first17: str) -> str:
    """GB 32100's check character of the first 17 characters (weights 3^i mod 31)."""
    total = sum(
        CREDIT_CODE_ALPHABET.index(char) * pow(3, i, 31) for i, char in enumerate(first17[:17])
    )
    return CREDIT_CODE_ALPHABET[(31 - total % 31) % 31]


def _credit_error(check: str, message: str) -> DomainError:
    return DomainError(
        ErrorCode.INVALID_CREDIT_CODE,
        f"credit code: {message}",
        field="credit_code",
        check=check,
    )


def validate_credit_code(value: object) -> str:
    """An 18-character unified social credit code (spaces and hyphens removed, upper-cased);
    refusals say whether the format or the check digit failed."""
    if not isinstance(value, str):
        raise _credit_error("format", "must be a string")
    code = re.sub(r"[\s-]", "", value).upper()
    if len(code) != 18:
        raise _credit_error("format", "18 characters")
    if not _CREDIT_CODE_SHAPE.fullmatch(code):
        raise _credit_error(
            "format", "characters 3-8 are digits; the others digits or letters except I, O, Z, S, V"
        )
    if code[-1] != credit_code_check_digit(code):
        raise _credit_error("checksum", "the check character (the last one) does not match")
    return code


# -- bank card -----------------------------------------------------------------------------------
CARD_MIN_DIGITS, CARD_MAX_DIGITS = 12, 19
WARNING_CARD_CHECKSUM = "card_checksum"


def clean_card_number(value: object) -> str:
    """Digits only (spaces between printed groups removed), 12-19 of them."""
    if not isinstance(value, str):
        raise DomainError(
            ErrorCode.INVALID_CARD, "the bank card must be a string", field="bank_card"
        )
    digits = "".join(value.split())
    if not (digits.isascii() and digits.isdigit()):
        raise DomainError(ErrorCode.INVALID_CARD, "the bank card is digits only", field="bank_card")
    if not CARD_MIN_DIGITS <= len(digits) <= CARD_MAX_DIGITS:
        raise DomainError(
            ErrorCode.INVALID_CARD,
            f"a bank card is {CARD_MIN_DIGITS} to {CARD_MAX_DIGITS} digits",
            field="bank_card",
        )
    return digits


def card_warnings(digits: str) -> list[str]:
    """What is doubtful but not refused: a Luhn failure (a typo, most likely)."""
    return [] if luhn_valid(digits) else [WARNING_CARD_CHECKSUM]


@cache
def bin_table() -> dict[str, str]:
    """BIN prefix → bank name, from ``bins.csv`` (public knowledge; kept small)."""
    text = resources.files("shoudan.onboarding").joinpath("bins.csv").read_text("utf-8")
    return {row["bin"]: row["bank_name"] for row in csv.DictReader(text.splitlines())}


def bank_for_card(digits: str) -> str | None:
    """The issuing bank of the longest known prefix of ``digits``, or ``None``."""
    table = bin_table()
    for length in range(min(len(digits), 10), 3, -1):
        name = table.get(digits[:length])
        if name is not None:
            return name
    return None


# -- areas ---------------------------------------------------------------------------------------
# UnionPay area codes (地区代码, the 4 digits after the acquirer code in a merchant number) of a
# few large cities; an application elsewhere gives ``area_code`` itself (or the reviewer does).
CITY_AREA_CODES: dict[str, str] = {
    "北京": "1000", "天津": "1100", "上海": "2900", "南京": "3010", "杭州": "3310",
    "武汉": "5210", "广州": "5810", "深圳": "5840", "成都": "6510", "重庆": "6530",
    "西安": "7910",
}  # fmt: skip


def area_code_for(city: str) -> str | None:
    return CITY_AREA_CODES.get(city.strip().removesuffix("市"))


# -- masking -------------------------------------------------------------------------------------
def mask_id_number(number: str) -> str:
    """``11010519491231002X`` → ``1101**********002X``."""
    return number[:4] + "*" * (len(number) - 8) + number[-4:] if len(number) > 8 else "****"


def mask_name(name: str) -> str:
    """``张三`` → ``张*``: the family name only."""
    return name[:1] + "*" * (len(name) - 1)


# -- SMS verification codes ----------------------------------------------------------------------
CODE_DIGITS = 6
CODE_TTL = timedelta(minutes=5)
MAX_ATTEMPTS = 5  # per code
RESEND_INTERVAL = timedelta(seconds=60)  # per phone
MAX_CODES_PER_DAY = 10  # per phone, Asia/Shanghai calendar day
_CODE_SHAPE = re.compile(r"[0-9]{6}")


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_message(code: str) -> str:
    minutes = int(CODE_TTL.total_seconds() // 60)
    return f"【收单】您的验证码是{code}，{minutes}分钟内有效。请勿告诉他人。"


def shanghai_day_start(moment: datetime) -> datetime:
    """Midnight (Asia/Shanghai) of the business day of ``moment``."""
    local = moment.astimezone(SHANGHAI)
    return datetime.combine(local.date(), time(0), tzinfo=SHANGHAI)


def check_can_send(now: datetime, last_sent_at: datetime | None, sent_today: int) -> None:
    """``too_many_codes`` past the daily cap, ``resend_too_soon`` within the interval."""
    if sent_today >= MAX_CODES_PER_DAY:
        raise DomainError(
            ErrorCode.TOO_MANY_CODES,
            f"at most {MAX_CODES_PER_DAY} codes a day for one phone: try again tomorrow",
        )
    if last_sent_at is not None and now < last_sent_at + RESEND_INTERVAL:
        wait = math.ceil((last_sent_at + RESEND_INTERVAL - now).total_seconds())
        raise DomainError(
            ErrorCode.RESEND_TOO_SOON,
            f"a new code can be sent in {wait} s",
            retry_after=wait,
        )


def check_code_usable(now: datetime, expires_at: datetime, attempts: int) -> None:
    """Before comparing: a code tried ``MAX_ATTEMPTS`` times or past its life is dead."""
    if attempts >= MAX_ATTEMPTS:
        raise DomainError(
            ErrorCode.TOO_MANY_ATTEMPTS,
            f"this code was tried {MAX_ATTEMPTS} times: ask for a new one",
        )
    if now >= expires_at:
        raise DomainError(
            ErrorCode.VERIFICATION_CODE_EXPIRED, "the code expired: ask for a new one"
        )


def code_shape_ok(code: object) -> bool:
    return isinstance(code, str) and bool(_CODE_SHAPE.fullmatch(code))


def wrong_code(attempts_used: int) -> DomainError:
    left = max(0, MAX_ATTEMPTS - attempts_used)
    return DomainError(
        ErrorCode.VERIFICATION_CODE_INVALID,
        f"the code is not right ({left} attempts left)",
        attempts_left=left,
    )


# -- real-name verification (KYC) ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RealNameSubject:
    """The four elements (四要素) a real-name check compares."""

    name: str
    id_number: str
    card_number: str
    phone: str


@dataclass(frozen=True, slots=True)
class KycResult:
    passed: bool
    reasons: tuple[str, ...]  # codes from KYC_REASONS; empty when passed
    provider: str


class RealNameVerifier(Protocol):
    """A real-name service (a bank card authentication network, a carrier's check…)."""

    def verify(self, subject: RealNameSubject) -> KycResult: ...


KYC_REASONS: dict[str, str] = {
    "id_name_mismatch": "the name does not match the ID number",
    "card_not_found": "the bank card does not exist (its check digit fails)",
    "card_holder_mismatch": "the bank card is not in the applicant's name",
    "phone_holder_mismatch": "the phone is not registered to the applicant",
}


class SandboxRealNameVerifier:
    """Deterministic rules (documented in docs/onboarding.md), every failing one reported:

    * ID sequence code (digits 15-17) ``999`` → ``id_name_mismatch``
    * card failing Luhn → ``card_not_found``; card ending ``0000`` → ``card_holder_mismatch``
    * phone ending ``0000`` → ``phone_holder_mismatch``
    * anything else passes.
    """

    provider = "sandbox"

    def verify(self, subject: RealNameSubject) -> KycResult:
        reasons: list[str] = []
        if id_sequence_code(subject.id_number) == "999":
            reasons.append("id_name_mismatch")
        if not luhn_valid(subject.card_number):
            reasons.append("card_not_found")
        elif subject.card_number.endswith("0000"):
            reasons.append("card_holder_mismatch")
        if subject.phone.endswith("0000"):
            reasons.append("phone_holder_mismatch")
        return KycResult(not reasons, tuple(reasons), self.provider)


# -- contracts -----------------------------------------------------------------------------------
def _yuan(fen: int) -> str:
    return Money(fen, "CNY").format()


def render_contract_text(
    *, contract_id: str, merchant_id: str, legal_name: str, terms: ContractTerms, issued: date
) -> str:
    """The contract's exact text: what is shown, downloaded, hashed and accepted."""
    collection = (
        "从首笔结算款中扣收" if terms.deposit_collection == "first_settlement" else "发货前预付"
    )
    lines = [
        "POS 终端受理服务协议",
        "",
        f"合同编号：{contract_id}",
        f"商户编号：{merchant_id}",
        f"商户名称：{legal_name}",
        f"签发日期：{issued.isoformat()}",
        "",
        f"一、产品：{terms.product}；费率方案：{terms.fee_plan_code}；结算周期：{terms.settlement_term}。",
        f"二、押金：{_yuan(terms.deposit_amount)}，{collection}。",
        f"三、激活返还：自激活起 {terms.activation_window_days} 天内，本终端银行卡交易累计达到"
        f" {_yuan(terms.activation_target)}，押金全额退还。",
        f"四、冷静期：签收后 {terms.cooling_off_days} 天内退回未使用的终端，押金全额退还。",
        f"五、解约：押金扣除违约金 {_yuan(terms.termination_penalty)} 及折旧"
        f"（每月 {_yuan(terms.monthly_depreciation)}，自激活起按月计，不足一月按一月）"
        "后退还，最低为零。",
        f"六、押金退还申请期限：相关事项发生后 {terms.deposit_refund_deadline_days} 天内。",
        "七、商户对上述条款已阅读并理解，点击接受即表示同意本协议。",
    ]
    return "\n".join(lines) + "\n"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
