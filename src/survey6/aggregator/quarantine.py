"""Quarantine: capture files the aggregator refused, kept with the reason for a human to look at.

``<state_dir>/quarantine/`` holds, per refused file, ``<sha256>.capture`` (its bytes), its metadata
sidecar as ``<sha256>.sidecar.json`` when it had one, and ``<sha256>.reason.json``::

    {"sha256_hex": ..., "source_path": ..., "probe_id": ..., "sequence": ..., "reason": "unreadable",
     "detail": "....pcap: not a pcap or pcapng file (magic 47415242)", "quarantined_at": "...Z"}

Names come only from the SHA-256, never from the file's own name, so a hostile name cannot become a
path here. The source is never removed: a user's own capture is theirs, and a landed file belongs to
the server (its catalog counts a failed file as durable in the landing zone). The copy is a hard link
when source and quarantine share a filesystem, so keeping it costs no space.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from survey6.aggregator.errors import AggregatorError
from survey6.common.files import fsync_directory, write_atomically

log = logging.getLogger(__name__)

QUARANTINE_DIRNAME = "quarantine"
CAPTURE_SUFFIX = ".capture"
SIDECAR_SUFFIX = ".sidecar.json"
REASON_SUFFIX = ".reason.json"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Errors of os.link that mean "links are not possible here", so a copy is made instead.
_NO_LINK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


@dataclass(frozen=True)
class QuarantinedFile:
    sha256_hex: str
    reason: str  # a short code: unreadable, damaged, snaplen-cut, sha256-mismatch, bad-metadata, ...
    detail: str  # one line for a human
    capture_path: Path | None  # None when the source could not be copied (it vanished)
    reason_path: Path


class Quarantine:
    """The quarantine directory of one state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> Quarantine:
        return cls(state_dir / QUARANTINE_DIRNAME)

    def put(
        self,
        source: Path,
        *,
        sha256_hex: str,
        reason: str,
        detail: str,
        probe_id: str = "",
        sequence: int = 0,
        sidecar: Path | None = None,
        now: float | None = None,
    ) -> QuarantinedFile:
        """Keeps a copy of ``source`` (and its sidecar) under its SHA-256 with a reason file.

        Putting the same file again replaces the reason and keeps the copy.

        Raises:
            AggregatorError: the quarantine directory cannot be written.
        """
        if not _SHA256_HEX.match(sha256_hex):
            raise AggregatorError(f"quarantine: {sha256_hex!r} is not a SHA-256 in hex")
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            capture = self._keep(source, self.directory / f"{sha256_hex}{CAPTURE_SUFFIX}")
            if sidecar is not None and sidecar.is_file():
                self._keep(sidecar, self.directory / f"{sha256_hex}{SIDECAR_SUFFIX}")
            reason_path = self.directory / f"{sha256_hex}{REASON_SUFFIX}"
            at = time.time() if now is None else now
            record = {
                "sha256_hex": sha256_hex,
                "source_path": str(source),
                "probe_id": probe_id,
                "sequence": sequence,
                "reason": reason,
                "detail": detail,
                "quarantined_at": dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z"),
            }
            write_atomically(reason_path, (json.dumps(record, indent=2) + "\n").encode(), mode=0o640)
        except OSError as exc:
            raise AggregatorError(f"cannot write the quarantine {self.directory}: {exc}") from exc
        log.warning(
            "quarantined (%s): %s", reason, detail, extra={"sha256_hex": sha256_hex, "source": str(source)}
        )
        return QuarantinedFile(sha256_hex, reason, detail, capture, reason_path)

    def _keep(self, source: Path, target: Path) -> Path | None:
        if target.exists():
            return target
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.unlink(missing_ok=True)
        try:
            try:
                # A symlink is followed: what is kept is the content that was refused.
                os.link(source, temporary)
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                shutil.copyfile(source, temporary)
        except FileNotFoundError:
            log.warning("%s vanished before it could be quarantined", source)
            return None
        os.replace(temporary, target)
        fsync_directory(target.parent)
        return target

    def entries(self) -> list[dict[str, object]]:
        """The reason records, oldest first (unreadable ones are skipped with a warning)."""
        records = []
        for path in sorted(self.directory.glob(f"*{REASON_SUFFIX}")):
            try:
                records.append((path.stat().st_mtime, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError) as exc:
                log.warning("unreadable quarantine record %s: %s", path, exc)
        return [record for _, record in sorted(records, key=lambda item: item[0])]

    def expire(self, retention_s: float, *, now: float | None = None) -> int:
        """Removes quarantined files whose reason was written more than ``retention_s`` ago (0 = never).

        The ledger keeps their entries, so an expired file is still not ingested again.
        Returns how many files were removed.
        """
        if retention_s <= 0 or not self.directory.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - retention_s
        removed = 0
        for reason_path in self.directory.glob(f"*{REASON_SUFFIX}"):
            sha = reason_path.name.removesuffix(REASON_SUFFIX)
            try:
                # The reason file's own time: the capture may be a hard link keeping its source's mtime.
                if reason_path.stat().st_mtime >= cutoff:
                    continue
                for suffix in (CAPTURE_SUFFIX, SIDECAR_SUFFIX, REASON_SUFFIX):
                    (self.directory / f"{sha}{suffix}").unlink(missing_ok=True)
            except OSError as exc:
                raise AggregatorError(f"cannot expire quarantined {sha} in {self.directory}: {exc}") from exc
            removed += 1
        if removed:
            fsync_directory(self.directory)
            log.info("removed %d quarantined files past their retention", removed)
        return removed
