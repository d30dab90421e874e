"""refunds

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUND_INDEXES = (
    ("payment_id",),
    ("merchant_id", "created_at", "id"),
    ("status", "created_at"),
    ("card_token", "created_at"),
    ("merchant_id", "business_date"),
)


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    with op.batch_alter_table("payments") as batch:
        batch.add_column(
            sa.Column("redeemed_amount", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("payment_id", sa.String(32), nullable=False),
        sa.Column("out_refund_no", sa.String(64), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("fee_returned", sa.BigInteger(), nullable=False),
        sa.Column("charge_unsettled", sa.BigInteger(), nullable=False),
        sa.Column("charge_settled", sa.BigInteger(), nullable=False),
        sa.Column("funded", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("reason_text", sa.String(500), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("requester_kind", sa.String(16), nullable=False),
        sa.Column("consumer_phone_enc", sa.LargeBinary(), nullable=True),
        sa.Column("consumer_phone_hash", sa.String(64), nullable=True),
        sa.Column("consumer_phone_masked", sa.String(16), nullable=True),
        sa.Column("risk_score", sa.Integer(), nullable=False),
        sa.Column("risk_reasons", sa.Text(), nullable=False),
        sa.Column("approvals_required", sa.SmallInteger(), nullable=False),
        sa.Column("info_request", sa.String(500), nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("network", sa.String(16), nullable=False),
        sa.Column("card_funding", sa.String(8), nullable=True),
        sa.Column("card_token", sa.String(64), nullable=True),
        sa.Column("business_date", sa.String(10), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("reroute_account_enc", sa.LargeBinary(), nullable=True),
        sa.Column("reroute_account_last4", sa.String(4), nullable=True),
        sa.Column("reroute_holder_name", sa.String(100), nullable=True),
        sa.Column("reroute_bank_name", sa.String(100), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("outcome_unknown", sa.Boolean(), nullable=False),
        sa.Column("next_attempt_at", dt, nullable=True),
        sa.Column("last_attempt_at", dt, nullable=True),
        sa.Column("failure_reason", sa.String(64), nullable=True),
        sa.Column("failure_message", sa.String(255), nullable=True),
        sa.Column("expected_earliest", sa.String(10), nullable=False),
        sa.Column("expected_latest", sa.String(10), nullable=False),
        sa.Column("expected_basis", sa.String(64), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("updated_at", dt, nullable=False),
        sa.Column("approved_at", dt, nullable=True),
        sa.Column("completed_at", dt, nullable=True),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.merchant_id"],
            name=op.f("fk_refunds_merchant_id_merchants"), ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"],
            name=op.f("fk_refunds_payment_id_payments"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint(
            "merchant_id", "out_refund_no", name=op.f("uq_refunds_merchant_id_out_refund_no")
        ),
    )
    for columns in REFUND_INDEXES:
        op.create_index(op.f("ix_refunds_" + "_".join(columns)), "refunds", list(columns))
    op.create_table(
        "refund_status_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("refund_id", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refunds.id"],
            name=op.f("fk_refund_status_history_refund_id_refunds"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refund_status_history")),
    )
    op.create_index(
        op.f("ix_refund_status_history_refund_id"), "refund_status_history", ["refund_id"]
    )
    op.create_table(
        "refund_approvals",
        sa.Column("refund_id", sa.String(32), nullable=False),
        sa.Column("approver", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refunds.id"],
            name=op.f("fk_refund_approvals_refund_id_refunds"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("refund_id", "approver", name=op.f("pk_refund_approvals")),
    )
    op.create_table(
        "refund_evidence",
        sa.Column("refund_id", sa.String(32), nullable=False),
        sa.Column("file_id", sa.String(32), nullable=False),
        sa.Column("added_by", sa.String(64), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refunds.id"],
            name=op.f("fk_refund_evidence_refund_id_refunds"), ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["file_id"], ["stored_files.id"],
            name=op.f("fk_refund_evidence_file_id_stored_files"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("refund_id", "file_id", name=op.f("pk_refund_evidence")),
    )
    op.create_table(
        "payment_redemptions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("payment_id", sa.String(32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.String(255), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"],
            name=op.f("fk_payment_redemptions_payment_id_payments"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_redemptions")),
    )
    op.create_index(
        op.f("ix_payment_redemptions_payment_id"), "payment_redemptions", ["payment_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_payment_redemptions_payment_id"), "payment_redemptions")
    op.drop_table("payment_redemptions")
    op.drop_table("refund_evidence")
    op.drop_table("refund_approvals")
    op.drop_index(op.f("ix_refund_status_history_refund_id"), "refund_status_history")
    op.drop_table("refund_status_history")
    for columns in REFUND_INDEXES:
        op.drop_index(op.f("ix_refunds_" + "_".join(columns)), "refunds")
    op.drop_table("refunds")
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("redeemed_amount")
