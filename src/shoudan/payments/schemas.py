"""API shapes of payments (pydantic; no web framework here). Amounts are integer fen."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from shoudan.payments.domain import EntryMode, Method, PaymentStatus, masked_card_number
from shoudan.payments.models import Payment


class CardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pan: StrictStr = Field(description="Card number; never stored or returned in full.")
    expiry: StrictStr = Field(description="YYMM", examples=["2812"])
    pin: StrictStr | None = Field(default=None, description="Cardholder PIN (debit cards).")
    entry_mode: EntryMode


class PaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    terminal_id: StrictStr = Field(examples=["T0000001"])
    amount: StrictInt = Field(description="Amount in fen (¥12.34 is 1234).", examples=[10000])
    currency: StrictStr = Field(default="CNY", examples=["CNY"])
    method: Method
    card: CardIn | None = None
    auth_code: StrictStr | None = Field(
        default=None, description="The customer's 18-digit payment code (QR methods)."
    )
    capture: StrictBool = Field(
        default=True, description="false: a pre-authorisation, captured later."
    )
    prepayment: StrictBool = False
    description: StrictStr = Field(default="", max_length=255)


class CaptureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(description="Amount to capture in fen (≤ 115% of authorised).")


class CardOut(BaseModel):
    bin: str
    last4: str
    masked: str
    funding: Literal["debit", "credit"] | None


class PaymentOut(BaseModel):
    id: str
    merchant_id: str
    terminal_id: str
    status: PaymentStatus
    method: Method
    amount: int = Field(description="Requested (sale) or authorised (pre-auth) amount, fen.")
    captured_amount: int
    currency: str
    fee: int = Field(description="Fee in fen on the captured amount.")
    net: int = Field(description="captured_amount − fee.")
    refunded_amount: int
    rrn: str
    auth_code: str | None
    decline_code: str | None = Field(description="ISO 8583 response code when declined.")
    decline_message: str | None
    network: str
    card: CardOut | None
    prepayment: bool
    description: str
    created_at: datetime
    captured_at: datetime | None
    voided_at: datetime | None
    reversed_at: datetime | None

    @classmethod
    def of(cls, payment: Payment) -> PaymentOut:
        card = None
        if payment.card_bin and payment.card_last4 and payment.card_length:
            card = CardOut(
                bin=payment.card_bin,
                last4=payment.card_last4,
                masked=masked_card_number(
                    payment.card_bin, payment.card_last4, payment.card_length
                ),
                funding=payment.card_funding,
            )
        return cls(
            id=payment.id,
            merchant_id=payment.merchant_id,
            terminal_id=payment.terminal_id,
            status=PaymentStatus(payment.status),
            method=Method(payment.method),
            amount=payment.amount,
            captured_amount=payment.captured_amount,
            currency=payment.currency,
            fee=payment.fee,
            net=payment.net,
            refunded_amount=payment.refunded_amount,
            rrn=payment.rrn,
            auth_code=payment.auth_code,
            decline_code=payment.decline_code,
            decline_message=payment.decline_message,
            network=payment.network,
            card=card,
            prepayment=payment.prepayment,
            description=payment.description,
            created_at=payment.created_at,
            captured_at=payment.captured_at,
            voided_at=payment.voided_at,
            reversed_at=payment.reversed_at,
        )
