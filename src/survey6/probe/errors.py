"""Errors raised on the probe side.

One tree under the project base, so the probe's command line catches ``ProbeError`` and a caller that
cares catches the narrow type::

    Survey6Error                    (survey6.common.errors)
    └── ProbeError                  anything the probe cannot do
        ├── CaptureError            libpcap refused or failed: activate, read, stats, breakloop
        │   ├── CapturePermissionError   no CAP_NET_RAW (PCAP_ERROR_PERM_DENIED)
        │   ├── NoSuchInterfaceError     the interface does not exist (PCAP_ERROR_NO_SUCH_DEVICE)
        │   ├── FilterError              a BPF expression that does not compile or cannot be set
        │   └── DumpWriteError           a capture file that cannot be opened, written or flushed
        ├── PcapFileError           an existing pcap file that is unreadable, corrupt or not pcap
        ├── SpoolError              the spool directory cannot be used
        │   └── SpoolLockedError    another process is writing the same spool
        ├── JoinError               enrolment failed: server unreachable or the token refused
        │   └── CaHashMismatchError the server's CA is not the pinned one (the token was not sent)
        ├── NotEnrolledError        no usable identity: the probe has not joined
        └── AgentError              the local probe service cannot be reached or controlled
"""

from __future__ import annotations

from survey6.common.errors import MetadataError as MetadataError  # raised by the sidecar functions
from survey6.common.errors import Survey6Error


class ProbeError(Survey6Error):
    """Base of every probe-side error."""


class CaptureError(ProbeError):
    """libpcap reported an error while opening, configuring or reading a capture."""


class CapturePermissionError(CaptureError):
    """The process may not open a packet socket: it needs CAP_NET_RAW (or root)."""


class NoSuchInterfaceError(CaptureError):
    """The interface named for capture does not exist."""


class FilterError(CaptureError):
    """A BPF filter expression that libpcap cannot compile or install; the message quotes it."""


class DumpWriteError(CaptureError):
    """A capture file could not be opened or written (disk full, permissions, closed descriptor)."""


class PcapFileError(ProbeError):
    """A pcap file that cannot be read: missing, truncated header, corrupt records, or not pcap."""


class SpoolError(ProbeError):
    """The spool directory cannot be created, written or read."""


class SpoolLockedError(SpoolError):
    """Another process holds the spool's writer lock."""


class JoinError(ProbeError):
    """Enrolment failed: the server cannot be reached, or it refused the token."""


class CaHashMismatchError(JoinError):
    """The server does not present the pinned CA; nothing secret was sent to it."""


class NotEnrolledError(ProbeError):
    """The probe has no usable identity: join first."""


class AgentError(ProbeError):
    """The local probe service is not running or does not answer."""
