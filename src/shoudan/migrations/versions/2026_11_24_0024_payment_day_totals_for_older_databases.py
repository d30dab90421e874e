"""payments: the running day totals for databases migrated before they existed

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-24

``payment_day_totals`` was added to migration 0005 after 0005 had shipped, so a database
already past 0005 then (a demo database of an earlier version) never got it, and every
payment failed ("no such table"). Here it is created where it is missing and filled from the
payments, as the payments count against the day's limits (``counted_amount``: the captured
amount once captured, the authorised amount while authorised). A migration, once shipped, is
never edited again: a change is a new one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTED = (
    "CASE status WHEN 'captured' THEN captured_amount WHEN 'authorized' THEN amount ELSE 0 END"
)


def upgrade() -> None:
    if "payment_day_totals" in sa.inspect(op.get_bind()).get_table_names():
        return  # made by 0005, kept by the payments since
    op.create_table(
        "payment_day_totals",
        sa.Column("business_date", sa.String(10), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("scope_key", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "business_date", "scope", "scope_key", name=op.f("pk_payment_day_totals")
        ),
    )
    op.execute(
        "INSERT INTO payment_day_totals (business_date, scope, scope_key, amount)"
        f" SELECT business_date, 'merchant', merchant_id, SUM({COUNTED}) FROM payments"
        " GROUP BY business_date, merchant_id"
        f" UNION ALL SELECT business_date, 'card', card_token, SUM({COUNTED}) FROM payments"
        " WHERE card_token IS NOT NULL GROUP BY business_date, card_token"
    )


def downgrade() -> None:
    pass  # the table is 0005's: its downgrade drops it
