"""onboarding applications kyc contracts

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPLICATIONS = "onboarding_applications"
CODES = "onboarding_phone_codes"
HISTORY = "onboarding_status_history"


def _applications(dt: shoudan.core.models.UTCDateTime) -> None:
    op.create_table(
        APPLICATIONS,
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("kyc_status", sa.String(16), nullable=False),
        sa.Column("kyc_reasons", sa.Text(), nullable=False),
        sa.Column("kyc_provider", sa.String(32), nullable=True),
        sa.Column("kyc_checked_at", dt, nullable=True),
        sa.Column("merchant_type", sa.String(16), nullable=False),
        sa.Column("product", sa.String(16), nullable=False),
        sa.Column("business_name", sa.String(100), nullable=False),
        sa.Column("business_address", sa.String(255), nullable=False),
        sa.Column("province", sa.String(32), nullable=False),
        sa.Column("city", sa.String(32), nullable=False),
        sa.Column("area_code", sa.String(4), nullable=True),
        sa.Column("mcc", sa.String(4), nullable=True),
        sa.Column("credit_code", sa.String(18), nullable=True),
        sa.Column("applicant_name_enc", sa.LargeBinary(), nullable=False),
        sa.Column("applicant_name_masked", sa.String(64), nullable=False),
        sa.Column("phone_enc", sa.LargeBinary(), nullable=False),
        sa.Column("phone_hash", sa.String(64), nullable=False),
        sa.Column("phone_masked", sa.String(16), nullable=False),
        sa.Column("phone_verified_at", dt, nullable=True),
        sa.Column("id_number_enc", sa.LargeBinary(), nullable=False),
        sa.Column("id_number_hash", sa.String(64), nullable=False),
        sa.Column("id_number_masked", sa.String(32), nullable=False),
        sa.Column("card_enc", sa.LargeBinary(), nullable=False),
        sa.Column("card_hash", sa.String(64), nullable=False),
        sa.Column("card_masked", sa.String(32), nullable=False),
        sa.Column("bank_name", sa.String(100), nullable=False),
        sa.Column("warnings", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("info_request", sa.String(500), nullable=True),
        sa.Column("rejection_reason", sa.String(500), nullable=True),
        sa.Column("merchant_id", sa.String(15), nullable=True),
        sa.Column("reviewed_by", sa.String(128), nullable=True),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("updated_at", dt, nullable=False),
        sa.CheckConstraint(
            "status IN ('phone_pending','in_review','info_requested','approved','rejected')",
            name=op.f("ck_onboarding_applications_status_known"),
        ),
        sa.CheckConstraint(
            "kyc_status IN ('pending','passed','failed')",
            name=op.f("ck_onboarding_applications_kyc_status_known"),
        ),
        sa.CheckConstraint(
            "(status = 'approved') = (merchant_id IS NOT NULL)",
            name=op.f("ck_onboarding_applications_approved_has_merchant"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.merchant_id"],
            name=op.f("fk_onboarding_applications_merchant_id_merchants"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_onboarding_applications")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_onboarding_applications_token_hash")),
    )  # fmt: skip
    op.create_index(op.f("ix_onboarding_applications_phone_hash"), APPLICATIONS, ["phone_hash"])
    op.create_index(
        op.f("ix_onboarding_applications_id_number_hash"), APPLICATIONS, ["id_number_hash"]
    )
    op.create_index(
        "ix_onboarding_applications_status_created", APPLICATIONS, ["status", "created_at", "id"]
    )


def _codes(dt: shoudan.core.models.UTCDateTime) -> None:
    op.create_table(
        CODES,
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("application_id", sa.String(32), nullable=False),
        sa.Column("phone_hash", sa.String(64), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("expires_at", dt, nullable=False),
        sa.Column("used_at", dt, nullable=True),
        sa.CheckConstraint(
            "attempts >= 0", name=op.f("ck_onboarding_phone_codes_attempts_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["application_id"], [APPLICATIONS + ".id"],
            name=op.f("fk_onboarding_phone_codes_application_id_onboarding_applications"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_onboarding_phone_codes")),
    )  # fmt: skip
    op.create_index("ix_onboarding_phone_codes_phone_created", CODES, ["phone_hash", "created_at"])
    op.create_index(
        "ix_onboarding_phone_codes_application_created", CODES, ["application_id", "created_at"]
    )


def _contracts(dt: shoudan.core.models.UTCDateTime) -> None:
    op.create_table(
        "contracts",
        sa.Column("contract_id", sa.String(32), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("application_id", sa.String(32), nullable=True),
        sa.Column("product", sa.String(16), nullable=False),
        sa.Column("terms", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("accepted_at", dt, nullable=True),
        sa.Column("accepted_ip", sa.String(64), nullable=True),
        sa.Column("accepted_user_agent", sa.String(512), nullable=True),
        sa.Column("accepted_sha256", sa.String(64), nullable=True),
        sa.Column("accepted_by", sa.String(128), nullable=True),
        sa.Column("created_at", dt, nullable=False),
        sa.CheckConstraint(
            "status IN ('generated','accepted')", name=op.f("ck_contracts_status_known")
        ),
        sa.CheckConstraint(
            "(status = 'accepted') = (accepted_at IS NOT NULL)",
            name=op.f("ck_contracts_accepted_has_time"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.merchant_id"],
            name=op.f("fk_contracts_merchant_id_merchants"), ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["application_id"], [APPLICATIONS + ".id"],
            name=op.f("fk_contracts_application_id_onboarding_applications"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("contract_id", name=op.f("pk_contracts")),
    )  # fmt: skip
    op.create_index(op.f("ix_contracts_application_id"), "contracts", ["application_id"])
    op.create_index(
        "ix_contracts_merchant_product", "contracts", ["merchant_id", "product", "accepted_at"]
    )


def _history(dt: shoudan.core.models.UTCDateTime) -> None:
    op.create_table(
        HISTORY,
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("subject_type", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("occurred_at", dt, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_onboarding_status_history")),
    )
    op.create_index(
        "ix_onboarding_status_history_subject", HISTORY, ["subject_id", "occurred_at"]
    )


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    _applications(dt)
    _codes(dt)
    _contracts(dt)
    _history(dt)


def downgrade() -> None:
    op.drop_index("ix_onboarding_status_history_subject", HISTORY)
    op.drop_table(HISTORY)
    op.drop_index("ix_contracts_merchant_product", "contracts")
    op.drop_index(op.f("ix_contracts_application_id"), "contracts")
    op.drop_table("contracts")
    op.drop_index("ix_onboarding_phone_codes_application_created", CODES)
    op.drop_index("ix_onboarding_phone_codes_phone_created", CODES)
    op.drop_table(CODES)
    op.drop_index("ix_onboarding_applications_status_created", APPLICATIONS)
    op.drop_index(op.f("ix_onboarding_applications_id_number_hash"), APPLICATIONS)
    op.drop_index(op.f("ix_onboarding_applications_phone_hash"), APPLICATIONS)
    op.drop_table(APPLICATIONS)
