"""A minimal Debian root of the host's own release, for installing the project's .deb packages into.

The root is made with ``debootstrap --variant=minbase`` for the host's suite (``VERSION_CODENAME`` in
/etc/os-release), from the mirror the host's apt already uses (read at run time from
/etc/apt/sources.list and /etc/apt/sources.list.d/, so no mirror is written in the repository). It
gets the host's apt sources of that release (main suite, updates, security), the host's resolv.conf,
apt package lists, and a policy-rc.d that forbids starting services: a chroot must never start a
daemon on the host. Nothing is mounted; commands run with ``chroot ROOT ...`` as root.

Making a root takes a minute or two and a few hundred MB, so a test session makes one and copies it
(``cp -a``, seconds) for each test that needs a fresh one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OS_RELEASE = Path("/etc/os-release")
APT_SOURCES_LIST = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
DEBOOTSTRAP_TIMEOUT_S = 1200
APT_TIMEOUT_S = 900
RUN_TIMEOUT_S = 600
# What a command inside the root sees: no variable of the test session leaks in.
ROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}
# invoke-rc.d and deb-systemd-invoke ask this script before starting a service; 101 means "no".
POLICY_RC_D = "#!/bin/sh\n# Test root: never start a service from a package's maintainer script.\nexit 101\n"


class DebianRootError(RuntimeError):
    """The root could not be made: a missing tool, no usable apt source, or a failed command."""


@dataclass(frozen=True)
class AptSource:
    """One deb line of the host's apt configuration."""

    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str = ""

    def one_line(self) -> str:
        options = f"[signed-by={self.signed_by}] " if self.signed_by else ""
        return f"deb {options}{self.uri} {self.suite} {' '.join(self.components)}"


def host_codename(os_release: Path = OS_RELEASE) -> str:
    """The host's release name (``bookworm``), from VERSION_CODENAME."""
    for line in os_release.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip().strip('"'):
            return value.strip().strip('"')
    raise DebianRootError(f"{os_release} has no VERSION_CODENAME: not a Debian release this can bootstrap")


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
            continue
        if line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _from_deb822(text: str) -> list[AptSource]:
    sources: list[AptSource] = []
    for stanza in _deb822_stanzas(text):
        if "deb" not in stanza.get("types", "").split() or stanza.get("enabled", "yes").lower() == "no":
            continue
        signed_by = stanza.get("signed-by", "")
        if "\n" in signed_by or "BEGIN PGP" in signed_by:
            signed_by = ""  # an inline key cannot go into a one-line source; trust the root's keyring
        components = tuple(stanza.get("components", "").split())
        for uri in stanza.get("uris", "").split():
            for suite in stanza.get("suites", "").split():
                sources.append(AptSource(uri, suite, components, signed_by))
    return sources


def _from_one_line(text: str) -> list[AptSource]:
    sources: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        options = ""
        match = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
        if match:
            options, rest = match.group(1), match.group(2)
        else:
            rest = line[len("deb ") :]
        fields = rest.split()
        if len(fields) < 3:
            continue
        signed = re.search(r"signed-by=(\S+)", options)
        sources.append(AptSource(fields[0], fields[1], tuple(fields[2:]), signed.group(1) if signed else ""))
    return sources


def host_apt_sources(codename: str, etc_apt: Path | None = None) -> list[AptSource]:
    """The host's deb sources of this release: the suite itself and its -updates/-security suites."""
    sources_list = APT_SOURCES_LIST if etc_apt is None else etc_apt / "sources.list"
    sources_dir = APT_SOURCES_DIR if etc_apt is None else etc_apt / "sources.list.d"
    found: list[AptSource] = []
    if sources_list.is_file():
        found += _from_one_line(sources_list.read_text(encoding="utf-8"))
    if sources_dir.is_dir():
        for path in sorted(sources_dir.iterdir()):
            if path.suffix == ".list":
                found += _from_one_line(path.read_text(encoding="utf-8"))
            elif path.suffix == ".sources":
                found += _from_deb822(path.read_text(encoding="utf-8"))
    return [s for s in found if s.suite == codename or s.suite.startswith(codename + "-")]


def main_mirror(codename: str, sources: list[AptSource]) -> AptSource:
    """The source of the release's own suite, the one debootstrap fetches from."""
    for source in sources:
        if source.suite == codename and "main" in source.components:
            return source
    raise DebianRootError(
        f"the host's apt sources have no '{codename} main' entry to bootstrap from "
        f"(looked in {APT_SOURCES_LIST} and {APT_SOURCES_DIR})"
    )


def _check(argv: list[str], timeout: float, what: str) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DebianRootError(f"{what} timed out after {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise DebianRootError(f"{what} failed (exit {result.returncode}):\n{tail}")


def make_debian_root(target: Path) -> Path:
    """Bootstraps a minimal root of the host's release into `target` (which must not exist yet).

    Raises:
        DebianRootError: not root, debootstrap missing, no apt source of the host's release, or a
            failed debootstrap / apt-get update.
    """
    if os.geteuid() != 0:
        raise DebianRootError("making a Debian root needs root (debootstrap and chroot)")
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).is_file():
        raise DebianRootError("debootstrap is not installed: run ./scripts/setup")
    codename = host_codename()
    sources = host_apt_sources(codename)
    mirror = main_mirror(codename, sources)
    keyring = ["--keyring", mirror.signed_by] if mirror.signed_by and Path(mirror.signed_by).is_file() else []
    _check(
        [debootstrap, "--variant=minbase", *keyring, codename, str(target), mirror.uri],
        DEBOOTSTRAP_TIMEOUT_S,
        f"debootstrap {codename} from {mirror.uri}",
    )
    (target / "etc/apt/sources.list").write_text(
        "".join(source.one_line() + "\n" for source in sources), encoding="utf-8"
    )
    shutil.copyfile("/etc/resolv.conf", target / "etc/resolv.conf")
    policy = target / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D, encoding="utf-8")
    policy.chmod(0o755)
    result = run_in_root(target, "apt-get", "update", timeout=APT_TIMEOUT_S)
    if result.returncode != 0:
        raise DebianRootError(f"apt-get update in the root failed:\n{result.stdout}{result.stderr}")
    return target


def copy_root(source: Path, target: Path) -> Path:
    """A fresh copy of a root (``cp -a`` keeps owners, modes, links and device nodes)."""
    _check(["cp", "-a", str(source), str(target)], RUN_TIMEOUT_S, f"copying {source}")
    # The host's resolver may have changed since the root was made.
    shutil.copyfile("/etc/resolv.conf", target / "etc/resolv.conf")
    return target


def remove_root(root: Path) -> None:
    """Deletes a root copy; refuses anything that is not a directory holding a Debian root."""
    if not (root / "var/lib/dpkg/status").is_file() or root.resolve() == Path("/"):
        raise DebianRootError(f"{root} does not look like a Debian root; not removing it")
    shutil.rmtree(root)


def run_in_root(root: Path, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Runs `argv` inside `root` with ``chroot``, in a clean environment.

    Defaults: output captured as text, no exception on a non-zero exit, a 10-minute timeout; any
    keyword of subprocess.run overrides them (``env=`` replaces the clean environment, ``input=``
    feeds stdin).
    """
    options: dict[str, Any] = {
        "capture_output": True,
        "text": True,
        "check": False,
        "timeout": RUN_TIMEOUT_S,
        "env": dict(ROOT_ENV),
    }
    options.update(kw)
    result: subprocess.CompletedProcess[str] = subprocess.run(["chroot", str(root), *argv], **options)
    return result
