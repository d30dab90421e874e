"""The pure rules of the device lifecycle: the transition table, input formats, verification
codes and the inventory/label files (no database)."""

from __future__ import annotations

import pytest

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.terminals.domain import (
    DEVICE_TRANSITIONS,
    TERMINAL_STATUS_AFTER,
    TRANSITIONS,
    VERIFICATION_ALPHABET,
    VERIFICATION_CODE_LENGTH,
    DeviceEvent,
    DeviceStatus,
    Product,
    TerminalStatus,
    code_from_digest,
    device_transition,
    normalize_code,
    validate_carrier,
    validate_label,
    validate_note,
    validate_return_condition,
    validate_tracking_number,
)
from shoudan.terminals.inventory import Label, labels_csv, parse_inventory


def test_terminated_is_final_and_every_status_is_reachable() -> None:
    targets = {target for _sources, target in DEVICE_TRANSITIONS.values()}
    assert targets == set(DeviceStatus) - {DeviceStatus.IN_STOCK}
    assert all(DeviceStatus.TERMINATED not in s for s, _t in DEVICE_TRANSITIONS.values())


def test_the_terminal_follows_its_device_by_allowed_moves() -> None:
    """Along the device's path, each terminal status change is one the terminal allows."""
    path = [
        DeviceEvent.ACTIVATE, DeviceEvent.SUSPEND, DeviceEvent.RESUME, DeviceEvent.RETURN,
    ]  # fmt: skip
    status = TerminalStatus.INACTIVE
    for event in path:
        target = TERMINAL_STATUS_AFTER[event]
        assert target in TRANSITIONS[status], (status, target)
        status = target
    assert TerminalStatus.RETIRED in TRANSITIONS[TerminalStatus.INACTIVE]  # returned unused


def test_a_refused_move_names_the_status_and_the_event() -> None:
    with pytest.raises(DomainError) as error:
        device_transition(DeviceStatus.IN_STOCK, DeviceEvent.SHIP)
    assert error.value.code is ErrorCode.INVALID_TRANSITION
    assert error.value.details == {"current": "in_stock", "event": "ship"}
    assert "allowed from allocated" in error.value.message
    assert device_transition("suspended", DeviceEvent.RESUME) is DeviceStatus.ACTIVATED


@pytest.mark.parametrize(
    ("validate", "value"),
    [
        (validate_tracking_number, "SF 123"),
        (validate_tracking_number, "SF1"),
        (validate_tracking_number, "S" * 41),
        (validate_tracking_number, 1234),
        (validate_carrier, ""),
        (validate_carrier, None),
        (validate_carrier, "x" * 33),
        (validate_carrier, "SF\nExpress"),
        (validate_note, "n" * 501),
        (validate_return_condition, "lost"),
    ],
)
def test_bad_fields_are_invalid_input(validate, value) -> None:
    with pytest.raises(DomainError) as error:
        validate(value)
    assert error.value.code is ErrorCode.INVALID_INPUT


def test_good_fields_are_trimmed() -> None:
    assert validate_tracking_number(" SF-1234 ") == "SF-1234"
    assert validate_carrier(" 顺丰 ") == "顺丰"
    assert validate_label("  ", "model") is None
    assert validate_note("") is None


def test_codes_use_the_alphabet_and_are_typed_loosely() -> None:
    code = code_from_digest("ab" * 32)
    assert code == code_from_digest("ab" * 32) and code != code_from_digest("ac" * 32)
    assert len(code) == VERIFICATION_CODE_LENGTH and set(code) <= set(VERIFICATION_ALPHABET)
    assert not set("01OIL") & set(VERIFICATION_ALPHABET)
    assert normalize_code(f" {code[:5].lower()}-{code[5:]} ") == code
    assert normalize_code("0" * 10) is None and normalize_code(code + "2") is None
    assert normalize_code(None) is None


def test_inventory_columns_in_any_order_and_case_cells_trimmed() -> None:
    rows, errors = parse_inventory(" Product , SERIAL_NUMBER,batch\r\n smart , SN-0001 ,B1\r\n")
    assert errors == []
    [row] = rows
    assert (row.row, row.serial_number, row.product, row.model, row.batch) == (
        2, "SN-0001", Product.SMART, None, "B1",
    )  # fmt: skip


def test_inventory_lines_may_end_in_a_lone_carriage_return() -> None:
    rows, errors = parse_inventory("serial_number,product\rSN-0001,smart\r")
    assert errors == [] and [row.serial_number for row in rows] == ["SN-0001"]
    # once a 500 (found by the API's schema fuzzing: a body of "\r0")
    assert parse_inventory("\r0")[1][0].field == "serial_number"


def test_an_unreadable_inventory_file_is_a_file_error() -> None:
    huge = "x" * 200_000  # over csv's field size limit
    rows, [error] = parse_inventory(f"serial_number,product\nSN-1,{huge}\n")
    assert rows == [] and (error.row, error.field) == (2, "file")
    assert error.message.startswith("not a readable CSV file")


def test_labels_file() -> None:
    text = labels_csv([Label("SN-1", Product.EPOS, None, "ABCDEFGHJK"),
                       Label("SN-2", Product.SMART, "A8, pro", "23456789AB")])  # fmt: skip
    assert text == (
        "serial_number,product,model,verification_code\n"
        "SN-1,epos,,ABCDEFGHJK\n"
        'SN-2,smart,"A8, pro",23456789AB\n'
    )
