"""A controller running in the test's event loop on a temp SQLite file (or a PostgreSQL database of
its own) and an ephemeral port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from alcor import sections
from alcor.api.app import HttpModule
from alcor.config import Config
from alcor.controller import controller_modules
from alcor.kernel import Kernel, KernelConfig, load_plugin
from alcor.roles import southbound_modules
from tests.support.stores import store_settings


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    @property
    def error(self) -> dict[str, str]:
        return self.body["NeutronError"]


class Client:
    """Plain HTTP against the API, as any Neutron client would speak it."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, project: str | None = None
    ) -> None:
        self.session = session
        self.base = base
        self.project = project

    def as_project(self, project: str) -> Client:
        return Client(self.session, self.base, project)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        h = {"Content-Type": "application/json", **(headers or {})}
        if self.project:
            h["X-Project-Id"] = self.project
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with self.session.request(method, self.base + path, data=data, headers=h) as r:
            text = await r.text()
            return Reply(r.status, json.loads(text) if text else None, r.headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.request("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)

    async def create(self, kind: str, path: str, **attrs: Any) -> dict[str, Any]:
        r = await self.post(path, {kind: attrs})
        assert r.status == 201, (r.status, r.body)
        return r.body[kind]


def config_for_test(tmp: Path, **layer: dict[str, Any]) -> Config:
    """The program's configuration for a test, checked like an operator's: its own database in
    `tmp`, any free API port, the environment ignored, then `layer` on top, e.g.
    config_for_test(tmp, agent={"resync_interval": 0.5})."""
    own = {"store": {"path": str(tmp / "alcor.db"), "synchronous": "NORMAL"}, "api": {"port": 0}}
    return sections.load(env={}, layers=[("test", own), ("test", layer)])


@asynccontextmanager
async def _store(backend: str, tmp: Path, given: dict[str, Any] | None
                 ) -> AsyncIterator[dict[str, Any]]:
    if given is not None:
        yield given
        return
    async with store_settings(backend, tmp) as settings:
        yield settings


@asynccontextmanager
async def running_controller(
    tmp: Path, backend: str = "sqlite", store: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[tuple[Kernel, Client]]:
    """The controller's modules on `config_for_test`; overrides by SECTION__KEY (api__auth="token").
    The store is of the given backend ("sqlite", or "postgresql": a fresh database), or the
    `store` settings given (to start a second controller on the same one)."""
    layer: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if "__" not in dotted:  # a whole section, e.g. keystone_authtoken={...}
            layer[dotted] = value
            continue
        section, key = dotted.split("__")
        layer.setdefault(section, {})[key] = value
    async with _store(backend, tmp, store) as settings:
        layer["store"] = {**layer.get("store", {}), **settings}
        cfg = config_for_test(tmp, **layer)
        plugins = [load_plugin(name, cfg) for name in cfg.get(KernelConfig).plugins]
        async with serving(cfg, [*controller_modules(cfg), *plugins]) as running:
            yield running


@asynccontextmanager
async def running_dev(tmp: Path, **layer: dict[str, Any]) -> AsyncIterator[tuple[Kernel, Client]]:
    """The dev run's modules without a datapath (controller, in-process southbound, this host's
    agent stream) on `config_for_test(tmp, **layer)`."""
    cfg = config_for_test(tmp, **layer)
    async with serving(cfg, [*controller_modules(cfg), *southbound_modules("dev", cfg)]) as running:
        yield running


@asynccontextmanager
async def serving(cfg: Config, modules: list[Any]) -> AsyncIterator[tuple[Kernel, Client]]:
    """A kernel of these modules started, and a client of its API; stopped after."""
    kernel = Kernel(cfg, modules)
    await kernel.start()
    try:
        port = kernel.get(HttpModule).port
        async with aiohttp.ClientSession() as session:
            yield kernel, Client(session, f"http://127.0.0.1:{port}")
    finally:
        await kernel.stop()
