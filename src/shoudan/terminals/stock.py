"""Inventory import, label files and the public anti-counterfeit check, in the caller's
transaction.

Verification codes (防伪码) are *derived*, not stored: ``code = HMAC(vault lookup key, serial,
salt)`` written in an unambiguous alphabet, with a random per-device salt kept in the row. The
row holds only the salt and a keyed hash of the code, so a copy of the database reveals no
code, while ``shoudan terminals labels`` can print a lost label file again (with the vault key,
the same trust as decrypting personal data). The public check compares keyed hashes.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.core.models import UTCDateTime
from shoudan.terminals.domain import (
    DeviceEvent,
    DeviceStatus,
    Product,
    code_from_digest,
    is_serial_number,
    normalize_code,
)
from shoudan.terminals.inventory import (
    InventoryRow,
    Label,
    RowError,
    parse_inventory,
    rejected,
)
from shoudan.terminals.lifecycle import add_history
from shoudan.terminals.models import Device, Terminal

CODE_CONTEXT = "terminal:verification-code"
HASH_CONTEXT = "terminal:verification-hash"
CHUNK = 500  # rows per query or flush: bounded IN lists and progress steps

T = TypeVar("T")

Progress = Callable[[int, int], None]
"""Called with (devices done, devices in the file) while an import is stored."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    import_id: str
    labels: list[Label]  # the clear codes: print them, they are not kept


@dataclass(frozen=True, slots=True)
class Verification:
    genuine: bool
    product: Product | None = None
    first_checked_at: datetime | None = None
    check_count: int | None = None


NOT_GENUINE = Verification(genuine=False)


def verification_code(vault: Vault, serial_number: str, salt: str) -> str:
    return code_from_digest(vault.lookup_hash(f"{serial_number}\x1f{salt}", CODE_CONTEXT))


def _code_hash(vault: Vault, serial_number: str, code: str) -> str:
    return vault.lookup_hash(f"{serial_number}\x1f{code}", HASH_CONTEXT)


def _chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    return (items[i : i + CHUNK] for i in range(0, len(items), CHUNK))


def _known_serials(session: Session, rows: list[InventoryRow]) -> list[RowError]:
    """Rows whose serial number is already a device or a terminal."""
    errors: list[RowError] = []
    for chunk in _chunks(rows):
        serials = [r.serial_number for r in chunk]
        devices = set(session.scalars(select(Device.serial_number).where(
            Device.serial_number.in_(serials))))  # fmt: skip
        terminals = set(session.scalars(select(Terminal.serial_number).where(
            Terminal.serial_number.in_(serials))))  # fmt: skip
        for r in chunk:
            if r.serial_number in devices:
                errors.append(RowError(r.row, "serial_number", "already in the inventory"))
            elif r.serial_number in terminals:
                errors.append(RowError(r.row, "serial_number", "already a registered terminal"))
    return errors


def import_devices(
    session: Session,
    vault: Vault,
    text: str,
    *,
    actor: str,
    clock: Clock,
    progress: Progress | None = None,
) -> ImportResult:
    """Add every device of an inventory CSV (see ``inventory``) as ``in_stock``, each with its
    verification code — or none of them: any error in any row (or a serial number already
    known) raises ``invalid_input`` with every row's errors in ``errors``."""
    rows, errors = parse_inventory(text)
    errors += _known_serials(session, rows)
    if errors:
        raise rejected(sorted(errors, key=lambda e: e.row))
    import_id, now = new_id("imp_"), clock.now()
    labels: list[Label] = []
    for chunk in _chunks(rows):
        for r in chunk:
            salt = secrets.token_hex(16)
            code = verification_code(vault, r.serial_number, salt)
            device = Device(
                serial_number=r.serial_number, product=r.product.value, model=r.model,
                batch=r.batch, import_id=import_id, status=DeviceStatus.IN_STOCK.value,
                code_salt=salt, code_hash=_code_hash(vault, r.serial_number, code),
                check_count=0, created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(device)
            add_history(session, device, DeviceEvent.IMPORT, None, actor=actor, clock=clock,
                        details={"import_id": import_id})  # fmt: skip
            labels.append(Label(r.serial_number, r.product, r.model, code))
        _flush_new(session)
        if progress is not None:
            progress(len(labels), len(rows))
    record(
        session, actor=actor, action="terminal.import", subject_type="device_import",
        subject_id=import_id,
        after={"devices": len(rows), "serial_numbers": [rows[0].serial_number,
                                                        rows[-1].serial_number]},
        clock=clock,
    )  # fmt: skip
    return ImportResult(import_id, labels)


def _flush_new(session: Session) -> None:
    try:
        session.flush()
    except IntegrityError as exc:  # another import added one of these serials meanwhile
        raise DomainError(
            ErrorCode.TERMINAL_EXISTS,
            "a serial number of this file was imported meanwhile; nothing was imported",
        ) from exc


def labels_for(
    session: Session,
    vault: Vault,
    *,
    import_id: str | None = None,
    serial_numbers: Sequence[str] = (),
    status: DeviceStatus | None = None,
) -> list[Label]:
    """The labels (serial, product, model, clear code) of the devices selected by import,
    serial numbers and/or status (all devices when nothing is given), by serial number."""
    query = select(Device).order_by(Device.serial_number)
    if import_id is not None:
        query = query.where(Device.import_id == import_id)
    if serial_numbers:
        query = query.where(Device.serial_number.in_(list(serial_numbers)))
    if status is not None:
        query = query.where(Device.status == status.value)
    return [_label(vault, d) for d in session.scalars(query)]


def _label(vault: Vault, device: Device) -> Label:
    code = verification_code(vault, device.serial_number, device.code_salt)
    return Label(device.serial_number, Product(device.product), device.model, code)


def verify_terminal(
    session: Session, vault: Vault, serial_number: str, code: str, *, clock: Clock
) -> Verification:
    """Anyone's check of a printed code. Genuine: the check is counted (atomically, per
    serial) and the count and the first check's time are returned; an unknown serial and a
    wrong code are the same ``NOT_GENUINE`` and count nothing."""
    typed = normalize_code(code)
    if typed is None or not is_serial_number(serial_number):
        return NOT_GENUINE
    found = session.execute(
        select(Device.product, Device.code_hash).where(Device.serial_number == serial_number)
    ).one_or_none()
    expected = _code_hash(vault, serial_number, typed)
    if found is None or not hmac.compare_digest(found.code_hash, expected):
        return NOT_GENUINE
    now = bindparam("now", clock.now(), type_=UTCDateTime())
    session.execute(
        update(Device)
        .where(Device.serial_number == serial_number)
        .values(
            check_count=Device.check_count + 1,
            first_checked_at=func.coalesce(Device.first_checked_at, now),
        )
    )
    count, first = session.execute(
        select(Device.check_count, Device.first_checked_at).where(
            Device.serial_number == serial_number
        )
    ).one()
    return Verification(True, Product(found.product), first, count)
