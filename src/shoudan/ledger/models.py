"""Ledger tables. Postings and entries are append-only (database triggers refuse UPDATE and
DELETE); account rows carry balances kept incrementally and re-derived by ``verify``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class LedgerAccount(Base):
    __tablename__ = "ledger_accounts"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    owner_type: Mapped[str | None] = mapped_column(String(32))
    owner_id: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255), default="")
    # Balance limits (fen), enforced in the posting transaction:
    #   debits_posted + debits_pending - credits_posted <= max_debit_balance
    #   credits_posted + credits_pending - debits_posted <= max_credit_balance
    # max_debit_balance = 0 is TigerBeetle's "debits must not exceed credits".
    max_debit_balance: Mapped[int | None] = mapped_column(BigInteger)
    max_credit_balance: Mapped[int | None] = mapped_column(BigInteger)
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(
            "type IN ('asset','liability','equity','revenue','expense')", name="type_known"
        ),
        CheckConstraint(
            "debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 "
            "AND credits_pending >= 0",
            name="balances_non_negative",
        ),
        Index(None, "owner_type", "owner_id"),
        {"sqlite_with_rowid": False},
    )


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # post / void / expire entries name the pending entry they resolve; UNIQUE makes
    # "every hold is resolved at most once" a database guarantee.
    resolves_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("ledger_entries.id", ondelete="RESTRICT")
    )
    code: Mapped[str] = mapped_column(String(32), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(
            "kind IN ('transfer','pending','post','void','expire')", name="kind_known"
        ),
        CheckConstraint(
            "(kind IN ('post','void','expire')) = (resolves_id IS NOT NULL)",
            name="resolution_has_target",
        ),
        # Partial indexes: plain transfers (the bulk of rows) pay for neither.
        Index(
            "uq_ledger_entries_resolves_id",
            "resolves_id",
            unique=True,
            sqlite_where=text("resolves_id IS NOT NULL"),
            postgresql_where=text("resolves_id IS NOT NULL"),
        ),
        Index(
            "ix_ledger_entries_pending_expiry",
            "expires_at",
            sqlite_where=text("kind = 'pending'"),
            postgresql_where=text("kind = 'pending'"),
        ),
        {"sqlite_with_rowid": False},
    )


class LedgerPosting(Base):
    __tablename__ = "ledger_postings"

    # natural key: the entry and the posting's position in it (clustered by entry)
    entry_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("ledger_entries.id", ondelete="RESTRICT"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("ledger_accounts.id", ondelete="RESTRICT")
    )
    currency: Mapped[str] = mapped_column(String(3))
    # signed fen: debit > 0, credit < 0
    amount: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        Index(None, "account_id"),
        {"sqlite_with_rowid": False},
    )


# Triggers that make entries and postings append-only at the database level.
APPEND_ONLY_TABLES = ("ledger_entries", "ledger_postings")
