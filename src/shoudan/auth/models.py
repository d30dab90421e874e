"""Tables of this domain: API keys (stored hashed) and idempotency records.

``api_keys`` never holds a key in clear: only its visible ``prefix`` (for look-up and for
people to tell keys apart) and the SHA-256 of the whole key. ``merchant_id`` has no foreign
key on purpose: merchants live in another migration and domain, and the service checks that
the merchant exists through ``shoudan.merchants.service``.

``idempotency_keys`` remembers, per caller (``scope``) and ``Idempotency-Key``, the request
it answered and the response it gave, so that a retry is answered with the same response
instead of running the use case again (see ``shoudan.api.idempotency``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime

ROLE_CHECK = "role IN ('merchant','admin','finance','reviewer','approver','risk','cs_agent')"


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # key_<ULID>
    prefix: Mapped[str] = mapped_column(String(16), index=True)  # first 12 chars, not secret
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    role: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[str | None] = mapped_column(String(15), index=True)
    # the staff member holding a staff key (su_<ULID>), so maker-checker sees one person
    # behind their console login and their keys; None for a service key
    person_id: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(ROLE_CHECK, name="role_known"),
        CheckConstraint(
            "(role = 'merchant') = (merchant_id IS NOT NULL)", name="merchant_key_has_merchant"
        ),
        CheckConstraint("person_id IS NULL OR role <> 'merchant'", name="person_only_staff"),
    )


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # idem_<ULID>
    scope: Mapped[str] = mapped_column(String(64))  # who asked: sha256 of the credentials
    key: Mapped[str] = mapped_column(String(255))  # the client's Idempotency-Key
    request_hash: Mapped[str] = mapped_column(String(64))  # sha256 of method, path, body
    status: Mapped[str] = mapped_column(String(16))  # in_progress | completed
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    # "utf-8" (the body as text, the usual JSON case) or "base64" (anything else)
    response_body_encoding: Mapped[str | None] = mapped_column(String(8))
    response_headers: Mapped[str | None] = mapped_column(Text)  # JSON [[name, value], ...]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # An in_progress row whose lock has run out belongs to a crashed request: a retry may
    # take it over.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("scope", "key"),
        CheckConstraint("status IN ('in_progress','completed')", name="status_known"),
        Index(None, "created_at"),
    )
