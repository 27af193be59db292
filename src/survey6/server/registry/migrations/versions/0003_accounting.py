"""The accounting identity (docs/audit.md): per-file kernel deltas and ingest counts, spool losses.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Files catalogued before this revision keep NULL kernel deltas and ingest counts: unknown, which
    # the audit reports as such rather than as zero.
    with op.batch_alter_table("captured_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("interface", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("kernel_received", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("kernel_dropped", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("kernel_interface_dropped", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("repaired", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(
            sa.Column("repaired_truncated_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("dataset_rows", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("skipped_packets", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("quarantined_packets", sa.BigInteger(), nullable=True))
    # The server defaults only fill the existing rows: the models set every value themselves.
    with op.batch_alter_table("captured_files", schema=None) as batch_op:
        batch_op.alter_column("interface", server_default=None)
        batch_op.alter_column("repaired", server_default=None)
        batch_op.alter_column("repaired_truncated_bytes", server_default=None)
    op.create_table(
        "spool_losses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("probe_id", sa.String(length=32), nullable=False),
        sa.Column("loss_id", sa.BigInteger(), nullable=False),
        sa.Column("time_ns", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("packets", sa.BigInteger(), nullable=False),
        sa.Column("interface", sa.String(length=64), nullable=False),
        sa.Column("after_sequence", sa.BigInteger(), nullable=True),
        sa.Column("kernel_received", sa.BigInteger(), nullable=True),
        sa.Column("kernel_dropped", sa.BigInteger(), nullable=True),
        sa.Column("kernel_interface_dropped", sa.BigInteger(), nullable=True),
        sa.Column("repaired", sa.Boolean(), nullable=False),
        sa.Column("stored_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["probe_id"], ["probes.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("probe_id", "loss_id", name="uq_spool_losses_probe_loss"),
    )


def downgrade() -> None:
    op.drop_table("spool_losses")
    with op.batch_alter_table("captured_files", schema=None) as batch_op:
        for column in (
            "quarantined_packets",
            "skipped_packets",
            "dataset_rows",
            "repaired_truncated_bytes",
            "repaired",
            "kernel_interface_dropped",
            "kernel_dropped",
            "kernel_received",
            "interface",
        ):
            batch_op.drop_column(column)
