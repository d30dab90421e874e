"""The inventory file, pure: CSV (UTF-8, a BOM tolerated) with a header row naming the columns
``serial_number``, ``product`` and optionally ``model`` and ``batch``, in any order.

Rows are numbered as a spreadsheet shows them: the header is row 1, the first device row 2.
Every problem of every row is reported, so a file is fixed in one go; a file with any problem
is imported not at all (the service raises ``rejected``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.terminals.domain import (
    Product,
    validate_label,
    validate_product,
    validate_serial_number,
)

REQUIRED_COLUMNS = ("serial_number", "product")
OPTIONAL_COLUMNS = ("model", "batch")
MAX_ROWS = 20_000
MAX_REPORTED = 1_000  # a wholly wrong file should not produce a response of megabytes

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InventoryRow:
    row: int
    serial_number: str
    product: Product
    model: str | None
    batch: str | None


@dataclass(frozen=True, slots=True)
class Label:
    serial_number: str
    product: Product
    model: str | None
    verification_code: str


LABEL_COLUMNS = ("serial_number", "product", "model", "verification_code")


def labels_csv(labels: list[Label]) -> str:
    """The label file: what the label printer needs, one device a row, with a header."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    for label in labels:
        writer.writerow(
            [label.serial_number, label.product.value, label.model or "", label.verification_code]
        )
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    field: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_inventory(text: str) -> tuple[list[InventoryRow], list[RowError]]:
    """The file's devices and every error found in it (empty when the file is good)."""
    # newline="": lines end at \r\n, \n or a lone \r (old Mac exports), as csv expects
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        records = list(reader)
    except csv.Error as error:  # a field over csv's size limit…
        return [], [RowError(reader.line_num, "file", f"not a readable CSV file: {error}")]
    if not records:
        return [], [RowError(1, "file", "the file is empty: a header row is required")]
    header = [name.strip().lower() for name in records[0]]
    errors = _header_errors(header)
    if errors:
        return [], errors
    rows: list[InventoryRow] = []
    first_seen: dict[str, int] = {}
    data = [(number, cells) for number, cells in enumerate(records[1:], start=2) if any(cells)]
    if not data:
        return [], [RowError(2, "file", "the file has no devices after its header")]
    if len(data) > MAX_ROWS:
        return [], [RowError(MAX_ROWS + 2, "file", f"at most {MAX_ROWS} devices per file")]
    for number, cells in data:
        row, row_errors = _parse_row(number, header, cells)
        if row is not None:
            first = first_seen.setdefault(row.serial_number, number)
            if first != number:
                row_errors.append(
                    RowError(number, "serial_number", f"duplicate of row {first} in this file")
                )
        if row_errors:
            errors.extend(row_errors)
        elif row is not None:
            rows.append(row)
    return rows, errors


def rejected(errors: list[RowError]) -> DomainError:
    """The one error for a refused file, carrying every row error (the first 1000)."""
    return DomainError(
        ErrorCode.INVALID_INPUT,
        f"{len(errors)} error(s) in the inventory file; nothing was imported",
        errors=[e.as_dict() for e in errors[:MAX_REPORTED]],
        error_count=len(errors),
    )


def _header_errors(header: list[str]) -> list[RowError]:
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    errors = [RowError(1, c, "missing column") for c in REQUIRED_COLUMNS if c not in header]
    errors += [RowError(1, c or "(blank)", "unknown column") for c in header if c not in known]
    errors += [
        RowError(1, c, "column named twice")
        for i, c in enumerate(header)
        if c in known and c in header[:i]
    ]
    return errors


def _parse_row(
    number: int, header: list[str], cells: list[str]
) -> tuple[InventoryRow | None, list[RowError]]:
    if len(cells) != len(header):
        message = f"{len(cells)} cells, the header has {len(header)}"
        return None, [RowError(number, "row", message)]
    values = {name: cell.strip() for name, cell in zip(header, cells, strict=True)}
    errors: list[RowError] = []

    def check(field: str, validate: Callable[[], T]) -> T | None:
        try:
            return validate()
        except DomainError as error:
            errors.append(RowError(number, field, error.message))
            return None

    serial = check("serial_number", lambda: validate_serial_number(values["serial_number"]))
    product = check("product", lambda: validate_product(values["product"]))
    model = check("model", lambda: validate_label(values.get("model"), "model"))
    batch = check("batch", lambda: validate_label(values.get("batch"), "batch"))
    if errors or serial is None or product is None:
        return None, errors
    return InventoryRow(number, serial, product, model, batch), errors
