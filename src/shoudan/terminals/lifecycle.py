"""Device lifecycle use cases, in the caller's transaction: allocate → ship → deliver →
activate (first sign-on) ↔ suspend → return → terminate (table: ``domain.DEVICE_TRANSITIONS``).

Every move locks the device row, checks the transition before changing anything, writes one
``device_history`` row and one audit record, keeps the terminal (payment point) in step, and
emits ``terminal.activated`` / ``terminal.returned`` / ``terminal.terminated`` to the outbox.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault
from shoudan.core.db import load_row
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.merchants.domain import MerchantStatus
from shoudan.merchants.service import MerchantView, get_merchant
from shoudan.notifications.service import emit
from shoudan.onboarding.service import ContractView, accepted_contract, latest_accepted_contract
from shoudan.terminals.domain import (
    TERMINAL_ID_LENGTH,
    TERMINAL_STATUS_AFTER,
    DeviceEvent,
    DeviceStatus,
    Product,
    ReturnCondition,
    TerminalStatus,
    device_transition,
    transition,
    validate_carrier,
    validate_note,
    validate_return_condition,
    validate_serial_number,
    validate_terminal_id,
    validate_tracking_number,
)
from shoudan.terminals.keys import TMK_CONTEXT, generate_master_key, key_check_value
from shoudan.terminals.models import Device, DeviceHistory, Terminal

_ID_SYMBOLS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SYSTEM_ACTOR = "system:gateway"


@dataclass(frozen=True, slots=True)
class DeviceView:
    serial_number: str
    product: Product
    model: str | None
    batch: str | None
    status: DeviceStatus
    terminal_id: str | None
    merchant_id: str | None
    contract_id: str | None
    carrier: str | None
    tracking_number: str | None
    allocated_at: datetime | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    activated_at: datetime | None
    returned_at: datetime | None
    return_condition: ReturnCondition | None
    terminated_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Allocation:
    device: DeviceView
    tmk_kcv: str
    master_key: str  # 32 hex digits: returned this once, stored only encrypted


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    event: DeviceEvent
    from_status: DeviceStatus | None
    to_status: DeviceStatus
    actor: str
    note: str | None
    details: dict[str, Any]
    created_at: datetime


def device_view(row: Device) -> DeviceView:
    condition = None if row.return_condition is None else ReturnCondition(row.return_condition)
    return DeviceView(
        row.serial_number, Product(row.product), row.model, row.batch, DeviceStatus(row.status),
        row.terminal_id, row.merchant_id, row.contract_id, row.carrier, row.tracking_number,
        row.allocated_at, row.shipped_at, row.delivered_at, row.activated_at, row.returned_at,
        condition, row.terminated_at, row.created_at,
    )  # fmt: skip


def device_not_found(serial_number: str) -> DomainError:
    return DomainError(
        ErrorCode.TERMINAL_NOT_FOUND, "terminal not found", serial_number=str(serial_number)[:32]
    )


def load_device(session: Session, serial_number: str, *, for_update: bool = False) -> Device:
    try:
        validate_serial_number(serial_number)
    except DomainError:
        raise device_not_found(serial_number) from None
    row: Device | None = load_row(
        session, Device.serial_number, serial_number, for_update=for_update
    )
    if row is None:
        raise device_not_found(serial_number)
    return row


def get_device(session: Session, serial_number: str) -> DeviceView:
    """The device by serial number, or ``terminal_not_found``."""
    return device_view(load_device(session, serial_number))


def device_history(session: Session, serial_number: str) -> list[HistoryEntry]:
    """The device's status changes, oldest first."""
    load_device(session, serial_number)
    rows = session.scalars(
        select(DeviceHistory)
        .where(DeviceHistory.serial_number == serial_number)
        .order_by(DeviceHistory.created_at, DeviceHistory.id)
    )
    return [_entry(r) for r in rows]


def _entry(r: DeviceHistory) -> HistoryEntry:
    return HistoryEntry(
        DeviceEvent(r.event), None if r.from_status is None else DeviceStatus(r.from_status),
        DeviceStatus(r.to_status), r.actor, r.note,
        json.loads(r.details) if r.details else {}, r.created_at,
    )  # fmt: skip


def open_merchant(session: Session, merchant_id: str) -> MerchantView:
    """The merchant, refused (``merchant_inactive``) when closed."""
    merchant = get_merchant(session, merchant_id)  # merchant_not_found
    if merchant.status is MerchantStatus.CLOSED:
        raise DomainError(
            ErrorCode.MERCHANT_INACTIVE, "the merchant is closed", merchant_id=merchant.merchant_id
        )
    return merchant


def add_history(
    session: Session,
    row: Device,
    event: DeviceEvent,
    from_status: DeviceStatus | None,
    *,
    actor: str,
    clock: Clock,
    note: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        DeviceHistory(
            id=new_id("dvh_"), serial_number=row.serial_number, event=event.value,
            from_status=None if from_status is None else from_status.value, to_status=row.status,
            actor=actor[:64], note=note, details=json.dumps(details) if details else None,
            created_at=clock.now(),
        )
    )  # fmt: skip


def _move(
    session: Session,
    row: Device,
    event: DeviceEvent,
    *,
    actor: str,
    clock: Clock,
    note: str | None = None,
    details: dict[str, Any] | None = None,
) -> DeviceView:
    """Apply ``event`` (already checked allowed) to the locked device and its terminal."""
    before = DeviceStatus(row.status)
    row.status = device_transition(before, event).value
    row.updated_at = clock.now()
    target = TERMINAL_STATUS_AFTER.get(event)
    if target is not None and row.terminal_id is not None:
        terminal: Terminal | None = load_row(
            session, Terminal.terminal_id, row.terminal_id, for_update=True
        )
        assert terminal is not None  # the foreign key
        if terminal.status != target.value:
            terminal.status = transition(terminal.status, target).value
    add_history(
        session, row, event, before, actor=actor, clock=clock, note=note, details=details
    )
    session.flush()
    record(
        session, actor=actor, action=f"terminal.{event.value}", subject_type="device",
        subject_id=row.serial_number, before={"status": before},
        after={"status": row.status, **(details or {})}, clock=clock,
    )  # fmt: skip
    return device_view(row)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _event_data(row: Device) -> dict[str, Any]:
    return {
        "serial_number": row.serial_number, "terminal_id": row.terminal_id,
        "merchant_id": row.merchant_id, "contract_id": row.contract_id, "product": row.product,
    }  # fmt: skip


TOPICS = {
    DeviceEvent.ACTIVATE: "terminal.activated",
    DeviceEvent.RETURN: "terminal.returned",
    DeviceEvent.TERMINATE: "terminal.terminated",
}


def _emit(
    session: Session, row: Device, event: DeviceEvent, data: dict[str, Any], clock: Clock
) -> None:
    topic = TOPICS[event]
    emit(
        session, topic, _event_data(row) | data,
        dedupe_key=f"{topic}:{row.serial_number}", clock=clock,
    )  # fmt: skip


# -- allocation ---------------------------------------------------------------------------------
def _contract(
    session: Session, merchant_id: str, product: Product, contract_id: str | None
) -> ContractView:
    if contract_id is None:
        latest = latest_accepted_contract(session, merchant_id, product.value)
        if latest is None:
            raise DomainError(
                ErrorCode.CONTRACT_NOT_ACCEPTED,
                f"the merchant has no accepted contract for a {product} terminal",
                merchant_id=merchant_id,
                product=product.value,
            )
        return latest
    contract = accepted_contract(session, contract_id, merchant_id=merchant_id)
    if str(contract.product) != product.value:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"the contract is for a {contract.product} terminal, this device is {product}",
            field="contract_id",
        )
    return contract


def _free_terminal_id(session: Session) -> str:
    """``T`` and 7 random characters, not yet taken (36**7 ids: a clash is rare, retried)."""
    for _ in range(10):
        candidate = "T" + "".join(
            secrets.choice(_ID_SYMBOLS) for _ in range(TERMINAL_ID_LENGTH - 1)
        )
        if session.get(Terminal, candidate) is None:
            return candidate
    raise DomainError(ErrorCode.INTERNAL_ERROR, "no free terminal id found")  # pragma: no cover


def allocate_device(
    session: Session,
    vault: Vault,
    serial_number: str,
    *,
    merchant_id: str,
    actor: str,
    clock: Clock,
    contract_id: str | None = None,
    terminal_id: str | None = None,
    note: str | None = None,
) -> Allocation:
    """Bind an in-stock device to a merchant under its accepted contract for the device's
    product: assigns the terminal id, generates the master key and creates the terminal,
    ``inactive`` until its first sign-on. The allocation carries the master key: the only
    time it is readable."""
    note = validate_note(note)
    wanted_id = None if terminal_id is None else validate_terminal_id(terminal_id)
    row = load_device(session, serial_number, for_update=True)
    device_transition(row.status, DeviceEvent.ALLOCATE)  # before anything else is looked at
    merchant = open_merchant(session, merchant_id)
    contract = _contract(session, merchant.merchant_id, Product(row.product), contract_id)
    if wanted_id is not None and session.get(Terminal, wanted_id) is not None:
        raise DomainError(ErrorCode.TERMINAL_EXISTS, "a terminal with this id exists")
    key = generate_master_key()
    now = clock.now()
    terminal = Terminal(
        terminal_id=wanted_id or _free_terminal_id(session), serial_number=row.serial_number,
        product=row.product, merchant_id=merchant.merchant_id,
        status=TerminalStatus.INACTIVE.value, tmk_enc=vault.encrypt(key, TMK_CONTEXT),
        tmk_kcv=key_check_value(key), created_at=now,
    )  # fmt: skip
    session.add(terminal)
    try:
        session.flush()
    except IntegrityError as exc:  # the same id taken concurrently
        raise DomainError(
            ErrorCode.TERMINAL_EXISTS, "a terminal with this id or serial number exists"
        ) from exc
    row.terminal_id, row.merchant_id = terminal.terminal_id, merchant.merchant_id
    row.contract_id, row.allocated_at = contract.contract_id, now
    details = {
        "terminal_id": terminal.terminal_id, "merchant_id": merchant.merchant_id,
        "contract_id": contract.contract_id, "tmk_kcv": terminal.tmk_kcv,
    }  # fmt: skip
    view = _move(
        session, row, DeviceEvent.ALLOCATE, actor=actor, clock=clock, note=note, details=details
    )
    return Allocation(view, terminal.tmk_kcv, key)


# -- logistics ----------------------------------------------------------------------------------
def ship_device(
    session: Session,
    serial_number: str,
    *,
    carrier: str,
    tracking_number: str,
    actor: str,
    clock: Clock,
    note: str | None = None,
) -> DeviceView:
    carrier, tracking_number = validate_carrier(carrier), validate_tracking_number(tracking_number)
    note = validate_note(note)
    row = load_device(session, serial_number, for_update=True)
    device_transition(row.status, DeviceEvent.SHIP)
    row.carrier, row.tracking_number, row.shipped_at = carrier, tracking_number, clock.now()
    details = {"carrier": carrier, "tracking_number": tracking_number}
    return _move(
        session, row, DeviceEvent.SHIP, actor=actor, clock=clock, note=note, details=details
    )


def deliver_device(
    session: Session, serial_number: str, *, actor: str, clock: Clock, note: str | None = None
) -> DeviceView:
    note = validate_note(note)
    row = load_device(session, serial_number, for_update=True)
    device_transition(row.status, DeviceEvent.DELIVER)
    row.delivered_at = clock.now()
    return _move(session, row, DeviceEvent.DELIVER, actor=actor, clock=clock, note=note)


# -- activation ---------------------------------------------------------------------------------
def activate_on_sign_on(session: Session, terminal_id: str, *, clock: Clock) -> bool:
    """The gateway's sign-on, in its transaction: the first successful sign-on of an
    ``inactive`` terminal activates it (device ``activated``, terminal ``active``,
    ``activated_at`` set, ``terminal.activated`` emitted). Anything else — an active terminal,
    a terminal without a device, a device not yet shipped — changes nothing. True when this
    sign-on activated the terminal."""
    status = session.scalar(select(Terminal.status).where(Terminal.terminal_id == terminal_id))
    if status != TerminalStatus.INACTIVE.value:
        return False  # the common case costs one small query
    row: Device | None = load_row(session, Device.terminal_id, terminal_id, for_update=True)
    if row is None or row.status not in (DeviceStatus.SHIPPED, DeviceStatus.DELIVERED):
        return False  # e.g. still in the warehouse: keys are issued, the terminal stays inactive
    now = clock.now()
    if row.delivered_at is None:  # signed on before the delivery was recorded
        row.delivered_at = now
    row.activated_at = now
    _move(session, row, DeviceEvent.ACTIVATE, actor=SYSTEM_ACTOR, clock=clock,
          note="first sign-on")  # fmt: skip
    _emit(session, row, DeviceEvent.ACTIVATE, {"activated_at": _iso(now)}, clock)
    return True


def suspend_device(
    session: Session, serial_number: str, *, actor: str, clock: Clock, note: str | None = None
) -> DeviceView:
    """Stop payments on an activated terminal (it may be resumed)."""
    return _simple(session, serial_number, DeviceEvent.SUSPEND, actor, clock, note)


def resume_device(
    session: Session, serial_number: str, *, actor: str, clock: Clock, note: str | None = None
) -> DeviceView:
    return _simple(session, serial_number, DeviceEvent.RESUME, actor, clock, note)


def _simple(
    session: Session,
    serial_number: str,
    event: DeviceEvent,
    actor: str,
    clock: Clock,
    note: str | None,
) -> DeviceView:
    note = validate_note(note)
    row = load_device(session, serial_number, for_update=True)
    device_transition(row.status, event)
    return _move(session, row, event, actor=actor, clock=clock, note=note)


# -- the end ------------------------------------------------------------------------------------
def return_device(
    session: Session,
    serial_number: str,
    *,
    condition: ReturnCondition | str,
    actor: str,
    clock: Clock,
    note: str | None = None,
) -> DeviceView:
    """The merchant sent the device back (unused, used or damaged): the terminal is retired."""
    checked = validate_return_condition(condition)
    note = validate_note(note)
    row = load_device(session, serial_number, for_update=True)
    device_transition(row.status, DeviceEvent.RETURN)
    now = clock.now()
    row.return_condition, row.returned_at = checked.value, now
    view = _move(session, row, DeviceEvent.RETURN, actor=actor, clock=clock, note=note,
                 details={"condition": checked.value})  # fmt: skip
    data = {
        "condition": checked.value, "delivered_at": _iso(row.delivered_at),
        "activated_at": _iso(row.activated_at), "returned_at": _iso(now),
    }  # fmt: skip
    _emit(session, row, DeviceEvent.RETURN, data, clock)
    return view


def terminate_device(
    session: Session, serial_number: str, *, actor: str, clock: Clock, note: str | None = None
) -> DeviceView:
    """End the contract for this device (from returned, activated or suspended); final."""
    note = validate_note(note)
    row = load_device(session, serial_number, for_update=True)
    device_transition(row.status, DeviceEvent.TERMINATE)
    now = clock.now()
    row.terminated_at = now
    view = _move(session, row, DeviceEvent.TERMINATE, actor=actor, clock=clock, note=note)
    data = {"activated_at": _iso(row.activated_at), "terminated_at": _iso(now)}
    _emit(session, row, DeviceEvent.TERMINATE, data, clock)
    return view
