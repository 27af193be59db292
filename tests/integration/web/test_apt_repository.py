"""The apt repository in the web UI: served at /apt/ to anonymous clients (only its public tree),
and the install lines on the tokens page. Packages are real (dpkg-deb), signatures real (gpg)."""

from __future__ import annotations

import hashlib
import html
import http.client
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from integration.web.webenv import WebEnv
from support.debs import build_deb
from survey6.server.aptrepo import AptRepository
from survey6.server.web import WebSettings
from survey6.server.web.serving import WebServer

INSTALL_LINES = re.compile(r'<pre id="apt-install">(.*?)</pre>', re.S)


@pytest.fixture
def repository(web_env: WebEnv, tmp_path: Path) -> AptRepository:
    """The web environment's repository with survey6-probe 0.1.0 published."""
    repository = AptRepository(web_env.data_dir)
    repository.publish(build_deb(tmp_path))
    return repository


@pytest.fixture
def served(web_env: WebEnv, repository: AptRepository) -> Iterator[WebServer]:
    """The web UI on a real socket: request paths reach it exactly as sent, not normalised."""
    server = WebServer(web_env.app, "127.0.0.1:0", WebSettings())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def raw_get(server: WebServer, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def fetch(client: FlaskClient, path: str, method: str = "GET", **kwargs: Any) -> TestResponse:
    """The response, read and closed (a file is sent through a wrapper that must be closed)."""
    response = client.open(path, method=method, **kwargs)
    response.get_data()
    response.close()
    return response


def install_lines(client: FlaskClient) -> list[str]:
    page = client.get("/tokens").get_data(as_text=True)
    shown = INSTALL_LINES.search(page)
    assert shown, "the tokens page shows no install lines"
    return html.unescape(shown.group(1)).splitlines()


def test_anonymous_clients_get_the_repository(web_env: WebEnv, repository: AptRepository) -> None:
    client = web_env.client()
    dists = repository.dists_dir
    pool_file = next(repository.public_dir.glob("pool/main/s/survey6-probe/*.deb"))
    expected = {
        "dists/stable/InRelease": ("text/plain; charset=utf-8", "no-cache"),
        "dists/stable/Release": ("text/plain; charset=utf-8", "no-cache"),
        "dists/stable/Release.gpg": ("application/pgp-signature", "no-cache"),
        "dists/stable/main/binary-amd64/Packages": ("text/plain; charset=utf-8", "no-cache"),
        "dists/stable/main/binary-amd64/Packages.gz": ("application/gzip", "no-cache"),
        pool_file.relative_to(repository.public_dir).as_posix(): (
            "application/vnd.debian.binary-package",
            "public, max-age=31536000, immutable",
        ),
        "survey6-archive-keyring.gpg": ("application/pgp-keys", "no-cache"),
        "survey6-archive-keyring.asc": ("application/pgp-keys", "no-cache"),
    }
    for name, (content_type, cache) in expected.items():
        response = fetch(client, f"/apt/{name}")
        assert response.status_code == 200, name
        assert response.content_type == content_type, name
        assert response.headers["Cache-Control"] == cache, name
        assert response.data == (repository.public_dir / name).read_bytes(), name
    digest = hashlib.sha256((dists / "main/binary-amd64/Packages").read_bytes()).hexdigest()
    by_hash = fetch(client, f"/apt/dists/stable/main/binary-amd64/by-hash/SHA256/{digest}")
    assert by_hash.status_code == 200 and hashlib.sha256(by_hash.data).hexdigest() == digest
    # apt revalidates: an unchanged index costs a 304, not the file.
    first = fetch(client, "/apt/dists/stable/InRelease")
    again = fetch(client, "/apt/dists/stable/InRelease", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert fetch(client, "/apt/dists/stable/InRelease", "HEAD").status_code == 200


def test_nothing_else_is_served(web_env: WebEnv, repository: AptRepository, served: WebServer) -> None:
    secret = next(repository.gnupg_dir.glob("private-keys-v1.d/*.key")).name
    (repository.dists_dir / ".Release.1234.tmp").write_text("a half-written index\n")
    refused = [
        "/apt/",
        "/apt/dists",
        "/apt/dists/",
        "/apt/dists/stable/",
        "/apt/pool/main/s/survey6-probe/",
        "/apt/dists/stable/.Release.1234.tmp",
        "/apt/gnupg/pubring.kbx",
        f"/apt/gnupg/private-keys-v1.d/{secret}",
        "/apt/signing-key.fingerprint",
        "/apt/.lock",
        "/apt/public/dists/stable/InRelease",
        "/apt/../apt/gnupg/pubring.kbx",
        "/apt/dists/../../gnupg/pubring.kbx",
        "/apt/%2e%2e/gnupg/pubring.kbx",
        "/apt/dists/%2e%2e/%2e%2e/gnupg/pubring.kbx",
        "/apt/dists/..%2f..%2fgnupg%2fpubring.kbx",
        "/apt/pool//etc/passwd",
        "/apt/pool/%2fetc%2fpasswd",
        "/apt/dists/stable/InRelease%00",
    ]
    for path in refused:
        status, body = raw_get(served, path)
        assert status == 404, (path, status)
        assert b"PRIVATE KEY" not in body and b"half-written" not in body, path
    assert raw_get(served, "/apt/dists/stable/InRelease")[0] == 200  # the same socket serves the real file
    client = web_env.client()
    assert fetch(client, "/apt/dists/stable/InRelease", "POST").status_code in (400, 405)  # CSRF first


def test_the_tokens_page_says_what_to_publish_first(web_env: WebEnv, admin: tuple[FlaskClient, str]) -> None:
    page = admin[0].get("/tokens").get_data(as_text=True)
    assert 'id="apt-not-published"' in page and "survey6-server apt publish" in page
    assert 'id="apt-install"' not in page


def test_the_tokens_page_shows_the_install_lines(
    web_env: WebEnv, repository: AptRepository, admin: tuple[FlaskClient, str]
) -> None:
    client, csrf = admin
    lines = install_lines(client)
    key_sha256 = hashlib.sha256(repository.keyring_path.read_bytes()).hexdigest()
    assert lines == [
        "/usr/lib/apt/apt-helper download-file http://localhost/apt/survey6-archive-keyring.gpg "
        f"/usr/share/keyrings/survey6-archive-keyring.gpg SHA256:{key_sha256}",
        "echo 'deb [signed-by=/usr/share/keyrings/survey6-archive-keyring.gpg] http://localhost/apt "
        "stable main' > /etc/apt/sources.list.d/survey6.list",
        "apt-get update && apt-get install survey6-probe",
    ]
    created = client.post("/tokens", data={"ttl": "1h", "csrf_token": csrf}).get_data(as_text=True)
    assert 0 < created.index('id="apt-install"') < created.index('id="join-command"')
    assert f'id="apt-key-fingerprint">{repository.fingerprint()}<' in created
    assert "survey6-probe 0.1.0 (amd64)" in created


def test_a_viewer_sees_the_install_lines_too(
    repository: AptRepository, viewer: tuple[FlaskClient, str]
) -> None:
    assert install_lines(viewer[0])[-1] == "apt-get update && apt-get install survey6-probe"


def test_the_install_lines_use_the_configured_url(web_env: WebEnv, repository: AptRepository) -> None:
    web_env.app = web_env.make_app(WebSettings(apt_url="https://survey6.example.org/apt/"))
    client, _ = web_env.logged_in(("admin", "admin-password-1"))
    lines = install_lines(client)
    assert " https://survey6.example.org/apt/survey6-archive-keyring.gpg " in lines[0]
    assert "] https://survey6.example.org/apt stable main'" in lines[1]


def test_an_address_unfit_for_a_shell_gives_no_lines(web_env: WebEnv, repository: AptRepository) -> None:
    client, _ = web_env.logged_in(("admin", "admin-password-1"))
    page = client.get("/tokens", headers={"Host": "evil';reboot;'"}).get_data(as_text=True)
    assert 'id="apt-install"' not in page and "reboot" not in page.split('id="apt-problem"')[0]
    assert 'id="apt-problem"' in page and "set web.apt_url" in page


def test_a_damaged_index_leaves_the_tokens_page_working(
    repository: AptRepository, admin: tuple[FlaskClient, str]
) -> None:
    (repository.dists_dir / "main/binary-amd64/Packages").write_text("this is no index\n")
    response = admin[0].get("/tokens")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="apt-install"' not in page
    assert 'id="apt-problem"' in page and "The apt repository cannot be read" in page
