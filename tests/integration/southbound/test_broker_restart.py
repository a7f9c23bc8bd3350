"""A broker restart, on a private RabbitMQ node (stopped and started again on its own data; the
shared broker is never touched): an agent that comes back never applies a gap silently.

With the VPC chains on streams (`vpc_channel = "stream"`), a stream keeps its messages across
the restart and every reader is restored after the last offset it was handed.

Persistent messages (the default): what the broker confirmed survives, and the agent carries on
from its queue, in order, without a snapshot. Transient: the queues come back empty; the next
message on each chain shows the agent the gap, and that chain's state repairs it (a snapshot
for the node's own chain, the VPC's state for the VPC's). Either way every agent ends at its
goal state.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from alcor.southbound.dispatcher import Settings
from alcor_plugins.rabbitmq import RabbitConfig, RabbitTransport
from tests.support.broker import PrivateBroker
from tests.support.southbound import Harness, node_ids, topology
from tests.support.wait import eventually

pytestmark = pytest.mark.rabbitmq


@pytest.mark.parametrize(
    "persistent, channel",
    [(True, "queue"), (False, "queue"), (True, "stream")],
    ids=["persistent", "transient", "stream"],
)
async def test_an_agent_after_a_broker_restart_never_applies_a_gap(
    tmp_path: Path, persistent: bool, channel: str
) -> None:
    broker = PrivateBroker(tmp_path / "rabbitmq")
    await broker.start()
    tag = f"test.{uuid.uuid4().hex[:8]}."
    h = Harness(
        tmp_path / "alcor.db",
        lambda: RabbitTransport(RabbitConfig(reconnect_interval=0.3, persistent=persistent)),
        # Publishes retried for as long as a restart takes on a busy machine; the VPC of three
        # nodes on its multicast chain, so both kinds of chain cross the restart.
        Settings(linger=0.001, retry_deadline=120.0, repair_interval=0.5,
                 controller_queue=tag + "controller", multicast_nodes=2, unicast_nodes=1,
                 mq_url=broker.url, vpc_channel=channel),  # type: ignore[arg-type]
    )
    h.world.queue_prefix = tag
    h.world.mq_url = broker.url
    try:
        await h.start()
        await h.commit(topology(h, 3))
        slow = node_ids(h)[2]
        gate = asyncio.Event()
        gate.set()

        async def gated(goal: dict[str, Any]) -> dict[str, tuple[str, str]]:
            # The datapath of `slow` stalls while the gate is shut: the message being applied
            # stays unacknowledged and the rest wait in its queue (prefetch 1).
            await gate.wait()
            return {p: ("ACTIVE", "") for p, b in goal["port"].items() if b["node_id"] == slow}

        for n in node_ids(h):
            if n == slow:
                await h.add_agent(n, apply=gated, prefetch=1)
            else:
                await h.add_agent(n)
        await h.converge(timeout=60)
        d = h.dispatcher
        assert d is not None and d.state.vpcs, "the VPC should be on its multicast chain"
        agent = h.agents[slow]
        # Each agent done with its snapshot (applied, reported, acknowledged, its VPC's stream
        # open), not only holding it: an unacknowledged one would come back after the restart.
        await eventually(lambda: all(a.counters.statuses >= 1 and (channel == "queue" or a.streams)
                                     for a in h.agents.values()), 30)
        before = (agent.counters.gaps, agent.counters.snapshots)
        vpc_gaps = agent.counters.vpc_gaps

        w = h.world
        sub = next(iter(w.res["subnet"].values()))
        gate.clear()
        for _ in range(4):  # separate batches: several messages on each chain, queued
            last = await h.commit([w.add_port(sub, f"host-{i % 3}", []) for i in range(6)])
            await eventually(lambda: d.watermark >= last, 60, "batch not confirmed")  # noqa: B023
        await broker.restart()
        gate.set()
        for _ in range(2):  # after the restart: the next message on each chain
            await h.commit([w.add_port(sub, f"host-{i % 3}", []) for i in range(3)])
        await h.converge(timeout=120)

        gaps, snapshots = agent.counters.gaps, agent.counters.snapshots
        if channel == "stream":
            # The stream kept every message; each reader came back after the last offset it
            # had been handed (the unhandled one again), its queue likewise: no gap.
            assert agent.streams and (gaps, snapshots) == before, vars(agent.counters)
        elif persistent:
            # Nothing the broker confirmed was lost: the agent carried on from its queue.
            assert (gaps, snapshots) == before, vars(agent.counters)
            assert agent.counters.duplicates >= 1  # the message unacknowledged at the restart
        else:
            # Its queue came back empty: it saw the gap, and the chain's state made it whole.
            # The ports travel on the VPC's chain (each with its host's variant), so the gap
            # shows there and the VPC's state repairs it, unless its own chain had lost some.
            assert gaps > before[0], vars(agent.counters)
            assert snapshots > before[1] or agent.counters.vpc_gaps > vpc_gaps, vars(
                agent.counters)
    finally:
        await h.stop()
        await broker.stop()
