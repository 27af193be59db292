"""Errors raised on the server side::

Survey6Error                 (survey6.common.errors)
└── ServerError              anything the server cannot do
    ├── NotInitialisedError  the data directory has no CA or registry: run `survey6-server init`
    ├── AlreadyInitialisedError  `init` on a data directory that already has a CA
    ├── TokenError           a bootstrap token that is malformed, unknown, expired, revoked or used up
    │   └── TokenGuessError      malformed, unknown id or wrong secret: what a guess gets
    ├── EnrolmentError       a join request that cannot be honoured (bad CSR, ...)
    ├── UnknownProbeError    no probe with that id
    ├── CommandError         a command that cannot be queued for a probe in its state
    ├── UploadError          an upload the server refuses (each maps to one gRPC status)
    │   ├── UploadRejected       malformed header or chunk: INVALID_ARGUMENT
    │   ├── UploadForbidden      metadata naming another probe: PERMISSION_DENIED
    │   ├── UploadConflict       the sequence is stored with another sha256: ALREADY_EXISTS
    │   ├── OffsetMismatch       a stream not starting where the server is: FAILED_PRECONDITION
    │   ├── UploadCorrupt        a chunk's CRC-32 or the file's sha256 is wrong: DATA_LOSS
    │   ├── QuotaExceeded        the probe's landed bytes would pass its quota: RESOURCE_EXHAUSTED
    │   └── UploadBusy           the same file is being uploaded on another stream: ABORTED
    ├── QueueUnavailable     Redis cannot be reached; stored files wait in the outbox
    └── AptRepositoryError   a package the apt repository refuses, or signing that fails
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


class TokenGuessError(TokenError):
    """A token that is malformed, names no token or has the wrong secret: counted as a guess."""


class EnrolmentError(ServerError):
    """A join request that cannot be honoured."""


class UnknownProbeError(ServerError):
    """No probe has that id."""


class CommandError(ServerError):
    """A command that cannot be queued."""


class UploadError(ServerError):
    """An upload the server refuses; the message tells the probe what to do."""


class UploadRejected(UploadError):
    """A header or chunk that can never be accepted as it is."""


class UploadForbidden(UploadError):
    """The caller is not allowed to upload this (e.g. metadata naming another probe)."""


class UploadConflict(UploadError):
    """The (probe, sequence) is already stored with a different sha256."""


class OffsetMismatch(UploadError):
    """A stream that does not start at the offset the server holds."""

    def __init__(self, message: str, expected_offset_bytes: int) -> None:
        super().__init__(message)
        self.expected_offset_bytes = expected_offset_bytes


class UploadCorrupt(UploadError):
    """Data that fails its check: a chunk's CRC-32, or the whole file's sha256."""


class QuotaExceeded(UploadError):
    """The file would take the probe's landed bytes over its quota."""


class UploadBusy(UploadError):
    """Another stream is uploading the same (probe, sequence) right now; retry later."""


class QueueUnavailable(ServerError):
    """The ingest queue (Redis) cannot be reached."""


class AptRepositoryError(ServerError):
    """The apt repository cannot publish this file or sign its index; the message says why."""
