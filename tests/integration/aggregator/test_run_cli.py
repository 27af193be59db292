"""``survey6-aggregate run`` as a user runs it: a real process, real files, exit statuses, summaries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.aggregator_inputs import DATA_DIR, bad_files, land, tree_snapshot

RUN_TIMEOUT_S = 240.0
PROBE = "p-local"


def aggregate(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "survey6.aggregator", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def dirs(tmp_path: Path) -> list[str | Path]:
    return ["--output", tmp_path / "datasets", "--state-dir", tmp_path / "state"]


@pytest.fixture
def captures(tmp_path: Path) -> Path:
    """A user's folder: two good captures (one pcapng under a name without extension), every bad kind."""
    folder = tmp_path / "captures"
    (folder / "old").mkdir(parents=True)
    shutil.copyfile(DATA_DIR / "ethernet-mixed.pcap", folder / "ethernet-mixed.pcap")
    shutil.copyfile(DATA_DIR / "raw-ipv6-big-endian-nano.pcap", folder / "old" / "trace-2023")
    for name, (data, _) in bad_files().items():
        (folder / name).write_bytes(data)
    (folder / "NOTES.txt").write_text("where these came from")
    return folder


def test_run_on_plain_captures_quarantines_the_bad_ones_and_a_rerun_changes_nothing(
    tmp_path: Path, captures: Path
) -> None:
    before = tree_snapshot(captures)
    garbage = captures / "garbage.bin"
    # garbage.bin is named too: in a folder, what is no capture by magic or name is only "ignored".
    first = aggregate("run", captures, garbage, "--probe-id", PROBE, "--json", *dirs(tmp_path), cwd=tmp_path)

    assert first.returncode == 3, first.stderr  # finished, but files were quarantined
    summary = json.loads(first.stdout)
    assert (summary["files_seen"], summary["files_ingested"], summary["files_ignored"]) == (2 + 6, 2, 1)
    assert {Path(q["path"]).name: q["reason"] for q in summary["quarantined"]} == {
        name: reason for name, (_, reason) in bad_files().items()
    }
    assert (summary["packets"], summary["rows_written"], summary["skipped_packets"]) == (
        19,
        17,
        {"not_ipv6": 2},
    )
    assert summary["dataset_rows"]["packets"] == 17
    assert summary["partitions_built"] == 1 and summary["complete"] is False
    assert "Traceback" not in first.stderr
    assert (
        first.stderr.splitlines()[-1]
        == "survey6-aggregate: 6 files quarantined, 0 unreadable (listed in the summary)"
    )
    assert tree_snapshot(captures) == before  # a user's files are only read
    quarantined = sorted(p.name for p in (tmp_path / "state" / "quarantine").glob("*.reason.json"))
    assert len(quarantined) == 6
    datasets_before = tree_snapshot(tmp_path / "datasets")

    second = aggregate("run", captures, garbage, "--probe-id", PROBE, "--json", *dirs(tmp_path), cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert (again["files_already_done"], again["files_already_quarantined"]) == (8, 6)
    assert (again["files_ingested"], again["files_quarantined"], again["partitions_built"]) == (0, 0, 0)
    assert tree_snapshot(tmp_path / "datasets") == datasets_before


def test_run_over_a_landing_zone_prints_a_summary_table(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    land(landing, "p-1", 1, count=25)
    land(landing, "p-2", 1, count=5)
    done = aggregate("run", "--landing", landing, *dirs(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in done.stdout.splitlines()
        if line.count("│") == 3
    }
    assert (lines["files seen"], lines["ingested"], lines["rows written"]) == ("2", "2", "30")
    assert lines["partitions built"] == "2"


def test_the_configured_landing_zone_is_the_default_input(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    land(landing, "p-1", 1)
    config = tmp_path / "aggregator.toml"
    config.write_text(f'landing_dir = "{landing}"\n')
    done = aggregate("--config", config, "run", "--json", *dirs(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files_ingested"] == 1


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["run", "captures"], 1, "has no sidecar naming its probe: give --probe-id"),
        (["run", "missing.pcap", "--probe-id", PROBE], 1, "missing.pcap: no such file or directory"),
        (["run", "captures", "--probe-id", "../../etc"], 1, "probe id '../../etc' is not valid"),
        (["run", "--probe-id", PROBE], 2, "--probe-id names the probe of PATHS"),
        (["run", "captures", "--engine", "pandas"], 2, "'pandas' is not one of"),
        (["run", "--landing", "nowhere"], 1, "landing zone nowhere is not a directory"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    tmp_path: Path, captures: Path, args: list[str], status: int, message: str
) -> None:
    done = aggregate(*args, *dirs(tmp_path), cwd=tmp_path)
    assert done.returncode == status
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if status == 1:
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("survey6-aggregate: error: ")


def test_help_of_run_and_worker(tmp_path: Path) -> None:
    run_help = aggregate("run", "--help", cwd=tmp_path)
    assert run_help.returncode == 0
    for text in ("[PATHS]...", "--landing", "--output", "--engine [duckdb|spark]", "--probe-id", "--json"):
        assert text in run_help.stdout
    assert "3 `run` finished but quarantined" in " ".join(run_help.stdout.split())
    worker_help = aggregate("worker", "--help", cwd=tmp_path)
    assert worker_help.returncode == 0
    for text in ("--redis-url", "--burst", "survey6-ingest", "SIGTERM"):
        assert text in worker_help.stdout
    top = aggregate("--help", cwd=tmp_path)
    assert "run" in top.stdout and "worker" in top.stdout
