"""survey6: a distributed passive IPv6 survey system.

Subpackages: ``probe`` (capture and delivery on each host), ``server`` (command and control),
``aggregator`` (pcap to Parquet), ``wire`` (the generated gRPC API) and ``common`` (what they share).
The three sides never import each other.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("survey6")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
