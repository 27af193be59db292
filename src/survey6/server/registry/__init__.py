"""The registry: probes, bootstrap tokens, events, commands, heartbeat history and web accounts.

SQLAlchemy 2 models (``models``), engine set-up and Alembic migrations (``db``). SQLite in WAL
mode is the embedded default; a PostgreSQL URL works too.
"""
