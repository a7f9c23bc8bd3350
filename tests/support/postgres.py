"""A PostgreSQL database of its own for each test, on the local server (127.0.0.1:5432, trust auth).

    async with temp_database() as url:      # postgresql://postgres@127.0.0.1:5432/alcor_t_…
        store = PgStore(url)

`ALCOR_TEST_PG` names another server (its admin database URL). A test that needs PostgreSQL calls
`require_postgres()`: it skips on a laptop without it and fails under CI=true.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.conftest import require

ADMIN_URL = os.environ.get("ALCOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


@functools.cache
def postgres_up() -> bool:
    parts = urlsplit(ADMIN_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 1):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    require(postgres_up(), f"PostgreSQL at {urlsplit(ADMIN_URL).netloc} (tests/run.sh starts it)")


async def create_database() -> str:
    name = f"alcor_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(name)


async def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def temp_database() -> AsyncIterator[str]:
    require_postgres()
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)
