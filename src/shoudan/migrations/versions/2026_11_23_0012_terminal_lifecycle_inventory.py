"""terminal lifecycle inventory

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shoudan.core.models

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = shoudan.core.models.UTCDateTime
DEVICE_STATUSES = (
    "'in_stock','allocated','shipped','delivered','activated','suspended','returned','terminated'"
)


def _terminal_statuses(statuses: str) -> None:
    # batch mode: SQLite cannot alter a constraint in place, the table is copied
    with op.batch_alter_table("terminals") as batch:
        batch.drop_constraint(op.f("ck_terminals_status_known"), type_="check")
        batch.create_check_constraint(op.f("ck_terminals_status_known"), f"status IN ({statuses})")


def upgrade() -> None:
    _terminal_statuses("'inactive','active','suspended','retired'")
    op.create_table(
        "devices",
        sa.Column("serial_number", sa.String(length=32), nullable=False),
        sa.Column("product", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=True),
        sa.Column("batch", sa.String(length=32), nullable=True),
        sa.Column("import_id", sa.String(length=30), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("code_salt", sa.String(length=32), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("terminal_id", sa.String(length=8), nullable=True),
        sa.Column("merchant_id", sa.String(length=15), nullable=True),
        sa.Column("contract_id", sa.String(length=30), nullable=True),
        sa.Column("carrier", sa.String(length=32), nullable=True),
        sa.Column("tracking_number", sa.String(length=40), nullable=True),
        sa.Column("return_condition", sa.String(length=16), nullable=True),
        sa.Column("allocated_at", UTC(timezone=True), nullable=True),
        sa.Column("shipped_at", UTC(timezone=True), nullable=True),
        sa.Column("delivered_at", UTC(timezone=True), nullable=True),
        sa.Column("activated_at", UTC(timezone=True), nullable=True),
        sa.Column("returned_at", UTC(timezone=True), nullable=True),
        sa.Column("terminated_at", UTC(timezone=True), nullable=True),
        sa.Column("check_count", sa.Integer(), nullable=False),
        sa.Column("first_checked_at", UTC(timezone=True), nullable=True),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("updated_at", UTC(timezone=True), nullable=False),
        sa.CheckConstraint(
            "product IN ('epos','smart','traditional')", name=op.f("ck_devices_product_known")
        ),
        sa.CheckConstraint(
            f"status IN ({DEVICE_STATUSES})", name=op.f("ck_devices_status_known")
        ),
        sa.CheckConstraint(
            "return_condition IS NULL OR return_condition IN ('unused','used','damaged')",
            name=op.f("ck_devices_return_condition_known"),
        ),
        sa.CheckConstraint("check_count >= 0", name=op.f("ck_devices_check_count_not_negative")),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_devices_merchant_id_merchants"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["terminal_id"],
            ["terminals.terminal_id"],
            name=op.f("fk_devices_terminal_id_terminals"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("serial_number", name=op.f("pk_devices")),
        sa.UniqueConstraint("terminal_id", name=op.f("uq_devices_terminal_id")),
    )
    op.create_index(op.f("ix_devices_import_id"), "devices", ["import_id"], unique=False)
    op.create_index(op.f("ix_devices_merchant_id"), "devices", ["merchant_id"], unique=False)
    op.create_index(op.f("ix_devices_status"), "devices", ["status"], unique=False)
    op.create_table(
        "device_history",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("serial_number", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["serial_number"],
            ["devices.serial_number"],
            name=op.f("fk_device_history_serial_number_devices"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_history")),
    )
    op.create_index(
        op.f("ix_device_history_serial_number"), "device_history", ["serial_number"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_device_history_serial_number"), table_name="device_history")
    op.drop_table("device_history")
    op.drop_index(op.f("ix_devices_status"), table_name="devices")
    op.drop_index(op.f("ix_devices_merchant_id"), table_name="devices")
    op.drop_index(op.f("ix_devices_import_id"), table_name="devices")
    op.drop_table("devices")
    op.execute("UPDATE terminals SET status = 'retired' WHERE status = 'inactive'")
    _terminal_statuses("'active','suspended','retired'")
