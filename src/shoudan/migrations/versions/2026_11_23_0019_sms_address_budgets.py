"""sms: verification codes per network address per day (against SMS pumping)

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sms_address_budgets",
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("codes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("address_hash", "day", name=op.f("pk_sms_address_budgets")),
    )


def downgrade() -> None:
    op.drop_table("sms_address_budgets")
