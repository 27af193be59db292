"""A throwaway Airflow installation for DAG tests: its own AIRFLOW_HOME, a migrated SQLite metadata
database and the aggregator's dags folder, driven through Airflow's real command line.

Airflow reads its configuration and sets up logging when it is first imported, so everything here
runs Airflow in child processes: the pytest process never imports it, and no other test sees its
settings or log handlers. Airflow's unit-test mode is deliberately not used: it swaps in Airflow's
own test configuration and a random Fernet key per process, which is for Airflow's test suite, not
for a deployment-like installation.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import survey6.aggregator

MIGRATE_TIMEOUT_S = 600.0
# A DAG run starts a Python process that imports Airflow, parses the dags folder and, for the
# aggregate DAG, starts a Spark JVM and runs its jobs: minutes on an idle machine, many more on a
# loaded one (measured: over 7 minutes for the aggregate DAG at a load average of 18 on 2 CPUs).
# A bound for a hung run, not an expectation.
DAG_TEST_TIMEOUT_S = 1200.0
DAGBAG_TIMEOUT_S = 600.0
LOG_TAIL_CHARS = 6000

# Modules the DAG files must not import while they are parsed (STYLE: heavy imports inside tasks).
HEAVY_MODULES = (
    "numpy",
    "pyarrow",
    "duckdb",
    "pyspark",
    "survey6.aggregator.pipeline",
    "survey6.aggregator.datasets",
    "survey6.aggregator.parse",
)

_DAGBAG_SCRIPT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)
report = {
    "dag_ids": sorted(bag.dag_ids),
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    "warnings": {str(k): list(v) for k, v in bag.captured_warnings.items()},
    "heavy_modules": sorted(m for m in sys.argv[2].split(",") if m in sys.modules),
    "dags": {
        dag_id: {
            "tasks": sorted(dag.task_dict),
            "retries": {
                t.task_id: [t.retries, t.retry_delay.total_seconds(), t.retry_exponential_backoff,
                            t.retry_policy is not None]
                for t in dag.tasks
            },
            "schedule": repr(dag.timetable),
        }
        for dag_id, dag in bag.dags.items()
    },
}
print("DAGBAG-REPORT " + json.dumps(report))
"""


def dags_folder() -> Path:
    """The aggregator's dags folder, inside the installed package (what a deployment points at)."""
    return Path(survey6.aggregator.__file__).resolve().parent / "dags"


def _tail(text: str) -> str:
    return text[-LOG_TAIL_CHARS:]


@dataclass
class AirflowHome:
    """One AIRFLOW_HOME; ``env`` is the environment every Airflow child process gets."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> AirflowHome:
        root.mkdir(parents=True, exist_ok=True)
        # Nothing from the shell's Airflow or survey6 configuration may reach the children.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SURVEY6_"))}
        env.update(
            AIRFLOW_HOME=str(root),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder()),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{root / 'airflow.db'}",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            # Spark (aggregate DAG): loopback only, two cores of the shared machine.
            SPARK_LOCAL_IP="127.0.0.1",
        )
        return cls(root, env)

    def run(
        self, args: list[str], *, extra_env: Mapping[str, str] | None = None, timeout_s: float
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``python -m airflow ARGS`` (or a script) in this home; cwd is the home, so nothing
        a child writes to its working directory (Spark's derby.log, ...) lands in the checkout."""
        return subprocess.run(
            [sys.executable, *args],
            env={**self.env, **(extra_env or {})},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def migrate(self) -> None:
        """Creates the metadata database (``airflow db migrate``)."""
        done = self.run(["-m", "airflow", "db", "migrate"], timeout_s=MIGRATE_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({done.returncode}):\n{_tail(done.stderr)}")

    def dags_test(self, dag_id: str, extra_env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        """One ``airflow dags test DAG_ID`` run: the DAG parsed from the dags folder, every task run
        in this child process, exit status non-zero when the run fails."""
        return self.run(
            ["-m", "airflow", "dags", "test", dag_id], extra_env=extra_env, timeout_s=DAG_TEST_TIMEOUT_S
        )

    def dagbag_report(self, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Loads the dags folder into a DagBag in a child process and reports what it found."""
        done = self.run(
            ["-c", _DAGBAG_SCRIPT, str(dags_folder()), ",".join(HEAVY_MODULES)],
            extra_env=extra_env,
            timeout_s=DAGBAG_TIMEOUT_S,
        )
        for line in done.stdout.splitlines():
            if line.startswith("DAGBAG-REPORT "):
                report: dict[str, Any] = json.loads(line.removeprefix("DAGBAG-REPORT "))
                return report
        raise RuntimeError(f"DagBag report missing ({done.returncode}):\n{_tail(done.stderr)}")

    def _query(self, sql: str, args: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
        # Read-only, straight from the metadata database: Airflow's CLI lists assets but not events.
        uri = f"file:{self.root / 'airflow.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            return db.execute(sql, args).fetchall()

    def asset_events(self, asset_name: str) -> list[tuple[str, dict[str, Any]]]:
        """The events of one Asset, oldest first: (producing DAG id, extra)."""
        rows = self._query(
            "SELECT e.source_dag_id, e.extra FROM asset_event AS e JOIN asset AS a ON a.id = e.asset_id"
            " WHERE a.name = ? ORDER BY e.id",
            (asset_name,),
        )
        return [(dag_id, json.loads(extra)) for dag_id, extra in rows]

    def last_return_value(self, dag_id: str, task_id: str) -> Any:
        """What a task returned in its DAG's latest run (its ``return_value`` XCom)."""
        rows = self._query(
            "SELECT x.value FROM xcom AS x JOIN dag_run AS r ON r.id = x.dag_run_id"
            " WHERE x.dag_id = ? AND x.task_id = ? AND x.key = 'return_value' ORDER BY r.id DESC LIMIT 1",
            (dag_id, task_id),
        )
        if not rows:
            raise LookupError(f"{dag_id}.{task_id} returned nothing")
        return json.loads(rows[0][0])

    def dags_queued_by_assets(self) -> set[str]:
        """DAGs an Asset event has queued for the scheduler to run."""
        return {dag_id for (dag_id,) in self._query("SELECT target_dag_id FROM asset_dag_run_queue")}


def describe_failure(done: subprocess.CompletedProcess[str]) -> str:
    """The end of a failed child's output, for an assertion message."""
    return (
        f"exit status {done.returncode}\n"
        f"--- stdout ---\n{_tail(done.stdout)}\n--- stderr ---\n{_tail(done.stderr)}"
    )
