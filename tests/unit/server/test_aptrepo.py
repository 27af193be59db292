"""The apt repository with real tools: packages built by dpkg-deb, a key made and used by gpg,
signatures checked by gpgv (what apt runs), versions ordered as dpkg orders them."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import threading
from pathlib import Path

import pytest

from support.debs import build_deb
from survey6.common.cli import run_group
from survey6.server.aptrepo import AptRepository
from survey6.server.cli import cli
from survey6.server.debpkg import compare_versions
from survey6.server.errors import AptRepositoryError, NotInitialisedError

BINARY = "main/binary-{arch}"


@pytest.fixture
def repository(tmp_path: Path) -> AptRepository:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return AptRepository(data_dir)


def host_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def index(repository: AptRepository, name: str = "Packages", arch: str = "") -> bytes:
    return (repository.dists_dir / BINARY.format(arch=arch or host_arch()) / name).read_bytes()


def stanzas(repository: AptRepository, arch: str = "") -> list[str]:
    return [s for s in index(repository, arch=arch).decode().split("\n\n") if s.strip()]


def gpgv(repository: AptRepository, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gpgv", "--keyring", str(repository.keyring_path), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def public_files(repository: AptRepository) -> set[str]:
    return {
        p.relative_to(repository.public_dir).as_posix()
        for p in repository.public_dir.rglob("*")
        if p.is_file()
    }


def agents_running_for(home: Path) -> list[int]:
    """Live (not zombie) gpg-agent processes serving `home`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cmdline and cmdline[0].endswith(b"gpg-agent") and str(home).encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_publishing_the_same_file_twice_lists_it_once(repository: AptRepository, tmp_path: Path) -> None:
    deb = build_deb(tmp_path)
    first = repository.publish(deb)
    again = repository.publish(deb)
    assert (first.added, again.added) == (True, False)
    assert first.filename == again.filename == "pool/main/s/survey6-probe/survey6-probe_0.1.0_amd64.deb"
    assert [(e.package, e.version) for e in repository.entries()] == [("survey6-probe", "0.1.0")]
    [stanza] = stanzas(repository, "amd64")
    assert f"Filename: {first.filename}" in stanza
    assert f"SHA256: {hashlib.sha256(deb.read_bytes()).hexdigest()}" in stanza
    assert " A package built by the test suite.\n .\n It holds one README." in stanza  # multi-line kept
    assert (repository.public_dir / first.filename).read_bytes() == deb.read_bytes()


def test_a_second_version_is_added_and_versions_sort_as_dpkg_sorts_them(
    repository: AptRepository, tmp_path: Path
) -> None:
    for version in ("0.10.0", "0.9.0", "0.10.0~rc1"):
        (tmp_path / version).mkdir()
        repository.publish(build_deb(tmp_path / version, version=version))
    assert [e.version for e in repository.entries()] == ["0.9.0", "0.10.0~rc1", "0.10.0"]
    latest = repository.latest("survey6-probe")
    assert latest is not None and latest.version == "0.10.0"
    assert len(stanzas(repository, "amd64")) == 3


def test_the_indexes_are_signed_with_the_exported_key(repository: AptRepository, tmp_path: Path) -> None:
    repository.publish(build_deb(tmp_path))
    dists = repository.dists_dir
    assert gpgv(repository, dists / "InRelease").returncode == 0
    assert gpgv(repository, dists / "Release.gpg", dists / "Release").returncode == 0
    tampered = tmp_path / "InRelease"
    tampered.write_text((dists / "InRelease").read_text().replace("Suite: stable", "Suite: evil"))
    refused = gpgv(repository, tampered)
    assert refused.returncode != 0 and "BAD signature" in refused.stderr
    shown = subprocess.run(
        ["gpg", "--homedir", str(tmp_path), "--with-colons", "--show-keys", str(repository.armored_key_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"fpr:::::::::{repository.fingerprint()}:" in shown.stdout
    assert oct(repository.gnupg_dir.stat().st_mode & 0o777) == "0o700"
    assert agents_running_for(repository.gnupg_dir) == []  # each gpg session stops its agent


def test_release_lists_the_indexes_by_hash(repository: AptRepository, tmp_path: Path) -> None:
    for version in ("1.0", "1.1", "1.2"):
        (tmp_path / version).mkdir()
        repository.publish(build_deb(tmp_path / version, version=version))
    release = (repository.dists_dir / "Release").read_text()
    assert "Acquire-By-Hash: yes" in release
    arch = host_arch()
    for name in ("Packages", "Packages.gz"):
        data = index(repository, name, arch)
        digest = hashlib.sha256(data).hexdigest()
        assert f" {digest} {len(data):>16} main/binary-{arch}/{name}\n" in release
        by_hash = repository.dists_dir / BINARY.format(arch=arch) / "by-hash" / "SHA256" / digest
        assert by_hash.read_bytes() == data
    assert gzip.decompress(index(repository, "Packages.gz", arch)) == index(repository, "Packages", arch)
    # This generation and the previous one (a client may hold its InRelease) stay; older ones go.
    assert len(list((repository.dists_dir / BINARY.format(arch=arch) / "by-hash" / "SHA256").iterdir())) == 4
    assert not [name for name in public_files(repository) if "/." in f"/{name}"]  # no temporary left


def test_an_architecture_independent_package_is_in_the_host_architecture_index(
    repository: AptRepository, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    repository.publish(build_deb(tmp_path / "a", "survey6-docs", architecture="all"))
    repository.publish(build_deb(tmp_path / "b", architecture="arm64"))
    assert [s.split("\n")[0] for s in stanzas(repository, "arm64")] == [
        "Package: survey6-docs",
        "Package: survey6-probe",
    ]
    assert [s.split("\n")[0] for s in stanzas(repository, host_arch())][0] == "Package: survey6-docs"
    assert (
        f"Architectures: {' '.join(sorted({'arm64', host_arch()}))}\n"
        in (repository.dists_dir / "Release").read_text()
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just text\n", "is not a Debian binary package"),
        (b"!<arch>\ndebian-binary   ", "is not a Debian binary package"),
    ],
)
def test_a_file_that_is_not_a_package_is_refused(
    repository: AptRepository, tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "survey6-probe_9.9_amd64.deb"
    bad.write_bytes(content)
    with pytest.raises(AptRepositoryError, match=message) as caught:
        repository.publish(bad)
    assert str(bad) in str(caught.value) and ".incoming" not in str(caught.value)
    assert repository.entries() == []
    assert not [name for name in public_files(repository) if name.startswith("pool/")]


def test_a_truncated_package_is_refused(repository: AptRepository, tmp_path: Path) -> None:
    deb = build_deb(tmp_path)
    truncated = tmp_path / "cut.deb"
    truncated.write_bytes(deb.read_bytes()[: deb.stat().st_size - 200])
    with pytest.raises(AptRepositoryError, match="is a damaged Debian package"):
        repository.publish(truncated)


def test_an_unreadable_or_missing_file_is_refused(repository: AptRepository, tmp_path: Path) -> None:
    with pytest.raises(AptRepositoryError, match="cannot read .*missing.deb: No such file") as caught:
        repository.publish(tmp_path / "missing.deb")
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    with pytest.raises(AptRepositoryError, match="is a directory"):
        repository.publish(tmp_path)


def test_only_survey6_packages_are_served(repository: AptRepository, tmp_path: Path) -> None:
    with pytest.raises(AptRepositoryError, match="'openssh-server': this repository serves only survey6"):
        repository.publish(build_deb(tmp_path, "openssh-server", "99:1.0"))
    assert repository.entries() == []


def test_a_published_version_never_changes(repository: AptRepository, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    original = repository.publish(build_deb(tmp_path / "a", note="first build"))
    with pytest.raises(
        AptRepositoryError, match=r"survey6-probe 0.1.0 \(amd64\) is already published with other"
    ):
        repository.publish(build_deb(tmp_path / "b", note="second build"))
    assert (repository.public_dir / original.filename).read_bytes() == (
        tmp_path / "a" / Path(original.filename).name
    ).read_bytes()


def test_a_malformed_version_never_becomes_a_path(repository: AptRepository, tmp_path: Path) -> None:
    # dpkg-deb --build refuses such a version, so the control file is edited after building.
    deb = build_deb(tmp_path)
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace("Version: 0.1.0", "Version: 1/../../x"))
    bad = tmp_path / "bad.deb"
    subprocess.run(["dpkg-deb", "--nocheck", "--root-owner-group", "--build", str(tree), str(bad)],
                   check=True, capture_output=True)  # fmt: skip
    with pytest.raises(AptRepositoryError, match="malformed Version field"):
        repository.publish(bad)


def test_a_data_directory_with_a_long_path_works(tmp_path: Path) -> None:
    # gpg's agent sockets would not fit a socket address under this path (107 bytes at most).
    data_dir = tmp_path / ("long-directory-name-" * 4) / "server"
    data_dir.mkdir(parents=True)
    assert len(str(data_dir / "apt" / "gnupg" / "S.gpg-agent.browser")) > 107
    repository = AptRepository(data_dir)
    repository.publish(build_deb(tmp_path))
    assert gpgv(repository, repository.dists_dir / "InRelease").returncode == 0
    assert agents_running_for(repository.gnupg_dir) == []


def test_the_key_is_made_once_and_kept(repository: AptRepository) -> None:
    assert repository.fingerprint() is None and repository.keyring_sha256() is None
    fingerprint = repository.ensure_key()
    assert len(fingerprint) == 40 and fingerprint == repository.fingerprint()
    assert AptRepository(repository.data_dir).ensure_key() == fingerprint
    keyring = repository.keyring_path.read_bytes()
    repository.keyring_path.unlink()  # the public half is exported again from the key home
    assert repository.ensure_key() == fingerprint and repository.keyring_path.read_bytes() == keyring


def test_a_missing_data_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(NotInitialisedError, match="run `survey6-server init` first"):
        AptRepository(tmp_path / "nowhere").publish(tmp_path / "x.deb")


def test_concurrent_publishers_both_get_in(repository: AptRepository, tmp_path: Path) -> None:
    debs = []
    for version in ("2.0", "2.1"):
        (tmp_path / version).mkdir()
        debs.append(build_deb(tmp_path / version, version=version))
    repository.ensure_key()
    errors: list[BaseException] = []

    def publish(deb: Path) -> None:
        try:
            AptRepository(repository.data_dir).publish(deb)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(deb,)) for deb in debs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert [e.version for e in repository.entries()] == ["2.0", "2.1"]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0", "1.0"), ("1.0", "1.1"), ("1.0~rc1", "1.0"), ("1.0", "1.0-1"), ("1:0.1", "2.0"),
        ("0.9", "0.10"), ("1.0a", "1.0+b1"), ("1.0-1", "1.0-1.1"), ("1.0~~", "1.0~"), ("2.0.0", "2.0"),
        ("1.0-1~bpo1", "1.0-1"), ("0:1.2", "1.2"), ("1.2.3-4ubuntu1", "1.2.3-4"),
    ],
)  # fmt: skip
def test_versions_compare_as_dpkg_compares_them(a: str, b: str) -> None:
    def dpkg_says(left: str, op: str, right: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", left, op, right], check=False).returncode == 0

    expected = -1 if dpkg_says(a, "lt", b) else 1 if dpkg_says(a, "gt", b) else 0
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    deb = build_deb(tmp_path)

    def server(*argv: str) -> tuple[int, str, str]:
        status = run_group(cli, "survey6-server", ["apt", *argv, "--data-dir", str(data_dir)])
        out, err = capsys.readouterr()
        return status, out, err

    assert "no package is published yet" in server("list")[1]
    status, out, err = server("publish", str(deb))
    assert status == 0, err
    assert "made the repository's signing key" in out
    assert "published: survey6-probe 0.1.0 (amd64) as pool/main/s/survey6-probe/" in out
    assert "already published" in server("publish", str(deb))[1]
    listed = server("list")[1].splitlines()
    assert listed[1].split()[:3] == ["survey6-probe", "0.1.0", "amd64"]
    key = server("key")[1]
    assert f"fingerprint: {AptRepository(data_dir).fingerprint()}" in key
    assert f"public key: {AptRepository(data_dir).keyring_path}" in key
    for bad in (tmp_path / "missing.deb", Path(__file__)):
        status, out, err = server("publish", str(bad))
        assert status == 1
        assert len(err.splitlines()) == 1 and err.startswith("survey6-server: error: "), err
