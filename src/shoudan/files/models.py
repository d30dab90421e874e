"""Uploaded files: one row per file, the bytes on disk under the data directory.

The row is the file's identity and its integrity record (size and SHA-256, re-checked on every
read); ``storage_key`` is a path relative to the data directory, made by the service, never
from anything a client sent.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime
from shoudan.files.domain import DEFAULT_PURPOSE


class StoredFile(Base):
    __tablename__ = "stored_files"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # null for staff uploads that belong to no merchant
    merchant_id: Mapped[str | None] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    uploaded_by: Mapped[str] = mapped_column(String(64))  # principal id
    content_type: Mapped[str] = mapped_column(String(32))  # sniffed, never the declared one
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # hex
    original_name: Mapped[str] = mapped_column(String(255))  # display only, never a path
    storage_key: Mapped[str] = mapped_column(String(128))  # ends with the id: unique
    purpose: Mapped[str] = mapped_column(String(32), default=DEFAULT_PURPOSE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "merchant_id", "created_at"),)
