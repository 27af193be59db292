"""Server settings: /etc/survey6/server.toml, SURVEY6_* environment, flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from survey6.common.settings import LoggingSettings, Seconds, StrictModel


class LivenessSettings(StrictModel):
    # Interval the server asks probes to heartbeat at.
    heartbeat_interval_s: Seconds = Field(default=3.0, gt=0)
    # A probe is stale after this long without a heartbeat, and offline after the second.
    stale_after_s: Seconds = Field(default=10.0, gt=0)
    offline_after_s: Seconds = Field(default=60.0, gt=0)
    # Heartbeats are kept in memory and written to the registry in batches this often.
    write_behind_interval_s: Seconds = Field(default=2.0, gt=0)


class ServerSettings(StrictModel):
    # CA, registry database, landing zone.
    data_dir: Path = Path("/var/lib/survey6/server")
    # Enrolment (server-only TLS: a joining probe has no certificate yet).
    enrol_listen: str = "[::]:32000"
    # Probe control and upload (mutual TLS).
    grpc_listen: str = "[::]:32001"
    http_listen: str = "127.0.0.1:8080"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # SQLAlchemy URL of the registry; empty means SQLite in data_dir.
    database_url: str = ""
    liveness: LivenessSettings = Field(default_factory=LivenessSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
