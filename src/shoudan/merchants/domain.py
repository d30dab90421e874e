"""Merchant rules, pure: types, the status machine, merchant numbers, field validation.

A merchant number (商户号) is 15 digits: the acquirer's code (3), the area code of the
merchant's location (4), its MCC (4), and a serial (4) unique within that area and MCC::

    898 5810 5411 0001
    │   │    │    └ serial, 0001–9999, the next free one for (area, MCC)
    │   │    └ merchant category code (ISO 18245)
    │   └ area code (the card network's region code of the merchant's location)
    └ ACQUIRER_CODE

Validation errors carry a precise code (``invalid_phone``, ``invalid_mcc``,
``invalid_area_code``, ``invalid_card``) and the offending ``field``, never the value itself
(a phone or card number must not end up in a log or an error response).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.identifiers import luhn_valid

ACQUIRER_CODE = "898"
"""The acquirer's own 3-digit institution code, the first digits of every merchant number.
A constant on purpose: changing it would renumber every merchant, so it is not a setting."""

MERCHANT_ID_LENGTH = 15
SERIAL_MIN = 1
SERIAL_MAX = 9999
LEGAL_NAME_MAX = 100
NAME_MAX = 100
CARD_MIN_DIGITS = 12
CARD_MAX_DIGITS = 19

_FOUR_DIGITS = re.compile(r"[0-9]{4}")
_MERCHANT_ID = re.compile(r"[0-9]{15}")
_MAINLAND_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_DIGITS = re.compile(r"[0-9]+")


class MerchantType(StrEnum):
    INDIVIDUAL = "individual"  # 个人 / 小微
    SMALL_BUSINESS = "small_business"  # 个体工商户
    ENTERPRISE = "enterprise"  # 企业


class MerchantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


# Allowed moves; ``closed`` is final (a closed merchant number is never reused).
TRANSITIONS: dict[MerchantStatus, frozenset[MerchantStatus]] = {
    MerchantStatus.ACTIVE: frozenset({MerchantStatus.SUSPENDED, MerchantStatus.CLOSED}),
    MerchantStatus.SUSPENDED: frozenset({MerchantStatus.ACTIVE, MerchantStatus.CLOSED}),
    MerchantStatus.CLOSED: frozenset(),
}


def can_transition(current: MerchantStatus, target: MerchantStatus) -> bool:
    return target in TRANSITIONS[MerchantStatus(current)]


def transition(current: MerchantStatus | str, target: MerchantStatus | str) -> MerchantStatus:
    """The new status, or ``invalid_transition`` when the move is not in ``TRANSITIONS``."""
    try:
        source, goal = MerchantStatus(current), MerchantStatus(target)
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"unknown merchant status {target!r}", field="status"
        ) from None
    if not can_transition(source, goal):
        raise DomainError(
            ErrorCode.INVALID_TRANSITION,
            f"a merchant cannot go from {source} to {goal}",
            current=source.value,
            target=goal.value,
        )
    return goal


# -- merchant numbers ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MerchantIdParts:
    acquirer_code: str
    area_code: str
    mcc: str
    serial: int


def validate_mcc(mcc: object) -> str:
    if not isinstance(mcc, str) or not _FOUR_DIGITS.fullmatch(mcc):
        raise DomainError(ErrorCode.INVALID_MCC, "the MCC must be 4 digits", field="mcc")
    return mcc


def validate_area_code(area_code: object) -> str:
    if not isinstance(area_code, str) or not _FOUR_DIGITS.fullmatch(area_code):
        raise DomainError(
            ErrorCode.INVALID_AREA_CODE, "the area code must be 4 digits", field="area_code"
        )
    return area_code


def merchant_id_prefix(area_code: str, mcc: str) -> str:
    """The first 11 digits shared by every merchant of one area and MCC."""
    return ACQUIRER_CODE + validate_area_code(area_code) + validate_mcc(mcc)


def compose_merchant_id(area_code: str, mcc: str, serial: int) -> str:
    if isinstance(serial, bool) or not isinstance(serial, int):
        raise DomainError(ErrorCode.INVALID_INPUT, "the serial must be an integer")
    if not SERIAL_MIN <= serial <= SERIAL_MAX:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"the serial must be between {SERIAL_MIN} and {SERIAL_MAX}, got {serial}",
        )
    return f"{merchant_id_prefix(area_code, mcc)}{serial:04d}"


def is_merchant_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and _MERCHANT_ID.fullmatch(value) is not None
        and value.startswith(ACQUIRER_CODE)
        and int(value[11:]) >= SERIAL_MIN
    )


def parse_merchant_id(merchant_id: object) -> MerchantIdParts:
    if not is_merchant_id(merchant_id):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"a merchant number is {MERCHANT_ID_LENGTH} digits starting with {ACQUIRER_CODE}",
            field="merchant_id",
        )
    assert isinstance(merchant_id, str)
    return MerchantIdParts(
        merchant_id[:3], merchant_id[3:7], merchant_id[7:11], int(merchant_id[11:])
    )


def next_serial(highest: str | None) -> int:
    """The serial after the highest merchant number already taken for an (area, MCC)."""
    serial = SERIAL_MIN if highest is None else parse_merchant_id(highest).serial + 1
    if serial > SERIAL_MAX:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "no merchant number left for this area code and MCC",
            field="mcc",
        )
    return serial


# -- personal and business fields ---------------------------------------------------------------
def validate_phone(phone: object) -> str:
    """A mainland China mobile number, 11 digits ``1[3-9]xxxxxxxxx`` (no +86, no spaces)."""
    if not isinstance(phone, str) or not _MAINLAND_MOBILE.fullmatch(phone.strip()):
        raise DomainError(
            ErrorCode.INVALID_PHONE,
            "the phone must be a mainland mobile number (11 digits, 1[3-9]…)",
            field="contact_phone",
        )
    return phone.strip()


def validate_card_number(number: object, field: str = "card_number") -> str:
    """A bank card number: 12–19 digits with a valid Luhn check digit. Spaces between
    groups (as printed on the card) are removed."""
    if not isinstance(number, str):
        raise DomainError(ErrorCode.INVALID_CARD, "the card number must be a string", field=field)
    digits = "".join(number.split())
    if not (_DIGITS.fullmatch(digits) and CARD_MIN_DIGITS <= len(digits) <= CARD_MAX_DIGITS):
        raise DomainError(
            ErrorCode.INVALID_CARD,
            f"a card number is {CARD_MIN_DIGITS} to {CARD_MAX_DIGITS} digits",
            field=field,
        )
    if not luhn_valid(digits):
        raise DomainError(
            ErrorCode.INVALID_CARD, "the card number fails the Luhn check", field=field
        )
    return digits


def validate_name(value: object, field: str, max_length: int = NAME_MAX) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DomainError(ErrorCode.INVALID_INPUT, f"{field} must not be empty", field=field)
    text = value.strip()
    if len(text) > max_length:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"{field} is longer than {max_length} characters",
            field=field,
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"{field} contains control characters", field=field
        )
    return text


def validate_legal_name(value: object) -> str:
    return validate_name(value, "legal_name", LEGAL_NAME_MAX)


def validate_merchant_type(value: object) -> MerchantType:
    try:
        return MerchantType(str(value))
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"unknown merchant type {value!r}", field="merchant_type"
        ) from None


def validate_daily_limit(value: object) -> int | None:
    """A per-merchant daily limit in fen; ``None`` means the fee plan's default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DomainError(
            ErrorCode.INVALID_AMOUNT,
            "the daily limit is a positive integer of fen",
            field="daily_limit",
        )
    return value
