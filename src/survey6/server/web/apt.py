"""The apt repository at ``/apt/``: read-only and without login, and the install lines for new probes.

apt clients are anonymous, and what is served is public anyway: packages, signed indexes and the
public key. Only the repository's public tree is reachable (``dists/``, ``pool/`` and the two key
files); the signing key lives beside that tree, not in it. No directory is listed, no hidden
(temporary) file is served, and ``send_from_directory`` refuses whatever would leave the tree.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass

from flask import Blueprint, abort, request, send_from_directory
from flask.typing import ResponseReturnValue

from survey6.server.aptrepo import (
    ARMORED_KEY_NAME,
    COMPONENT,
    KEYRING_NAME,
    PROBE_PACKAGE,
    SUITE,
    AptRepository,
)
from survey6.server.errors import ServerError
from survey6.server.web.context import web_context
from survey6.server.web.settings import APT_URL_PATTERN

log = logging.getLogger(__name__)

bp = Blueprint("apt", __name__)

PREFIX = "/apt"
TOP_DIRECTORIES = frozenset({"dists", "pool"})
KEY_FILES = frozenset({KEYRING_NAME, ARMORED_KEY_NAME})
# Where the install lines put the key, and the apt source file they write.
HOST_KEYRING = f"/usr/share/keyrings/{KEYRING_NAME}"
HOST_SOURCE = "/etc/apt/sources.list.d/survey6.list"
APT_HELPER = "/usr/lib/apt/apt-helper"  # in every apt: fetches over HTTP and checks a hash, no curl needed
IMMUTABLE = "public, max-age=31536000, immutable"  # pool files and by-hash indexes never change
REVALIDATE = "no-cache"  # indexes and the key: a client asks each time, and gets 304 if unchanged
_URL = re.compile(APT_URL_PATTERN)


@dataclass(frozen=True)
class ProbeInstall:
    """What the tokens page shows about installing the probe package on a new host."""

    published: str = ""  # "survey6-probe 0.1.0 (amd64)"; empty: not published yet
    fingerprint: str = ""
    commands: tuple[str, ...] = ()
    problem: str = ""  # why no commands can be shown


def _content_type(parts: list[str]) -> str:
    name = parts[-1]
    if "by-hash" in parts:
        return "application/octet-stream"  # Packages or Packages.gz, by their hash
    if name.endswith(".deb"):
        return "application/vnd.debian.binary-package"
    if name.endswith(".gz"):
        return "application/gzip"
    if name == "Release.gpg":
        return "application/pgp-signature"
    if name in KEY_FILES:
        return "application/pgp-keys"
    if name in ("InRelease", "Release", "Packages"):
        return "text/plain"  # Flask adds "; charset=utf-8"
    return "application/octet-stream"


@bp.get(f"{PREFIX}/<path:filename>")
def repository_file(filename: str) -> ResponseReturnValue:
    parts = filename.split("/")
    if any(not part or part.startswith(".") for part in parts):
        abort(404)  # "..", hidden temporaries, empty segments
    if not (parts[0] in TOP_DIRECTORIES and len(parts) > 1) and filename not in KEY_FILES:
        abort(404)
    repository = AptRepository(web_context().services.data_dir)
    # 404 for a directory or a missing file, and for a path safe_join would let out of the tree.
    response = send_from_directory(
        repository.public_dir, filename, mimetype=_content_type(parts), conditional=True
    )
    immutable = parts[0] == "pool" or "by-hash" in parts
    response.headers["Cache-Control"] = IMMUTABLE if immutable else REVALIDATE
    return response


def repository_url() -> str:
    """The repository's base URL as probe hosts should use it (no trailing slash)."""
    configured = web_context().web.apt_url
    return (configured or f"{request.url_root.rstrip('/')}{PREFIX}").rstrip("/")


def probe_install() -> ProbeInstall:
    """The commands a new probe host runs (as root) to trust the key, add the source and install.

    The key is fetched with apt-helper and checked against its sha256, so a host that fetches it
    over plain HTTP still gets the key this page (behind the operator's login) names.
    """
    repository = AptRepository(web_context().services.data_dir)
    try:
        latest = repository.latest(PROBE_PACKAGE)
        fingerprint = repository.fingerprint()
        key_sha256 = repository.keyring_sha256()
    except (OSError, ServerError) as exc:
        # The tokens page must work even so; the log has the details.
        log.warning("cannot read the apt repository in %s: %s", repository.root, exc)
        return ProbeInstall(problem=f"The apt repository cannot be read: {exc}")
    if latest is None or fingerprint is None or key_sha256 is None:
        return ProbeInstall()
    published = f"{latest.package} {latest.version} ({latest.architecture})"
    base = repository_url()
    if not _URL.fullmatch(base):
        problem = (
            f"{published} is published, but this page's address {base!r} cannot go into a command "
            "line; set web.apt_url."
        )
        return ProbeInstall(published, fingerprint, problem=problem)
    commands = (
        f"{APT_HELPER} download-file {shlex.quote(f'{base}/{KEYRING_NAME}')} {HOST_KEYRING} "
        f"SHA256:{key_sha256}",
        f"echo 'deb [signed-by={HOST_KEYRING}] {base} {SUITE} {COMPONENT}' > {HOST_SOURCE}",
        f"apt-get update && apt-get install {PROBE_PACKAGE}",
    )
    return ProbeInstall(published, fingerprint, commands)
