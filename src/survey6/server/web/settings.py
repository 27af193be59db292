"""Settings of the web UI: the ``[web]`` section of server.toml (``SURVEY6_WEB__*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from survey6.common.settings import Seconds, StrictModel

# An http(s) URL with nothing a shell would expand inside single quotes (it goes into commands).
APT_URL_PATTERN = r"https?://[A-Za-z0-9._~%:\[\]-]+(/[A-Za-z0-9._~%/-]*)?"


class WebSettings(StrictModel):
    # HTTPS: a PEM certificate chain and its key. Without them the UI speaks plain HTTP and should
    # stay on loopback or behind a TLS-terminating reverse proxy.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Send the session cookie only over HTTPS; empty: only when the UI itself serves TLS. Set it
    # true behind a reverse proxy that terminates TLS.
    cookie_secure: bool | None = None
    # A login lasts this long, then the user logs in again.
    session_lifetime_s: Seconds = Field(default=12 * 3600.0, gt=0)
    # Failed logins one client address may make per minute before it is refused for a while.
    login_failures_per_minute: int = Field(default=5, ge=1)
    # /metrics: "open" (the Prometheus convention), "basic-auth" (HTTP Basic with a web account of
    # any role, or a logged-in session) or "off".
    metrics: Literal["open", "basic-auth", "off"] = "open"
    # HOST:PORT written into the join commands the tokens page shows; empty: the server
    # certificate's first name and the enrolment port.
    join_address: str = ""
    # URL probe hosts reach the apt repository at (the web UI's /apt/), written into the install
    # lines the tokens page shows, e.g. "https://survey6.example.org/apt"; empty: the address the
    # page itself was requested at.
    apt_url: str = Field(default="", pattern=rf"^({APT_URL_PATTERN})?$")
    # How often the probe pages poll the JSON API for fresh state.
    refresh_interval_s: Seconds = Field(default=3.0, gt=0)
