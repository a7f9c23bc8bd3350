"""Two hosts, each an OVS in its own namespace with its own agent, VMs as namespaces: real packets.

VPC1 (VNI 100): s1 10.0.0.0/24 and s2 10.0.1.0/24 joined by router r1.
VPC2 (VNI 200): t1 10.0.0.0/24, the same CIDR as s1.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from alcor.agent.ir import cookie_for
from alcor.wire import GoalState
from tests.support.goals import GW1, two_vpc_networks
from tests.support.topology import Host, HostPair, join_underlay, wait_taps
from tests.support.wait import eventually

pytestmark = [pytest.mark.ovs, pytest.mark.asyncio(loop_scope="module")]

A, B, C = "node-a", "node-b", "node-c"  # node-c is never started
A1, A2, B1, B2 = "a1000000-1111", "a2000000-1111", "b1000000-1111", "b2000000-1111"
C1, D1 = "c1000000-2222", "d1000000-2222"
GHOST_L2, GHOST_L3 = "e1000000-3333", "e2000000-3333"  # on node-c: no VM anywhere
MAC = {
    A1: "fa:16:3e:0a:00:05",
    A2: "fa:16:3e:0a:01:05",
    B1: "fa:16:3e:0b:00:06",
    B2: "fa:16:3e:0b:01:06",
    C1: "fa:16:3e:0c:00:05",
    D1: "fa:16:3e:0d:00:06",
    GHOST_L2: "fa:16:3e:0e:00:42",
    GHOST_L3: "fa:16:3e:0e:01:42",
}


def goal_for(node_id: str, *, without: tuple[str, ...] = ()) -> GoalState:
    g = two_vpc_networks(node_id).node(A, "172.31.255.1").node(B, "172.31.255.2")
    g.node(C, "172.31.255.3")
    g.port(A1, "vpc1", "s1", "10.0.0.5", MAC[A1], node=A)
    g.port(A2, "vpc1", "s2", "10.0.1.5", MAC[A2], node=A)
    g.port(B1, "vpc1", "s1", "10.0.0.6", MAC[B1], node=B)
    g.port(B2, "vpc1", "s2", "10.0.1.6", MAC[B2], node=B)
    g.port(GHOST_L2, "vpc1", "s1", "10.0.0.42", MAC[GHOST_L2], node=C)
    g.port(GHOST_L3, "vpc1", "s2", "10.0.1.42", MAC[GHOST_L3], node=C)
    g.port(C1, "vpc2", "t1", "10.0.0.5", MAC[C1], node=A)
    g.port(D1, "vpc2", "t1", "10.0.0.6", MAC[D1], node=B)
    for pid in without:
        g.remove("port", pid)
    return g.goal()


class Cloud(HostPair):
    async def apply(self, **kw: tuple[str, ...]) -> None:
        await self.apply_each(lambda name: goal_for(name, **kw))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cloud(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    async with build_cloud(tmp_path_factory.mktemp("cloud")) as c:
        yield c


@contextlib.asynccontextmanager
async def build_cloud(root: Path) -> AsyncIterator[Cloud]:
    hosts: list[Host] = []
    try:
        a = Host.start(root / "a", A, "172.31.255.1", of_port=6711)
        hosts.append(a)
        b = Host.start(root / "b", B, "172.31.255.2", of_port=6712)
        hosts.append(b)
        join_underlay(a, b)
        await asyncio.gather(a.start_agent(), b.start_agent())
        a.add_vm(A1, "10.0.0.5/24", MAC[A1], "10.0.0.1")
        a.add_vm(A2, "10.0.1.5/24", MAC[A2], "10.0.1.1")
        a.add_vm(C1, "10.0.0.5/24", MAC[C1], "10.0.0.1")
        b.add_vm(B1, "10.0.0.6/24", MAC[B1], "10.0.0.1")
        b.add_vm(B2, "10.0.1.6/24", MAC[B2], "10.0.1.1")
        b.add_vm(D1, "10.0.0.6/24", MAC[D1], "10.0.0.1")
        cloud = Cloud(a, b)
        await wait_taps(a, b)
        await cloud.apply()
        yield cloud
    finally:
        for h in hosts:
            await h.close()


async def run(vm_exec: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *vm_exec, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return out.decode()


async def test_same_subnet_ping_across_hosts(cloud: Cloud) -> None:
    await cloud.apply()
    assert await asyncio.to_thread(cloud.a.vms[A1].ping, "10.0.0.6", 3, 0.05)
    assert await asyncio.to_thread(cloud.b.vms[B1].ping, "10.0.0.5", 1)


async def test_cross_subnet_ping_through_the_distributed_router(cloud: Cloud) -> None:
    await cloud.apply()
    vm = cloud.a.vms[A1]
    assert await asyncio.to_thread(vm.ping, "10.0.1.6", 3, 0.05)  # other host, other subnet
    assert await asyncio.to_thread(vm.ping, "10.0.1.5", 1)  # same host, other subnet
    # one routed hop: the TTL the reply left with (64) arrives decremented once
    out = await asyncio.to_thread(vm.exec, "ping", "-c", "1", "-W", "2", "10.0.1.6")
    assert "ttl=63" in out
    assert await asyncio.to_thread(vm.ping, "10.0.0.1", 1)  # the gateway answers ping


async def test_arp_is_answered_by_ovs_without_packet_ins(cloud: Cloud) -> None:
    await cloud.apply()
    vm = cloud.a.vms[A1]
    assert cloud.a.agent and cloud.b.agent
    before = [h.agent.counters["arp_packet_in"] for h in (cloud.a, cloud.b) if h.agent]
    # these ports have no VM anywhere: only the datapath can have answered
    assert await asyncio.to_thread(vm.arping, "10.0.0.42") == MAC[GHOST_L2]  # L2 neighbour
    assert await asyncio.to_thread(vm.arping, "10.0.1.42") == GW1  # L3 neighbour: via router
    assert await asyncio.to_thread(vm.arping, "10.0.0.1") == GW1  # gateway
    assert await asyncio.to_thread(vm.arping, "10.0.0.6") == MAC[B1]  # a live remote VM
    after = [h.agent.counters["arp_packet_in"] for h in (cloud.a, cloud.b) if h.agent]
    assert after == before == [0, 0]
    assert cloud.a.agent.counters["packet_in"] == 0


async def test_vpcs_with_the_same_cidr_are_isolated(cloud: Cloud) -> None:
    await cloud.apply()
    c1 = cloud.a.vms[C1]
    # VPC2's 10.0.0.6 is D1, not VPC1's B1
    assert await asyncio.to_thread(c1.arping, "10.0.0.6") == MAC[D1]
    assert await asyncio.to_thread(c1.ping, "10.0.0.6", 2, 0.05)
    # VPC1-only addresses do not exist in VPC2
    assert await asyncio.to_thread(c1.arping, "10.0.0.42", 1) is None
    assert not await asyncio.to_thread(c1.ping, "10.0.1.6", 1, 0.2, 1)
    # and VPC1's A1 (same IP as C1) still reaches its own neighbour
    assert await asyncio.to_thread(cloud.a.vms[A1].arping, "10.0.0.6") == MAC[B1]


async def test_deleted_port_takes_its_flows_with_it(cloud: Cloud) -> None:
    await cloud.apply()
    cookie = f"cookie={cookie_for('port', B1):#x}"
    assert [f for f in cloud.a.ovs.dump_flows() if cookie in f]
    await cloud.apply(without=(B1,))
    assert not [f for f in cloud.a.ovs.dump_flows() if cookie in f]
    assert not [f for f in cloud.b.ovs.dump_flows() if cookie in f]
    assert not await asyncio.to_thread(cloud.a.vms[A1].ping, "10.0.0.6", 1, 0.2, 1)
    await cloud.apply()
    assert await asyncio.to_thread(cloud.a.vms[A1].ping, "10.0.0.6", 1)


async def test_continuous_ping_survives_an_agent_restart(cloud: Cloud) -> None:
    await cloud.apply()
    vm = cloud.a.vms[A1]
    flows_before = cloud.a.ovs.dump_flows()
    ping = asyncio.create_task(
        run(
            [
                "ip",
                "netns",
                "exec",
                vm.netns.name,
                "ping",
                "-c",
                "150",
                "-i",
                "0.02",
                "-q",
                "10.0.0.6",
            ]
        )
    )
    await asyncio.sleep(0.5)
    await cloud.a.stop_agent()
    await asyncio.sleep(0.3)
    agent = await cloud.a.start_agent()
    statuses = await agent.apply(goal_for(A))
    assert all(s == ("ACTIVE", "") for s in statuses.values())
    report = agent.last_report
    assert report is not None and report.full
    assert (report.adds, report.deletes) == (0, 0)  # nothing changed: zero flow-mods
    out = await ping
    assert "150 received" in out, out
    assert sorted(cloud.a.ovs.dump_flows()) == sorted(flows_before)


async def test_flows_are_restored_after_ovs_restarts(cloud: Cloud) -> None:
    await cloud.apply()
    host = cloud.a
    assert host.agent is not None
    want = sorted(host.ovs.dump_flows())
    full_before = host.agent.counters["full"]
    await asyncio.to_thread(host.ovs.restart_vswitchd)
    await asyncio.to_thread(host.configure_underlay_ip)  # br-ul's tap was recreated
    from tests.support.topology import learn_tunnel_neighbours

    await eventually(
        lambda: host.agent.counters["full"] != full_before
        and host.agent.statuses.get(A1, ("",))[0] == "ACTIVE",
        10,
        "agent did not reconcile the restarted switch",
    )
    await asyncio.to_thread(learn_tunnel_neighbours, cloud.a, cloud.b)
    assert sorted(host.ovs.dump_flows()) == want
    assert await asyncio.to_thread(host.vms[A1].ping, "10.0.0.6", 2, 0.05)
