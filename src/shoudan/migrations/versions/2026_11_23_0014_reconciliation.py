"""reconciliation

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = (
    "statement_lines", "our_records", "matched", "missing_in_ours", "missing_in_channel",
    "amount_mismatch", "status_mismatch",
)  # fmt: skip
EXCEPTION_INDEXES = (("run_id", "their_line"), ("status", "created_at", "id"), ("created_at", "id"))


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("encoding", sa.String(16), nullable=False),
        sa.Column("period_start", sa.String(10), nullable=False),
        sa.Column("period_end", sa.String(10), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in COUNTS),
        sa.Column("statement_net", sa.BigInteger(), nullable=False),
        sa.Column("our_net", sa.BigInteger(), nullable=False),
        sa.Column("net_difference", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
        sa.UniqueConstraint(
            "channel", "file_sha256", name=op.f("uq_reconciliation_runs_channel_file_sha256")
        ),
    )
    op.create_index(
        op.f("ix_reconciliation_runs_created_at_id"), "reconciliation_runs", ["created_at", "id"]
    )
    op.create_table(
        "reconciliation_exceptions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("exception_class", sa.String(24), nullable=False),
        sa.Column("record_kind", sa.String(8), nullable=False),
        sa.Column("match_key", sa.String(128), nullable=False),
        sa.Column("our_ref", sa.String(32), nullable=True),
        sa.Column("merchant_id", sa.String(15), nullable=True),
        sa.Column("their_line", sa.Integer(), nullable=True),
        sa.Column("their_values", sa.Text(), nullable=True),
        sa.Column("their_amount", sa.BigInteger(), nullable=True),
        sa.Column("our_amount", sa.BigInteger(), nullable=True),
        sa.Column("their_status", sa.String(16), nullable=True),
        sa.Column("our_status", sa.String(16), nullable=True),
        sa.Column("amount_difference", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resolution", sa.String(16), nullable=True),
        sa.Column("resolution_reason", sa.String(500), nullable=True),
        sa.Column("ledger_entry_id", sa.String(64), nullable=True),
        sa.Column("resolved_by", sa.String(64), nullable=True),
        sa.Column("resolved_at", dt, nullable=True),
        sa.Column("created_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["reconciliation_runs.id"],
            name=op.f("fk_reconciliation_exceptions_run_id_reconciliation_runs"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_exceptions")),
    )  # fmt: skip
    for columns in EXCEPTION_INDEXES:
        op.create_index(
            op.f("ix_reconciliation_exceptions_" + "_".join(columns)),
            "reconciliation_exceptions", list(columns),
        )  # fmt: skip
    op.create_table(
        "reconciliation_notes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
            nullable=False,
        ),
        sa.Column("exception_id", sa.String(32), nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("text", sa.String(1000), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["exception_id"], ["reconciliation_exceptions.id"],
            name=op.f("fk_reconciliation_notes_exception_id_reconciliation_exceptions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_notes")),
    )  # fmt: skip
    op.create_index(
        op.f("ix_reconciliation_notes_exception_id"), "reconciliation_notes", ["exception_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_reconciliation_notes_exception_id"), "reconciliation_notes")
    op.drop_table("reconciliation_notes")
    for columns in EXCEPTION_INDEXES:
        op.drop_index(
            op.f("ix_reconciliation_exceptions_" + "_".join(columns)), "reconciliation_exceptions"
        )
    op.drop_table("reconciliation_exceptions")
    op.drop_index(op.f("ix_reconciliation_runs_created_at_id"), "reconciliation_runs")
    op.drop_table("reconciliation_runs")
