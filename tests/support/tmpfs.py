"""A small tmpfs the test mounts and unmounts itself: a filesystem that really fills up (ENOSPC)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def require_root(what: str) -> None:
    """Fails (not skips) without root: CI runs as root, so a missing privilege is a set-up error."""
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root; CI runs as root")


@contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """Mounts a tmpfs of `size` (mount's syntax, e.g. "64k") on a new directory; unmounts it after."""
    require_root("mounting a tmpfs")
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        # Lazily: a failed test can leave a file open (a spool's lock) until it is collected.
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
