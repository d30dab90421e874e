"""Terminal tables. The terminal master key is stored only as an AES-GCM ciphertext
(``tmk_enc``, context ``terminal:tmk``) plus its key check value.

``devices`` is the physical inventory by serial number, with its lifecycle; a device gets its
``terminals`` row (the payment point) when it is allocated. The anti-counterfeit code is never
stored: only a random salt it is derived from (with a key of the vault) and a keyed hash of it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Integer, LargeBinary, String, Text
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
        CheckConstraint(
            "status IN ('inactive','active','suspended','retired')", name="status_known"
        ),
    )


DEVICE_STATUSES = (
    "'in_stock','allocated','shipped','delivered','activated','suspended','returned','terminated'"
)


class Device(Base):
    __tablename__ = "devices"

    serial_number: Mapped[str] = mapped_column(String(32), primary_key=True)
    product: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(32))
    batch: Mapped[str | None] = mapped_column(String(32))
    import_id: Mapped[str] = mapped_column(String(30), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    code_salt: Mapped[str] = mapped_column(String(32))
    code_hash: Mapped[str] = mapped_column(String(64))
    terminal_id: Mapped[str | None] = mapped_column(
        String(8), ForeignKey("terminals.terminal_id", ondelete="RESTRICT"), unique=True
    )
    merchant_id: Mapped[str | None] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), index=True
    )
    contract_id: Mapped[str | None] = mapped_column(String(30))
    carrier: Mapped[str | None] = mapped_column(String(32))
    tracking_number: Mapped[str | None] = mapped_column(String(40))
    return_condition: Mapped[str | None] = mapped_column(String(16))
    allocated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    shipped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    returned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    check_count: Mapped[int] = mapped_column(Integer)
    first_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("product IN ('epos','smart','traditional')", name="product_known"),
        CheckConstraint(f"status IN ({DEVICE_STATUSES})", name="status_known"),
        CheckConstraint(
            "return_condition IS NULL OR return_condition IN ('unused','used','damaged')",
            name="return_condition_known",
        ),
        CheckConstraint("check_count >= 0", name="check_count_not_negative"),
    )


class DeviceHistory(Base):
    """Every status change of a device: who, when, why (append-only)."""

    __tablename__ = "device_history"

    id: Mapped[str] = mapped_column(String(30), primary_key=True)
    serial_number: Mapped[str] = mapped_column(
        String(32), ForeignKey("devices.serial_number", ondelete="RESTRICT"), index=True
    )
    event: Mapped[str] = mapped_column(String(16))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    details: Mapped[str | None] = mapped_column(Text)  # JSON object: carrier, condition, …
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
