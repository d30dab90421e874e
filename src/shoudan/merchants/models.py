"""Merchant tables. Personal data is never stored in clear: the contact phone and the
settlement card number are AES-GCM ciphertexts (``*_enc``) with a keyed hash for look-ups
(``*_hash``) and the masked form shown on screens (``*_masked``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class Merchant(Base):
    __tablename__ = "merchants"

    merchant_id: Mapped[str] = mapped_column(String(15), primary_key=True)
    legal_name: Mapped[str] = mapped_column(String(100))
    merchant_type: Mapped[str] = mapped_column(String(16))
    mcc: Mapped[str] = mapped_column(String(4))
    area_code: Mapped[str] = mapped_column(String(4))
    status: Mapped[str] = mapped_column(String(16))
    fee_plan_code: Mapped[str] = mapped_column(String(32))
    daily_limit: Mapped[int | None] = mapped_column(BigInteger)  # fen; NULL = the plan's
    contact_phone_enc: Mapped[bytes] = mapped_column(LargeBinary)
    contact_phone_hash: Mapped[str] = mapped_column(String(64), index=True)
    contact_phone_masked: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(
            "merchant_type IN ('individual','small_business','enterprise')", name="type_known"
        ),
        CheckConstraint("status IN ('active','suspended','closed')", name="status_known"),
        CheckConstraint("daily_limit IS NULL OR daily_limit > 0", name="daily_limit_positive"),
    )


class MerchantSettlementAccount(Base):
    """The bank card a merchant is paid to (一清: its own account). A merchant has at most one
    current account (``replaced_at`` NULL, enforced by a partial unique index); replaced ones
    stay for the record. Payouts go only to a verified current account."""

    __tablename__ = "merchant_settlement_accounts"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), index=True
    )
    holder_name: Mapped[str] = mapped_column(String(100))
    bank_name: Mapped[str] = mapped_column(String(100))
    card_number_enc: Mapped[bytes] = mapped_column(LargeBinary)
    card_number_hash: Mapped[str] = mapped_column(String(64), index=True)
    card_masked: Mapped[str] = mapped_column(String(32))
    verified: Mapped[bool] = mapped_column(Boolean)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    verified_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    replaced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index(
            "uq_merchant_settlement_accounts_current",
            "merchant_id",
            unique=True,
            sqlite_where=text("replaced_at IS NULL"),
            postgresql_where=text("replaced_at IS NULL"),
        ),
        CheckConstraint(
            "(verified AND verified_at IS NOT NULL) OR (NOT verified AND verified_at IS NULL)",
            name="verified_has_time",
        ),
    )


class MerchantStatusHistory(Base):
    """Every status a merchant has been in, with who moved it and why (creation included)."""

    __tablename__ = "merchant_status_history"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
