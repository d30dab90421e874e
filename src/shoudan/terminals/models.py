"""Terminal tables. The terminal master key is stored only as an AES-GCM ciphertext
(``tmk_enc``, context ``terminal:tmk``) plus its key check value."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class Terminal(Base):
    __tablename__ = "terminals"

    terminal_id: Mapped[str] = mapped_column(String(8), primary_key=True)
    serial_number: Mapped[str] = mapped_column(String(32), unique=True)
    product: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    tmk_enc: Mapped[bytes] = mapped_column(LargeBinary)
    tmk_kcv: Mapped[str] = mapped_column(String(6))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("product IN ('epos','smart','traditional')", name="product_known"),
        CheckConstraint("status IN ('active','suspended','retired')", name="status_known"),
    )
