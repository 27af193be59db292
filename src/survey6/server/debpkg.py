"""Debian binary packages as the apt repository sees them: the control paragraph, checked.

A file is a package only if ``dpkg-deb`` can read its control paragraph and its whole data
member (a truncated download passes the first test, not the second). Its name, version and
architecture must be well-formed, because they become a path in the repository's pool.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from survey6.server.errors import AptRepositoryError

DPKG_DEB_TIMEOUT_S = 120.0  # reads the whole data member of a package of some tens of MB
# Debian policy 5.6.1, 5.6.7, 5.6.12 and 11.1 (one architecture, or "all", per binary package).
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9.+-]+")
VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*")
ARCHITECTURE = re.compile(r"[a-z0-9][a-z0-9-]*")
FIELD_NAME = re.compile(r"[!-9;-~][!-9;-~]*")  # printable ASCII but ':' and space, no leading '#' or '-'
# Fields the repository computes for each file; a package's own copy of them is dropped.
ARCHIVE_FIELDS = frozenset({"filename", "size", "md5sum", "sha1", "sha256", "sha512"})

Paragraph = list[tuple[str, str]]


@dataclass(frozen=True)
class DebControl:
    """A binary package's control paragraph (field order and multi-line values kept)."""

    fields: Paragraph

    def get(self, name: str) -> str:
        wanted = name.lower()
        return next((value for key, value in self.fields if key.lower() == wanted), "")

    @property
    def package(self) -> str:
        return self.get("Package")

    @property
    def version(self) -> str:
        return self.get("Version")

    @property
    def architecture(self) -> str:
        return self.get("Architecture")

    def pool_name(self) -> str:
        """``<package>_<version without epoch>_<arch>.deb``, as Debian names its files."""
        return f"{self.package}_{self.version.partition(':')[2] or self.version}_{self.architecture}.deb"

    def describe(self) -> str:
        return f"{self.package} {self.version} ({self.architecture})"


def parse_paragraph(text: str, origin: str) -> Paragraph:
    """One deb822 paragraph; continuation lines are kept as they are (leading space included).

    Raises:
        AptRepositoryError: a line that is neither ``Field: value`` nor a continuation, or a field
            given twice.
    """
    fields: Paragraph = []
    seen: set[str] = set()
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # a control file is one paragraph; whatever follows is not ours
            continue
        if line[0] in " \t":
            if not fields:
                raise AptRepositoryError(f"{origin}: a continuation line comes before any field")
            name, value = fields[-1]
            fields[-1] = (name, f"{value}\n{line}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not FIELD_NAME.fullmatch(name):
            raise AptRepositoryError(f"{origin}: {line[:60]!r} is not a 'Field: value' line")
        if name.lower() in seen:
            raise AptRepositoryError(f"{origin}: the field {name} is given twice")
        seen.add(name.lower())
        fields.append((name, value.strip()))
    return fields


def format_paragraph(fields: Paragraph) -> str:
    lines = []
    for name, value in fields:
        first, newline, rest = value.partition("\n")
        lines.append(f"{name}: {first}{newline}{rest}" if first else f"{name}:{newline}{rest}")
    return "\n".join(lines) + "\n"


def _dpkg_deb(*argv: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["dpkg-deb", *argv], capture_output=True, timeout=DPKG_DEB_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise AptRepositoryError("dpkg-deb is not installed (Debian package dpkg)") from exc
    except subprocess.TimeoutExpired as exc:
        raise AptRepositoryError(f"dpkg-deb took longer than {DPKG_DEB_TIMEOUT_S:.0f} s") from exc


def _first_error(result: subprocess.CompletedProcess[bytes], deb: Path, shown_as: str) -> str:
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    reason = lines[0] if lines else f"exit status {result.returncode}"
    # dpkg-deb names the file it read, which may be a temporary copy.
    return reason.removeprefix("dpkg-deb: error: ").removeprefix("dpkg-deb: ").replace(str(deb), shown_as)


def read_control(deb: Path, shown_as: str, *, whole: bool = True) -> DebControl:
    """The control paragraph of the package in `deb`, after checking the whole file reads.

    Args:
        deb: the file to inspect.
        shown_as: how error messages name it (the name the user gave, not a temporary copy's).
        whole: also read the data member through (False for a file checked when it came in).

    Raises:
        AptRepositoryError: not a Debian binary package, a damaged one, or a name, version or
            architecture that is missing or malformed.
    """
    control = _dpkg_deb("--field", str(deb))
    if control.returncode != 0:
        raise AptRepositoryError(
            f"{shown_as} is not a Debian binary package: {_first_error(control, deb, shown_as)}"
        )
    contents = _dpkg_deb("--contents", str(deb)) if whole else None
    if contents is not None and contents.returncode != 0:
        raise AptRepositoryError(
            f"{shown_as} is a damaged Debian package: {_first_error(contents, deb, shown_as)}"
        )
    text = control.stdout.decode("utf-8", "replace")
    parsed = DebControl(parse_paragraph(text, shown_as))
    _check_field(parsed.package, PACKAGE_NAME, "Package", shown_as)
    _check_field(parsed.version, VERSION, "Version", shown_as)
    _check_field(parsed.architecture, ARCHITECTURE, "Architecture", shown_as)
    fields = [(k, v) for k, v in parsed.fields if k.lower() not in ARCHIVE_FIELDS]
    return DebControl(fields)


def _check_field(value: str, pattern: re.Pattern[str], name: str, shown_as: str) -> None:
    if not value:
        raise AptRepositoryError(f"{shown_as} has no {name} field")
    if not pattern.fullmatch(value):
        raise AptRepositoryError(f"{shown_as} has a malformed {name} field: {value[:60]!r}")


def compare_versions(a: str, b: str) -> int:
    """Debian version order (epoch, then upstream and revision by dpkg's rules): -1, 0 or 1."""
    epoch_a, upstream_a, revision_a = _split_version(a)
    epoch_b, upstream_b, revision_b = _split_version(b)
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _compare_part(upstream_a, upstream_b) or _compare_part(revision_a, revision_b)


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, sep, rest = version.partition(":")
    if not sep:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch) if epoch.isdigit() else 0, upstream, revision


def _order(char: str) -> int:
    """dpkg's weight of a non-digit: '~' before the end, the end before letters, letters first."""
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    while a or b:
        text_a, a = _leading(a, digits=False)
        text_b, b = _leading(b, digits=False)
        for x, y in zip(text_a + "\0", text_b + "\0", strict=False):
            weight_x = 0 if x == "\0" else _order(x)
            weight_y = 0 if y == "\0" else _order(y)
            if weight_x != weight_y:
                return -1 if weight_x < weight_y else 1
            if x == "\0" or y == "\0":
                break
        number_a, a = _leading(a, digits=True)
        number_b, b = _leading(b, digits=True)
        if int(number_a or 0) != int(number_b or 0):
            return -1 if int(number_a or 0) < int(number_b or 0) else 1
    return 0


def _leading(text: str, *, digits: bool) -> tuple[str, str]:
    end = 0
    while end < len(text) and text[end].isdigit() == digits:
        end += 1
    return text[:end], text[end:]
