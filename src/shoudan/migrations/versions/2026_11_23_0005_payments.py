"""payments

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PAYMENT_INDEXES = (
    ("merchant_id", "created_at"),
    ("created_at", "id"),
    ("card_token", "business_date"),
    ("merchant_id", "business_date"),
    ("rrn",),
)


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    op.create_table(
        "payments",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("terminal_id", sa.String(8), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured_amount", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("refunded_amount", sa.BigInteger(), nullable=False),
        sa.Column("fee_plan_code", sa.String(32), nullable=False),
        sa.Column("fee_category", sa.String(16), nullable=True),
        sa.Column("rate_bp", sa.String(16), nullable=True),
        sa.Column("business_date", sa.String(10), nullable=False),
        sa.Column("rrn", sa.String(12), nullable=False),
        sa.Column("auth_code", sa.String(6), nullable=True),
        sa.Column("decline_code", sa.String(2), nullable=True),
        sa.Column("decline_message", sa.String(255), nullable=True),
        sa.Column("network", sa.String(16), nullable=False),
        sa.Column("channel_reference", sa.String(64), nullable=True),
        sa.Column("card_bin", sa.String(6), nullable=True),
        sa.Column("card_last4", sa.String(4), nullable=True),
        sa.Column("card_length", sa.SmallInteger(), nullable=True),
        sa.Column("card_token", sa.String(64), nullable=True),
        sa.Column("card_funding", sa.String(8), nullable=True),
        sa.Column("entry_mode", sa.String(16), nullable=True),
        sa.Column("qr_code_last4", sa.String(4), nullable=True),
        sa.Column("prepayment", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("settled_at", dt, nullable=True),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("updated_at", dt, nullable=False),
        sa.Column("captured_at", dt, nullable=True),
        sa.Column("voided_at", dt, nullable=True),
        sa.Column("reversed_at", dt, nullable=True),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.merchant_id"],
            name=op.f("fk_payments_merchant_id_merchants"), ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["terminal_id"], ["terminals.terminal_id"],
            name=op.f("fk_payments_terminal_id_terminals"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint(
            "business_date", "rrn", name=op.f("uq_payments_business_date_rrn")
        ),
        sa.UniqueConstraint(
            "merchant_id", "idempotency_key", name=op.f("uq_payments_merchant_id_idempotency_key")
        ),
    )  # fmt: skip
    for columns in PAYMENT_INDEXES:
        op.create_index(op.f("ix_payments_" + "_".join(columns)), "payments", list(columns))
    op.create_table(
        "payment_status_history",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
            nullable=False,
        ),
        sa.Column("payment_id", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("note", sa.String(255), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"],
            name=op.f("fk_payment_status_history_payment_id_payments"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_status_history")),
    )  # fmt: skip
    op.create_index(
        op.f("ix_payment_status_history_payment_id"), "payment_status_history", ["payment_id"]
    )
    op.create_table(
        "payment_day_totals",
        sa.Column("business_date", sa.String(10), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("scope_key", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "business_date", "scope", "scope_key", name=op.f("pk_payment_day_totals")
        ),
    )
    op.create_table(
        "rrn_counters",
        sa.Column("business_date", sa.String(10), nullable=False),
        sa.Column("last_value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("business_date", name=op.f("pk_rrn_counters")),
    )


def downgrade() -> None:
    op.drop_table("rrn_counters")
    op.drop_table("payment_day_totals")
    op.drop_index(op.f("ix_payment_status_history_payment_id"), "payment_status_history")
    op.drop_table("payment_status_history")
    for columns in PAYMENT_INDEXES:
        op.drop_index(op.f("ix_payments_" + "_".join(columns)), "payments")
    op.drop_table("payments")
