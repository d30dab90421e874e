"""/v1/merchants: create (staff), read, balance, list; status and settlement-account checks.

Tenant isolation: a merchant's API key sees only its own merchant; anything else answers
``404 merchant_not_found``, exactly as for a merchant that does not exist (never a 403 that
would confirm the number is taken).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.errors import PROBLEM_JSON
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.auth.domain import Principal, Role
from shoudan.merchants import service
from shoudan.merchants.domain import MerchantStatus, MerchantType

router = APIRouter(prefix="/v1", tags=["merchants"])


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


COMMON: dict[int | str, dict[str, Any]] = {
    401: _problem("No valid API key (`unauthenticated`)."),
    422: _problem("Invalid request (`invalid_input` and the field's precise code)."),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: _problem("No such merchant, or not yours (`merchant_not_found`).")
}
STAFF_ONLY: dict[int | str, dict[str, Any]] = {403: _problem("Acquirer staff only (`forbidden`).")}

MerchantIdPath = Annotated[
    str, Path(description="The 15-digit merchant number.", examples=["898581054110001"])
]


# -- shapes --------------------------------------------------------------------------------------
class SettlementAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holder_name: str = Field(description="Account holder: the merchant itself (一清).")
    bank_name: str
    card_number: str = Field(description="12–19 digits, Luhn-checked. Stored encrypted.")


class MerchantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    legal_name: str = Field(description="Registered name, at most 100 characters.")
    merchant_type: MerchantType
    mcc: str = Field(description="Merchant category code, 4 digits.", examples=["5411"])
    area_code: str = Field(description="Area code of the merchant's location, 4 digits.")
    contact_phone: str = Field(
        description="Mainland mobile number; stored encrypted, shown masked.",
        examples=["13812345678"],
    )
    fee_plan_code: str = Field(default=service.DEFAULT_FEE_PLAN)
    daily_limit: int | None = Field(
        default=None, strict=True, description="Daily limit in fen; null: the fee plan's."
    )
    settlement_account: SettlementAccountIn | None = None


class SettlementAccountOut(BaseModel):
    holder_name: str
    bank_name: str
    card_number: str = Field(description="Masked: BIN and last four only.")
    verified: bool
    verified_at: datetime | None


class MerchantOut(BaseModel):
    merchant_id: str
    legal_name: str
    merchant_type: MerchantType
    mcc: str
    area_code: str
    status: MerchantStatus
    fee_plan_code: str
    daily_limit: int | None = Field(description="Fen; null: the fee plan's default.")
    contact_phone: str = Field(description="Masked: 138****5678.")
    settlement_account: SettlementAccountOut | None
    created_at: datetime

    @classmethod
    def of(cls, view: service.MerchantView) -> MerchantOut:
        account = view.settlement_account
        return cls(
            merchant_id=view.merchant_id,
            legal_name=view.legal_name,
            merchant_type=view.merchant_type,
            mcc=view.mcc,
            area_code=view.area_code,
            status=view.status,
            fee_plan_code=view.fee_plan_code,
            daily_limit=view.daily_limit,
            contact_phone=view.contact_phone,
            settlement_account=None
            if account is None
            else SettlementAccountOut(
                holder_name=account.holder_name,
                bank_name=account.bank_name,
                card_number=account.card_number,
                verified=account.verified,
                verified_at=account.verified_at,
            ),
            created_at=view.created_at,
        )


class BalanceOut(BaseModel):
    merchant_id: str
    currency: Literal["CNY"]
    unsettled: int = Field(description="Fen: sales net of fees, not yet settled.")
    settled: int = Field(description="Fen: settled, not yet paid out.")
    pending_refunds: int = Field(description="Fen: refunds held against the unsettled balance.")
    deposit_held: int = Field(description="Fen: terminal deposits held.")
    debt: int = Field(description="Fen: what the merchant owes.")


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: MerchantStatus
    reason: str = Field(description="Why, for the status history (at most 255 characters).")


# -- helpers -------------------------------------------------------------------------------------
def _require_visible(principal: Principal, merchant_id: str) -> None:
    if not principal.can_see(merchant_id):  # the very same answer as for a missing one
        raise service.merchant_not_found(merchant_id)


def _input(body: MerchantCreate) -> service.MerchantInput:
    account = body.settlement_account
    return service.MerchantInput(
        legal_name=body.legal_name,
        merchant_type=body.merchant_type,
        mcc=body.mcc,
        area_code=body.area_code,
        contact_phone=body.contact_phone,
        fee_plan_code=body.fee_plan_code,
        daily_limit=body.daily_limit,
        settlement_account=None
        if account is None
        else service.SettlementAccountInput(
            account.holder_name, account.bank_name, account.card_number
        ),
    )


# -- routes --------------------------------------------------------------------------------------
@router.post(
    "/merchants",
    status_code=201,
    response_model=MerchantOut,
    responses={**COMMON, **STAFF_ONLY},
    summary="Create a merchant (staff: reviewer or admin)",
)
def create_merchant(
    body: MerchantCreate, principal: PrincipalDep, container: ContainerDep
) -> MerchantOut:
    """Creates an active merchant with its 15-digit number, its ledger accounts and, when
    given, an unverified settlement account. Personal data is encrypted at rest and only
    masked values are returned."""
    principal.require_staff(Role.REVIEWER)
    with container.database.transaction() as session:
        view = service.create_merchant(
            session, container.vault, container.ledger, _input(body),
            actor=principal.id, clock=container.clock,
        )  # fmt: skip
    return MerchantOut.of(view)


@router.get(
    "/merchants",
    response_model=Page[MerchantOut],
    responses={**COMMON, **STAFF_ONLY},
    summary="List merchants (staff)",
)
def list_merchants(
    principal: PrincipalDep,
    container: ContainerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the last page.")] = None,
) -> Page[MerchantOut]:
    """Oldest first; pass `next_cursor` back as `cursor` for the next page."""
    principal.require_staff()
    after = None if cursor is None else decode_cursor(cursor)
    with container.database.read() as session:
        page = service.list_merchants(session, limit=limit, cursor=after)
    return Page[MerchantOut](
        data=[MerchantOut.of(v) for v in page.items],
        next_cursor=None if page.next_cursor is None else encode_cursor(*page.next_cursor),
    )


@router.get(
    "/merchants/{merchant_id}",
    response_model=MerchantOut,
    responses={**COMMON, **NOT_FOUND},
    summary="Read a merchant (staff, or the merchant itself)",
)
def get_merchant(
    merchant_id: MerchantIdPath, principal: PrincipalDep, container: ContainerDep
) -> MerchantOut:
    _require_visible(principal, merchant_id)
    with container.database.read() as session:
        view = service.get_merchant(session, merchant_id)
    return MerchantOut.of(view)


@router.get(
    "/merchants/{merchant_id}/balance",
    response_model=BalanceOut,
    responses={**COMMON, **NOT_FOUND},
    summary="A merchant's balances from the ledger (staff, or the merchant itself)",
)
def get_balance(
    merchant_id: MerchantIdPath, principal: PrincipalDep, container: ContainerDep
) -> BalanceOut:
    """All amounts are integer fen (CNY)."""
    _require_visible(principal, merchant_id)
    with container.database.read() as session:
        balance = service.merchant_balance(session, container.ledger, merchant_id)
    return BalanceOut(
        merchant_id=balance.merchant_id,
        currency="CNY",
        unsettled=balance.unsettled,
        settled=balance.settled,
        pending_refunds=balance.pending_refunds,
        deposit_held=balance.deposit_held,
        debt=balance.debt,
    )


@router.post(
    "/merchants/{merchant_id}/status",
    response_model=MerchantOut,
    responses={
        **COMMON, **STAFF_ONLY, **NOT_FOUND,
        409: _problem("Not an allowed move (`invalid_transition`)."),
    },
    summary="Suspend, reactivate or close a merchant (staff: risk or admin)",
)  # fmt: skip
def change_status(
    merchant_id: MerchantIdPath, body: StatusChange, principal: PrincipalDep,
    container: ContainerDep,
) -> MerchantOut:  # fmt: skip
    principal.require_staff(Role.RISK)
    with container.database.transaction() as session:
        view = service.set_status(
            session, merchant_id, body.status, actor=principal.id, reason=body.reason,
            clock=container.clock,
        )  # fmt: skip
    return MerchantOut.of(view)


@router.post(
    "/merchants/{merchant_id}/settlement-account/verify",
    response_model=MerchantOut,
    responses={**COMMON, **STAFF_ONLY, **NOT_FOUND},
    summary="Mark the merchant's settlement account verified (staff: reviewer or admin)",
)
def verify_settlement_account(
    merchant_id: MerchantIdPath, principal: PrincipalDep, container: ContainerDep
) -> MerchantOut:
    """Payouts go only to a verified account in the merchant's own name (一清)."""
    principal.require_staff(Role.REVIEWER)
    with container.database.transaction() as session:
        view = service.verify_settlement_account(
            session, merchant_id, actor=principal.id, clock=container.clock
        )
    return MerchantOut.of(view)
