"""Migration 0003 upgrades a registry at 0002 that already holds probes and catalogued files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from sqlalchemy import inspect

from survey6.server import audit
from survey6.server.registry import db


def test_an_0002_registry_with_files_upgrades_and_is_audited_as_unknown(tmp_path: Path) -> None:
    engine = db.make_engine(db.sqlite_url(tmp_path))
    try:
        config = db._alembic_config(engine)
        command.upgrade(config, "0002")
        assert not inspect(engine).has_table("spool_losses")
        now = dt.datetime(2026, 11, 30, 12, 0)
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO probes (id, hostname, labels, host_facts, cert_serial, cert_not_after,"
                    " enrolled_at, last_health, state) VALUES ('p-0a1b2c3d4e5f', 'h', '{}', '{}', 's', :at,"
                    ' :at, \'{"spool": {"last_sealed_sequence": "2"}}\', \'online\')'
                ),
                {"at": now},
            )
            for sequence, state in ((1, "ingested"), (2, "queued")):
                connection.execute(
                    sa.text(
                        "INSERT INTO captured_files (probe_id, sequence, sha256_hex, size_bytes, packets,"
                        " landing_path, first_packet_time_ns, last_packet_time_ns, state, state_detail,"
                        " received_at) VALUES ('p-0a1b2c3d4e5f', :seq, :sha, 100, 7, 'x', 0, 0, :state, '',"
                        " :at)"
                    ),
                    {"seq": sequence, "sha": "a" * 64, "state": state, "at": now},
                )
        db.upgrade(engine)
        columns = {c["name"] for c in inspect(engine).get_columns("captured_files")}
        assert {"kernel_received", "repaired", "repaired_truncated_bytes", "dataset_rows"} <= columns
        assert inspect(engine).has_table("spool_losses")
        with db.session_factory(engine)() as session:
            document = audit.audit_fleet(session)
        probe = document["probes"][0]
        # The old rows' kernel counts and row counts were never reported: unknown, not zero.
        assert probe["terms"]["kernel_unknown_files"] == 2
        assert probe["terms"]["ingested_uncounted"] == 7 and probe["terms"]["not_yet_ingested"] == 7
        assert probe["sequences"]["landed"] == [[1, 2]] and document["ok"]
        command.downgrade(config, "0002")
        assert not inspect(engine).has_table("spool_losses")
    finally:
        engine.dispose()
