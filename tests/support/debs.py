"""Small real Debian packages, built with ``dpkg-deb --build`` from a temporary tree."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


def build_deb(
    directory: Path,
    package: str = "survey6-probe",
    version: str = "0.1.0",
    architecture: str = "amd64",
    *,
    note: str = "",
    extra_fields: str = "",
) -> Path:
    """A package holding /usr/share/doc/<package>/README (with `note`, so two builds can differ).

    Returns the .deb, named ``<directory>/<package>_<version>_<architecture>.deb`` (replaced if it
    exists).
    """
    tree = Path(tempfile.mkdtemp(prefix="tree-", dir=directory))
    tree.chmod(0o755)  # the package's "/" entry
    (tree / "DEBIAN").mkdir()
    doc = tree / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "README").write_text(f"{package} {version} test package. {note}\n", encoding="utf-8")
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\n"
        f"Version: {version}\n"
        f"Architecture: {architecture}\n"
        "Maintainer: survey6 tests <tests@example.org>\n"
        "Section: net\n"
        "Priority: optional\n"
        f"{extra_fields}"
        "Description: survey6 test package\n"
        " A package built by the test suite.\n"
        " .\n"
        " It holds one README.\n",
        encoding="utf-8",
    )
    output = directory / f"{package}_{version}_{architecture}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(output)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return output
