"""web console: 忘记密码 SMS codes

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    op.create_table(
        "web_password_reset_codes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("phone_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=True),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("expires_at", dt, nullable=False),
        sa.Column("used_at", dt, nullable=True),
        sa.CheckConstraint(
            "attempts >= 0", name=op.f("ck_web_password_reset_codes_attempts_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["web_merchant_users.id"],
            name=op.f("fk_web_password_reset_codes_user_id_web_merchant_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_password_reset_codes")),
    )
    with op.batch_alter_table("web_password_reset_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_web_password_reset_codes_phone_hash_created_at"),
            ["phone_hash", "created_at"], unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("web_password_reset_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_password_reset_codes_phone_hash_created_at"))
    op.drop_table("web_password_reset_codes")
