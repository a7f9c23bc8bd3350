"""Zeta gateway plugin: VPCs whose traffic goes through a Zeta gateway cluster (ZGC).

How a VPC gets a gateway: create a gateway resource for its network,

    POST /v2.0/alcor/gateways {"gateway": {"vpc_id": "<network id>"}}  -> 201, status "pending"

The API answers at once; a worker per VPC then registers the VPC with Zeta's management API
(`POST /vpcs`), posts the VPC's bound ports (`POST /ports`), and sets the gateway "ready" with
the FWD destinations and OAM port Zeta gave, or "failed" with `status_reason` (after retries, and
after rolling the registration back). Every change of the gateway is a change-log row of type
"gateway", which the southbound ships to the VPC's member hosts (`vpc.gateway_ids`), whose agents
then redirect the VPC to the cluster. Ports created, rebound or deleted later are posted or
deleted (`DELETE /ports/{id}`) by following the change log, so a slow or absent Zeta never
blocks or fails an API call. Deleting the gateway or the network deregisters the VPC
(`DELETE /vpcs/{id}`). A failed gateway stays failed: delete and re-create it to try again.

Config [zeta]: url ("http://127.0.0.1:8080"), timeout (5 s per call), attempts (5),
backoff (0.2 s, doubling), backoff_max (5 s), refresh_interval (30 s: re-reads each ready
gateway's FWD set from Zeta and retries ports that could not be posted), standin (false: true
serves the stand-in management API on `url`, for the dev run; see plugins/zeta/standin.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast
from urllib.parse import urlparse

import structlog
from aiohttp import web

from alcor.api.app import Api
from alcor.api.auth import context
from alcor.config import Config
from alcor.context import Context
from alcor.db.changelog import Change
from alcor.db.store import Tx
from alcor.errors import Conflict, not_found, policy
from alcor.resources.base import Manager
from alcor.resources.networks import Networks
from alcor.resources.nodes import Nodes
from alcor.resources.schema import (
    Attr,
    Resource,
    any_dict,
    integer,
    list_of,
    nullable,
    one_of,
    standard,
    string,
    uuid_str,
)
from alcor.wire import ROUTER_INTERFACE

from .client import ZetaClient, ZetaError

if TYPE_CHECKING:
    from alcor.kernel import Kernel

log = structlog.get_logger("alcor.zeta")
M = TypeVar("M")

PATH = "/v2.0/alcor/gateways"
PENDING, READY, FAILED = "pending", "ready", "failed"
DEFAULT_OAM_PORT = 8300
FOLLOW_POLL = 0.2  # seconds the change-log follower waits at most before checking for stop

GATEWAY = standard(Resource("gateway", "gateways", "Gateway", parent_field="vpc_id")).add(
    Attr("vpc_id", uuid_str, optional=False),
    Attr("type", one_of("zeta"), default="zeta"),
    Attr("status", one_of(PENDING, READY, FAILED), post=False),
    Attr("status_reason", string(1024), post=False, filterable=False),
    Attr("zgc_id", nullable(string()), post=False),
    Attr(
        "destinations",
        list_of(any_dict),
        post=False,
        filterable=False,
        sortable=False,
        kind="array",
    ),
    Attr("oam_port", integer(1, 65535), post=False, kind="integer"),
)


class Gateways(Manager):
    """The gateway resource (change-log type "gateway"); one per VPC."""

    res = GATEWAY
    type = "gateway"

    def __init__(self, plugin: ZetaModule) -> None:
        super().__init__()
        self.plugin = plugin
        self.by_vpc: dict[str, str] = {}  # vpc id -> gateway id

    async def load(self) -> None:
        self.by_vpc = {b["vpc_id"]: b["id"] for b in await self.list_all(Context("", True))}

    def vpc_of(self, body: dict[str, Any]) -> str | None:
        return body.get("vpc_id")

    def reset(self) -> None:
        self.by_vpc.clear()

    def followed(self, change: Change) -> None:
        if change.op == "create" and change.vpc_id:
            self.by_vpc[change.vpc_id] = change.id
        elif change.op == "delete" and change.vpc_id and self.by_vpc.get(change.vpc_id) == change.id:
            del self.by_vpc[change.vpc_id]

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        vpc_id = given["vpc_id"]
        network = await self.kernel.get(Networks).fetch(vpc_id, tx)
        if network is None or not (ctx.is_admin or network.get("project_id") == ctx.project_id):
            raise not_found("Network", vpc_id)
        if vpc_id in self.by_vpc:
            raise Conflict(
                f"Network {vpc_id} already has gateway {self.by_vpc[vpc_id]}.", type="GatewayInUse"
            )
        given.setdefault("project_id", network.get("project_id"))
        body = self.new_body(ctx, given)
        body.update(
            status=PENDING,
            status_reason="",
            zgc_id=None,
            destinations=[],
            oam_port=DEFAULT_OAM_PORT,
        )
        self.by_vpc[vpc_id] = body["id"]  # taken now, so a second create in flight gets 409

        def release() -> None:
            self.by_vpc.pop(vpc_id, None)

        tx.after_rollback(release)
        await self.insert(tx, body)
        tx.after_commit(lambda: self.plugin.enqueue(vpc_id, ("register", body["id"])))
        return body

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        await self.remove(tx, current)
        vpc_id = current["vpc_id"]

        def gone() -> None:
            if self.by_vpc.get(vpc_id) == current["id"]:
                del self.by_vpc[vpc_id]
            self.plugin.enqueue(vpc_id, ("deregister", current["id"]))

        tx.after_commit(gone)

    async def current(self, gateway_id: str) -> dict[str, Any] | None:
        """The stored gateway, read on the writer: a worker woken by a commit must see it (the
        reader connection may still hold an older snapshot)."""
        async with self.store.transaction() as tx:
            return await self.fetch(gateway_id, tx)

    async def set_state(self, gateway_id: str, **changes: Any) -> dict[str, Any] | None:
        """Record what Zeta said (status, destinations, …); None if the gateway went meanwhile."""
        async with self.store.transaction() as tx:
            current = await self.fetch(gateway_id, tx)
            if current is None:
                return None
            if all(current.get(k) == v for k, v in changes.items()):
                return current
            return await self.replace(tx, current, changes)


@dataclass(frozen=True)
class ZetaConfig:
    """[zeta] (with "zeta" in [kernel] plugins)"""

    SECTION: ClassVar[str] = "zeta"
    url: str = "http://127.0.0.1:8080"  # Zeta's management API
    timeout: float = 5.0  # seconds per call
    attempts: int = 5
    backoff: float = 0.2  # seconds before the first retry, doubling
    backoff_max: float = 5.0
    refresh_interval: float = 30.0  # re-read each ready gateway's FWD set; retry ports Zeta did not take
    standin: bool = False  # true: serve the Zeta stand-in's management API on `url` (dev run)


SECTIONS = (ZetaConfig,)  # found by alcor/sections.py


class ZetaModule:
    """Kernel module "zeta": the gateway API, Zeta registration workers, the change-log follower."""

    name = "zeta"
    requires: tuple[str, ...] = ("store", "networks", "ports", "nodes")

    def __init__(self, config: Config) -> None:
        self.config = config
        cfg = config.get(ZetaConfig)
        self.url = cfg.url
        self.client = ZetaClient(
            self.url,
            timeout=cfg.timeout,
            attempts=cfg.attempts,
            backoff=cfg.backoff,
            backoff_max=cfg.backoff_max,
        )
        self.refresh_interval = cfg.refresh_interval
        self.run_standin = cfg.standin
        self.gateways = Gateways(self)
        self.kernel: Kernel | None = None
        self._queues: dict[str, list[tuple[str, Any]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._registered: dict[str, set[str]] = {}  # vpc -> port ids Zeta has
        self._unsynced: dict[str, dict[str, dict[str, Any]]] = {}  # vpc -> ports to retry
        self._tasks: list[asyncio.Task[None]] = []
        self._standin: Any = None
        self._stopping = False
        self.counters = {
            "registered": 0,
            "failed": 0,
            "deregistered": 0,
            "ports_posted": 0,
            "ports_deleted": 0,
            "port_failures": 0,
            "refreshed": 0,
        }

    # --- lifecycle ---

    async def start(self, kernel: Kernel) -> None:
        self.kernel = kernel
        if self.run_standin:
            from .standin import Standin

            u = urlparse(self.url)
            self._standin = Standin(
                [{"ip": "127.0.0.9", "mac": "02:00:00:00:00:09"}],
                host=u.hostname or "127.0.0.1",
                port=u.port or 8080,
                run_fwds=False,
            )
            await self._standin.start()
        await self.gateways.start(kernel)
        store = self.gateways.store
        since = store.changes.last_rev
        loop = asyncio.get_running_loop()
        # A restart is another reconcile: pending gateways register again, ready ones re-post
        # their ports (Zeta treats a port it has as an update).
        for gw in await self.gateways.list_all(Context("", True)):
            if gw["status"] == PENDING:
                self.enqueue(gw["vpc_id"], ("register", gw["id"]))
            elif gw["status"] == READY:
                self.enqueue(gw["vpc_id"], ("sync_ports", gw["id"]))
        self._tasks.append(loop.create_task(self._follow(since), name="zeta.follow"))
        if self.refresh_interval > 0:
            self._tasks.append(loop.create_task(self._refresh_loop(), name="zeta.refresh"))
        log.info("zeta.started", url=self.url, gateways=len(self.gateways.by_vpc))

    async def stop(self) -> None:
        # The follower is not cancelled inside ChangeLog.wait: cancelling an asyncio.Condition
        # wait there was seen to hang the stop (Python 3.11); it sees the flag within a poll.
        self._stopping = True
        follower = [t for t in self._tasks if t.get_name() == "zeta.follow"]
        if follower:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(follower[0]), FOLLOW_POLL * 4)
        for t in [*self._tasks, *self._workers.values()]:
            t.cancel()
        for t in [*self._tasks, *self._workers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        self._workers.clear()
        await self.client.close()
        if self._standin is not None:
            await self._standin.stop()

    def routes(self) -> list[web.RouteDef]:
        # The generic Neutron handlers, for this one collection (the API module mounts them).
        shim = cast("Kernel", SimpleNamespace(config=self.config))
        api = Api(shim, [self.gateways], {"gateways": PATH})
        routes = [r for r in api.routes() if getattr(r, "path", "").startswith(PATH)]
        return [*routes, web.get("/v2.0/alcor/zeta", self._show)]

    async def _show(self, request: web.Request) -> web.Response:
        """Operator view (admin): Zeta's URL, counters, VPCs with work queued."""
        if not (await context(request)).allowed("get_zeta"):
            raise policy("get_zeta")
        return web.json_response(
            {
                "zeta": {
                    "url": self.url,
                    "counters": self.counters,
                    "calls": self.client.calls,
                    "retries": self.client.retries,
                    "gateways": len(self.gateways.by_vpc),
                    "busy_vpcs": sorted(v for v, t in self._workers.items() if not t.done()),
                    "unsynced_ports": sum(len(p) for p in self._unsynced.values()),
                }
            }
        )

    # --- per-VPC workers: one at a time per VPC, VPCs independent of each other ---

    def enqueue(self, vpc_id: str, job: tuple[str, Any]) -> None:
        self._queues.setdefault(vpc_id, []).append(job)
        worker = self._workers.get(vpc_id)
        if worker is None or worker.done():
            self._workers[vpc_id] = asyncio.get_running_loop().create_task(
                self._work(vpc_id), name=f"zeta.vpc.{vpc_id}"
            )

    async def idle(self) -> None:
        """Until no VPC has work queued or running (tests, shutdown)."""
        while any(not t.done() for t in self._workers.values()):
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def _work(self, vpc_id: str) -> None:
        queue = self._queues[vpc_id]
        while queue:
            kind, arg = queue.pop(0)
            try:
                await getattr(self, f"_{kind}")(vpc_id, arg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("zeta.job_failed", vpc=vpc_id, job=kind)
        self._queues.pop(vpc_id, None)

    async def _register(self, vpc_id: str, gateway_id: str) -> None:
        gw = await self.gateways.current(gateway_id)
        if gw is None or gw["status"] != PENDING:
            return
        network = self.kernel_get(Networks).index.get(vpc_id)
        if network is None:
            await self.gateways.set_state(
                gateway_id, status=FAILED, status_reason="network not found"
            )
            return
        vni = int(network["provider:segmentation_id"])
        log.info("zeta.registering", vpc=vpc_id, gateway=gateway_id, vni=vni)
        try:
            reply = await self.client.register_vpc(vpc_id, vni)
        except ZetaError as exc:
            self.counters["failed"] += 1
            log.warning("zeta.register_failed", vpc=vpc_id, gateway=gateway_id, error=str(exc))
            await self.gateways.set_state(gateway_id, status=FAILED, status_reason=str(exc))
            return
        ports = await self._port_payloads(vpc_id)
        try:
            await self.client.post_ports(list(ports.values()))
        except ZetaError as exc:
            # Half a registration is worse than none: take the VPC back out of Zeta.
            self.counters["failed"] += 1
            log.warning("zeta.register_ports_failed", vpc=vpc_id, ports=len(ports), error=str(exc))
            with contextlib.suppress(ZetaError):
                await self.client.deregister_vpc(vpc_id)
            await self.gateways.set_state(
                gateway_id, status=FAILED, status_reason=f"ports: {exc}; registration rolled back"
            )
            return
        self._registered[vpc_id] = set(ports)
        port_ibo = reply.get("port_ibo", DEFAULT_OAM_PORT)
        state = await self.gateways.set_state(
            gateway_id,
            status=READY,
            status_reason="",
            zgc_id=reply.get("zgc_id"),
            destinations=_destinations(reply.get("gws")),
            oam_port=int(port_ibo) if str(port_ibo).isdigit() else DEFAULT_OAM_PORT,
        )
        if state is None:  # deleted while Zeta was answering: undo
            with contextlib.suppress(ZetaError):
                await self.client.deregister_vpc(vpc_id)
            return
        self.counters["registered"] += 1
        self.counters["ports_posted"] += len(ports)
        log.info(
            "zeta.registered",
            vpc=vpc_id,
            gateway=gateway_id,
            zgc=reply.get("zgc_id"),
            fwds=len(state["destinations"]),
            ports=len(ports),
        )

    async def _deregister(self, vpc_id: str, gateway_id: str) -> None:
        self._registered.pop(vpc_id, None)
        self._unsynced.pop(vpc_id, None)
        try:
            await self.client.deregister_vpc(vpc_id)
        except ZetaError as exc:
            log.warning("zeta.deregister_failed", vpc=vpc_id, gateway=gateway_id, error=str(exc))
            return
        self.counters["deregistered"] += 1
        log.info("zeta.deregistered", vpc=vpc_id, gateway=gateway_id)

    async def _sync_ports(self, vpc_id: str, gateway_id: str) -> None:
        ports = await self._port_payloads(vpc_id)
        await self._post(vpc_id, ports)

    async def _port_up(self, vpc_id: str, body: dict[str, Any]) -> None:
        if not self._ready(vpc_id):
            return  # a registration in the queue posts every port of the VPC
        payload = self._payload(body)
        if payload is None:
            if body["id"] in self._registered.get(vpc_id, set()):
                await self._port_down(vpc_id, body["id"])  # unbound: Zeta cannot reach it
            return
        await self._post(vpc_id, {body["id"]: payload})

    async def _post(self, vpc_id: str, ports: dict[str, dict[str, Any]]) -> None:
        try:
            await self.client.post_ports(list(ports.values()))
        except ZetaError as exc:
            self.counters["port_failures"] += len(ports)
            self._unsynced.setdefault(vpc_id, {}).update(ports)
            log.warning("zeta.ports_post_failed", vpc=vpc_id, ports=len(ports), error=str(exc))
            return
        self.counters["ports_posted"] += len(ports)
        self._registered.setdefault(vpc_id, set()).update(ports)
        for pid in ports:
            self._unsynced.get(vpc_id, {}).pop(pid, None)

    async def _port_down(self, vpc_id: str, port_id: str) -> None:
        self._unsynced.get(vpc_id, {}).pop(port_id, None)
        if port_id not in self._registered.get(vpc_id, set()):
            return
        try:
            await self.client.delete_port(port_id)
        except ZetaError as exc:
            self.counters["port_failures"] += 1
            log.warning("zeta.port_delete_failed", vpc=vpc_id, port=port_id, error=str(exc))
            return
        self._registered[vpc_id].discard(port_id)
        self.counters["ports_deleted"] += 1

    async def _refresh(self, vpc_id: str, gateway_id: str) -> None:
        """Follow Zeta's FWD set; retry ports that could not be posted."""
        gw = await self.gateways.current(gateway_id)
        if gw is None or gw["status"] != READY:
            return
        try:
            reply = await self.client.get_vpc(vpc_id)
        except ZetaError as exc:
            log.warning("zeta.refresh_failed", vpc=vpc_id, error=str(exc))
            return
        dests = _destinations(reply.get("gws"))
        if dests and dests != gw["destinations"]:
            await self.gateways.set_state(gateway_id, destinations=dests)
            log.info("zeta.fwds_changed", vpc=vpc_id, gateway=gateway_id, fwds=len(dests))
        self.counters["refreshed"] += 1
        retry = self._unsynced.get(vpc_id)
        if retry:
            await self._post(vpc_id, dict(retry))

    async def refresh(self) -> None:
        """Queue a refresh of every ready gateway (also run every refresh_interval)."""
        for gw in await self.gateways.list_all(Context("", True)):
            if gw["status"] == READY:
                self.enqueue(gw["vpc_id"], ("refresh", gw["id"]))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("zeta.refresh_loop_failed")

    # --- the change log: ports and networks of VPCs with a gateway ---

    async def _follow(self, since: int) -> None:
        changes = self.gateways.store.changes
        while not self._stopping:
            await changes.wait(since, timeout=FOLLOW_POLL)
            if self._stopping or changes.last_rev <= since:
                continue
            try:
                rows = await changes.read(since, 1000)
            except Exception:
                log.exception("zeta.follow_read_failed", since=since)
                await asyncio.sleep(1)
                continue
            for c in rows:
                self._on_change(c)
                since = c.rev

    def _on_change(self, c: Change) -> None:
        vpc_id = c.vpc_id
        if vpc_id is None or vpc_id not in self.gateways.by_vpc:
            return
        if c.type == "port":
            if c.op == "delete":
                self.enqueue(vpc_id, ("port_down", c.id))
            elif c.body is not None:
                self.enqueue(vpc_id, ("port_up", c.body))
        elif c.type == "network" and c.op == "delete":
            self.enqueue(vpc_id, ("network_gone", self.gateways.by_vpc[vpc_id]))

    async def _network_gone(self, vpc_id: str, gateway_id: str) -> None:
        """The network went: its gateway goes too (the delete row deregisters it)."""
        with contextlib.suppress(Exception):
            await self.gateways.delete_one(Context("", True), gateway_id, None)

    # --- helpers ---

    def kernel_get(self, cls: type[M]) -> M:
        assert self.kernel is not None
        return self.kernel.get(cls)

    def _ready(self, vpc_id: str) -> bool:
        return vpc_id in self._registered

    def _payload(self, port: dict[str, Any]) -> dict[str, Any] | None:
        """A port as Zeta wants it; None when Zeta cannot reach it (unbound, a router's leg)."""
        if port.get("device_owner") == ROUTER_INTERFACE:
            return None
        node = self.kernel_get(Nodes).by_name(port.get("binding:host_id") or "")
        if node is None:
            return None
        return {
            "port_id": port["id"],
            "vpc_id": port["network_id"],
            "ips_port": [{"ip": f["ip_address"], "vip": ""} for f in port.get("fixed_ips") or ()],
            "mac_port": port.get("mac_address"),
            "ip_node": node.get("local_ip"),
            "mac_node": node.get("mac_address"),
        }

    async def _port_payloads(self, vpc_id: str) -> dict[str, dict[str, Any]]:
        async with self.gateways.store.transaction() as tx:  # on the writer: see every commit
            rows = await tx.fetchall(
                "SELECT body FROM resources WHERE type = 'port' AND parent_id = ?", (vpc_id,)
            )
        out = {}
        for (text,) in rows:
            payload = self._payload(json.loads(text))
            if payload is not None:
                out[payload["port_id"]] = payload
        return out


def _destinations(gws: Any) -> list[dict[str, str]]:
    out = [
        {"ip": str(g.get("ip")), "mac": str(g.get("mac", "")).lower()}
        for g in gws or ()
        if isinstance(g, dict) and g.get("ip") and g.get("mac")
    ]
    return sorted(out, key=lambda d: (ipaddress.ip_address(d["ip"]), d["mac"]))


def create(config: Config) -> ZetaModule:
    return ZetaModule(config)
