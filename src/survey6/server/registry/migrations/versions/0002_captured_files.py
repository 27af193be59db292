"""Catalog of uploaded capture files (also the ingest queue's outbox).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "captured_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("probe_id", sa.String(length=32), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("sha256_hex", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("packets", sa.BigInteger(), nullable=False),
        sa.Column("landing_path", sa.String(length=255), nullable=False),
        sa.Column("first_packet_time_ns", sa.BigInteger(), nullable=False),
        sa.Column("last_packet_time_ns", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_detail", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("stored_at", sa.DateTime(), nullable=True),
        sa.Column("queued_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["probe_id"],
            ["probes.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("probe_id", "sequence", name="uq_captured_files_probe_sequence"),
    )
    with op.batch_alter_table("captured_files", schema=None) as batch_op:
        batch_op.create_index("ix_captured_files_state", ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("captured_files", schema=None) as batch_op:
        batch_op.drop_index("ix_captured_files_state")

    op.drop_table("captured_files")
