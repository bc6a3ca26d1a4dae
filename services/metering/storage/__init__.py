"""ClickHouse storage: schema migrations, the buffered fact sink and the statement reader.

Works against a ClickHouse server (``connect(url=...)``) or the embedded chDB engine
(``connect(db_dir=...)``) with the same SQL.
"""

from metering.storage.client import (
    Client,
    StorageError,
    StorageUnavailable,
    connect,
    is_transient,
)
from metering.storage.reader import list_statements, read_statement, read_statement_facts
from metering.storage.schema import MIGRATIONS, Migration, applied_migrations, migrate
from metering.storage.sink import ClickHouseSink, FlushStats, SinkUnavailable, rebuild_usage

__all__ = [
    "MIGRATIONS",
    "ClickHouseSink",
    "Client",
    "FlushStats",
    "Migration",
    "SinkUnavailable",
    "StorageError",
    "StorageUnavailable",
    "applied_migrations",
    "connect",
    "is_transient",
    "list_statements",
    "migrate",
    "read_statement",
    "read_statement_facts",
    "rebuild_usage",
]
