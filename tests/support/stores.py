"""Where a test's store lives, for either backend: a SQLite file in the test's temp dir, or a
PostgreSQL database of its own (tests/support/postgres.py).

    async with store_settings(backend, tmp_path) as settings:   # the [store] section
        store = open_store(StoreConfig(**settings))
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.support.postgres import temp_database

BACKENDS = ("sqlite", "postgresql")


@asynccontextmanager
async def store_settings(backend: str, tmp: Path) -> AsyncIterator[dict[str, Any]]:
    settings: dict[str, Any] = {"path": str(tmp / "alcor.db"), "url": "", "synchronous": "NORMAL",
                                "retention": 10000}
    if backend == "sqlite":
        yield settings
        return
    if backend != "postgresql":
        raise ValueError(f"unknown store backend {backend!r}")
    async with temp_database() as url:
        yield {**settings, "url": url}
