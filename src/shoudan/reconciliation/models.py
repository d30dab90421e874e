"""Reconciliation tables: a run per imported statement (its summary), the exceptions it found
(only the differences: matched lines are counted, not stored), and notes on exceptions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class ReconciliationRun(Base):
    __tablename__ = "reconciliation_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    file_name: Mapped[str] = mapped_column(String(255))
    file_sha256: Mapped[str] = mapped_column(String(64))
    encoding: Mapped[str] = mapped_column(String(16))
    period_start: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD, Asia/Shanghai
    period_end: Mapped[str] = mapped_column(String(10))
    statement_lines: Mapped[int] = mapped_column(Integer)
    our_records: Mapped[int] = mapped_column(Integer)
    matched: Mapped[int] = mapped_column(Integer)
    missing_in_ours: Mapped[int] = mapped_column(Integer)
    missing_in_channel: Mapped[int] = mapped_column(Integer)
    amount_mismatch: Mapped[int] = mapped_column(Integer)
    status_mismatch: Mapped[int] = mapped_column(Integer)
    # signed fen: sales +, refunds −; statement_net − our_net = net_difference
    statement_net: Mapped[int] = mapped_column(BigInteger)
    our_net: Mapped[int] = mapped_column(BigInteger)
    net_difference: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("channel", "file_sha256"),
        Index(None, "created_at", "id"),
    )


class ReconciliationException(Base):
    __tablename__ = "reconciliation_exceptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("reconciliation_runs.id", ondelete="RESTRICT")
    )
    exception_class: Mapped[str] = mapped_column(String(24))
    record_kind: Mapped[str] = mapped_column(String(8))  # payment | refund
    match_key: Mapped[str] = mapped_column(String(128))
    our_ref: Mapped[str | None] = mapped_column(String(32))  # payment or refund id
    merchant_id: Mapped[str | None] = mapped_column(String(15))
    their_line: Mapped[int | None] = mapped_column(Integer)
    their_values: Mapped[str | None] = mapped_column(Text)  # JSON: column → value
    their_amount: Mapped[int | None] = mapped_column(BigInteger)
    our_amount: Mapped[int | None] = mapped_column(BigInteger)
    their_status: Mapped[str | None] = mapped_column(String(16))
    our_status: Mapped[str | None] = mapped_column(String(16))
    amount_difference: Mapped[int] = mapped_column(BigInteger)  # theirs − ours, signed fen
    status: Mapped[str] = mapped_column(String(16))  # open | resolved
    resolution: Mapped[str | None] = mapped_column(String(16))
    resolution_reason: Mapped[str | None] = mapped_column(String(500))
    ledger_entry_id: Mapped[str | None] = mapped_column(String(64))
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index(None, "run_id", "their_line"),
        Index(None, "status", "created_at", "id"),
        Index(None, "created_at", "id"),
    )


class ReconciliationNote(Base):
    __tablename__ = "reconciliation_notes"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    exception_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("reconciliation_exceptions.id", ondelete="RESTRICT"), index=True
    )
    author: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
