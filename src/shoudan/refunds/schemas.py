"""API shapes of refunds (pydantic; no web framework here). Amounts are integer fen."""

from __future__ import annotations

import json
from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from shoudan.refunds.domain import RefundReason, RefundStatus
from shoudan.refunds.models import Refund
from shoudan.refunds.service import RefundDetail, Tracking


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_id: StrictStr
    amount: StrictInt = Field(description="Amount to refund in fen.", examples=[5000])
    reason: RefundReason
    reason_text: StrictStr = Field(default="", max_length=500)
    out_refund_no: StrictStr | None = Field(
        default=None, max_length=64,
        description="Your own reference, unique per merchant: the same one again returns the "
        "same refund.",
    )  # fmt: skip
    consumer_phone: StrictStr | None = Field(
        default=None, description="The consumer's mobile, for SMS updates (stored encrypted)."
    )
    evidence_ids: list[StrictStr] = Field(default_factory=list, max_length=20)


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: StrictStr = Field(default="", max_length=500)


class InfoRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: StrictStr = Field(max_length=500, description="What the merchant should provide.")


class EvidenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evidence_ids: list[StrictStr] = Field(default_factory=list, max_length=20)
    note: StrictStr = Field(default="", max_length=500)


class RerouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_number: StrictStr = Field(description="The consumer's bank card (stored encrypted).")
    holder_name: StrictStr = Field(max_length=100)
    bank_name: StrictStr = Field(max_length=100)


class RedemptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(description="Amount of the prepayment used up, in fen.")
    note: StrictStr = Field(default="", max_length=255)


class RedemptionOut(BaseModel):
    id: str
    payment_id: str
    amount: int
    note: str
    created_at: datetime


class RiskReasonOut(BaseModel):
    rule: str
    weight: int
    fact: str


class RiskOut(BaseModel):
    score: int
    reasons: list[RiskReasonOut]


class ArrivalOut(BaseModel):
    earliest: date
    latest: date
    basis: str


class StepOut(BaseModel):
    status: RefundStatus
    at: datetime
    note: str
    actor: str | None = Field(description="Who acted (omitted on public pages).")


class ApprovalOut(BaseModel):
    approver: str
    role: str
    note: str
    at: datetime


class RefundOut(BaseModel):
    id: str
    payment_id: str
    merchant_id: str
    out_refund_no: str | None
    status: RefundStatus
    amount: int
    currency: str
    fee_returned: int = Field(description="Part of the payment's fee given back (fee plan).")
    reason: RefundReason
    reason_text: str
    requested_by: str
    requester_kind: str
    consumer_phone: str | None = Field(description="Masked.")
    risk: RiskOut
    approvals_required: int
    info_request: str | None
    route: str
    reroute_account: str | None = Field(description="Masked bank account after a re-route.")
    attempts: int
    next_attempt_at: datetime | None
    failure_reason: str | None
    failure_message: str | None
    expected_arrival: ArrivalOut
    created_at: datetime
    updated_at: datetime
    approved_at: datetime | None
    completed_at: datetime | None
    timeline: list[StepOut] | None = None
    approvals: list[ApprovalOut] | None = None
    evidence_ids: list[str] | None = None

    @classmethod
    def of(cls, refund: Refund, detail: RefundDetail | None = None) -> RefundOut:
        out = cls(
            id=refund.id, payment_id=refund.payment_id, merchant_id=refund.merchant_id,
            out_refund_no=refund.out_refund_no, status=RefundStatus(refund.status),
            amount=refund.amount, currency=refund.currency, fee_returned=refund.fee_returned,
            reason=RefundReason(refund.reason), reason_text=refund.reason_text,
            requested_by=refund.requested_by, requester_kind=refund.requester_kind,
            consumer_phone=refund.consumer_phone_masked,
            risk=RiskOut(score=refund.risk_score, reasons=json.loads(refund.risk_reasons)),
            approvals_required=refund.approvals_required, info_request=refund.info_request,
            route=refund.route,
            reroute_account=(
                f"****{refund.reroute_account_last4}" if refund.reroute_account_last4 else None
            ),
            attempts=refund.attempts, next_attempt_at=refund.next_attempt_at,
            failure_reason=refund.failure_reason, failure_message=refund.failure_message,
            expected_arrival=arrival_of(refund), created_at=refund.created_at,
            updated_at=refund.updated_at, approved_at=refund.approved_at,
            completed_at=refund.completed_at,
        )  # fmt: skip
        if detail is not None:
            out.timeline = [
                StepOut(
                    status=RefundStatus(h.to_status), at=h.created_at, note=h.note, actor=h.actor
                )
                for h in detail.history
            ]
            out.approvals = [
                ApprovalOut(approver=a.approver, role=a.role, note=a.note, at=a.created_at)
                for a in detail.approvals
            ]
            out.evidence_ids = [e.file_id for e in detail.evidence]
        return out


def arrival_of(refund: Refund) -> ArrivalOut:
    return ArrivalOut(
        earliest=date.fromisoformat(refund.expected_earliest),
        latest=date.fromisoformat(refund.expected_latest),
        basis=refund.expected_basis,
    )


class PublicRefundOut(BaseModel):
    """What a consumer sees: no merchant-internal notes, no actors, no personal data."""

    status: RefundStatus
    amount: int
    currency: str
    requested_at: datetime
    completed_at: datetime | None
    expected_arrival: ArrivalOut
    timeline: list[StepOut]


class PublicTrackingOut(BaseModel):
    payment_amount: int
    refunded_amount: int
    currency: str
    refunds: list[PublicRefundOut]

    @classmethod
    def of(cls, tracking: Tracking) -> PublicTrackingOut:
        refunds = []
        for detail in tracking.refunds:
            refund = detail.refund
            steps: list[StepOut] = []
            for h in detail.history:
                if steps and steps[-1].status == h.to_status:
                    continue  # internal steps (a first approval, a retry) are one step outside
                status = RefundStatus(h.to_status)
                steps.append(
                    StepOut(status=status, at=h.created_at, note=PUBLIC_NOTES[status], actor=None)
                )
            refunds.append(PublicRefundOut(
                status=RefundStatus(refund.status), amount=refund.amount,
                currency=refund.currency, requested_at=refund.created_at,
                completed_at=refund.completed_at, expected_arrival=arrival_of(refund),
                timeline=steps,
            ))  # fmt: skip
        payment = tracking.payment
        return cls(
            payment_amount=payment.amount, refunded_amount=payment.refunded_amount,
            currency=payment.currency, refunds=refunds,
        )  # fmt: skip


# Fixed wording per status for consumers: internal notes stay internal.
PUBLIC_NOTES: dict[RefundStatus, str] = {
    RefundStatus.REQUESTED: "refund requested by the merchant",
    RefundStatus.PENDING_FUNDS: "waiting for the merchant's funds",
    RefundStatus.IN_REVIEW: "under review",
    RefundStatus.NEEDS_INFO: "waiting for the merchant to provide information",
    RefundStatus.APPROVED: "approved",
    RefundStatus.PROCESSING: "sent back to your card or wallet",
    RefundStatus.SUCCEEDED: "refunded",
    RefundStatus.FAILED: "could not be completed: please contact the merchant",
    RefundStatus.ABNORMAL: "cannot be returned to the original card: customer service will "
    "contact you",
    RefundStatus.REJECTED: "not approved: please contact the merchant",
    RefundStatus.CANCELED: "canceled by the merchant",
}
