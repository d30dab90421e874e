"""SMS rules, pure: who can receive a text (mainland mobiles), what a text may be.

Length: Chinese carriers bill and split in UCS-2, 70 characters for a single message, 67 per
part once it has to be split (the rest carries the part header), the signature (【…】)
included. We cap a message at ``MAX_TEXT_LENGTH`` characters (a handful of parts) so a
template bug cannot send a novel to a consumer.
"""

from __future__ import annotations

import math
import re

from shoudan.core.errors import DomainError, ErrorCode

# verification codes asked for from one network address in one Shanghai day, whatever the
# phones: the per-phone limits do not stop one visitor texting thousands of numbers (SMS
# pumping: the acquirer pays for every text). High enough for an office behind one NAT.
CODES_PER_ADDRESS_PER_DAY = 20
SINGLE_MESSAGE_CHARS = 70
PART_CHARS = 67
MAX_TEXT_LENGTH = 335  # 5 parts
# The same rule as merchants.domain.validate_phone; repeated because sms sits below merchants
# in the layers (the SMS channel must not depend on the merchant domain).
_MAINLAND_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_PURPOSE = re.compile(r"[a-z][a-z0-9_.]{1,31}")


def validate_mobile(phone: object) -> str:
    """A mainland China mobile number, 11 digits ``1[3-9]…`` (no +86, no spaces). The number
    stays out of the error (it would reach logs)."""
    if not isinstance(phone, str) or not _MAINLAND_MOBILE.fullmatch(phone.strip()):
        raise DomainError(
            ErrorCode.INVALID_PHONE,
            "the phone must be a mainland mobile number (11 digits, 1[3-9]…)",
            field="phone",
        )
    return phone.strip()


def validate_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DomainError(ErrorCode.INVALID_INPUT, "an SMS needs some text", field="text")
    text = text.strip()
    if len(text) > MAX_TEXT_LENGTH:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"an SMS is at most {MAX_TEXT_LENGTH} characters ({len(text)} given)",
            field="text",
        )
    return text


def validate_purpose(purpose: object) -> str:
    """What the text is for (``refund.succeeded``, ``otp``…): lowercase, 2-32 characters."""
    if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "purpose: lowercase letters, digits, '_' and '.', 2-32 characters",
            field="purpose",
        )
    return purpose


def parts(text: str) -> int:
    """How many messages the carrier splits ``text`` into (each billed)."""
    if len(text) <= SINGLE_MESSAGE_CHARS:
        return 1
    return math.ceil(len(text) / PART_CHARS)


def check_address_budget(codes_today: int, limit: int = CODES_PER_ADDRESS_PER_DAY) -> None:
    """``rate_limited`` once one address has asked for more than ``limit`` codes today."""
    if codes_today > limit:
        raise DomainError(
            ErrorCode.RATE_LIMITED,
            f"at most {limit} verification codes a day from one network address",
            reason="sms_address_budget",
        )
