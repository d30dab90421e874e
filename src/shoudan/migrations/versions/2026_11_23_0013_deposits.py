"""deposits

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEPOSIT_INDEXES = (("merchant_id", "status"), ("terminal_id",), ("status", "created_at"))


def _merchant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["merchant_id"], ["merchants.merchant_id"],
        name=op.f(f"fk_{table}_merchant_id_merchants"), ondelete="RESTRICT",
    )  # fmt: skip


def _deposit_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["deposit_id"], ["deposits.id"],
        name=op.f(f"fk_{table}_deposit_id_deposits"), ondelete="RESTRICT",
    )  # fmt: skip


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    op.create_table(
        "deposits",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("serial_number", sa.String(32), nullable=False),
        sa.Column("terminal_id", sa.String(8), nullable=True),
        sa.Column("contract_id", sa.String(32), nullable=False),
        sa.Column("product", sa.String(16), nullable=False),
        sa.Column("terms", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("collection", sa.String(16), nullable=False),
        sa.Column("outstanding", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("card_volume", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at", dt, nullable=True),
        sa.Column("activated_at", dt, nullable=True),
        sa.Column("window_ends_at", dt, nullable=True),
        sa.Column("paid_at", dt, nullable=True),
        sa.Column("returned_at", dt, nullable=True),
        sa.Column("return_condition", sa.String(8), nullable=True),
        sa.Column("terminated_at", dt, nullable=True),
        sa.Column("target_reached_at", dt, nullable=True),
        sa.Column("basis", sa.String(16), nullable=True),
        sa.Column("refund_amount", sa.BigInteger(), nullable=True),
        sa.Column("penalty_amount", sa.BigInteger(), nullable=True),
        sa.Column("depreciation_amount", sa.BigInteger(), nullable=True),
        sa.Column("decided_at", dt, nullable=True),
        sa.Column("closed_at", dt, nullable=True),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("updated_at", dt, nullable=False),
        _merchant_fk("deposits"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposits")),
        sa.UniqueConstraint(
            "serial_number", "contract_id", name=op.f("uq_deposits_serial_number_contract_id")
        ),
    )
    for columns in DEPOSIT_INDEXES:
        op.create_index(op.f("ix_deposits_" + "_".join(columns)), "deposits", list(columns))
    op.create_table(
        "deposit_status_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("deposit_id", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        _deposit_fk("deposit_status_history"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposit_status_history")),
    )  # fmt: skip
    op.create_index(
        op.f("ix_deposit_status_history_deposit_id"), "deposit_status_history", ["deposit_id"]
    )
    op.create_table(
        "deposit_refund_requests",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("deposit_id", sa.String(32), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("serial_number", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("reviewed_by", sa.String(64), nullable=True),
        sa.Column("review_note", sa.String(500), nullable=True),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("updated_at", dt, nullable=False),
        sa.Column("reviewed_at", dt, nullable=True),
        _deposit_fk("deposit_refund_requests"),
        _merchant_fk("deposit_refund_requests"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposit_refund_requests")),
    )
    op.create_index(
        op.f("ix_deposit_refund_requests_deposit_id"), "deposit_refund_requests", ["deposit_id"]
    )
    op.create_index(
        op.f("ix_deposit_refund_requests_merchant_id_created_at_id"),
        "deposit_refund_requests", ["merchant_id", "created_at", "id"],
    )  # fmt: skip
    op.create_table(
        "deposit_debt_collections",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("from_unsettled", sa.BigInteger(), nullable=False),
        sa.Column("from_settled", sa.BigInteger(), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        _merchant_fk("deposit_debt_collections"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposit_debt_collections")),
    )
    op.create_index(
        op.f("ix_deposit_debt_collections_merchant_id"), "deposit_debt_collections",
        ["merchant_id"],
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index(op.f("ix_deposit_debt_collections_merchant_id"), "deposit_debt_collections")
    op.drop_table("deposit_debt_collections")
    op.drop_index(
        op.f("ix_deposit_refund_requests_merchant_id_created_at_id"), "deposit_refund_requests"
    )
    op.drop_index(op.f("ix_deposit_refund_requests_deposit_id"), "deposit_refund_requests")
    op.drop_table("deposit_refund_requests")
    op.drop_index(op.f("ix_deposit_status_history_deposit_id"), "deposit_status_history")
    op.drop_table("deposit_status_history")
    for columns in DEPOSIT_INDEXES:
        op.drop_index(op.f("ix_deposits_" + "_".join(columns)), "deposits")
    op.drop_table("deposits")
