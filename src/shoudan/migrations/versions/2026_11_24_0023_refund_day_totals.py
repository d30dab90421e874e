"""refunds: a running total of each merchant's live refunds per business day

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-24

The risk rule "the merchant's refunds today over 30 % of its sales today" summed the day's
live refunds on every request, so a busy merchant's requests grew slower through the day
(docs/benchmarks.md, eighth session). The total is now kept beside the refunds, in the same
transactions, and filled here from the refunds already recorded.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# refunds that hold (or have taken) refundable capacity (refunds/domain.py, LIVE)
LIVE = (
    "requested", "pending_funds", "in_review", "needs_info", "approved", "processing",
    "succeeded", "abnormal",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "refund_day_totals",
        sa.Column("business_date", sa.String(length=10), nullable=False),
        sa.Column("merchant_id", sa.String(length=15), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("business_date", "merchant_id", name=op.f("pk_refund_day_totals")),
    )
    marks = ", ".join(f":s{i}" for i in range(len(LIVE)))
    op.get_bind().execute(
        sa.text(
            "INSERT INTO refund_day_totals (business_date, merchant_id, amount)"
            " SELECT business_date, merchant_id, sum(amount) FROM refunds"
            f" WHERE status IN ({marks}) GROUP BY business_date, merchant_id"
        ),
        {f"s{i}": status for i, status in enumerate(LIVE)},
    )
    op.drop_index(op.f("ix_refunds_merchant_id_business_date_status_amount"), table_name="refunds")


def downgrade() -> None:
    op.create_index(
        op.f("ix_refunds_merchant_id_business_date_status_amount"),
        "refunds", ["merchant_id", "business_date", "status", "amount"],
    )  # fmt: skip
    op.drop_table("refund_day_totals")
