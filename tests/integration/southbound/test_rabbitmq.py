"""Southbound over the real RabbitMQ at 127.0.0.1:5672: crash points of the controller, all
connections closed mid-stream, an absent agent, two vhosts, bad messages on a node queue."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from alcor import sections
from alcor.southbound.dispatcher import Settings
from alcor.transport import Address
from alcor_plugins.rabbitmq import RabbitConfig, RabbitTransport
from tests.conftest import require
from tests.support.broker import URL, require_broker
from tests.support.southbound import (
    Harness,
    all_agents_converged,
    changes_while_away,
    crash_mid_snapshot,
    crash_scenario,
    node_ids,
    topology,
)
from tests.support.wait import eventually

pytestmark = pytest.mark.rabbitmq


def ctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


async def _delete_queues(vhost: str, names: list[str]) -> None:
    path = "/" if vhost == "/" else "/" + vhost
    conn = await aio_pika.connect(URL.rstrip("/") + path)
    async with conn:
        for name in names:
            ch = await conn.channel()
            try:
                await ch.queue_delete(name)
            except Exception:
                pass


@pytest.fixture
async def h(tmp_path: Path):
    require_broker()
    tag = f"test.{uuid.uuid4().hex[:8]}."
    settings = Settings(
        linger=0.001, retry_deadline=20.0, repair_interval=0.5, controller_queue=tag + "controller"
    )
    h = Harness(
        tmp_path / "alcor.db",
        lambda: RabbitTransport(RabbitConfig(reconnect_interval=0.3)),
        settings,
    )
    h.world.queue_prefix = tag
    await h.start()
    yield h
    await h.stop()
    queues = [b["mq_queue"] for b in h.world.res["node"].values() if b["mq_vhost"] == "/"]
    await _delete_queues("/", [*queues, tag + "controller"])


async def test_converge_over_rabbitmq(h: Harness) -> None:
    await all_agents_converged(h, 3)
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    await h.commit([w.add_port(sub, f"host-{i % 3}", []) for i in range(200)])
    await h.converge()
    computes = [p["id"] for p in w.res["port"].values() if p["binding:host_id"]]
    await eventually(lambda: all(h.statuses.get(p) == "ACTIVE" for p in computes))


@pytest.mark.parametrize("where", ["commit", "publish"])
async def test_controller_crash_points(h: Harness, where: str) -> None:
    await crash_scenario(h, where, during=60, after=20)


async def test_controller_crash_mid_snapshot(h: Harness) -> None:
    await crash_mid_snapshot(h)


@pytest.fixture
async def vhost():
    """A vhost of the test's own, so closing its connections leaves other broker users alone."""
    require_broker()
    require(shutil.which("rabbitmqctl") is not None, "rabbitmqctl is not installed")
    name = f"alcor-test-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(ctl, "add_vhost", name)
    await asyncio.to_thread(ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    await asyncio.to_thread(ctl, "delete_vhost", name)


async def test_all_connections_closed_mid_stream(tmp_path: Path, vhost: str) -> None:
    tag = f"test.{uuid.uuid4().hex[:8]}."
    h = Harness(
        tmp_path / "alcor.db",
        lambda: RabbitTransport(RabbitConfig(reconnect_interval=0.3)),
        Settings(
            linger=0.001, retry_deadline=30.0, controller_queue=tag + "controller", mq_vhost=vhost
        ),
    )
    h.world.queue_prefix = tag
    h.world.vhost = vhost
    await h.start()
    try:
        await all_agents_converged(h, 3)
        w = h.world
        sub = next(iter(w.res["subnet"].values()))

        closed = asyncio.Event()

        async def churn() -> None:
            # Changes before, during and after the close: rabbitmqctl can take seconds to start
            # on a busy machine, so a fixed amount of churn could end before the connections do.
            after = 0
            while after < 10:
                await h.commit([w.add_port(sub, f"host-{i % 3}", []) for i in range(50)])
                await asyncio.sleep(0.05)
                after += closed.is_set()

        task = asyncio.create_task(churn())
        await asyncio.sleep(0.3)
        # Every connection of the vhost: the controller's and all agents'.
        out = await asyncio.to_thread(
            ctl,
            "close_all_connections",
            "--vhost",
            vhost,
            "--limit",
            "1000",
            "alcor test: broker restart",
        )
        closed.set()
        await task
        await h.converge(timeout=60)
        d = h.dispatcher
        assert d is not None
        reconnects = sum(b.reconnects for b in d.transport.brokers.values())  # type: ignore[attr-defined]
        assert reconnects >= 1, out
    finally:
        await h.stop()


async def test_agent_down_while_1000_changes(h: Harness) -> None:
    await all_agents_converged(h, 3)
    away = node_ids(h)[2]
    await changes_while_away(h, away)
    a = await h.add_agent(away)
    await h.converge(timeout=60)
    assert a.counters.snapshots == 1


async def test_two_vhosts_each_node_gets_only_its_own(tmp_path: Path) -> None:
    require_broker()
    require(shutil.which("rabbitmqctl") is not None, "rabbitmqctl is not installed")
    vhost = f"alcor-test-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(ctl, "add_vhost", vhost)
    try:
        await asyncio.to_thread(ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        tag = f"test.{uuid.uuid4().hex[:8]}."
        h = Harness(
            tmp_path / "alcor.db",
            lambda: RabbitTransport(RabbitConfig(reconnect_interval=0.3)),
            Settings(linger=0.001, controller_queue=tag + "controller"),
        )
        h.world.queue_prefix = tag
        await h.start()
        try:
            w = h.world
            a = w.add_node("host-a")
            w.vhost = vhost
            b = w.add_node("host-b")
            net = w.add_network(3000)
            sub = w.add_subnet(net.id)
            s = w.res["subnet"][sub.id]
            ports = [w.add_port(s, "host-a", []), w.add_port(s, "host-b", [])]
            await h.commit([a, b, net, sub, *ports])
            for n in (a.id, b.id):
                await h.add_agent(n)
            await h.converge()
            for n in (a.id, b.id):
                c = h.agents[n].counters
                assert c.foreign == 0 and c.rejected == 0
            # Each queue lives on its own node's vhost only.
            on_default = await asyncio.to_thread(ctl, "list_queues", "-p", "/", "name")
            on_other = await asyncio.to_thread(ctl, "list_queues", "-p", vhost, "name")
            qa, qb = w.res["node"][a.id]["mq_queue"], w.res["node"][b.id]["mq_queue"]
            assert qa in on_default and qa not in on_other
            assert qb in on_other and qb not in on_default
            brokers = h.dispatcher.transport.brokers  # type: ignore[union-attr,attr-defined]
            assert {v for _, v in brokers} == {"/", vhost}
        finally:
            await h.stop()
            await _delete_queues("/", [w.res["node"][a.id]["mq_queue"], tag + "controller"])
    finally:
        await asyncio.to_thread(ctl, "delete_vhost", vhost)


async def test_malformed_and_foreign_on_node_queue(h: Harness) -> None:
    await h.commit(topology(h, 2))
    n0, n1 = node_ids(h)
    a = await h.add_agent(n0)
    await h.converge(nodes=[n0])
    junk = [
        b"garbage",
        json.dumps(
            {"v": 2, "node_id": n1, "kind": "delta", "prev_rev": 0, "rev": 5, "ops": []}
        ).encode(),
        json.dumps(
            {
                "v": 2,
                "node_id": n0,
                "kind": "delta",
                "prev_rev": 0,
                "rev": 5,
                "ops": [{"rev": 9, "type": "port"}],
            }
        ).encode(),
    ]
    conn = await aio_pika.connect(URL)
    async with conn:
        ch = await conn.channel()
        for j in junk:
            await ch.default_exchange.publish(aio_pika.Message(j), routing_key=a.address.queue)
    await eventually(lambda: a.counters.rejected == 3)
    assert a.counters.foreign == 1
    w = h.world
    await h.commit([w.add_port(next(iter(w.res["subnet"].values())), "host-0", [])])
    await h.converge(nodes=[n0])
    # Rejected without requeue: nothing is left behind on the queue.
    out = await asyncio.to_thread(ctl, "list_queues", "-p", "/", "name", "messages")
    line = next(ln for ln in out.splitlines() if ln.startswith(a.address.queue))
    assert line.split()[-1] == "0"


@pytest.mark.parametrize("persistent, mode", [("false", 1), ("0", 1), ("true", 2), (None, 2)])
async def test_persistent_from_the_environment_sets_the_delivery_mode(
    persistent: str | None, mode: int
) -> None:
    """Regression: ALCOR_RABBITMQ__PERSISTENT=false published persistent messages all the same."""
    require_broker()
    env = {} if persistent is None else {"ALCOR_RABBITMQ__PERSISTENT": persistent}
    transport = RabbitTransport(sections.load(env=env).get(RabbitConfig))
    address = Address(URL, "/", "alcor", f"alcor-test-mode-{uuid.uuid4().hex[:6]}")
    conn = await aio_pika.connect(URL)
    try:
        assert await transport.publish([(address, b"{}")], 5.0) == [True]  # declares the queue
        channel = await conn.channel()
        queue = await channel.declare_queue(address.queue, passive=True)
        message = await queue.get(timeout=5)
        assert message is not None and message.delivery_mode == mode  # 1 transient, 2 persistent
        await message.ack()
        await queue.delete()
    finally:
        await transport.stop()
        await conn.close()


@pytest.mark.parametrize("before, after", [(0, 2), (2, 0), (None, 2)],
                         ids=["v1-queue-v2-transport", "v2-queue-v1-transport", "new-queue"])
async def test_a_queue_declared_with_another_version_is_used_as_it_is(
    before: int | None, after: int
) -> None:
    """An upgrade must not stop the agents: a node queue that exists as a classic v1 queue (or
    v2, for a transport configured back to 0) is refused by the broker on a redeclare with the
    other `x-queue-version` (PRECONDITION_FAILED); the transport takes it as it is, and
    publishing, binding and consuming on it work, its queued message kept. A new queue gets the
    configured version."""
    require_broker()
    name = f"alcor-test-version-{uuid.uuid4().hex[:6]}"
    address = Address(URL, "/", "alcor", name)
    conn = await aio_pika.connect(URL)
    transport = RabbitTransport(RabbitConfig(queue_version=after))
    try:
        if before is not None:
            old = RabbitTransport(RabbitConfig(queue_version=before))
            assert await old.publish([(address, b'{"n":0}')], 5.0) == [True]  # queued, unread
            await old.stop()
        got: list[bytes] = []

        async def handler(d: Any) -> None:
            got.append(d.body)
            await d.ack()

        # Bind first (the dispatcher's join), then publish on the key and on the queue, then
        # consume (the agent): three declares on two channels, each after the other.
        await transport.bind(address, "vpc-key")
        key = Address(URL, "/", "alcor", name, key="vpc-key")
        assert await transport.publish([(address, b'{"n":1}'), (key, b'{"n":2}')], 5.0) == [
            True, True]
        await transport.consume(address, handler, 10)
        expect = [b'{"n":1}', b'{"n":2}'] if before is None else [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        await eventually(lambda: got == expect, 10, f"got {got}")
        out = await asyncio.to_thread(ctl, "list_queues", "-p", "/", "name", "arguments")
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        version = before if before is not None else after
        assert ("x-queue-version" in line) == bool(version), line
    finally:
        await transport.stop()
        await _delete_queues("/", [name])
        await conn.close()


async def test_vpc_chains_on_rabbitmq_streams(tmp_path: Path) -> None:
    """The VPC chains on a stream per VPC on the shared broker: agents converge, a node joins
    and leaves the VPC while it changes, an agent restarts; every one ends at its goal, no gap."""
    require_broker()
    tag = f"test.{uuid.uuid4().hex[:8]}."
    h = Harness(
        tmp_path / "alcor.db",
        lambda: RabbitTransport(RabbitConfig(reconnect_interval=0.3)),
        Settings(linger=0.001, retry_deadline=20.0, repair_interval=0.5,
                 controller_queue=tag + "controller", multicast_nodes=2, unicast_nodes=1,
                 vpc_channel="stream", stream_max_bytes=4 << 20),
    )
    h.world.queue_prefix = tag
    h.world.uuids = True  # VPC ids, hence stream names, of this test's own
    await h.start()
    try:
        await all_agents_converged(h, 3)
        d = h.dispatcher
        assert d is not None and d.state.vpcs
        # (a reader opens once the snapshot is in the model: just after it may look in sync)
        await eventually(lambda: all(a.streams == sorted(d.state.vpcs) for a in h.agents.values()))
        w = h.world
        sub = next(iter(w.res["subnet"].values()))

        async def churn(n: int) -> None:
            for i in range(n):
                await h.commit([w.add_port(sub, f"host-{i % 2}", [])])
                await asyncio.sleep(0.005)

        third = next(n for n, b in w.res["node"].items() if b["node_name"] == "host-2")
        mine = [p for p, b in w.res["port"].items() if b["binding:host_id"] == "host-2"]
        changing = asyncio.create_task(churn(30))
        await h.commit([w.delete("port", p) for p in mine])  # host-2 leaves
        await changing
        await h.converge()
        await eventually(lambda: h.agents[third].streams == [])
        changing = asyncio.create_task(churn(30))
        await h.commit([w.add_port(sub, "host-2", [])])  # ...and joins again
        await changing
        await h.converge()
        await eventually(lambda: h.agents[third].streams == sorted(d.state.vpcs))
        await h.agents.pop(third).stop()
        changing = asyncio.create_task(churn(30))
        a = await h.add_agent(third)
        await changing
        await h.converge()
        await eventually(lambda: bool(a.streams))
        assert a.counters.snapshots == 1
        assert all(x.counters.gaps == 0 for x in h.agents.values())
        assert d.metrics.vpc_messages > 30
    finally:
        streams = list(h.dispatcher.state.vpcs) if h.dispatcher is not None else []
        await h.stop()
        queues = [b["mq_queue"] for b in h.world.res["node"].values()]
        await _delete_queues("/", [*queues, tag + "controller",
                                   *(f"alcor.vpc.{v}" for v in streams)])
