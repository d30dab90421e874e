"""Settlement tables: runs and their per-merchant items, payouts with their status history,
bank batches. Money columns are integer fen; account numbers are never stored here (a payout
keeps the settlement account's id and masked number; the batch file reads the number through
the merchants' service when it is written)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class SettlementRun(Base):
    """One run: T+1 for a date, or one D0 slot. ``run_key`` makes a run happen once."""

    __tablename__ = "settlement_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_key: Mapped[str] = mapped_column(String(32), unique=True)
    term: Mapped[str] = mapped_column(String(2))
    run_date: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD, Shanghai
    capture_before: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(64))
    merchants: Mapped[int] = mapped_column(Integer, default=0)
    payments: Mapped[int] = mapped_column(Integer, default=0)
    settled_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    d0_fees: Mapped[int] = mapped_column(BigInteger, default=0)
    debt_collected: Mapped[int] = mapped_column(BigInteger, default=0)
    debt_carried: Mapped[int] = mapped_column(BigInteger, default=0)
    payouts: Mapped[int] = mapped_column(Integer, default=0)
    payout_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    blocked: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SettlementItem(Base):
    """What one run did for one merchant, written in the same transaction as its ledger
    entries: a resumed run skips the merchants that already have one."""

    __tablename__ = "settlement_items"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("settlement_runs.id", ondelete="RESTRICT")
    )
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    payments: Mapped[int] = mapped_column(Integer)
    gross: Mapped[int] = mapped_column(BigInteger)  # captured amount of the payments settled
    fees: Mapped[int] = mapped_column(BigInteger)  # their discount fees
    net: Mapped[int] = mapped_column(BigInteger)  # their nets
    d0_fee: Mapped[int] = mapped_column(BigInteger)
    moved: Mapped[int] = mapped_column(BigInteger)  # unsettled -> settled
    debt_collected: Mapped[int] = mapped_column(BigInteger)
    debt_carried: Mapped[int] = mapped_column(BigInteger)  # the merchant's debt afterwards
    payout_id: Mapped[str | None] = mapped_column(String(32))
    payout_amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("run_id", "merchant_id"),
        Index(None, "merchant_id", "created_at"),
    )


class PayoutBatch(Base):
    """A bank batch file: the payouts it carries point at it with their line numbers."""

    __tablename__ = "payout_batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # exported | confirmed
    lines: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(BigInteger)
    paid: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Payout(Base):
    __tablename__ = "payouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    run_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("settlement_runs.id", ondelete="RESTRICT")
    )
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[str | None] = mapped_column(String(26))  # merchant settlement account
    account_masked: Mapped[str | None] = mapped_column(String(32))
    holder_name: Mapped[str | None] = mapped_column(String(100))
    block_reason: Mapped[str | None] = mapped_column(String(255))
    batch_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("payout_batches.id", ondelete="RESTRICT")
    )
    batch_line: Mapped[int | None] = mapped_column(Integer)
    bank_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("batch_id", "batch_line"),
        Index(None, "status", "created_at"),
        Index(None, "merchant_id", "created_at"),
        Index(None, "account_id", "created_at"),
    )


class PayoutStatusChange(Base):
    __tablename__ = "payout_status_history"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    payout_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("payouts.id", ondelete="RESTRICT"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
