"""Which store a controller opens: PostgreSQL when `[store] url` is set, else the SQLite file."""

from __future__ import annotations

from typing import Any

from alcor.config import Config
from alcor.db.postgres import PgStore
from alcor.db.store import SqliteStore, Store, StoreConfig


def open_store(cfg: StoreConfig) -> Store:
    """The store `[store]` asks for: PostgreSQL when `url` is set, else the SQLite file at `path`."""
    if cfg.url:
        return PgStore(cfg.url)
    return SqliteStore(cfg.path, cfg.synchronous)


class StoreModule:
    """Kernel module "store": owns the store (SQLite, or PostgreSQL with `[store] url`) for the
    other modules (`kernel.get(StoreModule).store`)."""

    name = "store"
    requires: tuple[str, ...] = ()

    def __init__(self, config: Config) -> None:
        self.store = open_store(config.get(StoreConfig))

    async def start(self, kernel: Any) -> None:
        await self.store.open()

    async def stop(self) -> None:
        await self.store.close()
