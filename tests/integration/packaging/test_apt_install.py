"""A fresh Debian host installs survey6-probe from the server's signed apt repository.

A real ``survey6-server run`` serves the repository from its web UI (a port the kernel picks on
loopback; a chroot shares the host's network). The built survey6-probe .deb is published with
``survey6-server apt publish`` while the server runs; then, in a fresh Debian root, the lines the
tokens page shows are run exactly as shown: fetch the key (checked against its sha256), add the
source with ``signed-by=``, ``apt-get update && apt-get install survey6-probe``. Nothing marks the
source trusted, so apt verifies InRelease with the server's key; a tampered or unsigned index
makes ``apt-get update`` fail.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import http.cookiejar
import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.debian_root import run_in_root
from support.fleet_processes import ServerProcess

# The session's package build and debootstrap may run inside this test's set-up.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

VIEWER = ("installer", "installer-password-1")
INSTALL_LINES = re.compile(r'<pre id="apt-install">(.*?)</pre>', re.S)
CSRF_FIELD = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]+)">')
SOURCE_FILE = "/etc/apt/sources.list.d/survey6.list"
HTTP_TIMEOUT_S = 30


class RepositoryServer(ServerProcess):
    """The server with its web UI on a free loopback port (read back from its log) and a viewer."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.env["SURVEY6_HTTP_LISTEN"] = "127.0.0.1:0"
        self.url = ""
        secret = root / "viewer.password"
        secret.write_text(VIEWER[1] + "\n")
        added = self.cli("user", "add", VIEWER[0], "--role", "viewer", "--password-file", str(secret))
        assert added.returncode == 0, added.stderr

    def start(self) -> None:
        super().start()
        lines = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]
        listening = [line for line in lines if line.get("msg") == "server listening"]
        self.url = f"http://127.0.0.1:{listening[-1]['http_port']}"

    def tokens_page(self) -> str:
        """The tokens page as the logged-in viewer sees it."""
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(f"{self.url}/login", timeout=HTTP_TIMEOUT_S) as response:
            csrf = CSRF_FIELD.search(response.read().decode())
        assert csrf, "the login page carries no CSRF token"
        form = {"username": VIEWER[0], "password": VIEWER[1], "csrf_token": csrf.group(1), "next": "/tokens"}
        with opener.open(
            f"{self.url}/login", data=urllib.parse.urlencode(form).encode(), timeout=HTTP_TIMEOUT_S
        ) as response:
            assert response.url.endswith("/tokens"), response.url
            return str(response.read().decode())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepositoryServer]:
    process = RepositoryServer(tmp_path / "srv")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def deb_field(deb: Path, field: str) -> str:
    result = subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def update_only_ours(root: Path) -> subprocess.CompletedProcess[str]:
    """``apt-get update`` of the survey6 source alone, after forgetting what apt had from it."""
    for cached in (root / "var/lib/apt/lists").glob("127.0.0.1*"):
        cached.unlink()
    return run_in_root(
        root,
        "apt-get",
        "update",
        "-o", f"Dir::Etc::SourceList={SOURCE_FILE}",
        "-o", "Dir::Etc::SourceParts=-",
        "-o", "APT::Get::List-Cleanup=0",
    )  # fmt: skip


def index_files(public: Path) -> dict[Path, bytes]:
    """Every file of the binary indexes (Packages, Packages.gz and their by-hash copies)."""
    return {p: p.read_bytes() for p in (public / "dists/stable/main").rglob("*") if p.is_file()}


def test_a_fresh_host_installs_the_probe_from_the_servers_repository(
    built_debs: dict[str, Path], debian_root: Path, server: RepositoryServer
) -> None:
    deb = built_debs["survey6-probe"]
    published = server.cli("apt", "publish", str(deb))
    assert published.returncode == 0, published.stderr
    version = deb_field(deb, "Version")

    shown = INSTALL_LINES.search(server.tokens_page())
    assert shown, "the tokens page shows no install lines"
    lines = html.unescape(shown.group(1)).splitlines()
    assert len(lines) == 3 and lines[-1] == "apt-get update && apt-get install survey6-probe"
    for line in lines:
        # As an operator would paste them; apt-get install asks before it installs dependencies.
        result = run_in_root(debian_root, "sh", "-ec", line, input="Y\n")
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
    source = (debian_root / SOURCE_FILE.lstrip("/")).read_text()
    assert f"{server.url}/apt stable main" in source and "trusted" not in source

    installed = run_in_root(debian_root, "dpkg-query", "--show", "--showformat=${Version}", "survey6-probe")
    assert installed.stdout == version
    policy = run_in_root(debian_root, "apt-cache", "policy", "survey6-probe")
    assert f"{server.url}/apt stable/main" in policy.stdout, policy.stdout
    helped = run_in_root(debian_root, "survey6-probe", "--help")
    assert helped.returncode == 0 and "join" in helped.stdout, helped.stderr

    # The installed root now trusts the key and knows the source; what if the server is tampered with?
    public = server.data_dir / "apt" / "public"
    assert update_only_ours(debian_root).returncode == 0  # as published: verified and accepted
    originals = index_files(public)
    packages = (public / f"dists/stable/main/binary-{deb_field(deb, 'Architecture')}/Packages").read_bytes()
    forged = packages.replace(f"Version: {version}".encode(), b"Version: 99.0")
    assert forged != packages
    for path, data in originals.items():
        path.write_bytes(gzip.compress(forged) if data[:2] == b"\x1f\x8b" else forged)
    refused = update_only_ours(debian_root)
    # apt checks the size first ("File has unexpected size"), then the hash ("Hash Sum mismatch").
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and ("Hash Sum mismatch" in said or "unexpected size" in said), said

    # An attacker who also rewrites the hashes in InRelease breaks its signature.
    in_release = public / "dists/stable/InRelease"
    signed = in_release.read_text()
    for path, data in originals.items():
        if path.name in ("Packages", "Packages.gz"):
            old, new = hashlib.sha256(data).hexdigest(), hashlib.sha256(path.read_bytes()).hexdigest()
            signed = signed.replace(old, new).replace(f"{len(data):>16} ", f"{path.stat().st_size:>16} ")
    in_release.write_text(signed)
    refused = update_only_ours(debian_root)
    assert refused.returncode != 0 and "BADSIG" in refused.stdout + refused.stderr, refused

    # Without any signature, apt refuses the repository outright.
    in_release.unlink()
    (public / "dists/stable/Release.gpg").unlink()
    refused = update_only_ours(debian_root)
    assert refused.returncode != 0 and "is not signed" in refused.stdout + refused.stderr, refused

    republished = server.cli("apt", "publish", str(deb))  # re-signs; the forged indexes are rebuilt
    assert republished.returncode == 0, republished.stderr
    assert update_only_ours(debian_root).returncode == 0
