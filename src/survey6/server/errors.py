"""Errors raised on the server side::

Survey6Error                 (survey6.common.errors)
└── ServerError              anything the server cannot do
    ├── NotInitialisedError  the data directory has no CA or registry: run `survey6-server init`
    ├── AlreadyInitialisedError  `init` on a data directory that already has a CA
    ├── TokenError           a bootstrap token that is malformed, unknown, expired, revoked or used up
    ├── EnrolmentError       a join request that cannot be honoured (bad CSR, ...)
    ├── UnknownProbeError    no probe with that id
    └── CommandError         a command that cannot be queued for a probe in its state
"""

from __future__ import annotations

from survey6.common.errors import Survey6Error


class ServerError(Survey6Error):
    """Base of every server-side error."""


class NotInitialisedError(ServerError):
    """The data directory was never initialised."""


class AlreadyInitialisedError(ServerError):
    """The data directory already holds a CA; initialising again would orphan every probe."""


class TokenError(ServerError):
    """A bootstrap token that cannot be used; the message says why (and never echoes the secret)."""


class EnrolmentError(ServerError):
    """A join request that cannot be honoured."""


class UnknownProbeError(ServerError):
    """No probe has that id."""


class CommandError(ServerError):
    """A command that cannot be queued."""
