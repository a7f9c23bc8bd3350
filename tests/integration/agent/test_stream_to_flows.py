"""The stream side hands goal states to the Datapath: a snapshot and a delta on the node's queue
end up as flows on a real switch, and the agent's status reports its ports ACTIVE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from alcor.agent.datapath import Datapath, DatapathConfig
from alcor.agent.ir import cookie_for, tap_name
from alcor.agent.stream import AgentStream
from alcor.transport import Address, InProcessBroker, InProcessTransport
from tests.support.goals import PA1, PB1, A, two_vpcs
from tests.support.ovs import OvsSandbox
from tests.support.wait import eventually

pytestmark = pytest.mark.ovs

NODE_Q = Address("inproc://", "/", "alcor", f"alcor.node.{A}")
CONTROLLER_Q = NODE_Q.with_queue("alcor.controller")


def message(kind: str, prev_rev: int, rev: int, ops: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"v": 2, "node_id": A, "kind": kind, "prev_rev": prev_rev, "rev": rev, "ops": ops}
    ).encode()


def snapshot_ops(goal: dict[str, Any]) -> list[dict[str, Any]]:
    ops = []
    for rtype in ("node", "vpc", "subnet", "router", "port"):
        for rid, body in goal[rtype].items():
            ops.append(
                {
                    "rev": 1,
                    "type": rtype,
                    "id": rid,
                    "op": "upsert",
                    "revision_number": 1,
                    "body": body,
                }
            )
    return ops


def statuses(broker: InProcessBroker) -> list[dict[str, str]]:
    out = []
    for body, _ in broker.queue(CONTROLLER_Q).ready:
        msg = json.loads(body)
        if msg["kind"] == "status":
            out.append(msg["ports"])
    return out


@asynccontextmanager
async def agent_on(
    ovs: OvsSandbox, port: int
) -> AsyncIterator[tuple[Datapath, InProcessBroker, InProcessTransport, AgentStream]]:
    """A Datapath on the sandbox's switch and an AgentStream applying to it, both stopped after."""
    dp = Datapath(
        DatapathConfig(A, listen=f"tcp:127.0.0.1:{port}", netns=ovs.netns.name, ovs_db=ovs.db)
    )
    await dp.start()
    broker = InProcessBroker()
    transport = InProcessTransport(broker)
    stream = AgentStream(transport, A, NODE_Q, CONTROLLER_Q, apply=dp.apply, status_delay=0.01)
    dp.on_status = stream.datapath_status
    try:
        await dp.wait_connected(10)
        yield dp, broker, transport, stream
    finally:
        await stream.stop()
        await transport.stop()
        await dp.stop()


async def test_snapshot_and_delta_through_the_stream(
    ovs_sandbox: OvsSandbox, unused_tcp_port: int
) -> None:
    ovs = ovs_sandbox
    async with agent_on(ovs, unused_tcp_port) as (dp, broker, transport, stream):
        name = tap_name(PA1)
        ovs.vsctl("add-port", "br-int", name, "--", "set", "interface", name, "type=internal")
        await eventually(lambda: dp.switch is not None and name in dp.switch.ports)
        await stream.start()
        goal = dict(two_vpcs().goal())
        await transport.publish([(NODE_Q, message("snapshot", 0, 1, snapshot_ops(goal)))], 1)
        await eventually(lambda: any(s.get(PA1) == "ACTIVE" for s in statuses(broker)))
        port_b1 = f"cookie={cookie_for('port', PB1):#x}"
        assert [f for f in ovs.dump_flows() if port_b1 in f]
        delete = {
            "rev": 2,
            "type": "port",
            "id": PB1,
            "op": "delete",
            "revision_number": 2,
            "body": None,
        }
        await transport.publish([(NODE_Q, message("delta", 1, 2, [delete]))], 1)
        await eventually(lambda: not [f for f in ovs.dump_flows() if port_b1 in f])
        assert dp.counters["full"] == 1  # the delta was applied incrementally


async def test_a_tap_plugged_after_the_goal_turns_the_port_active(
    ovs_sandbox: OvsSandbox, unused_tcp_port: int
) -> None:
    """The VM's interface appears after its port's goal state: the agent reports ACTIVE on its own."""
    ovs = ovs_sandbox
    async with agent_on(ovs, unused_tcp_port) as (dp, broker, transport, stream):
        await stream.start()
        goal = dict(two_vpcs().goal())
        await transport.publish([(NODE_Q, message("snapshot", 0, 1, snapshot_ops(goal)))], 1)
        await eventually(lambda: any(PA1 in s for s in statuses(broker)))
        assert statuses(broker)[-1][PA1] == "ERROR"  # no interface for it yet
        name = tap_name(PA1)
        ovs.vsctl("add-port", "br-int", name, "--", "set", "interface", name, "type=internal")
        await eventually(lambda: statuses(broker)[-1].get(PA1) == "ACTIVE")
