"""Discovery: which files are captures to ingest, and what their place says about them.

The landing zone is ``<probe_id>/<yyyy>/<mm>/<dd>/<sequence:012d>.pcap`` (+ ``.json``), so its probe id
and sequence come from the path. A user's files and folders are studied as they are: a file named on
its own is always taken; in a folder (searched recursively) a file is a capture by its magic, or by a
capture-like name so that a damaged one is quarantined with a reason instead of passed over. Other
files are counted as ignored, never silently dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from survey6.aggregator.enrich import read_sidecar
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.pcapng import SHB_MAGIC
from survey6.common.errors import MetadataError

log = logging.getLogger(__name__)

CAPTURE_MAGICS = frozenset(
    {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", SHB_MAGIC}
)
MAGIC_BYTES = 4
# Named like a capture: taken even without a valid magic, so that a damaged capture is quarantined
# with a reason rather than passed over as "not a capture".
CAPTURE_SUFFIXES = frozenset({".pcap", ".pcapng", ".cap", ".dmp"})
# Never captures in a user's folder: sidecars, files being written, hidden files.
_SKIPPED_SUFFIXES = frozenset({".json", ".part", ".tmp"})
# As the server names probes (a path component, so checked before it names a partition).
PROBE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_LANDED_NAME = re.compile(r"^([0-9]{12})\.pcap$")

Source = Literal["landing", "user"]


@dataclass(frozen=True)
class Capture:
    """A capture file to ingest and what its place says about it."""

    path: Path
    source: Source
    probe_id: str | None = None  # landing: from the directory; user: --probe-id (a sidecar's wins)
    sequence: int = 0  # landing: from the file name; user: the sidecar's (0 = unknown)
    expected_sha256: str | None = None  # what the server computed (a queue job), if known


@dataclass(frozen=True)
class Discovery:
    captures: tuple[Capture, ...]
    ignored: tuple[Path, ...] = ()  # files in a user's folders that are not captures


def discover(
    *, landing: Path | None = None, paths: Sequence[Path] = (), probe_id: str | None = None
) -> Discovery:
    """Lists the landing zone's captures and the captures in ``paths`` (files or folders).

    Args:
        landing: a landing zone, ``<probe_id>/<yyyy>/<mm>/<dd>/<sequence:012d>.pcap`` + ``.json``.
        paths: a user's files (each taken as a capture) and folders (searched recursively).
        probe_id: the probe id of user files whose sidecar names none (or that have no sidecar).

    Raises:
        AggregatorError: the landing zone or a path does not exist, or the probe id is not valid.
    """
    if probe_id is not None and not PROBE_ID.match(probe_id):
        raise AggregatorError(f"probe id {probe_id!r} is not valid: letters, digits, '-' and '_', up to 32")
    captures: list[Capture] = []
    ignored: list[Path] = []
    if landing is not None:
        captures += _landed(landing)
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise AggregatorError(f"{missing[0]}: no such file or directory")
    # Files named on their own first: a named file is a capture even where a folder walk would
    # have passed it over.
    named = [(path, True) for path in paths if not path.is_dir()]
    walked = ((file, False) for path in paths if path.is_dir() for file in _walk(path))
    seen: set[Path] = set()
    for file, is_named in itertools.chain(named, walked):
        real = file.resolve()
        if real in seen:
            continue
        seen.add(real)
        if is_named or _is_capture(file):
            captures.append(Capture(file, "user", probe_id))
        elif file.suffix not in _SKIPPED_SUFFIXES and not file.name.startswith("."):
            ignored.append(file)
    return Discovery(tuple(captures), tuple(ignored))


def _landed(landing: Path) -> list[Capture]:
    if not landing.is_dir():
        raise AggregatorError(f"landing zone {landing} is not a directory")
    found = []
    for path in sorted(landing.glob("*/[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*.pcap")):
        name = _LANDED_NAME.match(path.name)
        probe_id = path.relative_to(landing).parts[0]
        if name is None or not PROBE_ID.match(probe_id) or not path.is_file():
            log.warning("%s is not named like a landed capture; left alone", path)
            continue
        found.append(Capture(path, "landing", probe_id, int(name.group(1))))
    return found


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file():
                yield path


def _is_capture(path: Path) -> bool:
    if path.name.startswith(".") or path.suffix in _SKIPPED_SUFFIXES:
        return False
    if path.suffix.lower() in CAPTURE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(MAGIC_BYTES) in CAPTURE_MAGICS
    except OSError:
        return False


def missing_probe_ids(captures: Sequence[Capture]) -> list[Path]:
    """User captures that would have no probe id: no --probe-id and no sidecar naming one."""
    missing = []
    for capture in captures:
        if capture.source != "user" or capture.probe_id:
            continue
        try:
            metadata = read_sidecar(capture.path)
        except MetadataError:
            continue  # quarantined for its sidecar when ingested; no probe id is needed for that
        if metadata is None or not metadata.probe_id:
            missing.append(capture.path)
    return missing
