"""Southbound: the change log turned into ordered goal-state messages for every node.

The kernel module is `SouthboundModule` (name "southbound"). It owns the dispatcher
(dispatcher.py), which places each change (placement.py, goalstate.py) and sends it through a
transport (alcor/transport.py: in-process, or the `rabbitmq` plugin), and it answers
`node_sync(node_id)` for GET /v2.0/alcor/nodes/{id}.

Configuration: [southbound], `dispatcher.Settings` (transport = "inprocess" | "rabbitmq", and the
dispatcher's tuning: max_changes, linger, snapshots_per_batch, retry_deadline, …).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from alcor.config import Config
from alcor.context import Context
from alcor.db.backends import StoreModule
from alcor.db.store import StoreConfig
from alcor.resources.floatingips import FloatingIps
from alcor.resources.nodes import Nodes
from alcor.resources.ports import Ports
from alcor.southbound.dispatcher import MIGRATIONS, Dispatcher, Settings
from alcor.southbound.election import ControllerInfo, Election, SoleLeader
from alcor.southbound.gateways import GatewayConfig, GatewayWatch
from alcor.transport import InProcessBroker, InProcessTransport, Transport

if TYPE_CHECKING:
    from alcor.kernel import Kernel

log = structlog.get_logger("alcor.southbound")


class SouthboundModule:
    name = "southbound"

    def __init__(self, config: Config, transport: Transport | None = None) -> None:
        self.config = config
        self.transport_name = config.get(Settings).transport
        self.requires: tuple[str, ...] = ("store",)
        if transport is None and self.transport_name == "rabbitmq":
            self.requires += ("rabbitmq",)
        self._given = transport
        # The dev run's embedded agent shares this broker (alcor/roles.py hands it over).
        self.broker = InProcessBroker()
        self.transport: Transport = transport or InProcessTransport(self.broker)
        # The running dispatcher while this controller leads; otherwise an idle one whose
        # state is read from the database (`read_view`), so every controller shows the same.
        self.dispatcher: Dispatcher | None = None
        self.leader_timeout = config.get(Settings).leader_timeout
        self.election: Election | SoleLeader | None = None
        self.me: ControllerInfo | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lead: asyncio.Task[None] | None = None

    async def start(self, kernel: Kernel) -> None:
        if self._given is None and self.transport_name == "rabbitmq":
            self.transport = kernel.get(Transport)  # the rabbitmq plugin
        await self.transport.start()
        self.kernel = kernel
        store = kernel.get(StoreModule).store
        if kernel.has(Nodes):
            kernel.get(Nodes).sync = self.node_sync  # GET /v2.0/alcor/nodes/{id} shows it
        await store.migrate("southbound", MIGRATIONS)
        self.gateways = self._gateway_watch()
        if kernel.has(Nodes):
            kernel.get(Nodes).liveness = self.liveness
        self._tasks.append(asyncio.get_running_loop().create_task(
            self.gateways.run(), name="southbound.gateways"))
        self.me = ControllerInfo.here(self._api_url())
        self.dispatcher = self._dispatcher(0)
        loop = asyncio.get_running_loop()
        if store.shared:
            # Several controllers may share the database: one of them, elected, dispatches.
            url = self.config.get(StoreConfig).url
            self.election = Election(url, store, self.me, self.leader_timeout)
            self._tasks.append(loop.create_task(
                self.election.run(self._elected, self._deposed), name="southbound.election"))
            self._tasks.append(loop.create_task(self._follow_leader(), name="southbound.view"))
        else:
            # The only controller on its SQLite file leads from its start, with the next epoch.
            self.election = SoleLeader(store, self.me)
            epoch = await self.election.elect()
            await self._run_dispatcher(epoch)

    def _api_url(self) -> str:
        """Where this controller's API answers, as the other controllers list it (known once
        the API module has started: its port may have been 0, any free one)."""
        if not self.kernel.has_named("api"):
            return ""
        api = self.kernel.named("api")  # the HTTP API module (the southbound does not import it)
        host = str(getattr(getattr(api, "cfg", None), "host", "127.0.0.1"))
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"http://{host}:{api.port}" if getattr(api, "port", None) else ""

    async def ready(self) -> None:
        """Every module has started: the API's port is known (it may have been 0, any free one)."""
        if self.me is not None:
            self.me.url = self._api_url()

    def _dispatcher(self, epoch: int) -> Dispatcher:
        kernel = self.kernel
        ports = kernel.get(Ports) if kernel.has(Ports) else None
        fips = kernel.get(FloatingIps) if kernel.has(FloatingIps) else None

        async def set_statuses(statuses: dict[str, tuple[str, str]]) -> None:
            if ports is not None:
                await ports.set_statuses(statuses)

        return Dispatcher(
            kernel.get(StoreModule).store,
            self.transport,
            Settings.from_config(self.config),
            set_statuses,
            epoch=epoch,
            fence=self.election.valid if self.election is not None else None,
            set_fip_statuses=fips.set_statuses if fips is not None else None,
        )

    def _gateway_watch(self) -> GatewayWatch:
        kernel = self.kernel
        ports = kernel.get(Ports) if kernel.has(Ports) else None

        def topology() -> Any:
            d = self.dispatcher
            return d.topology if d is not None and d.epoch != 0 else None

        def reports() -> dict[str, float | None]:
            d = self.dispatcher
            return {n: st.last_report for n, st in d.nodes.items()} if d is not None else {}

        async def set_statuses(statuses: dict[str, tuple[str, str]]) -> None:
            if ports is not None:
                await ports.set_statuses(statuses)

        async def rebind(port_id: str, host: str) -> None:
            if ports is not None:
                await ports.update_one(Context("", True), port_id, {"binding:host_id": host}, None)

        def on_alive(node: str) -> None:
            d = self.dispatcher
            if d is not None and d.epoch != 0:
                d.request_snapshot(node, "alive")

        def leading() -> bool:
            return self.election is not None and self.election.valid()

        return GatewayWatch(self.config.get(GatewayConfig), topology, reports, set_statuses,
                            rebind, leading, on_alive)

    def liveness(self, node_id: str) -> dict[str, Any]:
        """What /v2.0/agents shows of a node's agent: alive, and when it last reported."""
        d = self.dispatcher
        st = d.nodes.get(node_id) if d is not None else None
        last = st.last_report if st is not None else None
        return {"alive": self.gateways.alive(node_id) if d is not None and d.epoch != 0
                else last is not None and time.time() - last <= self.gateways.settings.agent_down_time,
                "heartbeat_timestamp": None if last is None else
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last)),
                "started_at": _iso(self.gateways.started)}

    async def _run_dispatcher(self, epoch: int) -> None:
        d = self._dispatcher(epoch)
        await d.open()  # the state at the watermark, as the previous leader committed it
        d.start()
        self.dispatcher = d
        log.info("dispatch.leading", epoch=epoch, watermark=d.watermark)

    async def _elected(self, epoch: int) -> None:
        # Loaded in a task: the election keeps pinging its session meanwhile.
        self._lead = asyncio.get_running_loop().create_task(self._lead_with(epoch))

    async def _lead_with(self, epoch: int) -> None:
        try:
            await self._run_dispatcher(epoch)
            d = self.dispatcher
            if d is not None and d._task is not None:
                await d._task  # returns only when deposed (a commit found a newer epoch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dispatch.lead_failed", epoch=epoch)
        # A leader that cannot dispatch gives the lead up, so that another can.
        if isinstance(self.election, Election):
            self.election.resign()

    async def _deposed(self) -> None:
        if self._lead is not None:
            self._lead.cancel()
            try:
                await self._lead
            except (asyncio.CancelledError, Exception):
                pass
            self._lead = None
        d = self.dispatcher
        self.dispatcher = self._dispatcher(0)
        if d is not None:
            await d.stop()  # its consumers go: unacknowledged reports return to the queue

    async def _follow_leader(self) -> None:
        """While standing by, refresh the view of the leader's state every second."""
        while True:
            await asyncio.sleep(1.0)
            d = self.dispatcher
            if d is not None and d.epoch == 0:
                try:
                    await d.read_view()
                except Exception as e:
                    log.info("southbound.view_failed", error=str(e))

    async def stop(self) -> None:
        for t in [*self._tasks, *([self._lead] if self._lead else [])]:
            t.cancel()
        for t in [*self._tasks, *([self._lead] if self._lead else [])]:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self.election is not None:
            await self.election.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self._given is None and self.transport_name != "rabbitmq":
            await self.transport.stop()

    async def leadership(self) -> dict[str, Any]:
        """Who leads, since when, with which epoch, and every controller (from the database)."""
        store = self.kernel.get(StoreModule).store
        row = await store.fetchone("SELECT epoch, holder, since FROM sb_leader WHERE id = 1")
        rows = await store.fetchall(
            "SELECT id, host, url, started_at, seen_at FROM sb_controllers ORDER BY started_at")
        now = time.time()
        holder = row[1] if row else None
        me = self.me.id if self.me else None
        controllers = []
        for cid, host, url, started, seen in rows:
            alive = cid == me or (store.shared and now - seen < 3 * self.leader_timeout)
            if not alive and now - seen > 3600:
                continue  # long gone
            if cid == me and self.me is not None:
                url = self.me.url
            controllers.append({"id": cid, "host": host, "url": url, "started_at": _iso(started),
                                "seen_at": _iso(seen), "alive": alive, "leader": cid == holder})
        leading = self.election is not None and self.election.valid()
        return {"leader": holder, "epoch": int(row[0]) if row else 0,
                "since": _iso(row[2]) if row else None,
                "this_controller": me, "role": "leader" if leading else "standby",
                "controllers": controllers}

    def node_sync(self, node_id: str) -> dict[str, Any]:
        if self.dispatcher is None:
            return {}
        return self.dispatcher.node_sync(node_id)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v2.0/alcor/southbound", self._show)]

    async def _show(self, request: web.Request) -> web.Response:
        """Operator view: who leads (any controller says), watermark and counters (the leader's
        own; a standby shows the watermark and nodes as the leader recorded them)."""
        d = self.dispatcher
        if d is None:
            return web.json_response({"southbound": {}})
        m = d.metrics
        lead = await self.leadership()
        return web.json_response(
            {
                "southbound": {
                    **lead,
                    "watermark": d.watermark,
                    "last_rev": d.store.changes.last_rev,
                    "nodes": len(d.nodes),
                    "batches": m.batches,
                    "changes": m.changes,
                    "messages": m.messages,
                    "ops": m.ops,
                    "snapshots": m.snapshots,
                    "publish_failures": m.publish_failures,
                    "agent_messages": m.agent_messages,
                    "agent_rejected": m.agent_rejected,
                    "digest_mismatches": m.digest_mismatches,
                    "snapshots_pending": sum(1 for s in d.nodes.values() if s.need_snapshot),
                }
            }
        )


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def create(config: Config) -> SouthboundModule:
    return SouthboundModule(config)
