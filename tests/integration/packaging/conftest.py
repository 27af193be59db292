"""Fixtures for the Debian packages: built once a session, installed into fresh Debian roots.

Public (used by other packaging tests too):
- ``built_debs``: ``{"survey6-probe": Path, "survey6-server": Path}``, the .deb files that
  ``./scripts/build-deb`` made once for the session.
- ``debian_root``: the Path of a fresh minimal Debian root of the host's release, a copy of one
  bootstrapped once a session; removed after the test.
- ``run_in_root(root, *argv, **kw)`` (from ``support.debian_root``): a command inside a root.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.debian_root import DebianRootError, copy_root, make_debian_root, remove_root

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_DEB = REPO_ROOT / "scripts" / "build-deb"
PACKAGES = ("survey6-probe", "survey6-server")
BUILD_TIMEOUT_S = 1800


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root; CI runs as root")


@pytest.fixture(scope="session")
def built_debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs ./scripts/build-deb once for the session; the .deb of each package, by package name."""
    output = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        [str(BUILD_DEB), "--output", str(output)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        pytest.fail(f"./scripts/build-deb failed (exit {result.returncode}):\n{tail}")
    debs: dict[str, Path] = {}
    for package in PACKAGES:
        found = sorted(output.glob(f"{package}_*.deb"))
        if len(found) != 1:
            pytest.fail(f"expected one {package}_*.deb in {output}, found {[p.name for p in found]}")
        debs[package] = found[0]
    return debs


@pytest.fixture(scope="session")
def _debian_root_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One minimal root of the host's release, bootstrapped once a session; never modified.

    Deleted when the session ends: pytest keeps the last few session directories, and each root
    is a few hundred MB.
    """
    _need_root("bootstrapping a Debian root")
    target = tmp_path_factory.mktemp("debian-root-cache") / "root"
    try:
        root = make_debian_root(target)
    except DebianRootError as exc:
        pytest.fail(str(exc))
    try:
        yield root
    finally:
        remove_root(root)


@pytest.fixture
def debian_root(_debian_root_template: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the session's Debian root for this test alone, deleted afterwards."""
    try:
        root = copy_root(_debian_root_template, tmp_path / "root")
    except DebianRootError as exc:
        pytest.fail(str(exc))
    try:
        yield root
    finally:
        remove_root(root)
