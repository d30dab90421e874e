"""gateway

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    op.create_table(
        "terminal_sessions",
        sa.Column("terminal_id", sa.String(8), nullable=False),
        sa.Column("pik_enc", sa.LargeBinary(), nullable=False),
        sa.Column("mak_enc", sa.LargeBinary(), nullable=False),
        sa.Column("pik_kcv", sa.String(8), nullable=False),
        sa.Column("mak_kcv", sa.String(8), nullable=False),
        sa.Column("batch", sa.String(6), nullable=False),
        sa.Column("signed_on_at", dt, nullable=False),
        sa.Column("updated_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["terminal_id"], ["terminals.terminal_id"],
            name=op.f("fk_terminal_sessions_terminal_id_terminals"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("terminal_id", name=op.f("pk_terminal_sessions")),
    )  # fmt: skip
    op.create_table(
        "gateway_requests",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
            nullable=False,
        ),
        sa.Column("terminal_id", sa.String(8), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("mti", sa.String(4), nullable=False),
        sa.Column("batch", sa.String(6), nullable=False),
        sa.Column("stan", sa.String(6), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("payment_id", sa.String(32), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("response_code", sa.String(2), nullable=False),
        sa.Column("rrn", sa.String(12), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.ForeignKeyConstraint(
            ["terminal_id"], ["terminals.terminal_id"],
            name=op.f("fk_gateway_requests_terminal_id_terminals"), ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"],
            name=op.f("fk_gateway_requests_payment_id_payments"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_requests")),
        sa.UniqueConstraint(
            "terminal_id", "merchant_id", "batch", "stan", "mti",
            name=op.f("uq_gateway_requests_terminal_id_merchant_id_batch_stan_mti"),
        ),
    )  # fmt: skip
    op.create_index(
        op.f("ix_gateway_requests_terminal_id_batch_kind"),
        "gateway_requests",
        ["terminal_id", "batch", "kind"],
    )
    op.create_index(op.f("ix_gateway_requests_payment_id"), "gateway_requests", ["payment_id"])
    op.create_table(
        "gateway_cases",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("terminal_id", sa.String(8), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("batch", sa.String(6), nullable=False),
        sa.Column("stan", sa.String(6), nullable=False),
        sa.Column("payment_id", sa.String(32), nullable=True),
        sa.Column("detail", sa.String(255), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("resolved_at", dt, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_cases")),
    )
    op.create_index(op.f("ix_gateway_cases_created_at"), "gateway_cases", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_gateway_cases_created_at"), "gateway_cases")
    op.drop_table("gateway_cases")
    op.drop_index(op.f("ix_gateway_requests_payment_id"), "gateway_requests")
    op.drop_index(op.f("ix_gateway_requests_terminal_id_batch_kind"), "gateway_requests")
    op.drop_table("gateway_requests")
    op.drop_table("terminal_sessions")
