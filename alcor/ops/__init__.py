"""Operations: health, readiness, Prometheus metrics, the OpenAPI document and the topology page.

`OpsModule` (kernel module "ops") serves, on the controller's API port:

    GET /healthz                    alive (the event loop answers)
    GET /readyz                     ready (store writable, transport connected); 503 otherwise
    GET /metrics                    Prometheus text format
    GET /openapi.json               OpenAPI 3, generated from the resources' schemas
    GET /ui                         the live topology page
    GET /v2.0/alcor/topology        what the page draws (admin)
    GET /v2.0/alcor/nodes/{id}/goal_state   a node's goal state, summarised (admin)
    GET /v2.0/alcor/agent/flows     the local agent's flows against its switch (when one runs here)

The agent role has no API; there the module opens its own small listener (`[agent] http`,
default 127.0.0.1:9697, "" to disable) with /healthz, /readyz, /metrics and /agent/flows.
Its `ready()` gate holds systemd's READY=1 until the readiness checks pass.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from alcor.agent.config import AgentConfig
from alcor.api.app import METRICS, HttpModule, errors
from alcor.api.auth import AUTH, context
from alcor.config import Config
from alcor.db.backends import StoreModule
from alcor.errors import BadRequest, NeutronError, not_found, policy
from alcor.ops import health, topology
from alcor.ops.metrics import Metrics, datapath_of
from alcor.ops.openapi import document
from alcor.resources.nodes import Nodes
from alcor.resources.port_bindings import PortBindings
from alcor.resources.quotas import Quotas

if TYPE_CHECKING:
    from alcor.kernel import Kernel
    from alcor.resources.schema import Resource

log = structlog.get_logger("alcor.ops")

UI_DIR = Path(__file__).resolve().parent / "ui"
UI_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
READY_POLL = 0.2


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class OpsModule:
    name = "ops"

    def __init__(self, config: Config, role: str,
                 paths: dict[str, str] | None = None) -> None:
        self.config = config
        self.role = role
        self.paths = paths or {}  # collection → URL path, for the OpenAPI document
        self.requires: tuple[str, ...] = ("store",) if role != "agent" else ()
        self.kernel: Kernel | None = None
        self.metrics = Metrics()
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._openapi: str | None = None

    # Module protocol ----------------------------------------------------------------------------

    async def start(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.metrics.bind(kernel)
        if not kernel.has(HttpModule):
            await self._listen()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def ready(self) -> None:
        """Return once every readiness check passes, telling systemd what it waits for."""
        last = None
        while True:
            checks = await health.readiness(self._k, self.role)
            failing = sorted(n for n, c in checks.items() if not c.ok)
            if not failing:
                return
            if failing != last:
                detail = "; ".join(f"{n}: {checks[n].detail}" for n in failing)
                self._k.status(f"waiting: {detail}")
                log.info("ops.waiting_ready", failing=failing)
                last = failing
            await asyncio.sleep(READY_POLL)

    def routes(self) -> list[web.RouteDef]:
        """Mounted by the API module on the controller's port."""
        return [
            *self._probe_routes(),
            web.get("/openapi.json", self.openapi),
            web.get("/ui", self.ui_index),
            web.get("/ui/", self.ui_index),
            web.get("/ui/{file}", self.ui_file),
            web.get("/v2.0/alcor/topology", self.topology),
            web.get("/v2.0/alcor/nodes/{id}/goal_state", self.goal_state),
            web.get("/v2.0/alcor/agent/flows", self.agent_flows),
        ]

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """The API's error middleware calls this for every request (app[METRICS])."""
        self.metrics.observe_request(method, route, status, seconds)

    # Handlers -----------------------------------------------------------------------------------

    @property
    def _k(self) -> Kernel:
        if self.kernel is None:
            raise NeutronError("The controller is still starting.", type="ServiceUnavailable",
                               status=503)
        return self.kernel

    def _probe_routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz),
                web.get("/metrics", self.prometheus)]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "checks": {}})

    async def readyz(self, request: web.Request) -> web.Response:
        body = health.summary(await health.readiness(self._k, self.role))
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    async def prometheus(self, request: web.Request) -> web.Response:
        data, content_type = self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=data, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            collections: dict[str, Resource] = {
                path: self._k.named(c).res for c, path in self.paths.items() if self._k.has_named(c)}
            self._openapi = json.dumps(document(collections, quotas=self._k.has(Quotas),
                                                bindings=self._k.has(PortBindings)))
        return web.Response(text=self._openapi, content_type="application/json")

    async def ui_index(self, request: web.Request) -> web.Response:
        return self._ui("index.html")

    async def ui_file(self, request: web.Request) -> web.Response:
        return self._ui(request.match_info["file"])

    def _ui(self, name: str) -> web.Response:
        if name not in UI_FILES:  # a fixed set: no path from the request ever reaches the disk
            raise web.HTTPNotFound()
        text = (UI_DIR / name).read_text()
        resp = web.Response(text=text, content_type=UI_FILES[name])
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    async def _admin(self, request: web.Request, action: str) -> None:
        if AUTH not in request.app and self._k.has(HttpModule):
            # The dev run's agent listener is an app of its own: the API's authenticator decides.
            api = self._k.get(HttpModule)
            ctx = (await api.auth.authenticate(request.headers)).with_policy(api.policy)
        else:
            ctx = await context(request)
        if not ctx.allowed(action):
            raise policy(action)

    async def topology(self, request: web.Request) -> web.Response:
        await self._admin(request, "get_topology")
        after, wait = _long_poll(request, max_wait=30.0)
        if after is not None and wait > 0:
            await self._k.get(StoreModule).store.changes.wait(after, wait)
        return web.json_response({"topology": await topology.gather(self._k)})

    async def goal_state(self, request: web.Request) -> web.Response:
        await self._admin(request, "get_node")
        node_id = request.match_info["id"]
        if self._k.has(Nodes) and await self._k.get(Nodes).fetch(node_id) is None:
            raise not_found("Node", node_id)
        summary = topology.goal_summary(self._k, node_id)
        if summary is None:
            raise NeutronError("No southbound runs in this process.", type="ServiceUnavailable",
                               status=503)
        return web.json_response({"goal_state": summary})

    async def agent_flows(self, request: web.Request) -> web.Response:
        if self._k.has(HttpModule):
            await self._admin(request, "get_agent_flows")
        dp = datapath_of(self._k)
        if dp is None:
            raise NeutronError("No agent datapath runs in this process.", type="HTTPNotFound",
                               status=404)
        from alcor.ops.flows import flow_report

        return web.json_response({"flows": await flow_report(dp)})

    # The agent role's own listener --------------------------------------------------------------

    async def _listen(self) -> None:
        listen = self.config.get(AgentConfig).http
        if not listen:
            log.info("ops.listener_disabled")
            return
        host, port = parse_listen(listen)
        # The API's error middleware, so errors and latency metrics read the same on both ports.
        app = web.Application(middlewares=[errors])
        app[METRICS] = self.observe_request
        app.add_routes([*self._probe_routes(), web.get("/agent/flows", self.agent_flows)])
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port, reuse_address=True).start()
        addresses = self.runner.addresses or []
        self.port = addresses[0][1] if addresses else port
        log.info("ops.listening", host=host, port=self.port)


def _long_poll(request: web.Request, max_wait: float) -> tuple[int | None, float]:
    try:
        after = int(request.query["after"]) if "after" in request.query else None
        wait = min(float(request.query.get("wait", "0")), max_wait)
    except ValueError:
        raise BadRequest("after must be an integer and wait a number of seconds") from None
    if (after is not None and after < 0) or not wait >= 0:
        raise BadRequest("after and wait must not be negative")
    return after, wait


def create(config: Config, role: str = "agent") -> OpsModule:
    return OpsModule(config, role)
