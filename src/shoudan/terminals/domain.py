"""Terminal rules, pure: products, the status machine, and the formats of ids and keys.

- terminal id (终端号): 8 characters ``[0-9A-Z]``, as carried in ISO 8583 field 41;
- serial number (SN, printed on the device): 4–32 of ``[A-Za-z0-9-]``;
- terminal master key (TMK): 32 hex digits, a double-length (16-byte) 3DES key whose two
  halves differ (equal halves would make it single DES).
"""

from __future__ import annotations

import re
from enum import StrEnum

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.pricing.domain import Product  # one list: a terminal's product is what plans price

__all__ = [
    "TERMINAL_ID_LENGTH",
    "TMK_BYTES",
    "TRANSITIONS",
    "Product",
    "TerminalStatus",
    "is_terminal_id",
    "transition",
    "validate_master_key",
    "validate_product",
    "validate_serial_number",
    "validate_terminal_id",
    "with_odd_parity",
]

TERMINAL_ID_LENGTH = 8
TMK_BYTES = 16

_TERMINAL_ID = re.compile(r"[0-9A-Z]{8}")
_SERIAL_NUMBER = re.compile(r"[A-Za-z0-9-]{4,32}")
_HEX_32 = re.compile(r"[0-9A-Fa-f]{32}")


class TerminalStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


# Allowed moves; ``retired`` is final. (The onboarding issue adds allocation, shipping and
# activation before ``active``.)
TRANSITIONS: dict[TerminalStatus, frozenset[TerminalStatus]] = {
    TerminalStatus.ACTIVE: frozenset({TerminalStatus.SUSPENDED, TerminalStatus.RETIRED}),
    TerminalStatus.SUSPENDED: frozenset({TerminalStatus.ACTIVE, TerminalStatus.RETIRED}),
    TerminalStatus.RETIRED: frozenset(),
}


def transition(current: TerminalStatus | str, target: TerminalStatus | str) -> TerminalStatus:
    try:
        source, goal = TerminalStatus(current), TerminalStatus(target)
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"unknown terminal status {target!r}", field="status"
        ) from None
    if goal not in TRANSITIONS[source]:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION,
            f"a terminal cannot go from {source} to {goal}",
            current=source.value,
            target=goal.value,
        )
    return goal


def is_terminal_id(value: object) -> bool:
    return isinstance(value, str) and _TERMINAL_ID.fullmatch(value) is not None


def validate_terminal_id(value: object) -> str:
    if not is_terminal_id(value):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "a terminal id is 8 characters of digits and capital letters",
            field="terminal_id",
        )
    assert isinstance(value, str)
    return value


def validate_serial_number(value: object) -> str:
    if not isinstance(value, str) or not _SERIAL_NUMBER.fullmatch(value):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "a serial number is 4 to 32 letters, digits or hyphens",
            field="serial_number",
        )
    return value


def validate_product(value: object) -> Product:
    try:
        return Product(str(value))
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"unknown product {value!r}", field="product"
        ) from None


def validate_master_key(value: object) -> str:
    """A TMK as 32 hex digits, returned in capitals. The key itself never appears in the
    error message."""
    if not isinstance(value, str) or not _HEX_32.fullmatch(value):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "a master key is 32 hex digits (a double-length 3DES key)",
            field="master_key",
        )
    key = value.upper()
    if key[:16] == key[16:]:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "the two halves of the master key must differ (equal halves are single DES)",
            field="master_key",
        )
    return key


def with_odd_parity(key: bytes) -> bytes:
    """DES keys carry odd parity in the low bit of each byte; HSMs expect it."""
    return bytes((b & 0xFE) | (1 - (bin(b >> 1).count("1") & 1)) for b in key)
