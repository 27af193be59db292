"""The aggregator's Airflow DAGs: point Airflow's dags folder here (see ``docs/airflow.md``).

``parse_captures`` ingests new landed captures, ``aggregate_datasets`` rebuilds the derived datasets
of dirty partitions with Spark, ``maintenance`` removes staging left-overs and expired quarantine and
reports the backlog. The files only declare; the work is in ``survey6.aggregator.pipeline``.
Nothing else in survey6 imports this package, so the aggregator runs without Airflow installed.
"""
