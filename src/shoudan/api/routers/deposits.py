"""Terminal deposits (押金): a device's deposit (/v1/terminals/{serial_number}/deposit), its
up-front payment (staff, finance), and the merchant's refund requests (/v1/deposit-refunds)
with their staff review. Another merchant's deposit or request answers 404."""

from __future__ import annotations

from fastapi import APIRouter

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.deposits.schemas import (
    DepositOut,
    DepositRefundIn,
    DepositRefundOut,
    ReviewNoteIn,
    UpfrontPaymentIn,
)
from shoudan.deposits.service import RefundRequestInput

terminals_router = APIRouter(prefix="/v1/terminals", tags=["deposits"])
router = APIRouter(prefix="/v1/deposit-refunds", tags=["deposits"])


@terminals_router.get("/{serial_number}/deposit", response_model=DepositOut)
def get_deposit(serial_number: str, principal: PrincipalDep, container: ContainerDep) -> DepositOut:
    """The device's (latest) deposit: amounts, the refund decision, its timeline."""
    return DepositOut.of(container.deposits.for_terminal(principal, serial_number))


@terminals_router.post("/{serial_number}/deposit/upfront", response_model=DepositOut)
def record_upfront(
    serial_number: str, body: UpfrontPaymentIn, principal: PrincipalDep, container: ContainerDep
) -> DepositOut:
    """Staff (finance): the deposit was received before shipping, on the accepted contract's
    terms. Recording it again changes nothing."""
    deposit = container.deposits.record_upfront(
        principal, merchant_id=body.merchant_id, serial_number=serial_number,
        contract_id=body.contract_id,
    )  # fmt: skip
    return DepositOut.of(container.deposits.get(principal, deposit.id))


def _out(container: ContainerDep, principal: PrincipalDep, request_id: str) -> DepositRefundOut:
    request, detail = container.deposits.get_request(principal, request_id)
    return DepositRefundOut.of(request, detail)


@router.post("", status_code=201, response_model=DepositRefundOut)
def request_deposit_refund(
    body: DepositRefundIn, principal: PrincipalDep, container: ContainerDep
) -> DepositRefundOut:
    """Ask for the deposit back. The phone, ID number and settlement card's last four digits
    must match our records (``deposit_materials_mismatch`` names the one that does not), within
    the contract's deadline; staff review it."""
    data = RefundRequestInput(
        serial_number=body.serial_number, phone=body.phone, id_number=body.id_number,
        bank_card_last4=body.bank_card_last4, reason=body.reason,
    )  # fmt: skip
    request = container.deposits.request_refund(principal, data)
    return _out(container, principal, request.id)


@router.get("/{request_id}", response_model=DepositRefundOut)
def get_deposit_refund(
    request_id: str, principal: PrincipalDep, container: ContainerDep
) -> DepositRefundOut:
    return _out(container, principal, request_id)


@router.post("/{request_id}/approve", response_model=DepositRefundOut)
def approve_deposit_refund(
    request_id: str,
    principal: PrincipalDep,
    container: ContainerDep,
    body: ReviewNoteIn | None = None,
) -> DepositRefundOut:
    """Staff: approve; the deposit is refunded by the contract's rules to the merchant's
    settled balance (its verified card only), or waits in ``blocked_debt``."""
    container.deposits.approve(principal, request_id, body.note if body else "")
    return _out(container, principal, request_id)


@router.post("/{request_id}/reject", response_model=DepositRefundOut)
def reject_deposit_refund(
    request_id: str, body: ReviewNoteIn, principal: PrincipalDep, container: ContainerDep
) -> DepositRefundOut:
    """Staff: reject with a reason; the deposit stays held."""
    container.deposits.reject(principal, request_id, body.note)
    return _out(container, principal, request_id)
