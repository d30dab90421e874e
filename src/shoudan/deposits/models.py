"""Deposit tables: one deposit per device activation (with its frozen terms), its status
history, the merchant's refund requests, and the debt collections that paid deposits."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class Deposit(Base):
    __tablename__ = "deposits"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    serial_number: Mapped[str] = mapped_column(String(32))
    terminal_id: Mapped[str | None] = mapped_column(String(8))
    contract_id: Mapped[str] = mapped_column(String(32))
    product: Mapped[str] = mapped_column(String(16))
    terms: Mapped[str] = mapped_column(Text)  # the contract's terms (JSON), frozen here
    amount: Mapped[int] = mapped_column(BigInteger)
    collection: Mapped[str] = mapped_column(String(16))  # first_settlement | upfront
    outstanding: Mapped[int] = mapped_column(BigInteger)  # fen the merchant still owes of it
    status: Mapped[str] = mapped_column(String(16))
    card_volume: Mapped[int] = mapped_column(BigInteger, default=0)  # last computed
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # first instant after
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # up front
    returned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    return_condition: Mapped[str | None] = mapped_column(String(8))
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    target_reached_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # the decision, once made (blocked_debt, refunded, forfeited)
    basis: Mapped[str | None] = mapped_column(String(16))
    refund_amount: Mapped[int | None] = mapped_column(BigInteger)
    penalty_amount: Mapped[int | None] = mapped_column(BigInteger)
    depreciation_amount: Mapped[int | None] = mapped_column(BigInteger)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("serial_number", "contract_id"),
        Index(None, "merchant_id", "status"),
        Index(None, "terminal_id"),
        Index(None, "status", "created_at"),
    )


class DepositStatusChange(Base):
    __tablename__ = "deposit_status_history"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    deposit_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("deposits.id", ondelete="RESTRICT"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DepositRefundRequest(Base):
    """A merchant asking for its deposit back; staff approve or reject it."""

    __tablename__ = "deposit_refund_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deposit_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("deposits.id", ondelete="RESTRICT"), index=True
    )
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    serial_number: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500))
    requested_by: Mapped[str] = mapped_column(String(64))
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    review_note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "merchant_id", "created_at", "id"),)


class DebtCollection(Base):
    """One ``collect_merchant_debt`` call (its id makes a retry answer the first result)."""

    __tablename__ = "deposit_debt_collections"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), index=True
    )
    from_unsettled: Mapped[int] = mapped_column(BigInteger)
    from_settled: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
