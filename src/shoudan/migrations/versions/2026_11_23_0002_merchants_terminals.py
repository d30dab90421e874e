"""merchants and terminals

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = shoudan.core.models.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "merchants",
        sa.Column("merchant_id", sa.String(length=15), nullable=False),
        sa.Column("legal_name", sa.String(length=100), nullable=False),
        sa.Column("merchant_type", sa.String(length=16), nullable=False),
        sa.Column("mcc", sa.String(length=4), nullable=False),
        sa.Column("area_code", sa.String(length=4), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("fee_plan_code", sa.String(length=32), nullable=False),
        sa.Column("daily_limit", sa.BigInteger(), nullable=True),
        sa.Column("contact_phone_enc", sa.LargeBinary(), nullable=False),
        sa.Column("contact_phone_hash", sa.String(length=64), nullable=False),
        sa.Column("contact_phone_masked", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("updated_at", UTC(timezone=True), nullable=False),
        sa.CheckConstraint(
            "merchant_type IN ('individual','small_business','enterprise')",
            name=op.f("ck_merchants_type_known"),
        ),
        sa.CheckConstraint(
            "status IN ('active','suspended','closed')", name=op.f("ck_merchants_status_known")
        ),
        sa.CheckConstraint(
            "daily_limit IS NULL OR daily_limit > 0",
            name=op.f("ck_merchants_daily_limit_positive"),
        ),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_merchants")),
    )
    op.create_index(
        op.f("ix_merchants_contact_phone_hash"), "merchants", ["contact_phone_hash"], unique=False
    )

    op.create_table(
        "merchant_settlement_accounts",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("merchant_id", sa.String(length=15), nullable=False),
        sa.Column("holder_name", sa.String(length=100), nullable=False),
        sa.Column("bank_name", sa.String(length=100), nullable=False),
        sa.Column("card_number_enc", sa.LargeBinary(), nullable=False),
        sa.Column("card_number_hash", sa.String(length=64), nullable=False),
        sa.Column("card_masked", sa.String(length=32), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("verified_at", UTC(timezone=True), nullable=True),
        sa.Column("verified_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("replaced_at", UTC(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(verified AND verified_at IS NOT NULL) OR (NOT verified AND verified_at IS NULL)",
            name=op.f("ck_merchant_settlement_accounts_verified_has_time"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_merchant_settlement_accounts_merchant_id_merchants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchant_settlement_accounts")),
    )
    op.create_index(
        op.f("ix_merchant_settlement_accounts_merchant_id"),
        "merchant_settlement_accounts",
        ["merchant_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_merchant_settlement_accounts_card_number_hash"),
        "merchant_settlement_accounts",
        ["card_number_hash"],
        unique=False,
    )
    op.create_index(
        "uq_merchant_settlement_accounts_current",
        "merchant_settlement_accounts",
        ["merchant_id"],
        unique=True,
        sqlite_where=sa.text("replaced_at IS NULL"),
        postgresql_where=sa.text("replaced_at IS NULL"),
    )

    op.create_table(
        "merchant_status_history",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("merchant_id", sa.String(length=15), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("occurred_at", UTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_merchant_status_history_merchant_id_merchants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchant_status_history")),
    )
    op.create_index(
        op.f("ix_merchant_status_history_merchant_id"),
        "merchant_status_history",
        ["merchant_id"],
        unique=False,
    )

    op.create_table(
        "terminals",
        sa.Column("terminal_id", sa.String(length=8), nullable=False),
        sa.Column("serial_number", sa.String(length=32), nullable=False),
        sa.Column("product", sa.String(length=16), nullable=False),
        sa.Column("merchant_id", sa.String(length=15), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tmk_enc", sa.LargeBinary(), nullable=False),
        sa.Column("tmk_kcv", sa.String(length=6), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.CheckConstraint(
            "product IN ('epos','smart','traditional')", name=op.f("ck_terminals_product_known")
        ),
        sa.CheckConstraint(
            "status IN ('active','suspended','retired')", name=op.f("ck_terminals_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_terminals_merchant_id_merchants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("terminal_id", name=op.f("pk_terminals")),
        sa.UniqueConstraint("serial_number", name=op.f("uq_terminals_serial_number")),
    )
    op.create_index(op.f("ix_terminals_merchant_id"), "terminals", ["merchant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_terminals_merchant_id"), table_name="terminals")
    op.drop_table("terminals")
    op.drop_index(
        op.f("ix_merchant_status_history_merchant_id"), table_name="merchant_status_history"
    )
    op.drop_table("merchant_status_history")
    op.drop_index(
        "uq_merchant_settlement_accounts_current", table_name="merchant_settlement_accounts"
    )
    op.drop_index(
        op.f("ix_merchant_settlement_accounts_card_number_hash"),
        table_name="merchant_settlement_accounts",
    )
    op.drop_index(
        op.f("ix_merchant_settlement_accounts_merchant_id"),
        table_name="merchant_settlement_accounts",
    )
    op.drop_table("merchant_settlement_accounts")
    op.drop_index(op.f("ix_merchants_contact_phone_hash"), table_name="merchants")
    op.drop_table("merchants")
