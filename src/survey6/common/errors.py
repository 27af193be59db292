"""The base of every survey6 error.

Each side keeps its own tree under this base, so a command-line entry point can catch one type,
print a one-line reason and exit non-zero::

    Survey6Error
    ├── ConfigError            settings that cannot be loaded or are invalid (common)
    ├── UnitError              a size or duration that cannot be parsed (common)
    ├── MetadataError          capture metadata that is unreadable or invalid (common)
    ├── survey6.probe.errors   capture, spool, enrolment and delivery errors
    ├── survey6.server.errors  registry, enrolment and upload errors
    └── survey6.aggregator.errors  parse and dataset errors
"""

from __future__ import annotations


class Survey6Error(Exception):
    """An error with a message fit to show a user on one line."""


class ConfigError(Survey6Error):
    """Settings could not be read or do not validate; the message names the key or file."""


class UnitError(Survey6Error, ValueError):
    """A size ("64MiB") or duration ("60s") that cannot be parsed."""


class MetadataError(Survey6Error):
    """Capture metadata that cannot be parsed or does not validate; the message names the field."""
