"""A controller's southbound and its agents in one event loop, on a real SQLite file.

Changes are written the way the core writes them: resource row and change-log row in one
transaction (tests/support/world.py `write`). The transport is in-process or RabbitMQ; "crashing" the controller
cancels the dispatcher task wherever it is and starts a fresh one on the same file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from alcor.agent.stream import AgentStream
from alcor.db.changelog import Change
from alcor.db.store import SqliteStore, Store
from alcor.southbound.dispatcher import Dispatcher, Settings
from alcor.southbound.goalstate import goal_state
from alcor.transport import Address, Transport
from alcor.wire import digest
from tests.support.wait import eventually
from tests.support.world import World, write


class Harness:
    def __init__(
        self,
        path: Path,
        transport_factory: Callable[[], Transport],
        settings: Settings | None = None,
        vpc_channel: str = "queue",
    ) -> None:
        self.path = path
        self.make_transport = transport_factory
        # VPCs of two nodes or more on their multicast chain, so the harness's scenes (2-3 hosts)
        # exercise both kinds of chain; the program's default (16) keeps small VPCs unicast.
        self.settings = settings or Settings(
            linger=0.001, retry_deadline=3.0, repair_interval=0.5, multicast_nodes=2,
            unicast_nodes=1, vpc_channel=vpc_channel,  # type: ignore[arg-type]
        )
        self.world = World()
        self.store: Store | None = None
        self.transport: Transport | None = None
        self.dispatcher: Dispatcher | None = None
        self.agents: dict[str, AgentStream] = {}
        self.agent_transports: list[Transport] = []
        self.statuses: dict[str, str] = {}

    async def start(self) -> Dispatcher:
        self.store = SqliteStore(self.path, "NORMAL")
        await self.store.open()
        self.transport = self.make_transport()
        await self.transport.start()

        async def set_statuses(s: dict[str, tuple[str, str]]) -> None:
            for pid, (status, host) in s.items():
                port = self.world.res["port"].get(pid)
                if port is not None and port["binding:host_id"] == host:
                    self.statuses[pid] = status

        self.dispatcher = Dispatcher(self.store, self.transport, self.settings, set_statuses)
        await self.dispatcher.open()
        self.dispatcher.start()
        return self.dispatcher

    async def crash(self) -> None:
        """Cancel the dispatcher wherever it is (no drain, no final commit) and drop the store."""
        assert self.dispatcher is not None and self.store is not None and self.transport is not None
        await self.dispatcher.stop()
        await self.transport.stop()
        await self.store.close()
        self.dispatcher = None

    async def stop(self) -> None:
        for a in self.agents.values():
            await a.stop()
        for t in self.agent_transports:
            await t.stop()
        if self.dispatcher is not None:
            await self.crash()

    async def commit(self, changes: Iterable[Change]) -> int:
        assert self.store is not None
        return await write(self.store, list(changes))

    def address(self, node_id: str) -> Address:
        assert self.dispatcher is not None
        body = self.world.res["node"][node_id]
        return Address(body["mq_url"], body["mq_vhost"], body["mq_exchange"], body["mq_queue"])

    async def add_agent(
        self, node_id: str, transport: Transport | None = None, **kw: Any
    ) -> AgentStream:
        if transport is None:
            transport = self.make_transport()
            await transport.start()
            self.agent_transports.append(transport)
        addr = self.address(node_id)
        kw.setdefault("resync_interval", 0.5)
        kw.setdefault("status_delay", 0.01)
        a = AgentStream(
            transport, node_id, addr, addr.with_queue(self.settings.controller_queue), **kw
        )
        await a.start()
        self.agents[node_id] = a
        return a

    def in_sync(self, node_id: str) -> bool:
        d = self.dispatcher
        if d is None or self.store is None:
            return False
        a = self.agents[node_id]
        if d.watermark != self.store.changes.last_rev or a.model.awaiting_snapshot:
            return False
        return a.model.digest() == digest(goal_state(d.topology, node_id))

    async def converge(self, timeout: float = 20.0, nodes: Iterable[str] | None = None) -> None:
        """Wait until every agent's model equals its goal state at the head of the change log."""
        want = list(nodes) if nodes is not None else list(self.agents)
        await eventually(lambda: all(self.in_sync(n) for n in want), timeout, self._behind)
        d = self.dispatcher
        assert d is not None
        for n in want:
            assert self.agents[n].model.goal() == goal_state(d.topology, n)

    def _behind(self) -> str:
        d = self.dispatcher
        detail = {
            n: (
                self.agents[n].model.applied_rev,
                self.agents[n].model.awaiting_snapshot,
                vars(self.agents[n].counters),
            )
            for n in self.agents
            if not self.in_sync(n)
        }
        return (
            f"not converged: watermark={d and d.watermark} last_rev="
            f"{self.store and self.store.changes.last_rev} behind={detail}"
        )


def topology(h: Harness, hosts: int, ports_per_host: int = 2) -> list[Change]:
    """Nodes host-0..n, one network with a subnet, a router interface, ports on every host."""
    w = h.world
    out = [w.add_node(f"host-{i}", ip=i) for i in range(hosts)]
    out.append(w.add_sg())
    net = w.add_network(2000)
    out.append(net)
    sub = w.add_subnet(net.id)
    out.append(sub)
    out.append(
        w.emit(
            "router",
            "router-1",
            "create",
            {"id": "router-1", "name": "r", "project_id": "proj", "routes": []},
        )
    )
    out.append(
        w.add_port(
            w.res["subnet"][sub.id],
            "",
            [],
            owner="network:router_interface",
            device_id="router-1",
            ip_last=1,
        )
    )
    for i in range(hosts):
        for _ in range(ports_per_host):
            out.append(w.add_port(w.res["subnet"][sub.id], f"host-{i}", [out[hosts].id]))
    return out


def node_ids(h: Harness) -> list[str]:
    return sorted(h.world.res["node"])


async def all_agents_converged(h: Harness, hosts: int) -> None:
    """The `topology` of `hosts` hosts committed, an agent on every node, all at their goal."""
    await h.commit(topology(h, hosts))
    for n in node_ids(h):
        await h.add_agent(n)
    await h.converge()


async def changes_while_away(h: Harness, away: str, changes: int = 1000) -> None:
    """Stop `away`'s agent, then commit `changes` new ports (100 per transaction) on 3 hosts."""
    await h.agents.pop(away).stop()
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    for _ in range(changes // 100):
        await h.commit([w.add_port(sub, f"host-{i % 3}", []) for i in range(100)])


async def blocked(*_: Any, **__: Any) -> None:
    """Stands in for a step that never finishes (a controller stuck there when it is killed)."""
    await asyncio.Event().wait()


# Scenarios both transports' tests run -------------------------------------------------------


async def crash_at(h: Harness, where: str) -> None:
    """Make the running dispatcher block at a crash point, wait until it is there, crash it."""
    d = h.dispatcher
    assert d is not None
    reached = asyncio.Event()
    if where == "commit":  # after the broker confirmed, before the watermark transaction
        commit = d._commit

        async def stuck(batch: Any, confirmed: set[str]) -> None:
            # A snapshot batch of the set-up (a late agent's hello) may still be committing when
            # the scene is converged; it carries no change, so it is not the batch under test.
            if batch.changes == 0:
                return await commit(batch, confirmed)
            reached.set()
            await blocked()

        d._commit = stuck  # type: ignore[method-assign]
    else:  # "publish": mid-batch, half of the messages published
        transport = d.transport
        orig_pub = transport.publish

        async def half(messages, timeout):
            await orig_pub(messages[: len(messages) // 2], timeout)
            reached.set()
            await asyncio.Event().wait()

        transport.publish = half  # type: ignore[method-assign]
    await asyncio.wait_for(reached.wait(), 10)
    await h.crash()


async def crash_scenario(h: Harness, where: str, during: int = 30, after: int = 10) -> None:
    """Crash the controller at `where` while `during` ports are committed, commit `after` more
    while it is down, restart it on the same file: every agent converges with no gap."""
    await all_agents_converged(h, 3)
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    hosts = [f"host-{i}" for i in range(3)]
    changes = [w.add_port(sub, hosts[i % 3], []) for i in range(during)]
    crash = asyncio.create_task(crash_at(h, where))
    await asyncio.sleep(0)
    await h.commit(changes)
    await crash
    # More changes while the controller is down; then a fresh dispatcher on the same file.
    dead_store_changes = [w.add_port(sub, hosts[i % 3], []) for i in range(after)]
    d = await h.start()
    await eventually(lambda: d.watermark == h.store.changes.last_rev)  # type: ignore[union-attr]
    await h.commit(dead_store_changes)
    await h.converge()
    # The replay re-sent what agents already had: dropped as duplicates, never re-applied.
    if where == "commit":
        assert sum(a.counters.duplicates for a in h.agents.values()) >= 1
    assert all(a.counters.gaps == 0 for a in h.agents.values())


async def crash_mid_snapshot(h: Harness) -> None:
    """The snapshots answering the agents' hellos are published, then the controller dies before
    its commit; a fresh one on the same file brings every agent to its goal."""
    await h.commit(topology(h, 2))
    d = h.dispatcher
    assert d is not None
    reached = asyncio.Event()

    async def stuck(*a, **k):
        reached.set()
        await asyncio.Event().wait()

    d._commit = stuck  # type: ignore[method-assign]
    # The snapshots answering the hellos get published, then the controller dies before the commit.
    for n in node_ids(h):
        await h.add_agent(n, resync_interval=0.3)
    await asyncio.wait_for(reached.wait(), 10)
    await h.crash()
    await h.start()
    await h.converge()
