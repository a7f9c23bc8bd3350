"""Which store a controller opens: PostgreSQL when `[store] url` is set, else the SQLite file."""

from __future__ import annotations

from alcor.db.postgres import PgStore
from alcor.db.store import SqliteStore, Store, StoreConfig


def open_store(cfg: StoreConfig) -> Store:
    """The store `[store]` asks for: PostgreSQL when `url` is set, else the SQLite file at `path`."""
    if cfg.url:
        return PgStore(cfg.url)
    return SqliteStore(cfg.path, cfg.synchronous)
