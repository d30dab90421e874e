"""settlement payouts statements

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _money(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.BigInteger(), nullable=False)


def _count(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.Integer(), nullable=False)


def _fk(table: str, column: str, target: str, target_column: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.{target_column}"],
        name=op.f(f"fk_{table}_{column}_{target}"), ondelete="RESTRICT",
    )  # fmt: skip


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    op.create_table(
        "settlement_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("run_key", sa.String(32), nullable=False),
        sa.Column("term", sa.String(2), nullable=False),
        sa.Column("run_date", sa.String(10), nullable=False),
        sa.Column("capture_before", dt, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        _count("merchants"),
        _count("payments"),
        _money("settled_amount"),
        _money("d0_fees"),
        _money("debt_collected"),
        _money("debt_carried"),
        _count("payouts"),
        _money("payout_amount"),
        _count("blocked"),
        sa.Column("started_at", dt, nullable=False),
        sa.Column("finished_at", dt, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_runs")),
        sa.UniqueConstraint("run_key", name=op.f("uq_settlement_runs_run_key")),
    )
    op.create_index(op.f("ix_settlement_runs_run_date"), "settlement_runs", ["run_date"])
    op.create_table(
        "settlement_items",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        _count("payments"),
        _money("gross"),
        _money("fees"),
        _money("net"),
        _money("d0_fee"),
        _money("moved"),
        _money("debt_collected"),
        _money("debt_carried"),
        sa.Column("payout_id", sa.String(32), nullable=True),
        _money("payout_amount"),
        sa.Column("created_at", dt, nullable=False),
        _fk("settlement_items", "run_id", "settlement_runs", "id"),
        _fk("settlement_items", "merchant_id", "merchants", "merchant_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_items")),
        sa.UniqueConstraint(
            "run_id", "merchant_id", name=op.f("uq_settlement_items_run_id_merchant_id")
        ),
    )
    op.create_index(
        op.f("ix_settlement_items_merchant_id_created_at"),
        "settlement_items",
        ["merchant_id", "created_at"],
    )
    op.create_table(
        "payout_batches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _count("lines"),
        _money("total"),
        _count("paid"),
        _count("rejected"),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("confirmed_at", dt, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_batches")),
    )
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        _money("amount"),
        sa.Column("account_id", sa.String(26), nullable=True),
        sa.Column("account_masked", sa.String(32), nullable=True),
        sa.Column("holder_name", sa.String(100), nullable=True),
        sa.Column("block_reason", sa.String(255), nullable=True),
        sa.Column("batch_id", sa.String(32), nullable=True),
        sa.Column("batch_line", sa.Integer(), nullable=True),
        sa.Column("bank_reason", sa.String(64), nullable=True),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("updated_at", dt, nullable=False),
        sa.Column("completed_at", dt, nullable=True),
        _fk("payouts", "merchant_id", "merchants", "merchant_id"),
        _fk("payouts", "run_id", "settlement_runs", "id"),
        _fk("payouts", "batch_id", "payout_batches", "id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
        sa.UniqueConstraint("batch_id", "batch_line", name=op.f("uq_payouts_batch_id_batch_line")),
    )
    for columns in (("status", "created_at"), ("merchant_id", "created_at"),
                    ("account_id", "created_at")):  # fmt: skip
        op.create_index(op.f("ix_payouts_" + "_".join(columns)), "payouts", list(columns))
    op.create_table(
        "payout_status_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("payout_id", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("note", sa.String(255), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        _fk("payout_status_history", "payout_id", "payouts", "id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_status_history")),
    )
    op.create_index(
        op.f("ix_payout_status_history_payout_id"), "payout_status_history", ["payout_id"]
    )


def downgrade() -> None:
    op.drop_table("payout_status_history")
    op.drop_table("payouts")
    op.drop_table("payout_batches")
    op.drop_table("settlement_items")
    op.drop_table("settlement_runs")
