"""The Debian packages survey6-probe and survey6-server, as ./scripts/build-deb makes them.

Fast checks read packaging/debian (the conffiles against the settings models, the lintian overrides).
Slow checks build both packages once a session (conftest.built_debs), read their control data and
contents, run the real lintian and `systemd-analyze verify` on the units as packaged, and install
each package with apt into a fresh minimal Debian root of the host's release (conftest.debian_root),
where the installed command runs, the user, directories, conffiles and unit are checked, and a
remove, a reinstall and a purge behave as docs/packaging.md says.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.debian_root import DebianRootError, host_apt_sources, host_codename, main_mirror, run_in_root
from survey6.common.settings import StrictModel, load_settings
from survey6.probe.settings import ProbeSettings
from survey6.server.settings import ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[3]
DEBIAN_DIR = REPO_ROOT / "packaging" / "debian"
UNIT_DIR = REPO_ROOT / "packaging" / "systemd"
HOST_UNIT_DIR = Path("/lib/systemd/system")
BUILD_DEB = REPO_ROOT / "scripts" / "build-deb"
SYSTEM_PYTHON = Path("/usr/bin/python3")
SAMPLE_PCAP = REPO_ROOT / "tests" / "data" / "aggregator" / "ethernet-mixed.pcap"
# Building both packages under a loaded machine takes many minutes; the session fixtures run inside
# the first test that needs them, so the slow tests get a budget of their own.
SLOW_TIMEOUT_S = 3600
TOOL_TIMEOUT_S = 900
# A setting line in a shipped conffile is '#key = value' (no space after '#'); prose is '# text'.
SETTING_LINE = re.compile(r"^#(\[[a-z0-9_]+\]|[a-z0-9_]+ = .*)$")


@dataclass(frozen=True)
class Side:
    package: str
    command: str
    side: str
    model: type[StrictModel]
    # Top-level packages of site-packages that this venv must hold, and must not hold.
    present: tuple[str, ...]
    absent: tuple[str, ...]
    # Directories the postinst makes, with their mode.
    state_dirs: tuple[tuple[str, int], ...]

    @property
    def unit(self) -> str:
        return f"{self.package}.service"

    @property
    def conffile(self) -> str:
        return f"/etc/survey6/{self.side}.toml"

    @property
    def venv(self) -> str:
        return f"/opt/venvs/{self.package}"


PROBE = Side(
    package="survey6-probe",
    command="survey6-probe",
    side="probe",
    model=ProbeSettings,
    present=("survey6", "grpc", "cryptography", "pydantic"),
    absent=("flask", "sqlalchemy", "pyarrow", "duckdb", "pip"),
    state_dirs=(
        ("/var/lib/survey6", 0o750),
        ("/var/lib/survey6/probe", 0o700),
        ("/var/lib/survey6/spool", 0o750),
    ),
)
SERVER = Side(
    package="survey6-server",
    command="survey6-server",
    side="server",
    model=ServerSettings,
    present=("survey6", "grpc", "flask", "sqlalchemy", "alembic", "argon2"),
    absent=("pyarrow", "duckdb", "pip"),
    state_dirs=(("/var/lib/survey6", 0o750), ("/var/lib/survey6/server", 0o750)),
)
SIDES = {side.package: side for side in (PROBE, SERVER)}


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = subprocess.run(
        argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False, **kw
    )
    return result


def checked(argv: list[str], **kw: Any) -> str:
    result = run(argv, **kw)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{name} is not installed: run ./scripts/setup")
    return path


# --- the conffiles: every setting, at its default ------------------------------------------------------


def uncommented(text: str) -> str:
    """The conffile with every setting line switched on."""
    return "\n".join(line[1:] if SETTING_LINE.match(line) else line for line in text.splitlines())


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


@pytest.mark.parametrize("side", [PROBE, SERVER], ids=lambda s: s.side)
def test_conffile_lists_every_setting_at_its_default(side: Side, tmp_path: Path) -> None:
    shipped = (DEBIAN_DIR / "config" / f"{side.side}.toml").read_text(encoding="utf-8")
    # As shipped, every setting is commented out: the file changes nothing.
    assert tomllib.loads(shipped) == {}
    active = tmp_path / f"{side.side}.toml"
    active.write_text(uncommented(shipped), encoding="utf-8")

    loaded = load_settings(side.model, side=side.side, config_file=active, environ={})
    defaults = leaves(side.model().model_dump(mode="json"))
    written = leaves(tomllib.loads(active.read_text(encoding="utf-8")))
    assert set(written) == set(defaults), (
        f"missing from the conffile: {sorted(set(defaults) - set(written))}; "
        f"not settings: {sorted(set(written) - set(defaults))}"
    )
    got = leaves(loaded.model_dump(mode="json"))
    # A setting whose default is "unset" shows an example value instead; the others show the default.
    differing = {key for key in defaults if got[key] != defaults[key]}
    assert differing == {key for key, value in defaults.items() if value is None}


def test_every_lintian_override_gives_its_reason() -> None:
    for path in sorted(DEBIAN_DIR.glob("*.lintian-overrides")):
        overrides = 0
        previous = ""
        for line in path.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                # An override follows its reason, or another override under the same reason.
                assert previous, f"{path.name}: no comment says why: {line}"
                overrides += 1
            previous = line
        assert overrides, f"{path.name} overrides nothing"


def test_build_deb_rejects_an_unknown_argument() -> None:
    result = run([str(BUILD_DEB), "--no-such-option"], cwd=REPO_ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--no-such-option" in result.stderr


# --- what the packages hold ----------------------------------------------------------------------------


def python_minor() -> tuple[int, int]:
    out = checked([str(SYSTEM_PYTHON), "-c", "import sys; print(*sys.version_info[:2])"])
    major, minor = out.split()
    return int(major), int(minor)


def field(deb: Path, name: str) -> str:
    return checked([tool("dpkg-deb"), "--field", str(deb), name]).strip()


@pytest.fixture(scope="module")
def extracted(built_debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each package unpacked (dpkg-deb -x) with its control files in DEBIAN/ (dpkg-deb -e)."""
    trees: dict[str, Path] = {}
    for package, deb in built_debs.items():
        tree = tmp_path_factory.mktemp(package)
        checked([tool("dpkg-deb"), "-x", str(deb), str(tree)])
        checked([tool("dpkg-deb"), "-e", str(deb), str(tree / "DEBIAN")])
        trees[package] = tree
    return trees


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
@pytest.mark.parametrize("package", sorted(SIDES))
def test_control_fields(package: str, built_debs: dict[str, Path]) -> None:
    deb = built_debs[package]
    with (REPO_ROOT / "pyproject.toml").open("rb") as stream:
        version = tomllib.load(stream)["project"]["version"]
    assert field(deb, "Package") == package
    assert field(deb, "Version") == version
    assert field(deb, "Architecture") == checked([tool("dpkg"), "--print-architecture"]).strip()
    depends = {item.strip() for item in field(deb, "Depends").split(",")}
    major, minor = python_minor()
    assert {f"python3 (>= {major}.{minor}~)", f"python3 (<< {major}.{minor + 1}~)", "adduser"} <= depends
    assert ("libpcap0.8" in depends) == (package == "survey6-probe")
    assert any(item.startswith("libc6 ") for item in depends), "shlibs of the compiled wheels"


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
@pytest.mark.parametrize("package", sorted(SIDES))
def test_package_contents(package: str, extracted: dict[str, Path]) -> None:
    side, tree = SIDES[package], extracted[package]
    command = tree / "usr" / "bin" / side.command
    assert command.is_symlink() and os.readlink(command) == f"{side.venv}/bin/{side.command}"
    script = tree / side.venv.lstrip("/") / "bin" / side.command
    assert script.read_text(encoding="utf-8").startswith(f"#!{side.venv}/bin/python")
    python = tree / side.venv.lstrip("/") / "bin" / "python3"
    assert python.is_symlink() and os.readlink(python).startswith(("python", str(SYSTEM_PYTHON)))
    # One source of truth: the unit is packaging/systemd's, byte for byte.
    unit = tree / "lib" / "systemd" / "system" / side.unit
    assert unit.read_bytes() == (UNIT_DIR / side.unit).read_bytes()
    conffile = tree / side.conffile.lstrip("/")
    assert conffile.read_bytes() == (DEBIAN_DIR / "config" / f"{side.side}.toml").read_bytes()
    assert (tree / "DEBIAN" / "conffiles").read_text(encoding="utf-8").split() == [side.conffile]
    assert (tree / "usr" / "share" / "man" / "man1" / f"{side.command}.1.gz").is_file()
    (site,) = (tree / side.venv.lstrip("/") / "lib").glob("python3.*/site-packages")
    names = {path.name for path in site.iterdir()}
    assert set(side.present) <= names, f"missing from the venv: {set(side.present) - names}"
    assert not set(side.absent) & names, f"in the venv but not wanted: {set(side.absent) & names}"
    # Byte-code ships compiled for the installed paths, with hash-based invalidation.
    pycs = list((site / "survey6").glob("__pycache__/*.pyc"))
    assert pycs, "survey6's byte-code is compiled at build time"
    assert all(int.from_bytes(pyc.read_bytes()[4:8], "little") & 0b1 for pyc in pycs)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
def test_lintian_reports_no_error_or_warning(built_debs: dict[str, Path]) -> None:
    debs = [str(built_debs[package]) for package in sorted(built_debs)]
    result = run([tool("lintian"), "--allow-root", "--no-cfg", *debs])
    lines = (result.stdout + result.stderr).splitlines()
    complaints = [line for line in lines if line.startswith(("E:", "W:"))]
    assert complaints == [], "\n".join(complaints)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
@pytest.mark.parametrize("package", sorted(SIDES))
def test_unit_verifies_as_installed(package: str, extracted: dict[str, Path]) -> None:
    """`systemd-analyze verify --root` on the unpacked package: ExecStart resolves inside it.

    verify also loads the units every service depends on by default (sysinit.target and the
    rest); the package has none of them, so the host's are put beside it, under usr/lib, where
    this package ships nothing. The package's own /usr/bin link and venv are what ExecStart finds.
    """
    side, tree = SIDES[package], extracted[package]
    system_units = tree / "usr" / "lib" / "systemd" / "system"
    assert not system_units.exists() or not any(system_units.glob("survey6-*"))
    shutil.copytree(HOST_UNIT_DIR, system_units, symlinks=True, dirs_exist_ok=True)
    result = run(
        [tool("systemd-analyze"), "verify", "--man=no", f"--root={tree}", f"/lib/systemd/system/{side.unit}"]
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.strip() == "", output

    # The check has teeth: without the command in the package, verify fails on this unit.
    script = tree / side.venv.lstrip("/") / "bin" / side.command
    moved = script.rename(script.with_name(f"{side.command}.moved"))
    try:
        broken = run(
            [
                tool("systemd-analyze"),
                "verify",
                "--man=no",
                f"--root={tree}",
                f"/lib/systemd/system/{side.unit}",
            ]
        )
    finally:
        moved.rename(script)
    assert broken.returncode != 0
    assert f"Command /usr/bin/{side.command} is not executable" in broken.stderr


# --- installed into a fresh Debian root ---------------------------------------------------------------


def passwd_entry(root: Path, user: str) -> list[str]:
    for line in (root / "etc" / "passwd").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    raise AssertionError(f"no user {user} in {root}/etc/passwd")


def group_id(root: Path, group: str) -> int:
    for line in (root / "etc" / "group").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return int(fields[2])
    raise AssertionError(f"no group {group} in {root}/etc/group")


def as_service_user(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_in_root(root, "setpriv", "--reuid=survey6", "--regid=survey6", "--init-groups", "--", *argv)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def install(root: Path, deb: Path) -> None:
    target = root / "tmp" / deb.name
    shutil.copyfile(deb, target)
    ok(run_in_root(root, "apt-get", "install", "-y", "--no-install-recommends", f"/tmp/{deb.name}"))


def exercise_probe(root: Path) -> Path:
    """Reads a pcap through the venv and the system libpcap, as the service user; returns state to keep."""
    shutil.copyfile(SAMPLE_PCAP, root / "tmp" / "sample.pcap")
    capture = ("survey6-probe", "capture", "--read", "/tmp/sample.pcap", "--output", "/tmp/spool")
    ok(as_service_user(root, *capture))
    sealed = sorted(path.name for path in (root / "tmp" / "spool" / "ready").iterdir())
    assert any(name.endswith(".pcap") for name in sealed), sealed
    assert any(name.endswith(".json") for name in sealed), sealed
    marker = root / "var" / "lib" / "survey6" / "probe" / "kept"
    ok(as_service_user(root, "touch", "/var/lib/survey6/probe/kept"))
    return marker


def exercise_server(root: Path) -> Path:
    """Initialises the server's data directory as the service user (CA, registry, admin account)."""
    out = ok(as_service_user(root, "survey6-server", "init", "--data-dir", "/var/lib/survey6/server"))
    assert "CA certificate hash: sha256:" in out
    ca_key = root / "var" / "lib" / "survey6" / "server" / "pki" / "ca.key"
    assert ca_key.is_file()
    return ca_key


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
@pytest.mark.parametrize("package", sorted(SIDES))
def test_install_into_a_fresh_root(package: str, built_debs: dict[str, Path], debian_root: Path) -> None:
    side, root = SIDES[package], debian_root
    install(root, built_debs[package])

    # The command runs from the venv on the root's own python3.
    ok(run_in_root(root, side.command, "--help"))
    ok(run_in_root(root, side.command, "run", "--help"))
    version = ok(run_in_root(root, side.command, "--version"))
    assert version.strip().endswith(field(built_debs[package], "Version"))

    # The service user: a system account without login, at home in the state directory.
    user = passwd_entry(root, "survey6")
    assert int(user[2]) < 1000 and user[5] == "/var/lib/survey6" and user[6] == "/usr/sbin/nologin"
    gid = group_id(root, "survey6")
    for directory, mode in side.state_dirs:
        info = (root / directory.lstrip("/")).stat()
        assert (info.st_uid, info.st_gid) == (int(user[2]), gid), directory
        assert stat.S_IMODE(info.st_mode) == mode, f"{directory}: {oct(info.st_mode)}"

    # The conffile: in place, registered as a conffile, readable by the service's group only.
    conffile = root / side.conffile.lstrip("/")
    info = conffile.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, gid, 0o640)
    listed = ok(run_in_root(root, "dpkg-query", "--control-show", package, "conffiles"))
    assert listed.split() == [side.conffile]
    registered = root / "var" / "lib" / "dpkg" / "info" / f"{package}.conffiles"
    assert registered.read_text(encoding="utf-8").split() == [side.conffile]
    shown = ok(as_service_user(root, side.command, "config"))
    assert side.model.model_validate_json(shown) == side.model()

    # The unit: installed and enabled (started by systemd only once joined / initialised).
    assert (root / "lib" / "systemd" / "system" / side.unit).is_file()
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / side.unit
    assert wants.is_symlink() and os.readlink(wants) == f"/lib/systemd/system/{side.unit}"

    kept = exercise_probe(root) if side is PROBE else exercise_server(root)

    # A reinstall (dpkg's upgrade path) keeps a changed conffile without asking, and its owner.
    with conffile.open("a", encoding="utf-8") as stream:
        stream.write('\n[logging]\nlevel = "DEBUG"\n')
    ok(run_in_root(root, "dpkg", "-i", f"/tmp/{built_debs[package].name}"))
    assert conffile.read_text(encoding="utf-8").endswith('level = "DEBUG"\n')
    assert stat.S_IMODE(conffile.stat().st_mode) == 0o640

    # Remove keeps data and settings; purge deletes both but not the user.
    ok(run_in_root(root, "apt-get", "remove", "-y", package))
    assert not (root / "usr" / "bin" / side.command).exists()
    assert kept.exists() and conffile.exists()
    ok(run_in_root(root, "apt-get", "purge", "-y", package))
    assert not kept.exists() and not conffile.exists()
    assert not wants.exists()
    passwd_entry(root, "survey6")


# --- where the fresh root's packages come from --------------------------------------------------------


def test_apt_sources_of_the_host_release_are_read_from_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/one.gpg] "
        "http://mirror.invalid/debian bookworm main contrib\n"
        "deb-src http://mirror.invalid/debian bookworm main\n"
        "deb http://mirror.invalid/debian trixie main\n",
        encoding="utf-8",
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://other.invalid/debian\n"
        "Suites: bookworm-updates bookworm-backports\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/two.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://disabled.invalid/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Enabled: no\n",
        encoding="utf-8",
    )
    (tmp_path / "sources.list.d" / "old.list.disabled").write_text(
        "deb http://ignored.invalid/debian bookworm main\n", encoding="utf-8"
    )
    sources = host_apt_sources("bookworm", etc_apt=tmp_path)
    assert [source.one_line() for source in sources] == [
        "deb [signed-by=/usr/share/keyrings/one.gpg] http://mirror.invalid/debian bookworm main contrib",
        "deb [signed-by=/usr/share/keyrings/two.gpg] http://other.invalid/debian bookworm-updates main",
        "deb [signed-by=/usr/share/keyrings/two.gpg] http://other.invalid/debian bookworm-backports main",
    ]
    assert main_mirror("bookworm", sources).uri == "http://mirror.invalid/debian"
    with pytest.raises(DebianRootError, match="no 'bookworm main' entry"):
        main_mirror("bookworm", sources[1:])


def test_host_codename_is_read_from_os_release(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Debian GNU/Linux"\nVERSION_CODENAME=bookworm\n', encoding="utf-8")
    assert host_codename(os_release) == "bookworm"
    os_release.write_text('NAME="Something"\n', encoding="utf-8")
    with pytest.raises(DebianRootError, match="no VERSION_CODENAME"):
        host_codename(os_release)
