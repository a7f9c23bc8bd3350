"""Agent liveness and where each router's gateway runs, as pure functions of the topology.

A node is **down** when its agent has said nothing (hello, status: the agents repeat their status
every `[agent] report_interval` seconds) for longer than `[southbound] agent_down_time`; a node not
heard since this controller started is counted from the start (a restarted controller does not
declare every host dead at once). Neutron's `agent_down_time` has the same meaning.

A router's gateway port (`network:router_gateway`) runs on a **gateway node**: a node whose
`bridge_mappings` name the physical network of the gateway's external network, unless an admin
turned its L3 agent's `admin_state_up` off (then its gateways move away). Every such node is
a candidate; the router's own order over them is rendezvous hashing of (router, node), so routers
spread over the gateway nodes and, when one goes down, only its routers move (each to its next
live candidate) and nothing moves back when it returns. Neutron's L3 agent scheduler and OVN's
gateway chassis priorities play the same part.

    >>> nodes = {"a": {"node_name": "gw-a", "bridge_mappings": {"physnet1": "br-ex"}},
    ...          "b": {"node_name": "gw-b", "bridge_mappings": {"physnet1": "br-ex"}}}
    >>> sorted(candidates(nodes, "physnet1", "router-1"))
    ['a', 'b']
    >>> sorted(down_nodes({"a": 100.0, "b": None}, now=120.0, started=50.0, timeout=15.0))
    ['a', 'b']
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from alcor.config import ConfigError
from alcor.resources.nodes import hosts_gateways
from alcor.southbound.goalstate import Topology
from alcor.wire import ROUTER_GATEWAY

log = structlog.get_logger("alcor.southbound.gateways")

def down_nodes(
    last_report: Mapping[str, float | None], now: float, started: float, timeout: float
) -> set[str]:
    """Nodes whose agent has been silent for longer than `timeout` seconds (wall clock)."""
    return {n for n, last in last_report.items() if now - max(last or 0.0, started) > timeout}


def _rank(router_id: str, node_id: str) -> bytes:
    return hashlib.blake2b(f"{router_id}/{node_id}".encode(), digest_size=8).digest()


def candidates(nodes: Mapping[str, Mapping[str, Any]], physnet: str, router_id: str) -> list[str]:
    """The gateway nodes for `router_id` on `physnet`, in the router's order of preference."""
    found = [n for n, b in nodes.items() if hosts_gateways(dict(b), physnet)]
    return sorted(found, key=lambda n: _rank(router_id, n))


def physnet_of(t: Topology, network_id: str) -> str | None:
    net = t.res["network"].get(network_id) or {}
    if net.get("provider:network_type") != "flat":
        return None
    p = net.get("provider:physical_network")
    return str(p) if p else None


def gateway_ports(t: Topology) -> Iterable[tuple[str, dict[str, Any]]]:
    for pid, p in t.res["port"].items():
        if p.get("device_owner") == ROUTER_GATEWAY:
            yield pid, p


def schedule(t: Topology, down: set[str]) -> dict[str, str]:
    """{gateway port id: node name to bind it to} for the gateway ports that must move: unbound
    ones, and those whose node is down or no longer maps their physical network. A port with no
    live candidate stays where it is (its status shows it is down)."""
    nodes = t.res["node"]
    moves: dict[str, str] = {}
    for pid, port in gateway_ports(t):
        physnet = physnet_of(t, str(port.get("network_id")))
        if physnet is None:
            continue
        ranked = candidates(nodes, physnet, str(port.get("device_id")))
        host = str(port.get("binding:host_id") or "")
        current = t.node_named(host) if host else None
        if current in ranked and current not in down:
            continue
        live = [n for n in ranked if n not in down]
        if not live:
            continue
        name = str(nodes[live[0]].get("node_name") or "")
        if name and name != host:
            moves[pid] = name
    return moves


@dataclass(frozen=True)
class GatewayConfig:
    """[gateway]: agent liveness, and how often the gateways' placement is checked."""

    SECTION: ClassVar[str] = "gateway"
    # seconds an agent may stay silent before its node is down: its ports go DOWN and its
    # router gateways move (Neutron's agent_down_time); keep it above 2x [agent] report_interval
    agent_down_time: float = 15.0
    check_interval: float = 1.0  # seconds between liveness and gateway placement checks

    def check(self) -> None:
        if not 0.1 <= self.check_interval <= self.agent_down_time:
            raise ConfigError("gateway.check_interval must be 0.1..agent_down_time seconds")


Reports = Callable[[], Mapping[str, float | None]]


class GatewayWatch:
    """The controller's loop over the pure rules above, while it dispatches: nodes that went
    down get their ports set DOWN; gateway ports that must move are rebound (a port update in
    the change log, so placement moves the router's gateway like any rebinding)."""

    def __init__(
        self,
        settings: GatewayConfig,
        topology: Callable[[], Topology | None],
        reports: Reports,
        set_statuses: Callable[[dict[str, tuple[str, str]]], Awaitable[None]],
        rebind: Callable[[str, str], Awaitable[None]],
        leading: Callable[[], bool],
        on_alive: Callable[[str], None] = lambda node: None,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.reports = reports
        self.set_statuses = set_statuses
        self.rebind = rebind
        self.leading = leading
        self.on_alive = on_alive
        self.started = time.time()
        self.down: set[str] = set()
        self.moves = 0

    def alive(self, node_id: str) -> bool:
        return node_id not in self.down

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gateway.check_failed")

    async def check(self) -> None:
        t = self.topology()
        if t is None or not self.leading():
            return
        reports = self.reports()
        seen = {n: reports.get(n) for n in t.res["node"]}
        down = down_nodes(seen, time.time(), self.started, self.settings.agent_down_time)
        for n in sorted(down - self.down):
            name = str(t.res["node"][n].get("node_name") or "")
            log.warning("agent.down", node=n, node_name=name, last_report=seen.get(n))
            ports = sorted(t.ports_by_host.get(name, ()))
            if ports:
                await self.set_statuses({p: ("DOWN", name) for p in ports})
        for n in sorted(self.down - down):
            # A snapshot makes the agent report every local port again (they were set DOWN).
            log.info("agent.alive", node=n)
            self.on_alive(n)
        self.down = down
        for pid, host in sorted(schedule(t, down).items()):
            log.info("gateway.moved", port=pid, host=host)
            self.moves += 1
            await self.rebind(pid, host)
