"""Gateway tables: terminal sessions (working keys, open batch), the request journal that makes
every terminal request exactly-once, and cases left for staff.

No PAN, track 2, PIN or PIN block is stored: working keys are vault ciphertexts (context
``gateway:pik:<terminal>`` / ``gateway:mak:<terminal>``), a request is remembered by a keyed
hash, and stored responses never carry card data (the host does not echo field 2 or 35).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class TerminalSession(Base):
    """A signed-on terminal: its current PIK and MAK (encrypted) and its open batch."""

    __tablename__ = "terminal_sessions"

    terminal_id: Mapped[str] = mapped_column(
        String(8), ForeignKey("terminals.terminal_id", ondelete="RESTRICT"), primary_key=True
    )
    pik_enc: Mapped[bytes] = mapped_column(LargeBinary)
    mak_enc: Mapped[bytes] = mapped_column(LargeBinary)
    pik_kcv: Mapped[str] = mapped_column(String(8))
    mak_kcv: Mapped[str] = mapped_column(String(8))
    batch: Mapped[str] = mapped_column(String(6))  # the open batch (60.2)
    signed_on_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# A request's identity (spec §3: MTI, 41, 42, 60.2, 11): one journal row each
IDENTITY_COLUMNS: Final = ("terminal_id", "merchant_id", "batch", "stan", "mti")


class GatewayRequest(Base):
    """One terminal request, by its identity (MTI, 41, 42, 60.2, 11), with the response sent:
    a repeat is answered from here, a different request with the same identity gets ``94``."""

    __tablename__ = "gateway_requests"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    terminal_id: Mapped[str] = mapped_column(
        String(8), ForeignKey("terminals.terminal_id", ondelete="RESTRICT")
    )
    merchant_id: Mapped[str] = mapped_column(String(15))
    mti: Mapped[str] = mapped_column(String(4))
    batch: Mapped[str] = mapped_column(String(6))
    stan: Mapped[str] = mapped_column(String(6))
    kind: Mapped[str] = mapped_column(String(24))
    request_hash: Mapped[str] = mapped_column(String(64))  # keyed hash of every field but 64
    payment_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("payments.id", ondelete="RESTRICT")
    )
    amount: Mapped[int | None] = mapped_column(BigInteger)
    response_code: Mapped[str] = mapped_column(String(2))
    rrn: Mapped[str | None] = mapped_column(String(12))
    response: Mapped[bytes] = mapped_column(LargeBinary)  # body as sent, MTI to field 64
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint(*IDENTITY_COLUMNS),
        Index(None, "terminal_id", "batch", "kind"),
        Index(None, "payment_id"),
    )


class GatewayCase(Base):
    """Something a terminal asked for that the host acknowledged but could not do by itself
    (a reversal after settlement, a batch that did not balance): for staff to handle."""

    __tablename__ = "gateway_cases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    terminal_id: Mapped[str] = mapped_column(String(8))
    merchant_id: Mapped[str] = mapped_column(String(15))
    batch: Mapped[str] = mapped_column(String(6))
    stan: Mapped[str] = mapped_column(String(6))
    payment_id: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "created_at"),)
