"""What the three DAGs share: retries, the Assets that link them, and settings loaded in a task.

Nothing here reads settings or imports the pipeline at import time: the scheduler parses DAG files
often, and a parse must not need the aggregator's data directories, pyarrow or Spark.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, ExceptionRetryPolicy, RetryAction, RetryRule

from survey6.common.errors import ConfigError

if TYPE_CHECKING:
    from survey6.aggregator.settings import AggregatorSettings

# Published by parse_captures when its ingests left partitions dirty; aggregate_datasets runs on it.
DIRTY_PARTITIONS = Asset(name="survey6_dirty_partitions", uri="x-survey6://aggregator/dirty-partitions")
# Published by aggregate_datasets when it rebuilt derived datasets, for whoever consumes them.
DERIVED_DATASETS = Asset(name="survey6_derived_datasets", uri="x-survey6://aggregator/derived-datasets")

# A fixed date in the past: with catchup off, only the next scheduled interval runs.
START_DATE = datetime(2024, 1, 1, tzinfo=UTC)

# Retries are for what can heal by itself (a file still being copied, a locked ledger, a full disk
# being cleaned, a Spark executor lost): 3 more tries after 2, 4 and 8 minutes. A bad capture is not
# retried at all: the pipeline quarantines it with its reason and the task succeeds.
RETRIES = 3
RETRY_DELAY = timedelta(minutes=2)
RETRY_BACKOFF_FACTOR = 2.0
MAX_RETRY_DELAY = timedelta(hours=1)
# Settings that do not load are a mistake in the config file or environment: retrying only delays
# the one-line error an operator has to read.
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[RetryRule(exception=ConfigError, action=RetryAction.FAIL, reason="invalid survey6 settings")]
)
# A task that hangs (an NFS mount gone away) fails and is retried instead of holding its slot forever.
TASK_TIMEOUT = timedelta(hours=2)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "survey6",
    "retries": RETRIES,
    "retry_delay": RETRY_DELAY,
    "retry_exponential_backoff": RETRY_BACKOFF_FACTOR,
    "max_retry_delay": MAX_RETRY_DELAY,
    "retry_policy": RETRY_POLICY,
    "execution_timeout": TASK_TIMEOUT,
}

TAGS = ["survey6", "aggregator"]


def load_aggregator_settings() -> AggregatorSettings:
    """The aggregator's settings, loaded when a task runs: defaults < /etc/survey6/aggregator.toml (or
    ``SURVEY6_CONFIG``) < ``SURVEY6_*`` environment of the worker.

    Raises:
        ConfigError: the file or a variable is invalid (the task then fails without retries).
    """
    from survey6.aggregator.settings import AggregatorSettings
    from survey6.common.settings import load_settings

    return load_settings(AggregatorSettings, side="aggregator")
