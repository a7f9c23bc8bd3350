"""What each role of the program runs, beyond the controller's own modules (alcor/controller.py).

- dev: the southbound dispatcher on the in-process transport, an agent stream for this host (which
  registers the host as a node) and this host's datapath on Open vSwitch, all in one process;
- controller: the dispatcher (transport from `[southbound] transport`; "rabbitmq" needs the
  rabbitmq plugin);
- agent: the agent stream for `[node] id` over the rabbitmq plugin, and the datapath.

The one place that puts the controller's southbound and the host agent together: neither package
imports the other (they share alcor/wire.py and alcor/transport.py).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

import structlog

from alcor.agent.config import AgentConfig, NodeConfig
from alcor.agent.datapath import DatapathModule
from alcor.agent.stream import StreamModule
from alcor.api.config import ApiConfig
from alcor.config import Config
from alcor.context import Context
from alcor.kernel import Kernel
from alcor.resources.nodes import Nodes
from alcor.southbound import SouthboundModule
from alcor.southbound.dispatcher import Settings
from alcor.transport import Transport

log = structlog.get_logger("alcor.agent.stream")


class EmbeddedNode:
    """The dev run's agent: this host, registered as a node by name if no node has it, found in
    the southbound's model, on the southbound's in-process transport."""

    requires: tuple[str, ...] = ("southbound", "nodes")

    def __init__(self, node: NodeConfig, agent: AgentConfig, admin_project: str) -> None:
        self.node = node
        self.agent = agent  # its bridge and datapath type go into the node (os-vif plugs by them)
        self.admin_project = admin_project

    async def resolve(self, kernel: Kernel) -> tuple[str, Mapping[str, Any]]:
        dispatcher = kernel.get(SouthboundModule).dispatcher
        assert dispatcher is not None  # the southbound module started before us (requires)
        name = self.node.name or socket.gethostname()
        await self._register(kernel, name)
        while True:
            for nid, body in dispatcher.topology.res["node"].items():
                if (self.node.id and nid == self.node.id) or body.get("node_name") == name:
                    return nid, body
            await asyncio.sleep(0.5)  # the local node is not registered yet

    def transport(self, kernel: Kernel) -> Transport:
        return kernel.get(SouthboundModule).transport

    async def _register(self, kernel: Kernel, name: str) -> None:
        """Make sure the local host is a node, so ports can bind to it at once."""
        if not self.node.register or not kernel.has(Nodes):
            return
        nodes = kernel.get(Nodes)
        if nodes.by_name(name) is not None:
            return
        admin = Context(self.admin_project, True)
        body = {"node_name": name, "local_ip": self.node.local_ip, "bridge_name": self.agent.bridge,
                "datapath_type": self.agent.datapath_type,
                "bridge_mappings": self.agent.mappings()}
        try:
            await nodes.create_many(admin, [body])
            log.info("agent.node_registered", node_name=name, local_ip=body["local_ip"])
        except Exception as e:  # another start raced us, or the store refused: resolve anyway
            log.warning("agent.node_register_failed", node_name=name, error=str(e))


def stream_module(config: Config, embedded: bool) -> StreamModule:
    """The agent stream, given what of the controller's sections it must agree on."""
    local = EmbeddedNode(
        config.get(NodeConfig), config.get(AgentConfig), config.get(ApiConfig).admin_project
    )
    return StreamModule(
        config,
        controller_queue=config.get(Settings).controller_queue,
        local=local if embedded else None,
    )


def southbound_modules(role: str, config: Config) -> list[Any]:
    """The dispatcher and agent stream of each role (no datapath)."""
    if role == "dev":
        return [SouthboundModule(config), stream_module(config, embedded=True)]
    if role == "controller":
        return [SouthboundModule(config)]
    if role == "agent":
        return [stream_module(config, embedded=False)]
    raise ValueError(f"unknown role {role!r}")


def modules(role: str, cfg: Config) -> list[Any]:
    mods = southbound_modules(role, cfg)
    if role in ("dev", "agent"):
        mods.append(DatapathModule(cfg))
    return mods
