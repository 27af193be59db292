"""Errors of the web UI::

ServerError                  (survey6.server.errors)
└── WebError                 anything the web UI cannot do
    ├── WebConfigError       an unusable listen address, TLS file or secret key file
    └── UserError            a web account that cannot be added, changed or removed
"""

from __future__ import annotations

from survey6.server.errors import ServerError


class WebError(ServerError):
    """Base of the web UI's errors."""


class WebConfigError(WebError):
    """The web UI cannot start with these settings; the message names the setting or file."""


class UserError(WebError):
    """A web account operation that cannot be done (unknown user, bad role, weak password...)."""
