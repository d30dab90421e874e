"""The development SMS inbox (every text the dev_inbox provider "sent") and the per-address
budget of verification codes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class SmsMessage(Base):
    __tablename__ = "sms_messages"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # sms_<ULID>
    phone_enc: Mapped[bytes] = mapped_column(LargeBinary)  # vault context "sms:phone"
    phone_hash: Mapped[str] = mapped_column(String(64))  # vault.lookup_hash, to filter
    phone_masked: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32))
    # set by callers that may send twice (outbox retries): one message per key
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index(None, "phone_hash", "created_at"),
        Index(None, "created_at", "id"),
    )


class SmsAddressBudget(Base):
    """Verification codes asked for from one network address (keyed hash) on one day."""

    __tablename__ = "sms_address_budgets"

    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD, Shanghai
    codes: Mapped[int] = mapped_column(Integer)
