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


class PrivateServer:
    """A PostgreSQL server of a test's own (initdb in a temporary directory, its own port), for
    what must not happen to the shared one: restarting it, crashing it.

        async with private_server() as pg:
            url = await pg.database()
            await pg.restart("immediate")   # a crash: unflushed WAL is lost, recovery on start
    """

    def __init__(self) -> None:
        import glob
        import shutil
        import tempfile

        from tests.support.process import free_port

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        require(bool(bins) and shutil.which("runuser") is not None and os.geteuid() == 0,
                "a private PostgreSQL server needs root, runuser and /usr/lib/postgresql/*/bin")
        self.bin = os.path.dirname(bins[-1])
        # Under /tmp, not pytest's tmp_path: the postgres user must be able to reach it.
        self.dir = tempfile.mkdtemp(prefix="alcor-pg-")
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        import subprocess

        out = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True,
                             text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {out.stdout}{out.stderr}")

    def _ctl(self, *args: str) -> None:
        self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-l", f"{self.dir}/server.log", *args)

    def init(self) -> None:
        self._run(f"{self.bin}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                  "--no-sync")
        self.start()

    def start(self) -> None:
        self._ctl("-w", "-t", "60", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-t", "60", "-m", mode, "stop")

    async def restart(self, mode: str = "fast", down: float = 0.0) -> None:
        """Stop (`immediate`: as if it crashed) and start again after `down` seconds."""
        import asyncio

        await asyncio.to_thread(self.stop, mode)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.start)

    async def database(self) -> str:
        name = f"alcor_t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@asynccontextmanager
async def private_server() -> AsyncIterator[PrivateServer]:
    import asyncio
    import shutil

    pg = PrivateServer()
    try:
        await asyncio.to_thread(pg.init)
        yield pg
    finally:
        try:
            await asyncio.to_thread(pg.stop, "immediate")
        except Exception:  # noqa: BLE001 -- never started, or already down
            pass
        shutil.rmtree(pg.dir, ignore_errors=True)
