"""The link-share scenarios of bench/upload_bench.py and their reading.

Each scenario runs survey6's Uploader (its own ``run`` loop, which samples the LinkMonitor every
second, and every quarter second while it uploads) against the server in the namespace of a
VethLink, with a LinkMonitor on the host's end of the link given a capacity C and the uploader a
share s, while paced background traffic arrives on the link:

- ``steady``: background from the start; after a warm-up (the monitor's smoothed utilisation settles)
  the override ``upload-now`` is set; large files.
- ``small-files``: the same with a spool of small files (a quiet probe rotating every minute).
- ``onset``: ``upload-now`` on an idle link; the background starts some seconds later.

The link's real capacity is the veth's (many Gbit/s): C is only what the monitor and uploader are
told, so the uploader's rate shows what its own limit does, with no congestion to hide it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
from upload_link import Background, CountingMonitor, Sampler, VethLink
from upload_setup import BenchSpool, Master, Server, machine_busy_s

from survey6.probe.agent import MAX_MESSAGE_BYTES
from survey6.probe.settings import DeliverySettings
from survey6.probe.uploader import MIN_HEADROOM_RATIO, Uploader
from survey6.wire.v1 import upload_pb2_grpc

READY_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 60.0
OVER_TOLERANCE = 1.01  # a window counts as over a limit when above it by more than 1 %
SETTLED_TOLERANCE = 1.05  # onset: settled once every later 1 s window is within 5 % of the limit
IDLE_THRESHOLD_RATIO = 0.1  # survey6's defaults for the monitor
IDLE_HOLD_S = 30.0
SMOOTHING_S = 5.0


@dataclass(frozen=True)
class ShareConfig:
    capacity_bps: float
    share_ratio: float
    background_bps: float
    chunk_bytes: int
    warmup_s: float
    upload_s: float
    onset_idle_s: float


@dataclass
class ShareContext:
    link: VethLink
    server: Server
    spool: BenchSpool
    probe_id: str
    credentials: grpc.ChannelCredentials


def run_scenario(
    kind: str, ctx: ShareContext, config: ShareConfig, masters: list[Master], copies: int
) -> dict[str, Any]:
    ctx.spool.empty()
    ctx.spool.fill(masters, copies)
    monitor = CountingMonitor(
        ctx.link.host_if,
        capacity_bps=config.capacity_bps,
        idle_threshold_ratio=IDLE_THRESHOLD_RATIO,
        idle_hold_s=IDLE_HOLD_S,
        smoothing_s=SMOOTHING_S,
    )
    settings = DeliverySettings(
        link_capacity_bps=config.capacity_bps,
        upload_share_ratio=config.share_ratio,
        chunk_bytes=config.chunk_bytes,
    )
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    with grpc.secure_channel(ctx.server.control_target, ctx.credentials, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)
        uploader = Uploader(ctx.spool, upload_pb2_grpc.UploadStub(channel), monitor, settings, ctx.probe_id)
        origin = time.monotonic()
        busy_before = machine_busy_s()
        sampler = Sampler(ctx.link, monitor, uploader._rate_bytes_per_s, origin)
        thread = threading.Thread(target=uploader.run, name="uploader", daemon=True)
        background: Background | None = None
        try:
            sampler.start()
            if kind == "onset":
                uploader.request_upload_now()
                thread.start()
                time.sleep(config.onset_idle_s)
                background = Background(ctx.link, config.background_bps, config.upload_s + 1)
                background.start()
                override_at = 0.0
            else:
                background = Background(
                    ctx.link, config.background_bps, config.warmup_s + config.upload_s + 1
                )
                background.start()
                thread.start()
                time.sleep(config.warmup_s)
                override_at = time.monotonic() - origin
                uploader.request_upload_now()  # wakes the loop at once
            deadline = time.monotonic() + config.upload_s
            while time.monotonic() < deadline and ctx.spool.ready_files():
                time.sleep(0.05)
            stopped_at = time.monotonic() - origin
        except BaseException:
            if background is not None:
                background.stop()
            raise
        finally:
            uploader.request_stop()
            thread.join(timeout=JOIN_TIMEOUT_S)
            samples = sampler.stop()
            busy_percent = 100 * (machine_busy_s() - busy_before) / (time.monotonic() - origin)
        sent = background.result()
    ctx.spool.empty()
    return {
        "scenario": kind,
        "files": len(masters) * copies,
        "file_bytes": masters[0].size_bytes,
        "override_at_s": round(override_at, 3),
        "stopped_at_s": round(stopped_at, 3),
        "delivered_files": uploader.status.uploaded_files_total,
        "last_error": uploader.status.last_error,
        "background": sent,
        # The whole machine's busy CPU during the scenario (this run, the server, other people's
        # work), percent of one CPU: a disturbed run shows up here.
        "machine_busy_percent": round(busy_percent),
        "summary": summarise(kind, samples, override_at, stopped_at, config, sent.get("rate_bps", 0.0)),
        "samples": samples,
    }


# -- reading the samples ----------------------------------------------------------------------------


def _rate_bps(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    return (b[key] - a[key]) * 8 / (b["t"] - a["t"])


def _windows(samples: list[dict[str, Any]], span_s: float, sliding: bool) -> list[tuple[int, int]]:
    """(i, j) index pairs whose samples are span_s apart (the first j at least that far)."""
    pairs = []
    i = 0
    while i < len(samples) - 1:
        j = next(
            (k for k in range(i + 1, len(samples)) if samples[k]["t"] - samples[i]["t"] >= span_s - 0.02), 0
        )
        if not j:
            break
        pairs.append((i, j))
        i = i + 1 if sliding else j
    return pairs


def _first_increase(samples: list[dict[str, Any]], key: str, start: int, min_bytes: int) -> int:
    for index in range(start + 1, len(samples)):
        if samples[index][key] - samples[index - 1][key] >= min_bytes:
            return index - 1
    return len(samples) - 1


def _window_stats(
    samples: list[dict[str, Any]], span_s: float, sliding: bool, capacity: float, limit_bps: float
) -> dict[str, Any]:
    pairs = _windows(samples, span_s, sliding)
    if not pairs:
        return {"windows": 0}
    app = [_rate_bps(samples[i], samples[j], "app_bytes") for i, j in pairs]
    wire = [_rate_bps(samples[i], samples[j], "tx_bytes") for i, j in pairs]
    own_limit = [samples[i]["limit_bytes_per_s"] * 8 for i, _ in pairs]
    return {
        "windows": len(pairs),
        "app_max_share": round(max(app) / capacity, 4),
        "wire_max_share": round(max(wire) / capacity, 4),
        "app_over_limit": sum(r > limit_bps * OVER_TOLERANCE for r in app),
        "wire_over_limit": sum(r > limit_bps * OVER_TOLERANCE for r in wire),
        "app_over_own_limit": sum(r > lim * OVER_TOLERANCE for r, lim in zip(app, own_limit, strict=True)),
    }


def summarise(
    kind: str,
    samples: list[dict[str, Any]],
    override_at: float,
    stopped_at: float,
    config: ShareConfig,
    background_bps: float,
) -> dict[str, Any]:
    """Shares of C used by the upload, per 100 ms and 1 s window, against the configured share of the
    headroom the background leaves (``limit``) and against the uploader's own limit at the time."""
    capacity, share = config.capacity_bps, config.share_ratio
    limit_bps = share * max(capacity - background_bps, capacity * MIN_HEADROOM_RATIO)
    start_index = next(i for i, s in enumerate(samples) if s["t"] >= override_at - 0.1)
    first = _first_increase(samples, "app_bytes", start_index, 1)
    if kind == "onset":
        # The background's first 100 ms with at least half its bytes (the sender takes a moment to start).
        tick_bytes = int(background_bps * 0.1 / 8 / 2)
        background_index = _first_increase(samples, "rx_bytes", first, tick_bytes)
        first = background_index  # the busy period is what is measured; the idle part is reported apart
    active = [s for s in samples[first:] if s["t"] <= stopped_at + 0.05]
    seconds = active[-1]["t"] - active[0]["t"]
    utilisation = [s["utilisation"] for s in active if s["utilisation"] is not None]
    own_limits = [s["limit_bytes_per_s"] * 8 / capacity for s in active]
    summary: dict[str, Any] = {
        "capacity_bps": capacity,
        "share_ratio": share,
        "background_bps": round(background_bps),
        "limit_share": round(limit_bps / capacity, 4),  # s x (C - background) / C
        "measured_from_s": round(active[0]["t"], 2),
        "seconds": round(seconds, 2),
        "first_byte_after_override_s": round(samples[first]["t"] - override_at, 2)
        if kind != "onset"
        else None,
        "app_bytes": active[-1]["app_bytes"] - active[0]["app_bytes"],
        "wire_bytes": active[-1]["tx_bytes"] - active[0]["tx_bytes"],
        "app_mean_share": round(_rate_bps(active[0], active[-1], "app_bytes") / capacity, 4),
        "wire_mean_share": round(_rate_bps(active[0], active[-1], "tx_bytes") / capacity, 4),
        "own_limit_share_min_max": [round(min(own_limits), 4), round(max(own_limits), 4)],
        "monitor_utilisation_first_last": [round(utilisation[0], 4), round(utilisation[-1], 4)]
        if utilisation
        else None,
        "windows_100ms": _window_stats(active, 0.1, False, capacity, limit_bps),
        "windows_1s": _window_stats(active, 1.0, False, capacity, limit_bps),
        "sliding_1s": _window_stats(active, 1.0, True, capacity, limit_bps),
    }
    if kind == "onset":
        idle = samples[start_index : first + 1]
        summary["idle_part_app_mean_share"] = round(_rate_bps(idle[0], idle[-1], "app_bytes") / capacity, 4)
        summary.update(_settling(active, limit_bps))
    return summary


def _settling(active: list[dict[str, Any]], limit_bps: float) -> dict[str, Any]:
    """How long after the background started the 1 s rate stayed above the limit, and the bytes over."""
    pairs = _windows(active, 1.0, True)
    over = [
        i for i, j in pairs if _rate_bps(active[i], active[j], "app_bytes") > limit_bps * SETTLED_TOLERANCE
    ]
    settled_at = active[over[-1] + 1]["t"] if over else active[0]["t"]
    excess_bits = sum(
        max(_rate_bps(active[i], active[j], "app_bytes") - limit_bps, 0) * (active[j]["t"] - active[i]["t"])
        for i, j in _windows(active, 1.0, False)
    )
    return {
        "settled_after_s": round(settled_at - active[0]["t"], 2),
        "bytes_over_limit": round(excess_bits / 8),
    }
