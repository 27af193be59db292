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


class HeartbeatSettings(StrictModel):
    interval_s: Seconds = Field(default=3.0, gt=0)


class ProbeSettings(StrictModel):
    # Identity (key, certificate, probe id) and local state.
    state_dir: Path = Path("/var/lib/survey6/probe")
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
