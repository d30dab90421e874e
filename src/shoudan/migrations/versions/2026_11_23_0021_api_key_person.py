"""auth: a staff API key may belong to a staff member (the person behind it)

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-23

Maker-checker compares people, not credentials: a staff member who approves a large refund in
the console and again with an API key of their own must not count as two approvers. A staff
key created with ``--staff-user`` records its holder here; approvals and requests are then
recorded under that person. Keys without one (service keys) stay their own identity. No
foreign key, as for ``merchant_id``: staff users belong to another domain (the web console),
and the command that binds a key checks that the person exists and holds the key's role.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("person_id", sa.String(32), nullable=True))
        batch.create_check_constraint(
            op.f("ck_api_keys_person_only_staff"), "person_id IS NULL OR role <> 'merchant'"
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_person_only_staff"), type_="check")
        batch.drop_column("person_id")
