"""L3 on two hosts with real packets: full-size frames of the network MTU, and extra routes.

Two OVS hosts (each with its agent) joined by an underlay of 1500 bytes, the default
`[network] underlay_mtu`; VMs are namespaces with the network's MTU (1450) on eth0.

net1 (VNI 300): s4 10.1.0.0/24
net2 (VNI 301): s5 10.1.1.0/24
router r1 joins s4 and s5.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from alcor.resources.networks import max_mtu
from alcor.wire import GoalState
from tests.support.goals import GoalBuilder
from tests.support.topology import Host, two_hosts, wait_taps

pytestmark = [pytest.mark.ovs, pytest.mark.asyncio(loop_scope="module")]

A, B, C = "node-a", "node-b", "node-c"  # node-c is never started
UNDERLAY_MTU = 1500
MTU = max_mtu(UNDERLAY_MTU)  # 1450: what the API gives a network by default
GW4, GW5 = "fa:16:3e:10:00:01", "fa:16:3e:10:01:01"
A1, A2, B1, B2 = "a1000000-4444", "a2000000-4444", "b1000000-4444", "b2000000-4444"
MAC = {
    A1: "fa:16:3e:1a:00:05",
    A2: "fa:16:3e:1a:01:05",
    B1: "fa:16:3e:1b:00:06",
    B2: "fa:16:3e:1b:01:06",
}
ROUTED_PREFIX, BEHIND_B2 = "192.168.77.0/24", "192.168.77.1"


def goal_for(node_id: str, *, routes: list[dict[str, str]] | None = None) -> GoalState:
    g = GoalBuilder(node_id).node(A, "172.31.254.1").node(B, "172.31.254.2")
    g.node(C, "172.31.254.3")
    g.vpc("net1", 300).vpc("net2", 301)
    g.subnet("s4", "net1", "10.1.0.0/24", "10.1.0.1", GW4)
    g.subnet("s5", "net2", "10.1.1.0/24", "10.1.1.1", GW5)
    g.router("r1", ["s4", "s5"], routes)
    g.port(A1, "net1", "s4", "10.1.0.5", MAC[A1], node=A)
    g.port(A2, "net2", "s5", "10.1.1.5", MAC[A2], node=A)
    g.port(B1, "net1", "s4", "10.1.0.6", MAC[B1], node=B)
    g.port(B2, "net2", "s5", "10.1.1.6", MAC[B2], node=B)
    return g.goal()


@dataclass
class Cloud:
    a: Host
    b: Host

    async def apply(self, **kw: list[dict[str, str]]) -> None:
        for h in (self.a, self.b):
            assert h.agent is not None
            statuses = await h.agent.apply(goal_for(h.name, **kw))
            bad = {p: s for p, s in statuses.items() if s[0] != "ACTIVE"}
            assert not bad, f"{h.name}: {bad}"

    def vm(self, port_id: str):  # type: ignore[no-untyped-def]
        return (self.a.vms | self.b.vms)[port_id]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cloud(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    root = tmp_path_factory.mktemp("l3")
    async with two_hosts(
        root, (A, B), ("172.31.254.1", "172.31.254.2"), (6721, 6722), mtu=UNDERLAY_MTU
    ) as (a, b):
        a.add_vm(A1, "10.1.0.5/24", MAC[A1], "10.1.0.1", mtu=MTU)
        a.add_vm(A2, "10.1.1.5/24", MAC[A2], "10.1.1.1", mtu=MTU)
        b.add_vm(B1, "10.1.0.6/24", MAC[B1], "10.1.0.1", mtu=MTU)
        b.add_vm(B2, "10.1.1.6/24", MAC[B2], "10.1.1.1", mtu=MTU)
        await wait_taps(a, b)
        c = Cloud(a, b)
        await c.apply()
        yield c


def ping_size(vm, ip: str, size: int) -> bool:  # type: ignore[no-untyped-def]
    """An ICMP echo of exactly `size` bytes of IPv4, never fragmented, answered?"""
    out = vm.exec(
        "ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", "-M", "do", "-s", str(size - 28), ip,
        check=False,
    )
    return "2 received" in out


async def test_full_size_frames_of_the_network_mtu_cross_hosts(cloud: Cloud) -> None:
    await cloud.apply()
    a1 = cloud.vm(A1)
    # a packet of the network's MTU, to a VM on the other host: switched, then routed
    assert await asyncio.to_thread(ping_size, a1, "10.1.0.6", MTU)
    assert await asyncio.to_thread(ping_size, a1, "10.1.1.6", MTU)
    # What the API refuses, and why: a network of MTU 1500 would send 1500-byte packets, and
    # with VXLAN's 50 bytes they no longer fit the 1500-byte underlay. They are lost.
    for vm in (a1, cloud.vm(B1)):
        await asyncio.to_thread(vm.exec, "ip", "link", "set", "eth0", "mtu", "1500")
    try:
        assert not await asyncio.to_thread(ping_size, a1, "10.1.0.6", 1500)
        assert await asyncio.to_thread(ping_size, a1, "10.1.0.6", MTU)  # the path still works
    finally:
        for vm in (a1, cloud.vm(B1)):
            await asyncio.to_thread(vm.exec, "ip", "link", "set", "eth0", "mtu", str(MTU))


async def test_extra_route_through_a_vm_on_another_host(cloud: Cloud) -> None:
    # r1 routes 192.168.77.0/24 via B2 (10.1.1.6, host B), which holds 192.168.77.1 itself.
    b2 = cloud.vm(B2)
    await asyncio.to_thread(b2.exec, "ip", "addr", "replace", f"{BEHIND_B2}/32", "dev", "lo")
    a1 = cloud.vm(A1)
    try:
        await cloud.apply()
        assert not await asyncio.to_thread(a1.ping, BEHIND_B2, 1, 0.2, 1)  # no route yet
        await cloud.apply(routes=[{"destination": ROUTED_PREFIX, "nexthop": "10.1.1.6"}])
        out = await asyncio.to_thread(a1.exec, "ping", "-c", "2", "-W", "2", BEHIND_B2, check=False)
        assert "2 received" in out, out
        # the reply went B2 -> its gateway -> A1: routed once, on host B
        assert "ttl=63" in out
        await cloud.apply()
        assert not await asyncio.to_thread(a1.ping, BEHIND_B2, 1, 0.2, 1)  # the route is gone
    finally:
        await asyncio.to_thread(b2.exec, "ip", "addr", "del", f"{BEHIND_B2}/32", "dev", "lo")
        await cloud.apply()
