"""Runs one real :class:`Capture` in this process, driven line by line from stdin (a test helper).

    capture_driver.py --interface IF --spool DIR [--filter F] [--max-size BYTES]

Started inside a test namespace (``ip netns exec``) so that libpcap and /sys/class/net see the
namespace's interface. Prints one JSON object per line: ``{"event": "ready", "capture_tid": N}``
once the first file is begun (its start counters read); then it reads one command:

    hold-and-stop N   once N packets are in the file: hold the sealer's queue (its real lock: nothing
                      is handed to the sealer or taken by it), stop the capture, wait until the file
                      is handed off, print "handed-off"; then wait for "release" and let it be sealed
    stop N            once N packets are in files: stop, wait for the last file to be sealed
    (both end with "stopped")

Every wait is bounded; the process exits non-zero if one runs out.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from survey6.probe.capture import Capture, CaptureOptions, Provenance
from survey6.probe.pcap import CaptureHandle
from survey6.probe.spool import Spool

WAIT_S = 20.0
POLL_S = 0.01
# No time rotation during a test: the next wall-clock multiple of this is decades away.
NO_ROTATION_S = 1e9
BUFFER_BYTES = 8 << 20  # 8 MiB


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"capture_driver: timed out waiting for {what}")
        time.sleep(POLL_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--spool", required=True, type=Path)
    parser.add_argument("--filter", default="ip6")
    parser.add_argument("--max-size", type=int, default=1 << 30)
    args = parser.parse_args()

    handle = CaptureHandle.live(
        args.interface, snaplen=65535, promisc=False, buffer_bytes=BUFFER_BYTES, bpf_filter=args.filter
    )
    spool = Spool(args.spool, quota_bytes=1 << 40, min_free_bytes=0, policy="pause")
    spool.open()
    options = CaptureOptions(
        interface=args.interface,
        filter=args.filter,
        snaplen_bytes=65535,
        buffer_bytes=BUFFER_BYTES,
        promiscuous=False,
        rotate_interval_s=NO_ROTATION_S,
        rotate_max_bytes=args.max_size,
    )
    capture = Capture(handle, options, spool, Provenance(probe_id="driver"))
    errors: list[BaseException] = []
    capture_tid: list[int] = []

    def body() -> None:
        capture_tid.append(threading.get_native_id())
        try:
            capture.run()
        except BaseException as exc:  # reported below, after the thread ends
            errors.append(exc)

    thread = threading.Thread(target=body, name="capture", daemon=True)  # a hung one must not block exit
    thread.start()
    wait_for(lambda: spool.part_path(1).exists() or errors, "the first file")
    emit("ready", capture_tid=capture_tid[0])
    command, count = sys.stdin.readline().split()
    if command not in ("hold-and-stop", "stop"):
        raise SystemExit(f"capture_driver: unknown command {command!r}")
    packets = int(count)
    # Stopping breaks libpcap's read: packets still in the kernel ring would not reach a file.
    wait_for(lambda: capture.status.packets_written >= packets or errors, f"{packets} packets written")
    if command == "stop":
        capture.request_stop()
    else:
        # The queue's own lock: while it is held, the capture thread blocks handing its file over
        # (after reading the file's counters) and the sealer cannot take anything to seal.
        with capture._to_seal.mutex:
            capture.request_stop()
            wait_for(lambda: capture.status.kernel.received >= packets, f"{packets} packets handed off")
            emit("handed-off", kernel_received=capture.status.kernel.received)
            if sys.stdin.readline().strip() != "release":
                raise SystemExit("capture_driver: expected 'release'")
    thread.join(WAIT_S)
    if thread.is_alive():
        raise SystemExit("capture_driver: the capture did not stop")
    handle.close()
    spool.close()
    if errors:
        raise SystemExit(f"capture_driver: capture failed: {errors[0]}")
    emit("stopped", files_sealed=capture.status.files_sealed)


if __name__ == "__main__":
    main()
