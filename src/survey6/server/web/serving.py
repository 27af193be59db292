"""Serves the web UI from a thread of the server process.

Werkzeug's threaded WSGI server (a thread per request) is enough for a handful of operators and a
Prometheus scraper. With TLS it also does the handshake on its accepting thread, so a slow client
delays others: for exposure beyond a trusted network, put a reverse proxy in front.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from survey6.server.web.errors import WebConfigError
from survey6.server.web.settings import WebSettings

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
STOP_TIMEOUT_S = 5.0


def parse_listen(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into host and port.

    Raises:
        WebConfigError: not an address with a port in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets is ambiguous
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise WebConfigError(f"http_listen {address!r} is not HOST:PORT or [IPV6]:PORT")
    return host, int(port)


class _RequestHandler(WSGIRequestHandler):
    """Request lines go to debug (an open list page polls every few seconds); errors to warning."""

    def log(self, type: str, message: str, *args: Any) -> None:
        level = logging.DEBUG if type == "info" else logging.WARNING
        log.log(level, message, *args, extra={"client": self.address_string()})


def _tls_context(web: WebSettings) -> ssl.SSLContext | None:
    if web.tls_cert_file is None and web.tls_key_file is None:
        return None
    if web.tls_cert_file is None or web.tls_key_file is None:
        raise WebConfigError("web.tls_cert_file and web.tls_key_file go together; set both or neither")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(web.tls_cert_file, web.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"cannot load the web UI's TLS certificate or key: {exc}") from exc
    return context


def _bind(host: str, port: int, listen: str) -> socket.socket:
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise WebConfigError(f"http_listen {listen!r}: {exc.strerror}") from exc
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise WebConfigError(f"cannot listen on {listen} for the web UI: {exc.strerror}") from exc
    return sock


class WebServer:
    """The bound HTTP(S) server; ``port`` is known as soon as it is made (listen on port 0 works)."""

    def __init__(self, app: Flask, listen: str, web: WebSettings) -> None:
        host, port = parse_listen(listen)
        tls = _tls_context(web)
        # Bound here rather than by werkzeug, which prints and exits the process when it cannot.
        sock = _bind(host, port, listen)
        try:
            self._server: BaseWSGIServer = make_server(
                sock.getsockname()[0],
                sock.getsockname()[1],
                app,
                threaded=True,
                request_handler=_RequestHandler,
                ssl_context=tls,
                fd=sock.fileno(),
            )
        finally:
            sock.close()  # werkzeug serves a duplicate of the descriptor
        self.port = int(self._server.server_address[1])
        self.scheme = "https" if tls else "http"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="web", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=STOP_TIMEOUT_S)
            self._thread = None
        self._server.server_close()
