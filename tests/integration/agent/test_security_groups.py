"""Security groups with real packets on two hosts, conntrack included.

VPC (VNI 500), subnet 10.6.0.0/24 (gateway 10.6.0.1). Host A: A1 (10.6.0.5), A2 (10.6.0.7).
Host B: B1 (10.6.0.6), B2 (10.6.0.8). Each test says which groups the ports are in (`Cloud.apply`
pushes that goal state to both agents), then checks with ping and TCP/UDP echo servers and
clients (tests/support/probe.py) run inside the VMs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio

from alcor.wire import GoalState
from tests.support.goals import GoalBuilder, rule
from tests.support.topology import Host, HostPair, two_hosts, wait_taps

pytestmark = [pytest.mark.ovs, pytest.mark.asyncio(loop_scope="module")]

A, B = "node-a", "node-b"
GW = "fa:16:3e:60:00:01"
A1, A2, B1, B2 = "a1000000-6666", "a2000000-6666", "b1000000-6666", "b2000000-6666"
MAC = {
    A1: "fa:16:3e:6a:00:05",
    A2: "fa:16:3e:6a:00:07",
    B1: "fa:16:3e:6b:00:06",
    B2: "fa:16:3e:6b:00:08",
}
IP = {A1: "10.6.0.5", A2: "10.6.0.7", B1: "10.6.0.6", B2: "10.6.0.8"}
NODE = {A1: A, A2: A, B1: B, B2: B}

DEFAULT = [
    rule("egress"),
    rule("egress", "IPv6"),
    rule("ingress", remote_group_id="default"),
    rule("ingress", "IPv6", remote_group_id="default"),
]
GROUPS: dict[str, list[dict[str, Any]]] = {
    "default": DEFAULT,  # Neutron's default group
    "outbound": [rule("egress")],  # may start anything, accepts nothing new
    "ssh": [rule("egress"), rule("ingress", protocol="tcp", port_range_min=22, port_range_max=22)],
    "web": [
        rule("egress"),
        rule(
            "ingress",
            protocol="tcp",
            port_range_min=80,
            port_range_max=80,
            remote_group_id="default",
        ),
    ],
    "echo": [rule("egress"), rule("ingress", protocol="tcp"), rule("ingress", protocol="udp")],
}


def goal_for(
    node_id: str,
    member: Mapping[str, tuple[str, ...]],
    groups: Mapping[str, Any],
    stateless: tuple[str, ...] = (),
) -> GoalState:
    g = GoalBuilder(node_id).node(A, "172.31.252.1").node(B, "172.31.252.2")
    g.vpc("vpc1", 500).subnet("s1", "vpc1", "10.6.0.0/24", "10.6.0.1", GW)
    for sid, rules in groups.items():
        g.sg(sid, rules, stateful=sid not in stateless)
    for pid in (A1, A2, B1, B2):
        g.port(pid, "vpc1", "s1", IP[pid], MAC[pid], node=NODE[pid], security_groups=member[pid])
    return g.goal()


class Cloud(HostPair):
    async def apply(
        self,
        member: Mapping[str, tuple[str, ...]],
        groups: Mapping[str, Any] | None = None,
        stateless: tuple[str, ...] = (),
    ) -> None:
        rules = GROUPS if groups is None else groups
        await self.apply_each(lambda name: goal_for(name, member, rules, stateless))

    async def ping(self, src: str, dst: str) -> bool:
        return await asyncio.to_thread(self.vm(src).ping, IP[dst], 1, 0.2, 1)

    async def tcp(self, src: str, dst: str, port: int, sport: int = 0) -> bool:
        return await asyncio.to_thread(self.vm(src).tcp_ok, IP[dst], port, 1.0, sport)

    async def udp(self, src: str, dst: str, port: int) -> bool:
        return await asyncio.to_thread(self.vm(src).udp_ok, IP[dst], port, 1.0)

    def conntrack(self, host: Host, zone: int) -> list[str]:
        out = host.ovs.appctl("dpctl/dump-conntrack", f"zone={zone}")
        return [ln for ln in out.splitlines() if ln.strip()]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cloud(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    root = tmp_path_factory.mktemp("secgroups")
    async with two_hosts(root, (A, B), ("172.31.252.1", "172.31.252.2"), (6741, 6742)) as (a, b):
        for pid in (A1, A2, B1, B2):
            (a if NODE[pid] == A else b).add_vm(pid, f"{IP[pid]}/24", MAC[pid], "10.6.0.1")
        await wait_taps(a, b)
        c = Cloud(a, b)
        await c.apply({pid: ("default",) for pid in IP})
        # echo servers on the ports the tests use, for the whole module
        with (
            c.vm(B1).server("tcp", 22),
            c.vm(B1).server("tcp", 80),
            c.vm(B1).server("tcp", 2222),
            c.vm(B1).server("udp", 53),
            c.vm(A1).server("tcp", 22),
            c.vm(A1).server("udp", 53),
            c.vm(A2).server("tcp", 22),
        ):
            yield c


async def test_default_group_members_reach_each_other_others_do_not(cloud: Cloud) -> None:
    await cloud.apply({A1: ("default",), A2: ("default",), B1: ("default",), B2: ("outbound",)})
    assert await cloud.ping(A1, B1) and await cloud.ping(B1, A1)  # across hosts
    assert await cloud.ping(A1, A2)  # on the host
    assert await cloud.tcp(A1, B1, 22)
    assert not await cloud.ping(B2, A1)  # B2 is no member: A1 does not let it in
    assert not await cloud.tcp(B2, A1, 22)
    assert not await cloud.ping(A1, B2)  # and B2 accepts nothing new
    # the gateway answers in the datapath, once A1's egress rules let the ping out
    assert await asyncio.to_thread(cloud.vm(A1).ping, "10.6.0.1", 1)


async def test_tcp_22_only(cloud: Cloud) -> None:
    await cloud.apply({A1: ("default",), A2: ("default",), B1: ("ssh",), B2: ("default",)})
    assert await cloud.tcp(A1, B1, 22)
    assert not await cloud.tcp(A1, B1, 80)
    assert not await cloud.ping(A1, B1)
    assert not await cloud.udp(A1, B1, 53)
    assert await cloud.tcp(B2, B1, 22)  # from its own host too, and not tcp/80
    assert not await cloud.tcp(B2, B1, 80)


async def test_remote_group_membership_follows_ports_across_hosts(cloud: Cloud) -> None:
    # B1 lets members of "default" reach tcp/80; A2, on the other host, joins and leaves it
    member = {A1: ("default",), A2: ("outbound",), B1: ("web",), B2: ("default",)}
    await cloud.apply(member)
    assert await cloud.tcp(A1, B1, 80)
    assert not await cloud.tcp(A2, B1, 80)
    await cloud.apply({**member, A2: ("default", "outbound")})
    assert await cloud.tcp(A2, B1, 80)
    await cloud.apply(member)
    assert not await cloud.tcp(A2, B1, 80)
    assert await cloud.tcp(A1, B1, 80)
    assert not await cloud.tcp(A1, B1, 22)  # "web" is tcp/80 only


async def test_a_rule_added_and_removed_while_a_connection_runs(cloud: Cloud) -> None:
    member = {A1: ("default",), A2: ("default",), B1: ("ssh",), B2: ("default",)}
    await cloud.apply(member)
    assert not await cloud.tcp(A1, B1, 2222)
    with_rule = {
        **GROUPS,
        "ssh": [
            *GROUPS["ssh"],
            rule("ingress", protocol="tcp", port_range_min=2222, port_range_max=2222),
        ],
    }
    await cloud.apply(member, with_rule)
    stream = await asyncio.to_thread(cloud.vm(A1).stream, IP[B1], 2222)
    try:
        assert await asyncio.to_thread(stream.wait, 10), "the connection does not flow"
        await cloud.apply(member)  # the rule goes while the connection runs
        await asyncio.sleep(0.3)
        stalled = stream.echoes
        assert not await asyncio.to_thread(stream.wait, 1, 1.5), "the connection still flows"
        assert stream.echoes - stalled <= 1
        assert not await cloud.tcp(A1, B1, 2222)  # and no new one starts
        assert await cloud.tcp(A1, B1, 22)  # the other rules are untouched
    finally:
        await asyncio.to_thread(stream.stop)
    await cloud.apply(member, with_rule)  # back: new connections get through again
    assert await cloud.tcp(A1, B1, 2222)


async def test_replies_of_the_vms_own_tcp_and_udp_pass_nothing_else_does(cloud: Cloud) -> None:
    # A1 accepts nothing new; B1 echoes anything
    await cloud.apply({A1: ("outbound",), A2: ("default",), B1: ("echo",), B2: ("default",)})
    assert await cloud.tcp(A1, B1, 22) and await cloud.udp(A1, B1, 53)  # the replies come back
    assert not await cloud.ping(A1, B1)  # "echo" lets no ICMP in
    assert not await cloud.tcp(B1, A1, 22) and not await cloud.udp(B1, A1, 53)  # nothing new in
    # the connections are in A1's own zone on host A, and B1's on host B
    assert cloud.a.agent and cloud.b.agent
    za, zb = cloud.a.agent.port_zones[A1], cloud.b.agent.port_zones[B1]
    assert [ln for ln in cloud.conntrack(cloud.a, za) if "dport=53" in ln]
    assert [ln for ln in cloud.conntrack(cloud.b, zb) if "dport=53" in ln]


async def test_stateless_groups_track_nothing_and_replies_need_rules(cloud: Cloud) -> None:
    stateless = {
        "default": DEFAULT,
        "sl": [
            rule("ingress", protocol="tcp", port_range_min=22, port_range_max=22),
            rule("egress", protocol="tcp"),
        ],
    }
    member = {A1: ("default",), A2: ("sl",), B1: ("default",), B2: ("default",)}
    await cloud.apply(member, stateless, stateless=("sl",))
    assert cloud.a.agent
    zone = cloud.a.agent.port_zones[A2]
    before = len(cloud.conntrack(cloud.a, zone))
    assert await cloud.tcp(B1, A2, 22)  # in by its rule, the reply out by the egress rule
    assert len(cloud.conntrack(cloud.a, zone)) == before  # no connection tracked for A2
    assert not await cloud.ping(B1, A2)
    no_egress = {**stateless, "sl": stateless["sl"][:1]}
    await cloud.apply(member, no_egress, stateless=("sl",))
    assert not await cloud.tcp(B1, A2, 22)  # stateless: the reply needs a rule of its own


async def test_an_established_connection_survives_an_agent_restart(cloud: Cloud) -> None:
    member = {A1: ("default",), A2: ("default",), B1: ("ssh",), B2: ("default",)}
    await cloud.apply(member)
    assert cloud.a.agent
    zones = dict(cloud.a.agent.port_zones)
    flows = sorted(cloud.a.ovs.dump_flows())
    stream = await asyncio.to_thread(cloud.vm(A1).stream, IP[B1], 22)
    try:
        assert await asyncio.to_thread(stream.wait, 10)
        for h in (cloud.a, cloud.b):
            await h.stop_agent()
        assert await asyncio.to_thread(stream.wait, 5)  # the switch forwards on its own
        for h in (cloud.a, cloud.b):
            agent = await h.start_agent()
            statuses = await agent.apply(goal_for(h.name, member, GROUPS))
            assert all(s == ("ACTIVE", "") for s in statuses.values())
            report = agent.last_report
            assert report is not None and report.full and (report.adds, report.deletes) == (0, 0)
        assert cloud.a.agent and dict(cloud.a.agent.port_zones) == zones  # read back from OVSDB
        assert sorted(cloud.a.ovs.dump_flows()) == flows
        assert await asyncio.to_thread(stream.wait, 10), "the connection stopped after the restart"
    finally:
        await asyncio.to_thread(stream.stop)


async def test_a_port_that_leaves_takes_its_connections_and_zone_with_it(cloud: Cloud) -> None:
    member = {A1: ("default",), A2: ("default",), B1: ("echo",), B2: ("default",)}
    await cloud.apply(member)
    assert cloud.a.agent
    zone = cloud.a.agent.port_zones[A2]
    assert await cloud.udp(A2, B1, 53)
    assert [ln for ln in cloud.conntrack(cloud.a, zone) if "dport=53" in ln]
    # A2 leaves host A's goal state: its flows go, then its zone's connections, then the zone
    goal = goal_for(A, member, GROUPS)
    goal["port"] = {k: v for k, v in goal["port"].items() if k != A2}
    await cloud.a.agent.apply(goal)
    assert cloud.conntrack(cloud.a, zone) == []
    ids = cloud.a.ovs.vsctl("get", "bridge", "br-int", "external_ids")
    assert f"alcor-ct-zone-{A2}" not in ids and f"alcor-ct-zone-{A1}" in ids
    await cloud.apply(member)  # back, with a zone again
    assert A2 in cloud.a.agent.port_zones and await cloud.udp(A2, B1, 53)
