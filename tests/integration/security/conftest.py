"""The security checks' fixtures: the real server in-process (real gRPC over real TLS, real Redis,
a temporary SQLite registry), probes enrolled with it by a real Join, and the web UI over a real
registry. The list of checks is in test_checklist.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from integration.security.secure_server import SecureServer
from integration.web.webenv import ADMIN, VIEWER, WebEnv, open_web_env
from survey6.server.app import ServerApp
from survey6.server.settings import ServerSettings
from survey6.server.setup import initialise, pki_dir

ADMIN_PASSWORD = "admin-password-1"
# Both loopback addresses on one port (gRPC binds every address "localhost" resolves to), so a
# test has two clients: 127.0.0.1 and ::1.
DUAL_LOOPBACK = "localhost:0"


@pytest.fixture
def make_server(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., SecureServer]]:
    """Starts a server with the given settings sections (``enrolment={...}``); with `web_tls` the web
    UI serves HTTPS with the server's own certificate."""
    started: list[SecureServer] = []

    def start(*, web_tls: bool = False, **sections: Any) -> SecureServer:
        data_dir = tmp_path / f"server{len(started)}"
        initialise(data_dir, server_names=["localhost", "127.0.0.1", "::1"], admin_password=ADMIN_PASSWORD)
        if web_tls:
            pki = pki_dir(data_dir)
            sections["web"] = {"tls_cert_file": pki / "server.crt", "tls_key_file": pki / "server.key"}
        settings = ServerSettings.model_validate(
            {
                "data_dir": data_dir,
                "grpc_listen": "127.0.0.1:0",
                "enrol_listen": DUAL_LOOPBACK,
                "http_listen": "127.0.0.1:0",
                "redis_url": redis_url,
                **sections,
            }
        )
        app = ServerApp(settings)
        app.start()
        server = SecureServer(app, redis_url)
        started.append(server)
        return server

    yield start
    for server in started:
        for channel in server.channels:
            channel.close()
        server.app.stop()


@pytest.fixture
def server(make_server: Callable[..., SecureServer]) -> SecureServer:
    return make_server()


@pytest.fixture
def web_env(tmp_path: Path) -> Iterator[WebEnv]:
    """The web UI (the real Flask app) over a real registry and fleet, with an admin and a viewer."""
    with open_web_env(tmp_path / "web") as env:
        yield env


@pytest.fixture
def admin(web_env: WebEnv) -> tuple[FlaskClient, str]:
    return web_env.logged_in(ADMIN)


@pytest.fixture
def viewer(web_env: WebEnv) -> tuple[FlaskClient, str]:
    return web_env.logged_in(VIEWER)
