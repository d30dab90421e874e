"""/v1/payments: take a card or QR payment, capture a pre-auth, void, reverse, read, list.

A network decline is not an HTTP error: it is a payment with ``status: "declined"`` and the
ISO response code in ``decline_code``. Bad input, limits and tenant rules are problems.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.payments.domain import PaymentStatus
from shoudan.payments.schemas import CaptureIn, PaymentIn, PaymentOut
from shoudan.payments.service import CardInput, PaymentFilters, PaymentRequest

router = APIRouter(prefix="/v1/payments", tags=["payments"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retry-safe key: a replay returns the stored response (24 h).",
    ),
]


@router.post("", status_code=201, response_model=PaymentOut)
def create_payment(
    body: PaymentIn,
    principal: PrincipalDep,
    container: ContainerDep,
    idempotency_key: IdempotencyKey = None,
) -> PaymentOut:
    """Take a payment on a terminal: a sale (``capture: true``) or a pre-authorisation."""
    card = None
    if body.card is not None:
        card = CardInput(body.card.pan, body.card.expiry, body.card.entry_mode, body.card.pin)
    request = PaymentRequest(
        terminal_id=body.terminal_id,
        amount=body.amount,
        method=body.method,
        currency=body.currency,
        card=card,
        auth_code=body.auth_code,
        capture=body.capture,
        prepayment=body.prepayment,
        description=body.description,
        idempotency_key=idempotency_key,
    )
    with container.database.baton.held():  # one request's Python at a time (core/baton.py)
        return PaymentOut.of(container.payments.create(principal, request))


@router.get("", response_model=Page[PaymentOut])
def list_payments(
    principal: PrincipalDep,
    container: ContainerDep,
    status: PaymentStatus | None = None,
    rrn: Annotated[str | None, Query(max_length=12)] = None,
    merchant_id: Annotated[str | None, Query(max_length=15)] = None,
    terminal_id: Annotated[str | None, Query(max_length=8)] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[PaymentOut]:
    """Newest first. Merchants see only their own payments."""
    filters = PaymentFilters(status, rrn, merchant_id, terminal_id, created_from, created_to)
    after = decode_cursor(cursor) if cursor else None
    rows = container.payments.list(principal, filters, limit + 1, after)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return Page[PaymentOut](data=[PaymentOut.of(p) for p in page], next_cursor=next_cursor)


@router.get("/{payment_id}", response_model=PaymentOut)
def get_payment(payment_id: str, principal: PrincipalDep, container: ContainerDep) -> PaymentOut:
    return PaymentOut.of(container.payments.get(principal, payment_id))


@router.post("/{payment_id}/capture", response_model=PaymentOut)
def capture_payment(
    payment_id: str,
    body: CaptureIn,
    principal: PrincipalDep,
    container: ContainerDep,
    idempotency_key: IdempotencyKey = None,
) -> PaymentOut:
    """Complete a pre-authorisation (预授权完成) for up to 115% of the authorised amount."""
    return PaymentOut.of(container.payments.capture(principal, payment_id, body.amount))


@router.post("/{payment_id}/void", response_model=PaymentOut)
def void_payment(
    payment_id: str,
    principal: PrincipalDep,
    container: ContainerDep,
    idempotency_key: IdempotencyKey = None,
) -> PaymentOut:
    """Void (撤销) in full: same business day, before settlement. Later, refund instead."""
    return PaymentOut.of(container.payments.void(principal, payment_id))


@router.post("/{payment_id}/reverse", response_model=PaymentOut)
def reverse_payment(
    payment_id: str,
    principal: PrincipalDep,
    container: ContainerDep,
    idempotency_key: IdempotencyKey = None,
) -> PaymentOut:
    """Reversal (冲正): undo a payment whose outcome was not seen. Idempotent."""
    return PaymentOut.of(container.payments.reverse(principal, payment_id))
