"""web console: merchant users, staff users, sessions

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _login_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    """What both kinds of user share: password, lockout, timestamps."""
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    return [
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("locked_until", dt, nullable=True),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("password_changed_at", dt, nullable=False),
        sa.Column("last_login_at", dt, nullable=True),
        sa.Column("disabled_at", dt, nullable=True),
    ]


def upgrade() -> None:
    dt = shoudan.core.models.UTCDateTime(timezone=True)
    op.create_table(
        "web_merchant_users",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("phone_hash", sa.String(64), nullable=False),
        sa.Column("phone_enc", sa.LargeBinary(), nullable=False),
        sa.Column("phone_masked", sa.String(16), nullable=False),
        *_login_columns(),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.merchant_id"],
            name=op.f("fk_web_merchant_users_merchant_id_merchants"), ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_merchant_users")),
        sa.UniqueConstraint("phone_hash", name=op.f("uq_web_merchant_users_phone_hash")),
    )
    with op.batch_alter_table("web_merchant_users", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_web_merchant_users_merchant_id"), ["merchant_id"], unique=False
        )

    op.create_table(
        "web_staff_users",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("roles", sa.String(255), nullable=False),
        sa.Column("totp_secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        *_login_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_staff_users")),
        sa.UniqueConstraint("username", name=op.f("uq_web_staff_users_username")),
    )

    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("created_at", dt, nullable=False),
        sa.Column("last_seen_at", dt, nullable=False),
        sa.Column("expires_at", dt, nullable=False),
        sa.Column("revoked_at", dt, nullable=True),
        sa.CheckConstraint("kind IN ('merchant','staff')", name=op.f("ck_web_sessions_kind_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_web_sessions_token_hash")),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_web_sessions_kind_user_id"), ["kind", "user_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_kind_user_id"))
    op.drop_table("web_sessions")
    op.drop_table("web_staff_users")
    with op.batch_alter_table("web_merchant_users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_merchant_users_merchant_id"))
    op.drop_table("web_merchant_users")
