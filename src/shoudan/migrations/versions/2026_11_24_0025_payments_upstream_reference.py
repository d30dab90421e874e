"""payments: the reference the network was sent, where it is not the payment's id

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-24

A payment's id is now a fresh ULID; a payment with an Idempotency-Key is sent to the network
under a reference derived from the merchant and the key (``payments.domain.keyed_reference``),
kept here. NULL means the id, which is what every payment made before was sent, with a key or
without: no rows to fill.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("payments", sa.Column("upstream_reference", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("upstream_reference")
