"""Check digits of standard identifiers, through python-stdnum (one implementation for the
whole project: card numbers now; ID numbers and credit codes with onboarding)."""

from __future__ import annotations

from stdnum import luhn


def luhn_valid(digits: str) -> bool:
    """ISO/IEC 7812 (Luhn) check digit. False — never an error — for anything not digits."""
    if not isinstance(digits, str) or not digits.isascii() or not digits.isdigit():
        return False
    return bool(luhn.is_valid(digits))
