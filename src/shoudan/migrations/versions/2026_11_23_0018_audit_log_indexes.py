"""audit log: indexes for the console's filters (actor, action, subject), newest first

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (("actor", "seq"), ("action", "seq"), ("subject_type", "subject_id", "seq"))


def upgrade() -> None:
    for columns in INDEXES:
        op.create_index(op.f("ix_audit_log_" + "_".join(columns)), "audit_log", list(columns))


def downgrade() -> None:
    for columns in reversed(INDEXES):
        op.drop_index(op.f("ix_audit_log_" + "_".join(columns)), table_name="audit_log")
