"""refunds: the risk rules' two figures read from covering indexes

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-23

Every refund request scores two rules from the merchant's refunds today (their sum) and the
card's refunds in 24 hours (their count), filtered by status. The indexes on
``(merchant_id, business_date)`` and ``(card_token, created_at)`` found the rows but then
read each one for its status and amount, so a request's cost grew with the day's refunds:
3.1 ms of CPU for the first 500 refunds of a merchant's day, 5.7 ms after 2,500
(docs/benchmarks.md). With ``status`` and ``amount`` in the indexes the figures come from the
index alone. The new indexes serve every query the old ones did (same leading columns).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_refunds_merchant_id_business_date_status_amount"),
        "refunds", ["merchant_id", "business_date", "status", "amount"],
    )  # fmt: skip
    op.create_index(
        op.f("ix_refunds_card_token_created_at_status"),
        "refunds", ["card_token", "created_at", "status"],
    )  # fmt: skip
    op.drop_index(op.f("ix_refunds_merchant_id_business_date"), table_name="refunds")
    op.drop_index(op.f("ix_refunds_card_token_created_at"), table_name="refunds")


def downgrade() -> None:
    op.create_index(
        op.f("ix_refunds_card_token_created_at"), "refunds", ["card_token", "created_at"]
    )
    op.create_index(
        op.f("ix_refunds_merchant_id_business_date"), "refunds", ["merchant_id", "business_date"]
    )
    op.drop_index(op.f("ix_refunds_card_token_created_at_status"), table_name="refunds")
    op.drop_index(op.f("ix_refunds_merchant_id_business_date_status_amount"), table_name="refunds")
