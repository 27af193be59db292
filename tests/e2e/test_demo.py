"""``./scripts/demo`` end to end: the real server, probe, Redis and worker on real traffic in network
namespaces, and nothing left behind afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DEMO_TIMEOUT_S = 280.0
TRAFFIC_S = 5


def ours_running(pid: int, work: Path) -> bool:
    """Whether `pid` is still one of the demo's processes (a reused PID runs something else)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return str(work) in argv or "demo_traffic.py" in argv


def run_demo(repo_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        [str(repo_root / "scripts" / "demo"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # the demo's own cleanup, rather than leaving namespaces behind
        out, err = process.communicate(timeout=60)
        pytest.fail(f"the demo took longer than {DEMO_TIMEOUT_S} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_the_demo_captures_uploads_aggregates_and_leaves_nothing_behind(
    repo_root: Path, tmp_path: Path
) -> None:
    work = tmp_path / "demo"
    summary_path = tmp_path / "summary.json"
    result = run_demo(repo_root, "--exit-when-done", "--duration", str(TRAFFIC_S), "--work-dir", str(work),
                      "--json", str(summary_path))  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(summary_path.read_text())
    sent = summary["traffic"]["sent"]
    assert sent["tcp_syn"] > 0 and sent["dns_queries"] > 0 and sent["icmpv6_echo"] > 0
    # Every packet sent and its answer crossed the captured link; all of them reached Parquet, once.
    assert summary["packets_captured"] >= sum(sent.values())
    assert summary["packets_in_parquet"] == summary["packets_captured"]
    assert f"packets in Parquet:   {summary['packets_captured']}  -> equal" in result.stdout
    assert summary["files_landed"] >= 1 and summary["files_quarantined"] == 0
    assert [p["state"] for p in summary["probes"]] == ["suspended"]
    # The traffic kept the link over the idle threshold (0.1); uploads waited for it to go idle.
    assert summary["traffic_link_ratio"] > 0.1
    assert summary["first_upload"]["reason"] == "idle" and summary["first_upload"]["after_traffic_s"] > 0
    top = [row["src"] for row in summary["top_sources"]]
    assert {"fd00::5ca:1", "fd00::5ca:2"} <= set(top[:2])  # the two scanners lead the sources
    assert summary["web_url"] in result.stdout and summary["web_password"] in result.stdout

    # Nothing it created is left: work directory, namespaces, the host's end of the management link,
    # processes.
    assert not work.exists()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in namespaces for ns in summary["namespaces"])
    assert not any(Path("/sys/class/net", link).exists() for link in summary["host_links"])
    assert len(summary["pids"]) >= 5
    assert not [pid for pid in summary["pids"] if ours_running(pid, work)]


def test_a_work_dir_that_is_not_empty_is_a_one_line_error(repo_root: Path, tmp_path: Path) -> None:
    (tmp_path / "something").write_text("mine")
    result = run_demo(repo_root, "--exit-when-done", "--work-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == f"demo: error: --work-dir {tmp_path} is not an empty directory\n"
    assert (tmp_path / "something").read_text() == "mine"


def test_a_bad_duration_is_a_usage_error(repo_root: Path) -> None:
    result = run_demo(repo_root, "--duration", "0")
    assert result.returncode == 2
    assert "--duration must be more than 0" in result.stderr.splitlines()[-1]
