"""Errors raised by the aggregator::

    Survey6Error                 (survey6.common.errors)
    └── AggregatorError          anything the aggregator cannot do
        └── ParseError           a capture file that cannot be read at all: empty, not pcap/pcapng,
                                 a header that is cut short or inconsistent

A file that *can* be read never raises for a bad packet: truncated, malformed and non-IPv6 packets are
counted in ``ParseStats`` and skipped, so one damaged record never costs the rest of a capture.
"""

from __future__ import annotations

from survey6.common.errors import Survey6Error


class AggregatorError(Survey6Error):
    """Base of every aggregator error."""


class ParseError(AggregatorError):
    """A capture file that cannot be parsed at all; the message names the file and the reason."""
