"""MySQL adapter: connections, versioned migrations and the event store
(docs/contract/storage.md §7, §8)."""

from roadwatch.adapters.mysql.connection import (
    ConnectionPool,
    ConnectionSource,
    SingleConnection,
    StoreError,
    StoreUnavailable,
    connect,
)
from roadwatch.adapters.mysql.migrate import MigrationError, apply_migrations
from roadwatch.adapters.mysql.store import EventStore, InvalidCursor

__all__ = [
    "ConnectionPool",
    "ConnectionSource",
    "EventStore",
    "InvalidCursor",
    "MigrationError",
    "SingleConnection",
    "StoreError",
    "StoreUnavailable",
    "apply_migrations",
    "connect",
]
