"""The server's signed apt repository of the project's packages, so a probe host installs with apt.

Layout under ``<data_dir>/apt/``::

    gnupg/                       the signing key's GNUPGHOME (0700); never served
    signing-key.fingerprint      the key's fingerprint, read by the web UI (which never runs gpg)
    public/                      what the web UI serves at /apt/, and nothing else
        survey6-archive-keyring.gpg   the public key, binary (apt's signed-by=)
        survey6-archive-keyring.asc   the same, ASCII-armoured
        pool/main/s/<package>/<package>_<version>_<arch>.deb
        dists/stable/InRelease, Release, Release.gpg
        dists/stable/main/binary-<arch>/Packages, Packages.gz, by-hash/SHA256/<sha256>

Only packages named ``survey6*`` are accepted: a probe host trusts this key for whatever the
repository offers, so it must never offer, say, a newer ``openssh-server``. A version, once
published, is immutable (apt and its caches assume so): the same file again is a no-op, other
bytes under the same name and version are refused.

Every file is written to a temporary name and renamed, the pool file before the indexes and
InRelease last. Release says ``Acquire-By-Hash: yes`` and the indexes also live under their
sha256 (the previous generation's too), so a client that read the old InRelease still finds
the Packages it names while a publish is under way. Publishing runs in the CLI (as the operator),
under a lock; the server only reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import fcntl
import gzip
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from survey6.server.debpkg import (
    DebControl,
    compare_versions,
    format_paragraph,
    parse_paragraph,
    read_control,
)
from survey6.server.errors import AptRepositoryError, NotInitialisedError

log = logging.getLogger(__name__)

SUITE = "stable"
COMPONENT = "main"
KEYRING_NAME = "survey6-archive-keyring.gpg"
ARMORED_KEY_NAME = "survey6-archive-keyring.asc"
PACKAGE_PREFIX = "survey6"
PROBE_PACKAGE = "survey6-probe"
GPG_TIMEOUT_S = 120.0
SOCKET_PATH_MAX_BYTES = 107  # sun_path is 108 bytes with its NUL
LONGEST_AGENT_SOCKET = "/S.gpg-agent.browser"
COPY_CHUNK_BYTES = 1 << 20  # 1 MiB
# Key generation: ed25519 signs fast and every apt since Debian 10 verifies it. No passphrase:
# publishing is unattended; the key's protection is the directory's 0700.
KEY_PARAMETERS = """%no-protection
Key-Type: eddsa
Key-Curve: ed25519
Key-Usage: sign
Name-Real: survey6 archive signing key ({host})
Expire-Date: 0
%commit
"""


@dataclass(frozen=True)
class IndexEntry:
    """A package as the published Packages index lists it."""

    package: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Published:
    """What :meth:`AptRepository.publish` did."""

    control: DebControl
    filename: str  # relative to the public tree
    size: int
    sha256: str
    added: bool  # False: this very file was published before
    total: int  # package files in the repository afterwards


class AptRepository:
    """The repository under ``<data_dir>/apt``; reading needs no gpg, publishing does."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "apt"
        self.gnupg_dir = self.root / "gnupg"
        self.public_dir = self.root / "public"
        self.keyring_path = self.public_dir / KEYRING_NAME
        self.armored_key_path = self.public_dir / ARMORED_KEY_NAME
        self.dists_dir = self.public_dir / "dists" / SUITE
        self._fingerprint_path = self.root / "signing-key.fingerprint"

    # -- reading (the web UI) ----------------------------------------------------------------

    def fingerprint(self) -> str | None:
        """The signing key's fingerprint; None before the key exists."""
        try:
            return self._fingerprint_path.read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None

    def keyring_sha256(self) -> str | None:
        """sha256 hex of the binary public keyring (what a probe host checks it downloaded)."""
        try:
            return hashlib.sha256(self.keyring_path.read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def entries(self) -> list[IndexEntry]:
        """Every package the indexes list, each file once, by name then version.

        Raises:
            NotInitialisedError: the data directory does not exist.
        """
        self._check_data_dir()
        found: dict[str, IndexEntry] = {}
        for index in sorted(self.dists_dir.glob(f"{COMPONENT}/binary-*/Packages")):
            for entry in _read_index(index):
                found.setdefault(entry.filename, entry)
        by_name: dict[tuple[str, str], list[IndexEntry]] = {}
        for entry in found.values():
            by_name.setdefault((entry.package, entry.architecture), []).append(entry)
        ordered: list[IndexEntry] = []
        for key in sorted(by_name):
            versions = by_name[key]
            for i in range(1, len(versions)):  # insertion sort: a handful of versions per package
                j = i
                while j > 0 and compare_versions(versions[j - 1].version, versions[j].version) > 0:
                    versions[j - 1], versions[j] = versions[j], versions[j - 1]
                    j -= 1
            ordered += versions
        return ordered

    def latest(self, package: str) -> IndexEntry | None:
        """The highest published version of `package` (any architecture)."""
        best: IndexEntry | None = None
        for entry in self.entries():
            if entry.package == package and (
                best is None or compare_versions(entry.version, best.version) > 0
            ):
                best = entry
        return best

    # -- writing (the CLI) -------------------------------------------------------------------

    def ensure_key(self) -> str:
        """The signing key's fingerprint, generating the key and exporting its public half if needed.

        Raises:
            NotInitialisedError: the data directory does not exist.
            AptRepositoryError: gpg is missing or fails, or gnupg/ exists without a secret key.
        """
        with self._locked():
            return self._ensure_key()

    def publish(self, deb: Path) -> Published:
        """Adds a package file to the pool and regenerates and signs the indexes.

        Raises:
            NotInitialisedError: the data directory does not exist.
            AptRepositoryError: the file cannot be read, is not a well-formed Debian binary
                package, is not a survey6 package, or conflicts with a published file; or signing
                fails.
        """
        with self._locked():
            fingerprint = self._ensure_key()
            pool = self.public_dir / "pool" / COMPONENT
            _make_dirs(pool)
            incoming = pool / f".incoming-{os.getpid()}.deb"
            try:
                size, sha256 = _copy_hashing(deb, incoming)
                control = read_control(incoming, str(deb))
                if not control.package.startswith(PACKAGE_PREFIX):
                    raise AptRepositoryError(
                        f"{deb} is the package {control.package!r}: this repository serves only "
                        f"{PACKAGE_PREFIX}* packages, which probe hosts trust it for"
                    )
                target = pool / control.package[0] / control.package / control.pool_name()
                added = self._place(incoming, target, sha256, control)
            finally:
                incoming.unlink(missing_ok=True)
            total = self._write_indexes(fingerprint)
        relative = target.relative_to(self.public_dir).as_posix()
        log.info("published %s as %s", control.describe(), relative, extra={"added": added})
        return Published(control, relative, size, sha256, added, total)

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One publisher at a time (two operators, or a script and an operator)."""
        self._check_data_dir()
        _make_dirs(self.root)
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _check_data_dir(self) -> None:
        if not self.data_dir.is_dir():
            raise NotInitialisedError(
                f"no server data directory {self.data_dir}: run `survey6-server init` first"
            )

    def _ensure_key(self) -> str:
        fingerprint = self.fingerprint()
        if fingerprint is None:
            if not self.gnupg_dir.exists():
                self._generate_key()
            fingerprint = _secret_fingerprint(self.gnupg_dir)
        if not self.keyring_path.is_file() or not self.armored_key_path.is_file():
            _make_dirs(self.public_dir)
            with _gpg_session(self.gnupg_dir) as home:
                _write_public(self.keyring_path, _gpg(home, "--export", fingerprint))
                armored = _gpg(home, "--armor", "--export", fingerprint)
                _write_public(self.armored_key_path, armored)
        if self.fingerprint() != fingerprint:
            _write_public(self._fingerprint_path, f"{fingerprint}\n".encode("ascii"))
        return fingerprint

    def _generate_key(self) -> None:
        """Made in a staging directory and renamed, so a crash never leaves half a key home."""
        staging = self.root / ".gnupg-new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        parameters = KEY_PARAMETERS.format(host=socket.gethostname())
        with _gpg_session(staging) as home:
            _gpg(home, "--gen-key", input=parameters.encode())
        os.replace(staging, self.gnupg_dir)
        log.info("generated the apt repository's signing key in %s", self.gnupg_dir)

    def _place(self, incoming: Path, target: Path, sha256: str, control: DebControl) -> bool:
        if target.exists():
            if _sha256_of(target) == sha256:
                return False
            raise AptRepositoryError(
                f"{control.describe()} is already published with other content; "
                "a published version never changes: give the package a new version"
            )
        _make_dirs(target.parent)
        os.chmod(incoming, 0o644)
        os.replace(incoming, target)
        _fsync_directory(target.parent)
        return True

    def _pool_packages(self) -> list[tuple[DebControl, str, int, str]]:
        """(control, filename, size, sha256) of each file in the pool, read from the file itself."""
        found = []
        for path in sorted((self.public_dir / "pool").glob("*/*/*/*.deb")):
            control = read_control(path, str(path), whole=False)
            size, sha256 = path.stat().st_size, _sha256_of(path)
            found.append((control, path.relative_to(self.public_dir).as_posix(), size, sha256))
        return found

    def _write_indexes(self, fingerprint: str) -> int:
        packages = self._pool_packages()
        concrete = {c.architecture for c, *_ in packages if c.architecture != "all"}
        architectures = sorted(concrete | {_host_architecture()})
        previous = _release_hashes(self.dists_dir / "Release")
        files: dict[str, bytes] = {}
        for arch in architectures:
            stanzas = [
                format_paragraph([*c.fields, ("Filename", name), ("Size", str(size)), ("SHA256", digest)])
                for c, name, size, digest in packages
                if c.architecture in (arch, "all")
            ]
            text = "\n".join(stanzas).encode("utf-8")
            files[f"{COMPONENT}/binary-{arch}/Packages"] = text
            files[f"{COMPONENT}/binary-{arch}/Packages.gz"] = gzip.compress(text, mtime=0)
        current = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        for name, data in files.items():
            by_hash = self.dists_dir / Path(name).parent / "by-hash" / "SHA256" / current[name]
            _make_dirs(by_hash.parent)
            _write_public(by_hash, data)
        for name, data in files.items():
            _write_public(self.dists_dir / name, data)
        release = _release_text(architectures, files, current).encode("utf-8")
        with _gpg_session(self.gnupg_dir) as home:
            signing = ["--local-user", fingerprint, "--digest-algo", "SHA512"]
            detached = _gpg(home, *signing, "--armor", "--detach-sign", input=release)
            inline = _gpg(home, *signing, "--clearsign", input=release)
        _write_public(self.dists_dir / "Release", release)
        _write_public(self.dists_dir / "Release.gpg", detached)
        _write_public(self.dists_dir / "InRelease", inline)
        self._prune_by_hash(set(current.values()) | previous)
        return len(packages)

    def _prune_by_hash(self, keep: set[str]) -> None:
        """Only this generation's and the previous one's by-hash files stay."""
        for path in self.dists_dir.glob(f"{COMPONENT}/binary-*/by-hash/SHA256/*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _release_text(architectures: list[str], files: dict[str, bytes], digests: dict[str, str]) -> str:
    date = email.utils.format_datetime(dt.datetime.now(dt.UTC).replace(microsecond=0), usegmt=True)
    lines = [
        "Origin: survey6",
        "Label: survey6",
        f"Suite: {SUITE}",
        f"Codename: {SUITE}",
        f"Date: {date}",
        f"Architectures: {' '.join(architectures)}",
        f"Components: {COMPONENT}",
        "Description: survey6 packages, published by the survey6 server",
        "Acquire-By-Hash: yes",
        "SHA256:",
        *(f" {digests[name]} {len(data):>16} {name}" for name, data in sorted(files.items())),
    ]
    return "\n".join(lines) + "\n"


def _release_hashes(release: Path) -> set[str]:
    try:
        text = release.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    return {line.split()[0] for line in text.splitlines() if line.startswith(" ") and line.split()}


def _read_index(index: Path) -> list[IndexEntry]:
    entries = []
    for block in index.read_text(encoding="utf-8").split("\n\n"):
        if not block.strip():
            continue
        fields = DebControl(parse_paragraph(block, str(index)))
        entries.append(
            IndexEntry(
                package=fields.package,
                version=fields.version,
                architecture=fields.architecture,
                filename=fields.get("Filename"),
                size=int(fields.get("Size") or 0),
                sha256=fields.get("SHA256"),
            )
        )
    return entries


def _host_architecture() -> str:
    """The server's dpkg architecture: the one an arch-independent package is indexed under at least."""
    try:
        result = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise AptRepositoryError("cannot ask dpkg for this host's architecture") from exc
    return result.stdout.strip()


def _copy_hashing(source: Path, target: Path) -> tuple[int, str]:
    """Copies `source` and hashes the bytes copied: what is checked is what is published."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as reader, open(target, "wb") as writer:
            while chunk := reader.read(COPY_CHUNK_BYTES):
                digest.update(chunk)
                writer.write(chunk)
                size += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    except IsADirectoryError as exc:
        raise AptRepositoryError(f"{source} is a directory, not a .deb file") from exc
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename) == target:
            raise AptRepositoryError(f"cannot write into the repository: {exc.strerror}") from exc
        raise AptRepositoryError(f"cannot read {source}: {exc.strerror}") from exc
    return size, digest.hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while chunk := reader.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _write_public(path: Path, data: bytes) -> None:
    """Temporary name, fsync, mode 0644 whatever the umask (the web UI may run as another user), rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fchmod(stream.fileno(), 0o644)
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _make_dirs(directory: Path) -> None:
    """Like mkdir -p, each new directory 0755 whatever the umask: the web UI reads the tree."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        os.chmod(path, 0o755)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _gpg(home: Path, *argv: str, input: bytes | None = None) -> bytes:
    command = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--quiet", *argv]
    try:
        result = subprocess.run(command, input=input, capture_output=True, timeout=GPG_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise AptRepositoryError("gpg is not installed (Debian package gnupg)") from exc
    except subprocess.TimeoutExpired as exc:
        raise AptRepositoryError(f"gpg {' '.join(argv[:2])} took longer than {GPG_TIMEOUT_S:.0f} s") from exc
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise AptRepositoryError(f"gpg failed in {home}: {reason}")
    return result.stdout


def _secret_fingerprint(home: Path) -> str:
    with _gpg_session(home) as usable:
        listing = _gpg(usable, "--with-colons", "--list-secret-keys").decode("utf-8", "replace")
    for line in listing.splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    raise AptRepositoryError(
        f"{home} holds no secret key; move it away to have a new key made "
        "(probe hosts will then need the new public key)"
    )


@contextlib.contextmanager
def _gpg_session(home: Path) -> Iterator[Path]:
    """The home directory to hand gpg; the agent gpg starts (and leaves running) is stopped after.

    Without /run/user/<uid>, gpg puts its agent's sockets in the home directory, and a socket path
    holds at most 107 bytes: a longer home is reached through a short symlink in the temporary
    directory (gpg keeps the path it is given, so the sockets are bound by the short name).
    """
    link_dir: Path | None = None
    usable = home
    if len(os.fsencode(home.absolute())) + len(LONGEST_AGENT_SOCKET) > SOCKET_PATH_MAX_BYTES:
        link_dir = Path(tempfile.mkdtemp(prefix="survey6-gpg-"))
        usable = link_dir / "home"
        usable.symlink_to(home.absolute())
    try:
        yield usable
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["gpgconf", "--homedir", str(usable), "--kill", "gpg-agent"],
                capture_output=True,
                timeout=GPG_TIMEOUT_S,
                check=False,
            )
        if link_dir is not None:
            usable.unlink(missing_ok=True)
            link_dir.rmdir()
