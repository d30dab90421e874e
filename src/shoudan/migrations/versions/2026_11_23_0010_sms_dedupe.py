"""sms dedupe key

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # one text message per key: an outbox retry must not text a consumer twice
    with op.batch_alter_table("sms_messages") as batch:
        batch.add_column(sa.Column("dedupe_key", sa.String(128), nullable=True))
        batch.create_unique_constraint(op.f("uq_sms_messages_dedupe_key"), ["dedupe_key"])


def downgrade() -> None:
    with op.batch_alter_table("sms_messages") as batch:
        batch.drop_constraint(op.f("uq_sms_messages_dedupe_key"), type_="unique")
        batch.drop_column("dedupe_key")
