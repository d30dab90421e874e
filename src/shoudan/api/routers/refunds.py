"""/v1/refunds: request, review, cancel, re-route, sync and read refunds; prepayment
redemptions (/v1/payments/{id}/redemptions); consumer tracking (/v1/public/refund-status).

Staff roles: a reviewer or approver approves an ordinary review, two different approvers a
large refund; nobody approves their own request (``self_approval``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.api.ratelimit import RateLimiter
from shoudan.refunds.domain import RefundStatus
from shoudan.refunds.schemas import (
    EvidenceIn,
    InfoRequestIn,
    NoteIn,
    PublicTrackingOut,
    RedemptionIn,
    RedemptionOut,
    RefundIn,
    RefundOut,
    RerouteIn,
)
from shoudan.refunds.service import RefundFilters, RefundRequest, Reroute

router = APIRouter(prefix="/v1/refunds", tags=["refunds"])
payments_router = APIRouter(prefix="/v1/payments", tags=["refunds"])
public_router = APIRouter(prefix="/v1/public", tags=["public"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255,
           description="Retry-safe key: a replay returns the stored response (24 h)."),
]  # fmt: skip


@router.post("", status_code=201, response_model=RefundOut)
def create_refund(
    body: RefundIn,
    principal: PrincipalDep,
    container: ContainerDep,
    idempotency_key: IdempotencyKey = None,
) -> RefundOut:
    """Request a refund (退款) of a captured payment, in full or in part. The same
    ``out_refund_no`` again returns the same refund."""
    request = RefundRequest(
        payment_id=body.payment_id, amount=body.amount, reason=body.reason.value,
        reason_text=body.reason_text, out_refund_no=body.out_refund_no,
        consumer_phone=body.consumer_phone, evidence_ids=tuple(body.evidence_ids),
    )  # fmt: skip
    with container.database.baton.held():  # one request's Python at a time (core/baton.py)
        return RefundOut.of(container.refunds.request(principal, request))


@router.get("", response_model=Page[RefundOut])
def list_refunds(
    principal: PrincipalDep,
    container: ContainerDep,
    payment_id: Annotated[str | None, Query(max_length=32)] = None,
    status: RefundStatus | None = None,
    merchant_id: Annotated[str | None, Query(max_length=15)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[RefundOut]:
    """Newest first. Merchants see only their own refunds; staff filter a review queue with
    ``status=in_review``."""
    after = decode_cursor(cursor) if cursor else None
    rows = container.refunds.list(
        principal, RefundFilters(payment_id, status, merchant_id), limit + 1, after
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return Page[RefundOut](data=[RefundOut.of(r) for r in page], next_cursor=next_cursor)


@router.get("/{refund_id}", response_model=RefundOut)
def get_refund(refund_id: str, principal: PrincipalDep, container: ContainerDep) -> RefundOut:
    """A refund with its timeline, approvals and evidence."""
    detail = container.refunds.detail(principal, refund_id)
    return RefundOut.of(detail.refund, detail)


@router.post("/{refund_id}/approve", response_model=RefundOut)
def approve_refund(
    refund_id: str, principal: PrincipalDep, container: ContainerDep, body: NoteIn | None = None
) -> RefundOut:
    """Staff: approve (the second of two for a large refund). Never one's own request."""
    return RefundOut.of(container.refunds.approve(principal, refund_id, body.note if body else ""))


@router.post("/{refund_id}/reject", response_model=RefundOut)
def reject_refund(
    refund_id: str, body: NoteIn, principal: PrincipalDep, container: ContainerDep
) -> RefundOut:
    """Staff: reject with a reason; the held money is released."""
    return RefundOut.of(container.refunds.reject(principal, refund_id, body.note))


@router.post("/{refund_id}/request-info", response_model=RefundOut)
def request_info(
    refund_id: str, body: InfoRequestIn, principal: PrincipalDep, container: ContainerDep
) -> RefundOut:
    """Staff: ask the merchant for more material; the merchant answers with evidence."""
    return RefundOut.of(container.refunds.request_info(principal, refund_id, body.message))


@router.post("/{refund_id}/evidence", response_model=RefundOut)
def add_evidence(
    refund_id: str, body: EvidenceIn, principal: PrincipalDep, container: ContainerDep
) -> RefundOut:
    """Add evidence files (uploaded with POST /v1/files) and a note; answers a request for
    information and sends the refund back to review."""
    return RefundOut.of(
        container.refunds.add_evidence(principal, refund_id, body.evidence_ids, body.note)
    )


@router.post("/{refund_id}/cancel", response_model=RefundOut)
def cancel_refund(
    refund_id: str, principal: PrincipalDep, container: ContainerDep, body: NoteIn | None = None
) -> RefundOut:
    """Cancel a refund that has not been sent yet; the held money is released."""
    return RefundOut.of(container.refunds.cancel(principal, refund_id, body.note if body else ""))


@router.post("/{refund_id}/reroute", response_model=RefundOut)
def reroute_refund(
    refund_id: str, body: RerouteIn, principal: PrincipalDep, container: ContainerDep
) -> RefundOut:
    """Staff: send an abnormal refund (card closed) to the consumer's bank account."""
    target = Reroute(body.account_number, body.holder_name, body.bank_name)
    return RefundOut.of(container.refunds.reroute(principal, refund_id, target))


@router.post("/{refund_id}/sync", response_model=RefundOut)
def sync_refund(refund_id: str, principal: PrincipalDep, container: ContainerDep) -> RefundOut:
    """Ask the network where a refund in flight stands and record a final answer now."""
    return RefundOut.of(container.refunds.sync(principal, refund_id))


@payments_router.post(
    "/{payment_id}/redemptions", status_code=201, response_model=RedemptionOut
)
def redeem_prepayment(
    payment_id: str,
    body: RedemptionIn,
    principal: PrincipalDep,
    container: ContainerDep,
    idempotency_key: IdempotencyKey = None,
) -> RedemptionOut:
    """Record that part of a prepayment (预付款) was used; only the rest can be refunded."""
    redemption = container.refunds.redeem(principal, payment_id, body.amount, body.note)
    return RedemptionOut(
        id=redemption.id, payment_id=redemption.payment_id, amount=redemption.amount,
        note=redemption.note, created_at=redemption.created_at,
    )  # fmt: skip


@public_router.get("/refund-status", response_model=PublicTrackingOut)
def refund_status(
    request: Request,
    container: ContainerDep,
    rrn: Annotated[str, Query(max_length=12, description="参考号 on the receipt")],
    last4: Annotated[str, Query(max_length=4, description="Last four of the card/code")],
    amount: Annotated[int, Query(ge=1, description="Amount paid, in fen")],
) -> PublicTrackingOut:
    """No login: where is my refund? Every detail must match; otherwise the same 404."""
    limiter: RateLimiter = request.app.state.public_limiter
    limiter.hit(request.client.host if request.client else "unknown")
    return PublicTrackingOut.of(container.refunds.track(rrn, last4, amount))
