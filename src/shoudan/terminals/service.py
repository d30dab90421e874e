"""Terminal use cases, in the caller's transaction.

The terminal master key (TMK) is generated here when none is given and handed back exactly
once, by ``create_terminal``; afterwards it exists only encrypted (context ``terminal:tmk``)
and only ``load_master_key`` (the ISO gateway's key path) decrypts it. Views carry the key
check value, never the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault
from shoudan.core.db import load_row
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.merchants.service import MerchantView, get_merchant
from shoudan.terminals.domain import (
    Product,
    TerminalStatus,
    is_terminal_id,
    transition,
    validate_master_key,
    validate_product,
    validate_serial_number,
    validate_terminal_id,
)
from shoudan.terminals.keys import TMK_CONTEXT, generate_master_key, key_check_value
from shoudan.terminals.lifecycle import (
    Allocation,
    DeviceView,
    HistoryEntry,
    activate_on_sign_on,
    allocate_device,
    deliver_device,
    device_history,
    device_view,
    get_device,
    open_merchant,
    resume_device,
    return_device,
    ship_device,
    suspend_device,
    terminate_device,
)
from shoudan.terminals.models import Device, Terminal

__all__ = [  # the device lifecycle is part of this service's interface
    "TMK_CONTEXT",
    "Allocation",
    "DeviceView",
    "HistoryEntry",
    "TerminalInput",
    "TerminalPage",
    "TerminalView",
    "activate_on_sign_on",
    "allocate_device",
    "create_terminal",
    "deliver_device",
    "device_history",
    "get_device",
    "get_terminal",
    "list_terminals",
    "load_master_key",
    "payment_point",
    "resume_device",
    "return_device",
    "set_terminal_status",
    "ship_device",
    "suspend_device",
    "terminal_not_found",
    "terminate_device",
]

Keyset = tuple[datetime, str]
"""Where a list resumes: (created_at, terminal_id) of the last row already returned."""


@dataclass(frozen=True, slots=True)
class TerminalInput:
    serial_number: str
    terminal_id: str
    product: Product | str
    merchant_id: str
    master_key: str | None = None  # 32 hex digits; None: generate one


@dataclass(frozen=True, slots=True)
class TerminalView:
    terminal_id: str
    serial_number: str
    product: Product
    merchant_id: str
    status: TerminalStatus
    tmk_kcv: str
    created_at: datetime

    @property
    def is_active(self) -> bool:
        return self.status is TerminalStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class TerminalPage:
    items: list[TerminalView]
    next_cursor: Keyset | None


def _view(row: Terminal) -> TerminalView:
    return TerminalView(
        row.terminal_id, row.serial_number, Product(row.product), row.merchant_id,
        TerminalStatus(row.status), row.tmk_kcv, row.created_at,
    )  # fmt: skip


def terminal_not_found(terminal_id: str) -> DomainError:
    return DomainError(
        ErrorCode.TERMINAL_NOT_FOUND, "terminal not found", terminal_id=str(terminal_id)[:16]
    )


def _load(session: Session, terminal_id: str, *, for_update: bool = False) -> Terminal:
    if not is_terminal_id(terminal_id):
        raise terminal_not_found(terminal_id)
    row: Terminal | None = load_row(
        session, Terminal.terminal_id, terminal_id, for_update=for_update
    )
    if row is None:
        raise terminal_not_found(terminal_id)
    return row


def create_terminal(
    session: Session,
    vault: Vault,
    data: TerminalInput,
    *,
    actor: str,
    clock: Clock,
) -> tuple[TerminalView, str | None]:
    """Register an active terminal for an existing, not closed merchant.

    Returns the view and, when the key was generated here, the TMK (32 hex digits): the only
    time it is ever readable. A key passed in is not echoed (``None``)."""
    terminal_id = validate_terminal_id(data.terminal_id)
    serial_number = validate_serial_number(data.serial_number)
    product = validate_product(data.product)
    given = None if data.master_key is None else validate_master_key(data.master_key)
    merchant = open_merchant(session, data.merchant_id)
    taken = session.scalars(
        select(Terminal.terminal_id).where(
            or_(Terminal.terminal_id == terminal_id, Terminal.serial_number == serial_number)
        )
    ).first()
    if taken is not None:
        raise DomainError(
            ErrorCode.TERMINAL_EXISTS, "a terminal with this id or serial number exists"
        )
    key = given if given is not None else generate_master_key()
    row = Terminal(
        terminal_id=terminal_id, serial_number=serial_number, product=product.value,
        merchant_id=merchant.merchant_id, status=TerminalStatus.ACTIVE.value,
        tmk_enc=vault.encrypt(key, TMK_CONTEXT), tmk_kcv=key_check_value(key),
        created_at=clock.now(),
    )  # fmt: skip
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent registration of the same id or serial
        raise DomainError(
            ErrorCode.TERMINAL_EXISTS, "a terminal with this id or serial number exists"
        ) from exc
    view = _view(row)
    record(
        session, actor=actor, action="terminal.create", subject_type="terminal",
        subject_id=terminal_id,
        after={
            "terminal_id": terminal_id, "serial_number": serial_number, "product": product,
            "merchant_id": merchant.merchant_id, "status": view.status, "tmk_kcv": view.tmk_kcv,
            "tmk_source": "provided" if given is not None else "generated",
        },
        clock=clock,
    )  # fmt: skip
    return view, (None if given is not None else key)


def get_terminal(session: Session, terminal_id: str) -> TerminalView:
    """The terminal, or ``terminal_not_found``."""
    return _view(_load(session, terminal_id))


def payment_point(
    session: Session, terminal_id: str, *, allow_inactive: bool = False
) -> tuple[TerminalView, MerchantView]:
    """The terminal and its merchant, both checked able to take a payment (one look-up each,
    for the payment path that needs the merchant's plan and limits too).

    ``allow_inactive`` (the gateway's sign-on only): a terminal allocated but not yet activated
    passes too, since its first sign-on is what activates it."""
    view = get_terminal(session, terminal_id)
    if not (view.is_active or (allow_inactive and view.status is TerminalStatus.INACTIVE)):
        raise DomainError(
            ErrorCode.TERMINAL_INACTIVE,
            f"the terminal is {view.status}",
            terminal_id=terminal_id,
            terminal_status=view.status.value,
        )
    merchant = get_merchant(session, view.merchant_id)
    if not merchant.is_active:
        raise DomainError(
            ErrorCode.MERCHANT_INACTIVE,
            f"the merchant is {merchant.status}",
            merchant_id=merchant.merchant_id,
            merchant_status=merchant.status.value,
        )
    return view, merchant


def list_terminals(
    session: Session,
    merchant_id: str | None = None,
    *,
    limit: int,
    cursor: Keyset | None = None,
) -> TerminalPage:
    """Terminals oldest first (of one merchant when ``merchant_id`` is given), ``limit`` at a
    time; ``cursor`` is the previous page's ``next_cursor``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DomainError(ErrorCode.INVALID_INPUT, "limit must be a positive integer")
    query = select(Terminal).order_by(Terminal.created_at, Terminal.terminal_id)
    if merchant_id is not None:
        query = query.where(Terminal.merchant_id == merchant_id)
    if cursor is not None:
        created_at, last_id = cursor
        query = query.where(
            or_(
                Terminal.created_at > created_at,
                and_(Terminal.created_at == created_at, Terminal.terminal_id > last_id),
            )
        )
    rows = list(session.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = (rows[-1].created_at, rows[-1].terminal_id) if more and rows else None
    return TerminalPage([_view(r) for r in rows], next_cursor)


def set_terminal_status(
    session: Session, terminal_id: str, status: TerminalStatus | str, *, actor: str, clock: Clock
) -> TerminalView:
    """Suspend, reactivate or retire a terminal (``invalid_transition`` otherwise)."""
    row = _load(session, terminal_id, for_update=True)
    before = TerminalStatus(row.status)
    row.status = transition(before, status).value
    session.flush()
    record(
        session, actor=actor, action="terminal.status", subject_type="terminal",
        subject_id=terminal_id, before={"status": before}, after={"status": row.status},
        clock=clock,
    )  # fmt: skip
    return _view(row)


def load_master_key(session: Session, vault: Vault, terminal_id: str) -> bytes:
    """The terminal's master key (16 bytes), for the ISO gateway's key exchange only."""
    row = _load(session, terminal_id)
    return bytes.fromhex(vault.decrypt(row.tmk_enc, TMK_CONTEXT))


def merchant_devices(session: Session, merchant_id: str) -> dict[str, DeviceView]:
    """The devices allocated to a merchant, by serial number (the merchant platform's 我的设备:
    activation dates and lifecycle of its terminals)."""
    rows = session.scalars(select(Device).where(Device.merchant_id == merchant_id))
    return {row.serial_number: device_view(row) for row in rows}
