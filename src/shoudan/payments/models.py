"""Payment tables. No full PAN, track data, PIN, PIN block or CVV is ever stored: a card is
its BIN, last four, length, funding and a keyed token (HMAC of the PAN)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    terminal_id: Mapped[str] = mapped_column(
        String(8), ForeignKey("terminals.terminal_id", ondelete="RESTRICT")
    )
    method: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)  # requested / authorised
    captured_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    fee: Mapped[int] = mapped_column(BigInteger, default=0)
    net: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    redeemed_amount: Mapped[int] = mapped_column(BigInteger, default=0)  # prepayments
    fee_plan_code: Mapped[str] = mapped_column(String(32))
    fee_category: Mapped[str | None] = mapped_column(String(16))
    rate_bp: Mapped[str | None] = mapped_column(String(16))  # Decimal as text
    business_date: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD, Asia/Shanghai
    rrn: Mapped[str] = mapped_column(String(12))
    auth_code: Mapped[str | None] = mapped_column(String(6))
    decline_code: Mapped[str | None] = mapped_column(String(2))
    decline_message: Mapped[str | None] = mapped_column(String(255))
    network: Mapped[str] = mapped_column(String(16))
    channel_reference: Mapped[str | None] = mapped_column(String(64))
    # what the network was sent when it is not our id: derived from the Idempotency-Key
    # (domain.keyed_reference); NULL: the id (service.upstream_reference_of)
    upstream_reference: Mapped[str | None] = mapped_column(String(32))
    card_bin: Mapped[str | None] = mapped_column(String(6))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    card_length: Mapped[int | None] = mapped_column(SmallInteger)
    card_token: Mapped[str | None] = mapped_column(String(64))
    card_funding: Mapped[str | None] = mapped_column(String(8))
    entry_mode: Mapped[str | None] = mapped_column(String(16))
    qr_code_last4: Mapped[str | None] = mapped_column(String(4))
    prepayment: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(255), default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # fingerprint of the request (card as token): a reused Idempotency-Key must match it
    request_hash: Mapped[str] = mapped_column(String(64))
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("business_date", "rrn"),
        UniqueConstraint("merchant_id", "idempotency_key"),
        Index(None, "merchant_id", "created_at"),
        Index(None, "created_at", "id"),
        Index(None, "card_token", "business_date"),
        Index(None, "merchant_id", "business_date"),
        Index(None, "rrn"),
    )


class PaymentStatusChange(Base):
    __tablename__ = "payment_status_history"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    payment_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("payments.id", ondelete="RESTRICT"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RrnCounter(Base):
    """Per business day, the last RRN sequence handed out (row-locked while incremented)."""

    __tablename__ = "rrn_counters"

    business_date: Mapped[str] = mapped_column(String(10), primary_key=True)
    last_value: Mapped[int] = mapped_column(Integer)


class PaymentDayTotal(Base):
    """Approved amounts of a business day per card (token) and per merchant, kept in the
    payment's own transaction, so a limit check reads two rows instead of summing the day."""

    __tablename__ = "payment_day_totals"

    business_date: Mapped[str] = mapped_column(String(10), primary_key=True)
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # card | merchant
    scope_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
