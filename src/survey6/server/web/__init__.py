"""The web UI (Flask): probes with live state, their history and commands, tokens, ingest status,
a JSON API and Prometheus ``/metrics``. Built by :func:`create_app`; nothing happens at import.

Pages need a login (roles ``admin`` and ``viewer``); every form carries a CSRF token. See
``docs/web-ui.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Only the settings model here: server settings import it, and everything else in this package
# imports the server's modules (which import the settings) -- so the rest loads in create_app.
from survey6.server.web.settings import WebSettings

if TYPE_CHECKING:
    from flask import Flask

    from survey6.server.settings import ServerSettings
    from survey6.server.web.services import WebServices

__all__ = ["WebSettings", "create_app"]


def create_app(services: WebServices, settings: ServerSettings, web: WebSettings | None = None) -> Flask:
    """The web application over the running server's registry and fleet.

    Args:
        services: the registry session factory, the live fleet and what join commands need.
        settings: the server's settings.
        web: the web UI's settings; by default the ``web`` section of `settings`.

    Raises:
        WebConfigError: the session key file is unusable.
    """
    from survey6.server.web.application import build_app

    return build_app(services, settings, web)
