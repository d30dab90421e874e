"""Merchant use cases. Each runs in the caller's transaction (``session``): the merchant row,
its ledger accounts, its status history and its audit record commit together or not at all.

Views never carry a full phone or card number: only the masked forms. The clear values are
readable only through ``contact_phone`` / ``settlement_card_number`` (for the payout and SMS
code paths), never through a view.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault, mask_card, mask_phone
from shoudan.core.db import load_row
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.ledger import chart
from shoudan.ledger.service import Ledger
from shoudan.merchants.domain import (
    MerchantStatus,
    MerchantType,
    compose_merchant_id,
    is_merchant_id,
    merchant_id_prefix,
    next_serial,
    transition,
    validate_area_code,
    validate_card_number,
    validate_daily_limit,
    validate_legal_name,
    validate_mcc,
    validate_merchant_type,
    validate_name,
    validate_phone,
)
from shoudan.merchants.models import Merchant, MerchantSettlementAccount, MerchantStatusHistory

log = logging.getLogger(__name__)

PHONE_CONTEXT = "merchant:contact_phone"
CARD_CONTEXT = "merchant:settlement_card"
DEFAULT_FEE_PLAN = "standard"
ID_ATTEMPTS = 5  # merchant-number races on PostgreSQL (two creations for the same area+MCC)
REASON_MAX = 255

Keyset = tuple[datetime, str]
"""Where a list resumes: (created_at, id) of the last row already returned."""


# -- inputs and views ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SettlementAccountInput:
    holder_name: str
    bank_name: str
    card_number: str


@dataclass(frozen=True, slots=True)
class MerchantInput:
    legal_name: str
    merchant_type: MerchantType | str
    mcc: str
    area_code: str
    contact_phone: str
    fee_plan_code: str = DEFAULT_FEE_PLAN
    daily_limit: int | None = None
    settlement_account: SettlementAccountInput | None = None


@dataclass(frozen=True, slots=True)
class SettlementAccountView:
    id: str
    holder_name: str
    bank_name: str
    card_number: str  # masked: 622202*********0018
    verified: bool
    verified_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MerchantView:
    merchant_id: str
    legal_name: str
    merchant_type: MerchantType
    mcc: str
    area_code: str
    status: MerchantStatus
    fee_plan_code: str
    daily_limit: int | None  # fen; None = the fee plan's default
    contact_phone: str  # masked: 138****1234
    settlement_account: SettlementAccountView | None
    created_at: datetime
    updated_at: datetime

    @property
    def is_active(self) -> bool:
        return self.status is MerchantStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class MerchantBalance:
    """What the ledger holds for a merchant, in fen (CNY)."""

    merchant_id: str
    unsettled: int  # sales net of fees, not yet settled
    settled: int  # settled, not yet paid out
    pending_refunds: int  # refunds held against the unsettled balance (in review / in flight)
    deposit_held: int  # terminal deposits we hold
    debt: int  # what the merchant owes us
    currency: str = "CNY"


@dataclass(frozen=True, slots=True)
class MerchantPage:
    items: list[MerchantView]
    next_cursor: Keyset | None


# -- helpers -------------------------------------------------------------------------------------
def _account_view(row: MerchantSettlementAccount | None) -> SettlementAccountView | None:
    if row is None:
        return None
    return SettlementAccountView(
        row.id, row.holder_name, row.bank_name, row.card_masked, row.verified, row.verified_at,
        row.created_at,
    )  # fmt: skip


def _view(row: Merchant, account: MerchantSettlementAccount | None) -> MerchantView:
    return MerchantView(
        merchant_id=row.merchant_id,
        legal_name=row.legal_name,
        merchant_type=MerchantType(row.merchant_type),
        mcc=row.mcc,
        area_code=row.area_code,
        status=MerchantStatus(row.status),
        fee_plan_code=row.fee_plan_code,
        daily_limit=row.daily_limit,
        contact_phone=row.contact_phone_masked,
        settlement_account=_account_view(account),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _current_accounts(
    session: Session, merchant_ids: Sequence[str]
) -> dict[str, MerchantSettlementAccount]:
    """The current settlement account of each merchant (the one payouts go to)."""
    if not merchant_ids:
        return {}
    rows = session.scalars(
        select(MerchantSettlementAccount).where(
            MerchantSettlementAccount.merchant_id.in_(merchant_ids),
            MerchantSettlementAccount.replaced_at.is_(None),
        )
    )
    return {row.merchant_id: row for row in rows}


def merchant_not_found(merchant_id: str) -> DomainError:
    return DomainError(
        ErrorCode.MERCHANT_NOT_FOUND, "merchant not found", merchant_id=str(merchant_id)[:32]
    )


def _load(session: Session, merchant_id: str, *, for_update: bool = False) -> Merchant:
    if not is_merchant_id(merchant_id):
        raise merchant_not_found(merchant_id)
    row: Merchant | None = load_row(
        session, Merchant.merchant_id, merchant_id, for_update=for_update
    )
    if row is None:
        raise merchant_not_found(merchant_id)
    return row


def _audit_view(view: MerchantView) -> dict[str, Any]:
    """A view as an audit payload: masked values only, like every view."""
    return asdict(view)


def _check_fee_plan(session: Session, code: str) -> str:
    if not isinstance(code, str) or not code.strip():
        raise DomainError(ErrorCode.FEE_PLAN_NOT_FOUND, "a fee plan code is required")
    from shoudan.pricing.service import get_plan  # pricing sits below merchants

    get_plan(session, code.strip())  # FEE_PLAN_NOT_FOUND
    return code.strip()


@dataclass(frozen=True, slots=True)
class _CleanAccount:
    holder_name: str
    bank_name: str
    card_number: str


def _clean_account(data: SettlementAccountInput) -> _CleanAccount:
    return _CleanAccount(
        validate_name(data.holder_name, "settlement_account.holder_name"),
        validate_name(data.bank_name, "settlement_account.bank_name"),
        validate_card_number(data.card_number, "settlement_account.card_number"),
    )


def _new_account_row(
    vault: Vault, merchant_id: str, account: _CleanAccount, now: datetime
) -> MerchantSettlementAccount:
    return MerchantSettlementAccount(
        id=new_id(),
        merchant_id=merchant_id,
        holder_name=account.holder_name,
        bank_name=account.bank_name,
        card_number_enc=vault.encrypt(account.card_number, CARD_CONTEXT),
        card_number_hash=vault.lookup_hash(account.card_number, CARD_CONTEXT),
        card_masked=mask_card(account.card_number),
        verified=False,
        verified_at=None,
        verified_by=None,
        created_at=now,
        replaced_at=None,
    )


def _insert_with_next_id(session: Session, area_code: str, mcc: str, make: Any) -> Merchant:
    """Insert the merchant under the next free number for (area, MCC).

    The number is max+1 read in this transaction. On SQLite write transactions are serialised
    (BEGIN IMMEDIATE), so nobody can take it meanwhile. On PostgreSQL a concurrent creation
    for the same area and MCC may insert the same number first: our insert then waits for it
    and fails on the primary key; the savepoint is rolled back and the next number is tried.
    """
    prefix = merchant_id_prefix(area_code, mcc)
    for attempt in range(1, ID_ATTEMPTS + 1):
        highest = session.scalar(
            select(func.max(Merchant.merchant_id)).where(
                Merchant.merchant_id.between(prefix + "0000", prefix + "9999")
            )
        )
        merchant_id = compose_merchant_id(area_code, mcc, next_serial(highest))
        row: Merchant = make(merchant_id)
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            if attempt == ID_ATTEMPTS:
                raise
            log.info("merchant number %s taken concurrently; trying the next", merchant_id)
            continue
        return row
    raise AssertionError("unreachable")  # pragma: no cover


# -- use cases -----------------------------------------------------------------------------------
def create_merchant(
    session: Session,
    vault: Vault,
    ledger: Ledger,
    data: MerchantInput,
    *,
    actor: str,
    clock: Clock,
) -> MerchantView:
    """Create an active merchant with its number, encrypted contact phone, optional settlement
    account (unverified), ledger accounts, a status-history row and an audit record."""
    legal_name = validate_legal_name(data.legal_name)
    merchant_type = validate_merchant_type(data.merchant_type)
    mcc = validate_mcc(data.mcc)
    area_code = validate_area_code(data.area_code)
    phone = validate_phone(data.contact_phone)
    daily_limit = validate_daily_limit(data.daily_limit)
    account = None if data.settlement_account is None else _clean_account(data.settlement_account)
    fee_plan_code = _check_fee_plan(session, data.fee_plan_code)

    now = clock.now()
    phone_enc = vault.encrypt(phone, PHONE_CONTEXT)
    phone_hash = vault.lookup_hash(phone, PHONE_CONTEXT)

    def make(merchant_id: str) -> Merchant:
        return Merchant(
            merchant_id=merchant_id, legal_name=legal_name, merchant_type=merchant_type.value,
            mcc=mcc, area_code=area_code, status=MerchantStatus.ACTIVE.value,
            fee_plan_code=fee_plan_code, daily_limit=daily_limit, contact_phone_enc=phone_enc,
            contact_phone_hash=phone_hash, contact_phone_masked=mask_phone(phone),
            created_at=now, updated_at=now,
        )  # fmt: skip

    row = _insert_with_next_id(session, area_code, mcc, make)
    merchant_id = row.merchant_id
    account_row = None
    if account is not None:
        account_row = _new_account_row(vault, merchant_id, account, now)
        session.add(account_row)
    session.add(
        MerchantStatusHistory(
            id=new_id(), merchant_id=merchant_id, from_status=None,
            to_status=MerchantStatus.ACTIVE.value, reason="created", actor=actor, occurred_at=now,
        )
    )  # fmt: skip
    session.flush()
    ledger.ensure_accounts(session, chart.merchant_accounts(merchant_id))
    view = _view(row, account_row)
    record(
        session, actor=actor, action="merchant.create", subject_type="merchant",
        subject_id=merchant_id, before=None, after=_audit_view(view), clock=clock,
    )  # fmt: skip
    return view


def get_merchant(session: Session, merchant_id: str) -> MerchantView:
    """The merchant, or ``merchant_not_found``."""
    row = _load(session, merchant_id)
    return _view(row, _current_accounts(session, [row.merchant_id]).get(row.merchant_id))


def get_merchants(session: Session, merchant_ids: Sequence[str]) -> dict[str, MerchantView]:
    """The merchants of ``merchant_ids`` that exist, by id, in two queries whatever their
    number (a settlement batch reads its merchants once, not one by one)."""
    ids = [m for m in dict.fromkeys(merchant_ids) if is_merchant_id(m)]
    if not ids:
        return {}
    rows = list(session.scalars(select(Merchant).where(Merchant.merchant_id.in_(ids))))
    accounts = _current_accounts(session, [r.merchant_id for r in rows])
    return {r.merchant_id: _view(r, accounts.get(r.merchant_id)) for r in rows}


def find_merchants_by_phone(session: Session, vault: Vault, phone: str) -> list[MerchantView]:
    """Merchants whose contact phone is ``phone`` (through the keyed hash; nothing decrypted)."""
    digest = vault.lookup_hash(validate_phone(phone), PHONE_CONTEXT)
    rows = list(
        session.scalars(
            select(Merchant)
            .where(Merchant.contact_phone_hash == digest)
            .order_by(Merchant.created_at, Merchant.merchant_id)
        )
    )
    accounts = _current_accounts(session, [r.merchant_id for r in rows])
    return [_view(r, accounts.get(r.merchant_id)) for r in rows]


def list_merchants(session: Session, *, limit: int, cursor: Keyset | None = None) -> MerchantPage:
    """Merchants oldest first, ``limit`` at a time; ``cursor`` is the previous page's
    ``next_cursor`` (keyset pagination on (created_at, merchant_id))."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DomainError(ErrorCode.INVALID_INPUT, "limit must be a positive integer")
    query = select(Merchant).order_by(Merchant.created_at, Merchant.merchant_id)
    if cursor is not None:
        created_at, last_id = cursor
        query = query.where(
            or_(
                Merchant.created_at > created_at,
                and_(Merchant.created_at == created_at, Merchant.merchant_id > last_id),
            )
        )
    rows = list(session.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    accounts = _current_accounts(session, [r.merchant_id for r in rows])
    items = [_view(r, accounts.get(r.merchant_id)) for r in rows]
    next_cursor = (rows[-1].created_at, rows[-1].merchant_id) if more and rows else None
    return MerchantPage(items, next_cursor)


def merchant_balance(session: Session, ledger: Ledger, merchant_id: str) -> MerchantBalance:
    """Balances straight from the merchant's ledger accounts (in this transaction)."""
    get_merchant(session, merchant_id)  # merchant_not_found
    unsettled = ledger.get_account(session, chart.merchant_unsettled(merchant_id))
    settled = ledger.get_account(session, chart.merchant_settled(merchant_id))
    deposit = ledger.get_account(session, chart.merchant_deposit(merchant_id))
    debt = ledger.get_account(session, chart.merchant_debt(merchant_id))
    return MerchantBalance(
        merchant_id=merchant_id,
        unsettled=unsettled.credit_balance,
        settled=settled.credit_balance,
        pending_refunds=unsettled.debits_pending,
        deposit_held=deposit.credit_balance,
        debt=debt.balance,
    )


def set_status(
    session: Session,
    merchant_id: str,
    status: MerchantStatus | str,
    *,
    actor: str,
    reason: str,
    clock: Clock,
) -> MerchantView:
    """Move a merchant along its state machine (``invalid_transition`` otherwise), recording
    the move in the status history and the audit log. Setting the current status again is
    refused too: every history row is a real change."""
    why = validate_name(reason, "reason", REASON_MAX)
    row = _load(session, merchant_id, for_update=True)
    before = get_merchant(session, merchant_id)
    target = transition(row.status, status)
    now = clock.now()
    row.status = target.value
    row.updated_at = now
    session.add(
        MerchantStatusHistory(
            id=new_id(), merchant_id=merchant_id, from_status=before.status.value,
            to_status=target.value, reason=why, actor=actor, occurred_at=now,
        )
    )  # fmt: skip
    session.flush()
    after = get_merchant(session, merchant_id)
    record(
        session, actor=actor, action="merchant.status", subject_type="merchant",
        subject_id=merchant_id, before={"status": before.status.value},
        after={"status": after.status.value, "reason": why}, clock=clock,
    )  # fmt: skip
    return after


@dataclass(frozen=True, slots=True)
class StatusChange:
    from_status: MerchantStatus | None
    to_status: MerchantStatus
    reason: str
    actor: str
    occurred_at: datetime


def status_history(session: Session, merchant_id: str) -> list[StatusChange]:
    _load(session, merchant_id)
    rows = session.scalars(
        select(MerchantStatusHistory)
        .where(MerchantStatusHistory.merchant_id == merchant_id)
        .order_by(MerchantStatusHistory.occurred_at, MerchantStatusHistory.id)
    )
    return [
        StatusChange(
            from_status=None if r.from_status is None else MerchantStatus(r.from_status),
            to_status=MerchantStatus(r.to_status),
            reason=r.reason,
            actor=r.actor,
            occurred_at=r.occurred_at,
        )
        for r in rows
    ]


def add_settlement_account(
    session: Session,
    vault: Vault,
    merchant_id: str,
    data: SettlementAccountInput,
    *,
    actor: str,
    clock: Clock,
) -> MerchantView:
    """Give the merchant a new (unverified) settlement account; it becomes the current one."""
    account = _clean_account(data)
    row = _load(session, merchant_id, for_update=True)
    if row.status == MerchantStatus.CLOSED.value:
        raise DomainError(ErrorCode.MERCHANT_INACTIVE, "the merchant is closed")
    now = clock.now()
    previous = _current_accounts(session, [merchant_id]).get(merchant_id)
    if previous is not None:
        previous.replaced_at = now
        session.flush()  # before the insert: one current account per merchant
    account_row = _new_account_row(vault, merchant_id, account, now)
    session.add(account_row)
    row.updated_at = now
    session.flush()
    view = _view(row, account_row)
    record(
        session, actor=actor, action="merchant.settlement_account.add", subject_type="merchant",
        subject_id=merchant_id, after=asdict(account_row_view(account_row)), clock=clock,
    )  # fmt: skip
    return view


def account_row_view(row: MerchantSettlementAccount) -> SettlementAccountView:
    view = _account_view(row)
    assert view is not None
    return view


def verify_settlement_account(
    session: Session, merchant_id: str, *, actor: str, clock: Clock
) -> MerchantView:
    """Staff confirm the current settlement account (the merchant's own, 一清). Verifying an
    already verified account changes nothing."""
    row = _load(session, merchant_id, for_update=True)
    account = _current_accounts(session, [merchant_id]).get(merchant_id)
    if account is None:
        raise DomainError(
            ErrorCode.NOT_FOUND, "the merchant has no settlement account", merchant_id=merchant_id
        )
    if account.verified:
        return _view(row, account)
    now = clock.now()
    account.verified = True
    account.verified_at = now
    account.verified_by = actor
    row.updated_at = now
    session.flush()
    record(
        session, actor=actor, action="merchant.settlement_account.verify",
        subject_type="merchant", subject_id=merchant_id,
        before={"account_id": account.id, "verified": False},
        after={"account_id": account.id, "verified": True}, clock=clock,
    )  # fmt: skip
    return _view(row, account)


def contact_phone(session: Session, vault: Vault, merchant_id: str) -> str:
    """The clear contact phone, for the SMS path only (never for a view or a log)."""
    row = _load(session, merchant_id)
    return vault.decrypt(row.contact_phone_enc, PHONE_CONTEXT)


def settlement_card_number(session: Session, vault: Vault, merchant_id: str) -> str:
    """The clear number of the current settlement card, for the payout path only; it must be
    verified (payouts go only to a verified account: 一清)."""
    _load(session, merchant_id)
    account = _current_accounts(session, [merchant_id]).get(merchant_id)
    if account is None or not account.verified:
        raise DomainError(
            ErrorCode.NOT_FOUND,
            "the merchant has no verified settlement account",
            merchant_id=merchant_id,
        )
    return vault.decrypt(account.card_number_enc, CARD_CONTEXT)
