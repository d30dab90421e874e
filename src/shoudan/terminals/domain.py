"""Terminal rules, pure: products, the two status machines, and the formats of ids and keys.

A *device* is the physical machine, known by its serial number from the day it enters the
warehouse; a *terminal* is the payment point (terminal id, master key, merchant) created when
the device is allocated. The device machine drives the terminal's status (``inactive`` until
the first sign-on, then ``active``/``suspended``, ``retired`` once returned or terminated).

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
    "DEVICE_TRANSITIONS",
    "TERMINAL_ID_LENGTH",
    "TERMINAL_STATUS_AFTER",
    "TMK_BYTES",
    "TRANSITIONS",
    "VERIFICATION_ALPHABET",
    "VERIFICATION_CODE_LENGTH",
    "DeviceEvent",
    "DeviceStatus",
    "Product",
    "ReturnCondition",
    "TerminalStatus",
    "code_from_digest",
    "device_transition",
    "is_serial_number",
    "is_terminal_id",
    "normalize_code",
    "transition",
    "validate_carrier",
    "validate_label",
    "validate_master_key",
    "validate_note",
    "validate_product",
    "validate_return_condition",
    "validate_serial_number",
    "validate_terminal_id",
    "validate_tracking_number",
    "with_odd_parity",
]

TERMINAL_ID_LENGTH = 8
TMK_BYTES = 16

_TERMINAL_ID = re.compile(r"[0-9A-Z]{8}")
_SERIAL_NUMBER = re.compile(r"[A-Za-z0-9-]{4,32}")
_HEX_32 = re.compile(r"[0-9A-Fa-f]{32}")


_TRACKING_NUMBER = re.compile(r"[A-Za-z0-9-]{4,40}")
MAX_NOTE = 500
MAX_LABEL = 32  # carrier, model, manufacturing batch


class TerminalStatus(StrEnum):
    INACTIVE = "inactive"  # allocated: may sign on (to be activated), may not pay
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


# Allowed moves; ``retired`` is final.
TRANSITIONS: dict[TerminalStatus, frozenset[TerminalStatus]] = {
    TerminalStatus.INACTIVE: frozenset({TerminalStatus.ACTIVE, TerminalStatus.RETIRED}),
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


class DeviceStatus(StrEnum):
    IN_STOCK = "in_stock"
    ALLOCATED = "allocated"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    ACTIVATED = "activated"
    SUSPENDED = "suspended"
    RETURNED = "returned"
    TERMINATED = "terminated"


class DeviceEvent(StrEnum):
    IMPORT = "import"
    ALLOCATE = "allocate"
    SHIP = "ship"
    DELIVER = "deliver"
    ACTIVATE = "activate"  # the first successful sign-on, never an API call
    SUSPEND = "suspend"
    RESUME = "resume"
    RETURN = "return"
    TERMINATE = "terminate"


class ReturnCondition(StrEnum):
    UNUSED = "unused"
    USED = "used"
    DAMAGED = "damaged"


_S = DeviceStatus
# event -> (the statuses it may start from, the status it leads to); ``terminated`` is final.
# A sign-on while ``shipped`` activates too: the device is evidently in the merchant's hands
# (delivery is then recorded at the same time).
DEVICE_TRANSITIONS: dict[DeviceEvent, tuple[frozenset[DeviceStatus], DeviceStatus]] = {
    DeviceEvent.ALLOCATE: (frozenset({_S.IN_STOCK}), _S.ALLOCATED),
    DeviceEvent.SHIP: (frozenset({_S.ALLOCATED}), _S.SHIPPED),
    DeviceEvent.DELIVER: (frozenset({_S.SHIPPED}), _S.DELIVERED),
    DeviceEvent.ACTIVATE: (frozenset({_S.SHIPPED, _S.DELIVERED}), _S.ACTIVATED),
    DeviceEvent.SUSPEND: (frozenset({_S.ACTIVATED}), _S.SUSPENDED),
    DeviceEvent.RESUME: (frozenset({_S.SUSPENDED}), _S.ACTIVATED),
    DeviceEvent.RETURN: (frozenset({_S.DELIVERED, _S.ACTIVATED, _S.SUSPENDED}), _S.RETURNED),
    DeviceEvent.TERMINATE: (frozenset({_S.RETURNED, _S.ACTIVATED, _S.SUSPENDED}), _S.TERMINATED),
}

# What each event makes of the terminal (payment point); allocation creates it ``inactive``.
TERMINAL_STATUS_AFTER: dict[DeviceEvent, TerminalStatus] = {
    DeviceEvent.ACTIVATE: TerminalStatus.ACTIVE,
    DeviceEvent.SUSPEND: TerminalStatus.SUSPENDED,
    DeviceEvent.RESUME: TerminalStatus.ACTIVE,
    DeviceEvent.RETURN: TerminalStatus.RETIRED,
    DeviceEvent.TERMINATE: TerminalStatus.RETIRED,
}


def device_transition(current: DeviceStatus | str, event: DeviceEvent) -> DeviceStatus:
    """The status ``event`` leads to from ``current``, or ``invalid_transition``."""
    source = DeviceStatus(current)
    allowed, target = DEVICE_TRANSITIONS[event]
    if source not in allowed:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION,
            f"a {source} terminal cannot be {_PAST.get(event, event.value)}; allowed from "
            f"{', '.join(sorted(allowed))}",
            current=source.value,
            event=event.value,
        )
    return target


_PAST = {
    DeviceEvent.ALLOCATE: "allocated", DeviceEvent.SHIP: "shipped",
    DeviceEvent.DELIVER: "delivered", DeviceEvent.ACTIVATE: "activated",
    DeviceEvent.SUSPEND: "suspended", DeviceEvent.RESUME: "resumed",
    DeviceEvent.RETURN: "returned", DeviceEvent.TERMINATE: "terminated",
}  # fmt: skip


def validate_carrier(value: object) -> str:
    carrier = _text(value, "carrier", required=True)
    assert carrier is not None
    return carrier


def validate_label(value: object, field: str) -> str | None:
    """An optional short label (model, manufacturing batch): up to 32 printable characters."""
    return _text(value, field, required=False)


def _text(value: object, field: str, *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DomainError(ErrorCode.INVALID_INPUT, f"{field} is required", field=field)
        return None
    if not isinstance(value, str) or len(value.strip()) > MAX_LABEL or not value.isprintable():
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"{field} is at most {MAX_LABEL} printable characters",
            field=field,
        )
    return value.strip()


def validate_tracking_number(value: object) -> str:
    if not isinstance(value, str) or not _TRACKING_NUMBER.fullmatch(value.strip()):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "a tracking number is 4 to 40 letters, digits or hyphens",
            field="tracking_number",
        )
    return value.strip()


def validate_note(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_NOTE:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"a note is at most {MAX_NOTE} characters", field="note"
        )
    return value


def validate_return_condition(value: object) -> ReturnCondition:
    try:
        return ReturnCondition(str(value))
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "condition is one of unused, used, damaged",
            field="condition",
        ) from None


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


def is_serial_number(value: object) -> bool:
    return isinstance(value, str) and _SERIAL_NUMBER.fullmatch(value) is not None


def validate_serial_number(value: object) -> str:
    if not is_serial_number(value):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "a serial number is 4 to 32 letters, digits or hyphens",
            field="serial_number",
        )
    assert isinstance(value, str)
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


# Anti-counterfeit code (防伪码): printed on the label, typed by a consumer. No 0/O, 1/I/L.
VERIFICATION_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
VERIFICATION_CODE_LENGTH = 10  # 31**10 ≈ 2**49.5


def code_from_digest(digest_hex: str) -> str:
    """A verification code from a keyed digest (at least 64 hex digits of HMAC output)."""
    number = int(digest_hex, 16)
    base = len(VERIFICATION_ALPHABET)
    symbols = []
    for _ in range(VERIFICATION_CODE_LENGTH):
        number, index = divmod(number, base)
        symbols.append(VERIFICATION_ALPHABET[index])
    return "".join(symbols)


def normalize_code(value: object) -> str | None:
    """What a consumer typed, as stored: capitals, without spaces or hyphens; ``None`` when it
    cannot be a code at all."""
    if not isinstance(value, str):
        return None
    code = value.upper().replace("-", "").replace(" ", "")
    if len(code) != VERIFICATION_CODE_LENGTH or any(c not in VERIFICATION_ALPHABET for c in code):
        return None
    return code
