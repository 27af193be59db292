"""Server settings: /etc/survey6/server.toml, SURVEY6_* environment, flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from survey6.common.settings import ByteCount, LoggingSettings, Seconds, StrictModel
from survey6.server.web.settings import WebSettings


class LivenessSettings(StrictModel):
    # Interval the server asks probes to heartbeat at.
    heartbeat_interval_s: Seconds = Field(default=3.0, gt=0)
    # A probe is stale after this long without a heartbeat, and offline after the second.
    stale_after_s: Seconds = Field(default=10.0, gt=0)
    offline_after_s: Seconds = Field(default=60.0, gt=0)
    # Heartbeats are kept in memory and written to the registry in batches this often.
    write_behind_interval_s: Seconds = Field(default=2.0, gt=0)
    # Health history samples older than this are deleted (each probe's newest is kept). The web
    # UI's charts look back 24 h; about 2,900 samples per probe per day are written.
    history_retention_s: Seconds = Field(default=7 * 24 * 3600.0, gt=0)  # 7 days


class UploadSettings(StrictModel):
    # Where verified files land (<probe_id>/<yyyy>/<mm>/<dd>/<seq>.pcap); empty: data_dir/landing.
    landing_dir: Path | None = None
    # Partial uploads; empty: data_dir/receiving. Must be on the landing zone's filesystem (the
    # final move is a rename).
    receiving_dir: Path | None = None
    # Largest file accepted, in bytes.
    max_file_bytes: ByteCount = Field(default=4 << 30, gt=0)  # 4 GiB
    # Landed bytes a probe may hold; 0: unlimited.
    probe_quota_bytes: ByteCount = Field(default=0, ge=0)
    # An upload stream that sends nothing for this long is cancelled, so a stalled client does not
    # hold one of the server's RPC threads; what it sent is kept and it resumes from there.
    stream_idle_timeout_s: Seconds = Field(default=120.0, gt=0)
    # A partial upload (receiving/*.part) untouched for this long is deleted; a probe that resumes
    # sooner keeps its offset.
    part_retention_s: Seconds = Field(default=7 * 24 * 3600.0, gt=0)
    # While a file arrives, its writeback to disk is started every this many bytes, so the fsync
    # before the receipt finds little left to write; 0: everything is written by that fsync.
    # Measured (bench/upload_writeback.py, 64 MiB on a virtio disk): last byte to receipt 43 ms
    # without, 8.7 ms every 2 MiB, 13 ms every 8 MiB; less than 2 MiB gains nothing more.
    writeback_bytes: ByteCount = Field(default=2 << 20, ge=0)  # 2 MiB


class QueueSettings(StrictModel):
    # How often stored files waiting in the outbox are enqueued (also right after each landing).
    drain_interval_s: Seconds = Field(default=2.0, gt=0)
    # RQ timeout of one ingest job.
    job_timeout_s: Seconds = Field(default=3600.0, gt=0)


class EnrolmentSettings(StrictModel):
    """Limits on guessing bootstrap tokens (survey6.server.attempts, docs/security.md).

    A guess is a Join with a malformed token, an unknown token id or a wrong secret.
    """

    # Guesses are counted over a sliding window this long.
    failure_window_s: Seconds = Field(default=600.0, gt=0)  # 10 min
    # Guesses one client may make within the window; then its Joins are refused
    # (RESOURCE_EXHAUSTED, with the seconds to wait) until its oldest guess leaves the window.
    failures_per_client: int = Field(default=10, ge=1)
    # Guesses from all clients together within the window; past it, Joins from clients that have
    # guessed in the window are refused too (a guesser spread over many addresses then gets one
    # guess per address). A client without a guess still joins: a secret (~82 bits) is out of
    # reach of brute force, so this bounds noise and log volume, not the odds of a guess.
    failures_total: int = Field(default=200, ge=1)
    # An IPv6 client counts by this prefix of its address (a host usually holds a whole /64);
    # IPv4 clients count per address.
    client_ipv6_prefix_bits: int = Field(default=64, ge=1, le=128)


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
    uploads: UploadSettings = Field(default_factory=UploadSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    enrolment: EnrolmentSettings = Field(default_factory=EnrolmentSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
