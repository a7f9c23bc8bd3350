"""The controller's modules: the store, the resource managers and the HTTP API.

`controller_modules(config)` is what `main.py controller` (and the dev run) hands the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from alcor.api.app import METRICS, Api, changes_routes, make_app
from alcor.api.auth import AUTH, POLICY, Authenticator, authenticator
from alcor.api.config import ApiConfig
from alcor.config import Config
from alcor.db.backends import open_store
from alcor.db.store import StoreConfig
from alcor.ops import OpsModule
from alcor.policy import Policy
from alcor.resources.base import Manager
from alcor.resources.networks import NetworkConfig, Networks
from alcor.resources.nodes import Nodes
from alcor.resources.ports import Ports
from alcor.resources.routers import Routers
from alcor.resources.security_groups import SecurityGroupRules, SecurityGroups
from alcor.resources.subnets import Subnets
from alcor.transport import MqConfig

if TYPE_CHECKING:
    from alcor.kernel import Kernel, Module

log = structlog.get_logger("alcor.controller")

# URL of each collection (Neutron's paths; Alcor's own under /v2.0/alcor).
PATHS = {
    "networks": "/v2.0/networks",
    "subnets": "/v2.0/subnets",
    "ports": "/v2.0/ports",
    "routers": "/v2.0/routers",
    "security_groups": "/v2.0/security-groups",
    "security_group_rules": "/v2.0/security-group-rules",
    "nodes": "/v2.0/alcor/nodes",
}


class StoreModule:
    """Owns the store (SQLite, or PostgreSQL with `[store] url`) for the other modules (`kernel.get("store").store`)."""

    name = "store"
    requires: tuple[str, ...] = ()

    def __init__(self, config: Config) -> None:
        self.store = open_store(config.get(StoreConfig))

    async def start(self, kernel: Kernel) -> None:
        await self.store.open()

    async def stop(self) -> None:
        await self.store.close()


class HttpModule:
    """Serves the API; on stop, stops accepting and lets in-flight requests finish (drain)."""

    name = "api"

    def __init__(self, config: Config, managers: list[str]) -> None:
        self.cfg = config.get(ApiConfig)
        # Built here, not at start: a bad [keystone_authtoken] or policy file stops the program
        # with one line before anything listens.
        self.auth: Authenticator = authenticator(config)
        self.policy = Policy(self.cfg.policy_file or None)
        self.requires = ("store", *managers)
        self.managers = managers
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app: web.Application | None = None

    async def start(self, kernel: Kernel) -> None:
        managers: list[Manager] = [kernel.get(n) for n in self.managers]
        api = Api(kernel, managers, {c: p for c, p in PATHS.items() if c in self.managers})
        extra = changes_routes(kernel, api)
        for m in kernel.modules:
            routes = getattr(m, "routes", None)
            if routes is not None and m is not self:
                extra += routes()
        self.app = make_app(api, extra, self.cfg.max_body_bytes)
        self.app[AUTH] = self.auth
        self.app[POLICY] = self.policy
        if kernel.has("ops"):
            # Request latency for /metrics; the error middleware calls it for every request.
            self.app[METRICS] = kernel.get("ops").observe_request
        self.runner = web.AppRunner(self.app, access_log=None,
                                    shutdown_timeout=float(self.cfg.drain_seconds))
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        sockets = [s for s in (self.runner.addresses or [])]
        self.port = sockets[0][1] if sockets else self.cfg.port
        log.info("api.listening", host=self.cfg.host, port=self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.auth.close()


def controller_modules(config: Config) -> list[Module]:
    managers: list[Any] = [
        Networks(config.get(NetworkConfig)),
        Subnets(),
        SecurityGroups(),
        SecurityGroupRules(),
        Nodes(config.get(MqConfig)),
        Ports(),
        Routers(),
    ]
    ops = OpsModule(config, "controller", PATHS)
    return [StoreModule(config), *managers, ops, HttpModule(config, [m.name for m in managers])]
