"""Refund tables: the refund, its status history, its approvals, its evidence, and the
redemptions of prepayments (which reduce what can be refunded).

A consumer's phone and a re-route bank account are personal data: stored encrypted (vault),
with a keyed hash to look them up and a masked copy to show.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class Refund(Base):
    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    payment_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("payments.id", ondelete="RESTRICT")
    )
    out_refund_no: Mapped[str | None] = mapped_column(String(64))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    fee_returned: Mapped[int] = mapped_column(BigInteger)
    # what the merchant's balance gives: amount − fee_returned, from unsettled then settled
    charge_unsettled: Mapped[int] = mapped_column(BigInteger)
    charge_settled: Mapped[int] = mapped_column(BigInteger)
    funded: Mapped[bool] = mapped_column(Boolean)  # the merchant-funds hold is in place
    reason: Mapped[str] = mapped_column(String(32))
    reason_text: Mapped[str] = mapped_column(String(500), default="")
    requested_by: Mapped[str] = mapped_column(String(64))
    requester_kind: Mapped[str] = mapped_column(String(16))
    consumer_phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    consumer_phone_hash: Mapped[str | None] = mapped_column(String(64))
    consumer_phone_masked: Mapped[str | None] = mapped_column(String(16))
    risk_score: Mapped[int] = mapped_column(Integer)
    risk_reasons: Mapped[str] = mapped_column(Text)  # JSON list of {rule, weight, fact}
    approvals_required: Mapped[int] = mapped_column(SmallInteger)
    info_request: Mapped[str | None] = mapped_column(String(500))
    # copied from the payment: the route back, and facts the risk rules look up
    method: Mapped[str] = mapped_column(String(16))
    network: Mapped[str] = mapped_column(String(16))
    card_funding: Mapped[str | None] = mapped_column(String(8))
    card_token: Mapped[str | None] = mapped_column(String(64))
    business_date: Mapped[str] = mapped_column(String(10))
    route: Mapped[str] = mapped_column(String(16))
    reroute_account_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    reroute_account_last4: Mapped[str | None] = mapped_column(String(4))
    reroute_holder_name: Mapped[str | None] = mapped_column(String(100))
    reroute_bank_name: Mapped[str | None] = mapped_column(String(100))
    # execution
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    outcome_unknown: Mapped[bool] = mapped_column(Boolean, default=False)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(255))
    expected_earliest: Mapped[str] = mapped_column(String(10))
    expected_latest: Mapped[str] = mapped_column(String(10))
    expected_basis: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("merchant_id", "out_refund_no"),
        Index(None, "payment_id"),
        Index(None, "merchant_id", "created_at", "id"),
        Index(None, "status", "created_at"),
        # covering the risk rule's count of the card's refunds (refunds/service.py
        # ``_risk_facts``): read from the index alone, not row by row (migration 0022); the
        # merchant's refunds of the day are a running total (RefundDayTotal, migration 0023)
        Index(None, "card_token", "created_at", "status"),
    )


class RefundStatusChange(Base):
    __tablename__ = "refund_status_history"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    refund_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("refunds.id", ondelete="RESTRICT"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RefundApproval(Base):
    """One approval by one person: the primary key makes "the same person twice" impossible."""

    __tablename__ = "refund_approvals"

    refund_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("refunds.id", ondelete="RESTRICT"), primary_key=True
    )
    approver: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RefundEvidence(Base):
    __tablename__ = "refund_evidence"

    refund_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("refunds.id", ondelete="RESTRICT"), primary_key=True
    )
    file_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("stored_files.id", ondelete="RESTRICT"), primary_key=True
    )
    added_by: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Redemption(Base):
    """Part of a prepayment (预付款) used up: it can no longer be refunded."""

    __tablename__ = "payment_redemptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    payment_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("payments.id", ondelete="RESTRICT"), index=True
    )
    amount: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(String(255), default="")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RefundDayTotal(Base):
    """A merchant's live refunds (their amounts) per business day of the request, kept in
    the transaction of every request and every status change that makes a refund live or not:
    the risk rule "refunds today over 30 % of sales today" reads one row instead of summing
    the day's refunds, which made each request slower than the last (docs/benchmarks.md)."""

    __tablename__ = "refund_day_totals"

    business_date: Mapped[str] = mapped_column(String(10), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(15), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
