"""Southbound: the change log turned into ordered goal-state messages for every node.

The kernel module is `SouthboundModule` (name "southbound"). It owns the dispatcher
(dispatcher.py), which places each change (placement.py, goalstate.py) and sends it through a
transport (alcor/transport.py: in-process, or the `rabbitmq` plugin), and it answers
`node_sync(node_id)` for GET /v2.0/alcor/nodes/{id}.

Configuration: [southbound], `dispatcher.Settings` (transport = "inprocess" | "rabbitmq", and the
dispatcher's tuning: max_changes, linger, snapshots_per_batch, retry_deadline, …).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from alcor.config import Config
from alcor.southbound.dispatcher import Dispatcher, Settings
from alcor.transport import InProcessBroker, InProcessTransport, Transport

if TYPE_CHECKING:
    from alcor.kernel import Kernel


class SouthboundModule:
    name = "southbound"

    def __init__(self, config: Config, transport: Transport | None = None) -> None:
        self.config = config
        self.transport_name = config.get(Settings).transport
        self.requires: tuple[str, ...] = ("store",)
        if transport is None and self.transport_name == "rabbitmq":
            self.requires += ("rabbitmq",)
        self._given = transport
        # The dev run's embedded agent shares this broker (kernel.get("southbound").transport).
        self.broker = InProcessBroker()
        self.transport: Transport = transport or InProcessTransport(self.broker)
        self.dispatcher: Dispatcher | None = None

    async def start(self, kernel: Kernel) -> None:
        if self._given is None and self.transport_name == "rabbitmq":
            self.transport = kernel.get("rabbitmq")
        await self.transport.start()

        async def set_statuses(statuses: dict[str, tuple[str, str]]) -> None:
            if kernel.has("ports"):
                await kernel.get("ports").set_statuses(statuses)

        self.dispatcher = Dispatcher(
            kernel.get("store").store,
            self.transport,
            Settings.from_config(self.config),
            set_statuses,
        )
        await self.dispatcher.open()
        self.dispatcher.start()

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self._given is None and self.transport_name != "rabbitmq":
            await self.transport.stop()

    def node_sync(self, node_id: str) -> dict[str, Any]:
        if self.dispatcher is None:
            return {}
        return self.dispatcher.node_sync(node_id)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v2.0/alcor/southbound", self._show)]

    async def _show(self, request: web.Request) -> web.Response:
        """Operator view: watermark and counters."""
        d = self.dispatcher
        if d is None:
            return web.json_response({"southbound": {}})
        m = d.metrics
        return web.json_response(
            {
                "southbound": {
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


def create(config: Config) -> SouthboundModule:
    return SouthboundModule(config)
