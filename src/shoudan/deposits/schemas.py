"""API shapes of deposits (pydantic; no web framework here). Amounts are integer fen."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from shoudan.deposits.domain import last_day_within
from shoudan.deposits.models import DepositRefundRequest
from shoudan.deposits.service import DepositDetail, terms_of


class DepositRefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serial_number: StrictStr = Field(max_length=32)
    phone: StrictStr = Field(max_length=20, description="The merchant's contact phone.")
    id_number: StrictStr = Field(max_length=18, description="The applicant's ID number.")
    bank_card_last4: StrictStr = Field(
        min_length=4, max_length=4, description="Last four digits of the settlement card."
    )
    reason: StrictStr = Field(max_length=500)


class ReviewNoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: StrictStr = Field(default="", max_length=500)


class UpfrontPaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant_id: StrictStr = Field(max_length=15)
    contract_id: StrictStr = Field(max_length=32)


class TimelineOut(BaseModel):
    from_status: str | None
    status: str
    actor: str
    note: str
    at: datetime


class DepositOut(BaseModel):
    id: str
    merchant_id: str
    serial_number: str
    terminal_id: str | None
    contract_id: str
    product: str
    status: str
    amount: int
    collection: str
    outstanding: int = Field(description="Fen of the deposit the merchant has not paid yet.")
    card_volume: int = Field(description="Card volume in the activation window, last computed.")
    activation_target: int
    window_last_day: date | None = Field(description="Last day (Asia/Shanghai) of the window.")
    request_deadline: date | None = Field(description="Last day to ask for the deposit back.")
    delivered_at: datetime | None
    activated_at: datetime | None
    paid_at: datetime | None
    returned_at: datetime | None
    return_condition: str | None
    terminated_at: datetime | None
    target_reached_at: datetime | None
    basis: str | None
    refund_amount: int | None
    penalty_amount: int | None
    depreciation_amount: int | None
    decided_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    timeline: list[TimelineOut]
    request_ids: list[str]

    @classmethod
    def of(cls, detail: DepositDetail) -> DepositOut:
        d = detail.deposit
        terms = terms_of(d)
        start = d.activated_at or d.paid_at
        return cls(
            id=d.id, merchant_id=d.merchant_id, serial_number=d.serial_number,
            terminal_id=d.terminal_id, contract_id=d.contract_id, product=d.product,
            status=d.status, amount=d.amount, collection=d.collection, outstanding=d.outstanding,
            card_volume=d.card_volume, activation_target=terms.activation_target,
            window_last_day=(last_day_within(d.activated_at, terms.activation_window_days)
                             if d.activated_at else None),
            request_deadline=(last_day_within(start, terms.deposit_refund_deadline_days)
                              if start else None),
            delivered_at=d.delivered_at, activated_at=d.activated_at, paid_at=d.paid_at,
            returned_at=d.returned_at, return_condition=d.return_condition,
            terminated_at=d.terminated_at, target_reached_at=d.target_reached_at,
            basis=d.basis, refund_amount=d.refund_amount, penalty_amount=d.penalty_amount,
            depreciation_amount=d.depreciation_amount, decided_at=d.decided_at,
            closed_at=d.closed_at, created_at=d.created_at,
            timeline=[TimelineOut(from_status=h.from_status, status=h.to_status, actor=h.actor,
                                  note=h.note, at=h.created_at) for h in detail.history],
            request_ids=[r.id for r in detail.requests],
        )  # fmt: skip


class DepositRefundOut(BaseModel):
    id: str
    deposit_id: str
    merchant_id: str
    serial_number: str
    status: str
    reason: str
    requested_by: str
    reviewed_by: str | None
    review_note: str | None
    created_at: datetime
    reviewed_at: datetime | None
    deposit: DepositOut

    @classmethod
    def of(cls, request: DepositRefundRequest, detail: DepositDetail) -> DepositRefundOut:
        return cls(
            id=request.id, deposit_id=request.deposit_id, merchant_id=request.merchant_id,
            serial_number=request.serial_number, status=request.status, reason=request.reason,
            requested_by=request.requested_by, reviewed_by=request.reviewed_by,
            review_note=request.review_note, created_at=request.created_at,
            reviewed_at=request.reviewed_at, deposit=DepositOut.of(detail),
        )  # fmt: skip
