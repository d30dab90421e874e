"""Onboarding tables. The applicant's personal data (name, phone, ID number, bank card) is
never stored in clear: AES-GCM ciphertexts (``*_enc``), keyed hashes for look-ups (``*_hash``)
and masked copies for screens (``*_masked``). Verification codes and the application token
are stored hashed only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class Application(Base):
    __tablename__ = "onboarding_applications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    kyc_status: Mapped[str] = mapped_column(String(16))
    kyc_reasons: Mapped[str] = mapped_column(Text)  # JSON list of reason codes
    kyc_provider: Mapped[str | None] = mapped_column(String(32))
    kyc_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    merchant_type: Mapped[str] = mapped_column(String(16))
    product: Mapped[str] = mapped_column(String(16))
    business_name: Mapped[str] = mapped_column(String(100))
    business_address: Mapped[str] = mapped_column(String(255))
    province: Mapped[str] = mapped_column(String(32))
    city: Mapped[str] = mapped_column(String(32))
    area_code: Mapped[str | None] = mapped_column(String(4))
    mcc: Mapped[str | None] = mapped_column(String(4))
    credit_code: Mapped[str | None] = mapped_column(String(18))
    applicant_name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    applicant_name_masked: Mapped[str] = mapped_column(String(64))
    phone_enc: Mapped[bytes] = mapped_column(LargeBinary)
    phone_hash: Mapped[str] = mapped_column(String(64), index=True)
    phone_masked: Mapped[str] = mapped_column(String(16))
    phone_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    id_number_enc: Mapped[bytes] = mapped_column(LargeBinary)
    id_number_hash: Mapped[str] = mapped_column(String(64), index=True)
    id_number_masked: Mapped[str] = mapped_column(String(32))
    card_enc: Mapped[bytes] = mapped_column(LargeBinary)
    card_hash: Mapped[str] = mapped_column(String(64))
    card_masked: Mapped[str] = mapped_column(String(32))
    bank_name: Mapped[str] = mapped_column(String(100))
    warnings: Mapped[str] = mapped_column(Text)  # JSON list of warning codes
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    info_request: Mapped[str | None] = mapped_column(String(500))
    rejection_reason: Mapped[str | None] = mapped_column(String(500))
    merchant_id: Mapped[str | None] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    reviewed_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(
            "status IN ('phone_pending','in_review','info_requested','approved','rejected')",
            name="status_known",
        ),
        CheckConstraint("kyc_status IN ('pending','passed','failed')", name="kyc_status_known"),
        CheckConstraint(
            "(status = 'approved') = (merchant_id IS NOT NULL)", name="approved_has_merchant"
        ),
        Index("ix_onboarding_applications_status_created", "status", "created_at", "id"),
    )


class PhoneCode(Base):
    """One SMS verification code: its keyed hash, its life and the attempts made."""

    __tablename__ = "onboarding_phone_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    application_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("onboarding_applications.id", ondelete="RESTRICT")
    )
    phone_hash: Mapped[str] = mapped_column(String(64))
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        Index("ix_onboarding_phone_codes_phone_created", "phone_hash", "created_at"),
        Index("ix_onboarding_phone_codes_application_created", "application_id", "created_at"),
    )


class Contract(Base):
    """A merchant's contract: terms and text frozen at generation, acceptance recorded with
    the SHA-256 of the exact text accepted."""

    __tablename__ = "contracts"

    contract_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        String(15), ForeignKey("merchants.merchant_id", ondelete="RESTRICT")
    )
    application_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("onboarding_applications.id", ondelete="RESTRICT"), index=True
    )
    product: Mapped[str] = mapped_column(String(16))
    terms: Mapped[str] = mapped_column(Text)  # JSON: ContractTerms.as_dict()
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    accepted_ip: Mapped[str | None] = mapped_column(String(64))
    accepted_user_agent: Mapped[str | None] = mapped_column(String(512))
    accepted_sha256: Mapped[str | None] = mapped_column(String(64))
    accepted_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("status IN ('generated','accepted')", name="status_known"),
        CheckConstraint(
            "(status = 'accepted') = (accepted_at IS NOT NULL)", name="accepted_has_time"
        ),
        Index("ix_contracts_merchant_product", "merchant_id", "product", "accepted_at"),
    )


class StatusHistory(Base):
    """Every status an application or a contract has been in: who moved it, when and why."""

    __tablename__ = "onboarding_status_history"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(16))  # application | contract
    subject_id: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_onboarding_status_history_subject", "subject_id", "occurred_at"),
    )
