"""Tables of the web console: merchant users, staff users and their server-side sessions.

A merchant user logs in with the phone number bound to it: stored encrypted (``phone_enc``),
found by its keyed hash (``phone_hash``), shown masked. Passwords are scrypt hashes; a staff
user's TOTP secret is encrypted like any personal data. A session row keeps only the keyed
hash of the cookie's token, so a copy of the table lets nobody in. ``merchant_id`` has no
foreign key on a session on purpose: the user row carries it (and its foreign key).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class MerchantUser(Base):
    __tablename__ = "web_merchant_users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # mu_<ULID>
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), index=True
    )
    phone_hash: Mapped[str] = mapped_column(String(64), unique=True)
    phone_enc: Mapped[bytes] = mapped_column(LargeBinary)
    phone_masked: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StaffUser(Base):
    __tablename__ = "web_staff_users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # su_<ULID>
    username: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[str] = mapped_column(String(255))  # comma-separated shoudan.auth Role values
    password_hash: Mapped[str] = mapped_column(String(255))
    totp_secret_enc: Mapped[bytes] = mapped_column(LargeBinary)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)  # a code is used once
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebSession(Base):
    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # ws_<ULID>
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # merchant | staff
    user_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("kind IN ('merchant','staff')", name="kind_known"),
        Index(None, "kind", "user_id"),
    )


class PasswordResetCode(Base):
    """One 忘记密码 SMS code: its keyed hash, life and attempts. A row is also written for a
    phone without a login (``user_id`` NULL, nothing texted) so that the per-phone limits and
    the answers are the same whether an account exists or not."""

    __tablename__ = "web_password_reset_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # prc_<ULID>
    phone_hash: Mapped[str] = mapped_column(String(64))  # as web_merchant_users.phone_hash
    user_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("web_merchant_users.id", ondelete="RESTRICT")
    )
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        Index(None, "phone_hash", "created_at"),
    )
