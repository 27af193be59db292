"""Probe settings: /etc/survey6/probe.toml, SURVEY6_* environment, flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from survey6.common.settings import ByteCount, LoggingSettings, Seconds, StrictModel

# Kernel BPF filter: IPv6, untagged or in one 802.1Q tag.
DEFAULT_CAPTURE_FILTER = "ip6 or (vlan and ip6)"


class CaptureSettings(StrictModel):
    interfaces: list[str] = Field(default_factory=list)
    filter: str = DEFAULT_CAPTURE_FILTER
    # 262144 is libpcap's default: whole packets, including jumbograms up to that size.
    snaplen_bytes: int = Field(default=262_144, ge=64, le=262_144)
    # Kernel ring buffer per interface; large enough to ride out a slow disk for a moment.
    buffer_bytes: ByteCount = Field(default=64 << 20, ge=1 << 20)
    promiscuous: bool = True
    # Files rotate on wall-clock multiples of the interval, and earlier when they reach max bytes.
    rotate_interval_s: Seconds = Field(default=60.0, gt=0)
    rotate_max_bytes: ByteCount = Field(default=64 << 20, ge=1 << 16)


class SpoolSettings(StrictModel):
    dir: Path = Path("/var/lib/survey6/spool")
    quota_bytes: ByteCount = Field(default=10 << 30, gt=0)
    # Capture stops writing (or drops oldest) before the filesystem has less free space than this.
    min_free_bytes: ByteCount = Field(default=1 << 30, ge=0)
    full_policy: Literal["pause", "drop-oldest"] = "pause"


class DeliverySettings(StrictModel):
    """When and how fast sealed files go to the server."""

    # Interface whose idleness gates uploads; empty: the first capture interface.
    interface: str = ""
    # Link capacity in bits/s; 0: the driver's speed (/sys/class/net/IF/speed).
    link_capacity_bps: float = Field(default=0.0, ge=0)
    # The link is idle when its utilisation (without our own uploads), smoothed over smoothing_s
    # and over the last second alone, stays under the threshold for the hold time. A rise counts at
    # once (an upload pauses, or slows, within about a second); a fall only as the smoothed value follows.
    idle_threshold_ratio: float = Field(default=0.1, gt=0, le=1)
    idle_hold_s: Seconds = Field(default=30.0, ge=0)
    smoothing_s: Seconds = Field(default=5.0, gt=0)
    # Share of the idle headroom an upload may use, in link bytes (headers counted), over every
    # second: one token bucket for all files, with no burst beyond one chunk.
    upload_share_ratio: float = Field(default=0.5, gt=0, le=1)
    # Overrides: upload whatever the link does when the backlog or the oldest file gets this big/old.
    backlog_high_water_bytes: ByteCount = Field(default=2 << 30, gt=0)
    max_deferral_s: Seconds = Field(default=6 * 3600.0, gt=0)
    chunk_bytes: ByteCount = Field(default=256 << 10, ge=4096, le=1 << 20)


class HeartbeatSettings(StrictModel):
    interval_s: Seconds = Field(default=3.0, gt=0)


class ProbeSettings(StrictModel):
    # Identity (key, certificate, probe id) and local state.
    state_dir: Path = Path("/var/lib/survey6/probe")
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
