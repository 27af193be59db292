"""The web UI served for real: HTTP and HTTPS on a bound port, inside the running server."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.web.webenv import WebEnv
from survey6.server.app import ServerApp
from survey6.server.settings import ServerSettings
from survey6.server.setup import initialise, pki_dir
from survey6.server.web import WebSettings
from survey6.server.web.errors import WebConfigError
from survey6.server.web.serving import WebServer, parse_listen


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), ("localhost:443", ("localhost", 443))],
)
def test_listen_addresses(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen(address) == expected


@pytest.mark.parametrize("address", ["8080", "::1:8080", "host:", "host:http", "[::1]:70000", ":80"])
def test_bad_listen_addresses_are_one_line_errors(address: str) -> None:
    with pytest.raises(WebConfigError, match="is not HOST:PORT"):
        parse_listen(address)


@pytest.fixture
def serve(web_env: WebEnv) -> Iterator[list[WebServer]]:
    servers: list[WebServer] = []
    yield servers
    for server in servers:
        server.stop()


def test_http_on_a_port_the_kernel_picks(web_env: WebEnv, serve: list[WebServer]) -> None:
    server = WebServer(web_env.app, "[::1]:0", WebSettings())
    serve.append(server)
    server.start()
    assert server.port > 0 and server.scheme == "http"
    connection = http.client.HTTPConnection("::1", server.port, timeout=10)
    connection.request("GET", "/probes")
    response = connection.getresponse()
    assert response.status == 302 and response.headers["Location"] == "/login?next=/probes"
    connection.close()
    server.stop()
    serve.clear()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("::1", server.port), timeout=5).close()


def test_https_with_the_servers_certificate_and_secure_cookies(
    web_env: WebEnv, serve: list[WebServer]
) -> None:
    pki = pki_dir(web_env.data_dir)
    web = WebSettings(tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key")
    server = WebServer(web_env.make_app(web), "127.0.0.1:0", web)
    serve.append(server)
    server.start()
    assert server.scheme == "https"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    connection = http.client.HTTPSConnection("localhost", server.port, context=context, timeout=10)
    connection.request("GET", "/login")
    response = connection.getresponse()
    assert response.status == 200
    assert "Secure" in response.headers["Set-Cookie"] and "HttpOnly" in response.headers["Set-Cookie"]
    connection.close()


def test_tls_settings_that_cannot_work_are_one_line_errors(web_env: WebEnv, tmp_path: Path) -> None:
    pki = pki_dir(web_env.data_dir)
    with pytest.raises(WebConfigError, match="go together"):
        WebServer(web_env.app, "127.0.0.1:0", WebSettings(tls_cert_file=pki / "server.crt"))
    missing = WebSettings(tls_cert_file=tmp_path / "none.crt", tls_key_file=tmp_path / "none.key")
    with pytest.raises(WebConfigError, match="cannot load the web UI's TLS certificate"):
        WebServer(web_env.app, "127.0.0.1:0", missing)


def test_a_port_in_use_is_a_one_line_error(web_env: WebEnv) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(WebConfigError, match=f"cannot listen on 127.0.0.1:{port} for the web UI"):
            WebServer(web_env.app, f"127.0.0.1:{port}", WebSettings())


def test_the_server_serves_the_web_ui_on_http_listen(tmp_path: Path, redis_url: str) -> None:
    data_dir = tmp_path / "server"
    initialise(data_dir, server_names=["localhost"], admin_password="admin-password-1")
    settings = ServerSettings(
        data_dir=data_dir,
        grpc_listen="127.0.0.1:0",
        enrol_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        redis_url=redis_url,
    )
    app = ServerApp(settings)
    app.start()
    try:
        assert app.http_port > 0
        connection = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=10)
        connection.request("GET", "/metrics")
        body = connection.getresponse().read().decode()
        assert 'survey6_probes{state="online"} 0.0' in body
        connection.close()
    finally:
        app.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", app.http_port), timeout=5).close()
