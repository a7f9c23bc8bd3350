"""L3 on two hosts with real packets: the IPv6 gateway and IPv6 routing, neighbour discovery
answered by the datapath, full-size frames of the network MTU, and extra routes.

Two OVS hosts (each with its agent) joined by an underlay of 1500 bytes, the default
`[network] underlay_mtu`; VMs are namespaces with the network's MTU (1450) on eth0, dual-stack
with static addresses.

net1 (VNI 300): s4 10.1.0.0/24, s4v6 2001:db8:4::/64   A1 (host A), B1 (host B), GHOST (node-c)
net2 (VNI 301): s5 10.1.1.0/24, s5v6 2001:db8:5::/64   A2 (host A), B2 (host B)
router r1 joins s4, s4v6, s5, s5v6.
net3 (VNI 302): s6 10.1.0.0/24, s6v6 2001:db8:4::/64 (net1's CIDRs again), no router
                                                       C1 (host A), D1 (host B)
net4 (VNI 303): s7 10.1.7.0/24, s7v6 2001:db8:7::/64 ipv6_ra_mode slaac, both on r1
                                                       E1 (host B): IPv6 from router advertisements
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from alcor.agent.ipv6 import link_local
from alcor.resources.networks import max_mtu
from alcor.resources.ports import eui64
from alcor.wire import GoalState
from tests.support.goals import GoalBuilder
from tests.support.topology import HostPair, two_hosts, wait_taps
from tests.support.wait import eventually

pytestmark = [pytest.mark.ovs, pytest.mark.asyncio(loop_scope="module")]

A, B, C = "node-a", "node-b", "node-c"  # node-c is never started
UNDERLAY_MTU = 1500
MTU = max_mtu(UNDERLAY_MTU)  # 1450: what the API gives a network by default
GW4, GW5 = "fa:16:3e:10:00:01", "fa:16:3e:10:01:01"
GW4V6, GW5V6 = "fa:16:3e:10:06:01", "fa:16:3e:10:06:02"
GW7, GW7V6 = "fa:16:3e:10:07:01", "fa:16:3e:10:07:06"
A1, A2, B1, B2 = "a1000000-4444", "a2000000-4444", "b1000000-4444", "b2000000-4444"
C1, D1 = "c1000000-5555", "d1000000-5555"
E1 = "e1000000-7777"
GHOST = "e1000000-6666"  # on node-c: no VM anywhere, only the datapath can answer for it
MAC = {
    A1: "fa:16:3e:1a:00:05",
    A2: "fa:16:3e:1a:01:05",
    B1: "fa:16:3e:1b:00:06",
    B2: "fa:16:3e:1b:01:06",
    C1: "fa:16:3e:1c:00:05",
    D1: "fa:16:3e:1d:00:06",
    GHOST: "fa:16:3e:1e:00:42",
    E1: "fa:16:3e:1f:07:05",
}
E1_V6 = str(eui64(ipaddress.IPv6Network("2001:db8:7::/64"), MAC[E1]))  # what IPAM gives it
# port -> (IPv4 address and prefix, its gateway, IPv6 address and prefix, its gateway)
ADDR = {
    A1: ("10.1.0.5/24", "10.1.0.1", "2001:db8:4::5/64", "2001:db8:4::1"),
    A2: ("10.1.1.5/24", "10.1.1.1", "2001:db8:5::5/64", "2001:db8:5::1"),
    B1: ("10.1.0.6/24", "10.1.0.1", "2001:db8:4::6/64", "2001:db8:4::1"),
    B2: ("10.1.1.6/24", "10.1.1.1", "2001:db8:5::6/64", "2001:db8:5::1"),
    C1: ("10.1.0.5/24", "10.1.0.1", "2001:db8:4::5/64", "2001:db8:4::1"),
    D1: ("10.1.0.6/24", "10.1.0.1", "2001:db8:4::6/64", "2001:db8:4::1"),
}
HOST = {A1: A, A2: A, C1: A, B1: B, B2: B, D1: B}
ROUTED_PREFIX, BEHIND_B2 = "192.168.77.0/24", "192.168.77.1"


def v4(pid: str) -> str:
    return ADDR[pid][0].split("/")[0]


def v6(pid: str) -> str:
    return ADDR[pid][2].split("/")[0]


def goal_for(
    node_id: str,
    *,
    routes: list[dict[str, str]] | None = None,
    slaac_routed: bool = True,
    router_up: bool = True,
) -> GoalState:
    g = GoalBuilder(node_id).node(A, "172.31.254.1").node(B, "172.31.254.2")
    g.node(C, "172.31.254.3")
    g.vpc("net1", 300).vpc("net2", 301).vpc("net3", 302)
    g.subnet("s4", "net1", "10.1.0.0/24", "10.1.0.1", GW4)
    g.subnet("s4v6", "net1", "2001:db8:4::/64", "2001:db8:4::1", GW4V6)
    g.subnet("s5", "net2", "10.1.1.0/24", "10.1.1.1", GW5)
    g.subnet("s5v6", "net2", "2001:db8:5::/64", "2001:db8:5::1", GW5V6)
    g.subnet("s6", "net3", "10.1.0.0/24", "10.1.0.1")
    g.subnet("s6v6", "net3", "2001:db8:4::/64", "2001:db8:4::1")
    g.subnet("s7", "net4", "10.1.7.0/24", "10.1.7.1", GW7)
    g.subnet(
        "s7v6", "net4", "2001:db8:7::/64", "2001:db8:7::1", GW7V6 if slaac_routed else None,
        ipv6_ra_mode="slaac",
    )  # fmt: skip
    g.vpc("net4", 303)
    joined = ["s4", "s4v6", "s5", "s5v6", "s7", *(["s7v6"] if slaac_routed else [])]
    g.router("r1", joined, routes, admin_state_up=router_up)
    nets = {A1: ("net1", "s4"), B1: ("net1", "s4"), A2: ("net2", "s5"), B2: ("net2", "s5"),
            C1: ("net3", "s6"), D1: ("net3", "s6")}  # fmt: skip
    # B2 routes ROUTED_PREFIX: as in Neutron, port security lets it send from those addresses
    # only when they are among its allowed address pairs
    aap = {B2: [{"ip_address": ROUTED_PREFIX}, {"ip_address": "2001:db8:77::/64"}]}
    for pid, (net, sub) in nets.items():
        g.port(
            pid, net, sub, v4(pid), MAC[pid], node=HOST[pid], more_ips=((f"{sub}v6", v6(pid)),),
            allowed_address_pairs=aap.get(pid),
        )  # fmt: skip
    g.port(GHOST, "net1", "s4v6", "2001:db8:4::42", MAC[GHOST], node=C)
    g.port(E1, "net4", "s7", "10.1.7.5", MAC[E1], node=B, more_ips=(("s7v6", E1_V6),))
    return g.goal()


class Cloud(HostPair):
    async def apply(self, **kw: Any) -> None:
        await self.apply_each(lambda name: goal_for(name, **kw))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cloud(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    root = tmp_path_factory.mktemp("l3")
    async with two_hosts(
        root, (A, B), ("172.31.254.1", "172.31.254.2"), (6721, 6722), mtu=UNDERLAY_MTU
    ) as (a, b):
        hosts = {A: a, B: b}
        for pid, (ip4, gw4, ip6, gw6) in ADDR.items():
            vm = hosts[HOST[pid]].add_vm(pid, ip4, MAC[pid], gw4, mtu=MTU)
            vm.add_ipv6(ip6, gw6)
        # E1 takes its IPv6 address, route and MTU from router advertisements (eth0 starts at
        # 1500, so the advertised 1450 shows)
        b.add_vm(E1, "10.1.7.5/24", MAC[E1], "10.1.7.1", mtu=1500)
        await wait_taps(a, b)
        c = Cloud(a, b)
        await c.apply()
        yield c


def ping_size(vm, ip: str, size: int) -> bool:  # type: ignore[no-untyped-def]
    """An ICMP echo of exactly `size` bytes of IP, never fragmented, answered?"""
    headers = 48 if ":" in ip else 28  # IPv6 + ICMPv6, IPv4 + ICMP
    out = vm.exec(
        "ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", "-M", "do", "-s", str(size - headers), ip,
        check=False,
    )  # fmt: skip
    return "2 received" in out


async def test_full_size_frames_of_the_network_mtu_cross_hosts(cloud: Cloud) -> None:
    await cloud.apply()
    a1 = cloud.vm(A1)
    # a packet of the network's MTU, to a VM on the other host: switched, then routed
    assert await asyncio.to_thread(ping_size, a1, "10.1.0.6", MTU)
    assert await asyncio.to_thread(ping_size, a1, "10.1.1.6", MTU)
    assert await asyncio.to_thread(ping_size, a1, v6(B2), MTU)  # IPv6, routed
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
    # r1 routes 192.168.77.0/24 and 2001:db8:77::/64 via B2 (host B), which holds ::1 / .1 itself
    b2, a1 = cloud.vm(B2), cloud.vm(A1)
    routes = [
        {"destination": ROUTED_PREFIX, "nexthop": v4(B2)},
        {"destination": "2001:db8:77::/64", "nexthop": v6(B2)},
    ]
    await asyncio.to_thread(b2.exec, "ip", "addr", "replace", f"{BEHIND_B2}/32", "dev", "lo")
    await asyncio.to_thread(
        b2.exec, "ip", "-6", "addr", "replace", "2001:db8:77::1/128", "dev", "lo"
    )
    try:
        await cloud.apply()
        assert not await asyncio.to_thread(a1.ping, BEHIND_B2, 1, 0.2, 1)  # no route yet
        assert not await asyncio.to_thread(a1.ping6, "2001:db8:77::1", 1, 0.2, 1)
        await cloud.apply(routes=routes)
        for cmd in (["ping"], ["ping", "-6"]):
            dst = "2001:db8:77::1" if "-6" in cmd else BEHIND_B2
            out = await asyncio.to_thread(a1.exec, *cmd, "-c", "2", "-W", "2", dst, check=False)
            assert "2 received" in out, out
            # the reply went B2 -> its gateway -> A1: routed once, on host B
            assert "ttl=63" in out
        await cloud.apply()
        assert not await asyncio.to_thread(a1.ping, BEHIND_B2, 1, 0.2, 1)  # the route is gone
        assert not await asyncio.to_thread(a1.ping6, "2001:db8:77::1", 1, 0.2, 1)
    finally:
        await asyncio.to_thread(b2.exec, "ip", "addr", "del", f"{BEHIND_B2}/32", "dev", "lo")
        await asyncio.to_thread(
            b2.exec, "ip", "-6", "addr", "del", "2001:db8:77::1/128", "dev", "lo"
        )
        await cloud.apply()


def packet_ins(cloud: Cloud) -> list[int]:
    return [h.agent.counters["packet_in"] for h in (cloud.a, cloud.b) if h.agent]


async def test_ping6_to_the_gateway_from_either_host(cloud: Cloud) -> None:
    await cloud.apply()
    before = packet_ins(cloud)
    for pid in (A1, B1, A2, B2):
        vm = cloud.vm(pid)
        gw = ADDR[pid][3]
        assert await asyncio.to_thread(vm.ping6, gw, 2, 0.05), (pid, gw)
        # answered as a router, with the gateway's MAC
        assert await asyncio.to_thread(vm.neighbour, gw) == (GW4V6 if pid in (A1, B1) else GW5V6)
        assert "router" in await asyncio.to_thread(vm.exec, "ip", "-6", "neigh", "show", gw)
    # and on its link-local address, what router advertisements name as the default router
    a1 = cloud.vm(A1)
    assert await asyncio.to_thread(a1.ping6, f"{link_local(GW4V6)}%eth0", 1)
    assert packet_ins(cloud) == before == [0, 0]


async def test_ping6_between_subnets_across_hosts_decrements_the_hop_limit(cloud: Cloud) -> None:
    await cloud.apply()
    a1 = cloud.vm(A1)
    assert await asyncio.to_thread(a1.ping6, v6(B2), 3, 0.05)  # other subnet, other host
    assert await asyncio.to_thread(a1.ping6, v6(A2), 1)  # other subnet, same host
    assert await asyncio.to_thread(a1.ping6, v6(B1), 1)  # same subnet, other host
    # one routed hop: the reply left B2 with hop limit 64 and arrives with 63; switched: 64
    out = await asyncio.to_thread(a1.exec, "ping", "-6", "-c", "1", "-W", "2", v6(B2))
    assert "ttl=63" in out, out
    out = await asyncio.to_thread(a1.exec, "ping", "-6", "-c", "1", "-W", "2", v6(B1))
    assert "ttl=64" in out, out


async def test_neighbour_solicitations_are_answered_by_the_datapath(cloud: Cloud) -> None:
    await cloud.apply()
    a1 = cloud.vm(A1)
    before = packet_ins(cloud)
    # GHOST has no VM anywhere: only the datapath can have answered for it
    await asyncio.to_thread(a1.ping6, "2001:db8:4::42", 1, 0.2, 1)
    assert await asyncio.to_thread(a1.neighbour, "2001:db8:4::42") == MAC[GHOST]
    await asyncio.to_thread(a1.ping6, v6(B1), 1)
    assert await asyncio.to_thread(a1.neighbour, v6(B1)) == MAC[B1]
    assert packet_ins(cloud) == before == [0, 0]
    # duplicate address detection is never answered by the datapath: a fresh address stays
    await asyncio.to_thread(a1.exec, "ip", "-6", "addr", "add", "2001:db8:4::77/64", "dev", "eth0")
    try:
        await asyncio.sleep(2.5)  # DAD: one solicitation, then 1 s of silence (plus jitter)
        state = await asyncio.to_thread(a1.exec, "ip", "-6", "addr", "show", "dev", "eth0")
        line = next(ln for ln in state.splitlines() if "2001:db8:4::77" in ln)
        assert "dadfailed" not in line and "tentative" not in line, line
    finally:
        await asyncio.to_thread(
            a1.exec, "ip", "-6", "addr", "del", "2001:db8:4::77/64", "dev", "eth0"
        )


async def test_no_ipv6_answer_across_vpcs(cloud: Cloud) -> None:
    await cloud.apply()
    c1 = cloud.vm(C1)
    # net3 reuses net1's CIDR: ::6 is D1 there, not B1, and ::42 does not exist
    assert await asyncio.to_thread(c1.ping6, v6(D1), 2, 0.05)
    assert await asyncio.to_thread(c1.neighbour, v6(D1)) == MAC[D1]
    assert not await asyncio.to_thread(c1.ping6, "2001:db8:4::42", 1, 0.2, 1)
    assert await asyncio.to_thread(c1.neighbour, "2001:db8:4::42") is None
    # net3 has no router: neither net1's gateway nor net2 is reachable from it
    assert not await asyncio.to_thread(c1.ping6, v6(B2), 1, 0.2, 1)
    # and net1's A1, holding C1's very address, still reaches its own neighbour
    a1 = cloud.vm(A1)
    assert await asyncio.to_thread(a1.ping6, v6(B1), 1)
    assert await asyncio.to_thread(a1.neighbour, v6(B1)) == MAC[B1]


async def test_ipv6_flows_survive_an_agent_restart_untouched(cloud: Cloud) -> None:
    await cloud.apply()
    host = cloud.a
    flows_before = sorted(host.ovs.dump_flows())
    await host.stop_agent()
    agent = await host.start_agent()
    statuses = await agent.apply(goal_for(A))
    assert all(s == ("ACTIVE", "") for s in statuses.values())
    report = agent.last_report
    assert report is not None and report.full
    assert (report.adds, report.deletes) == (0, 0)  # every IPv6 flow read back as desired
    assert sorted(host.ovs.dump_flows()) == flows_before
    assert await asyncio.to_thread(cloud.vm(A1).ping6, v6(B2), 1)


async def test_router_advertisements_configure_a_slaac_vm(cloud: Cloud) -> None:
    await cloud.apply()
    e1 = cloud.vm(E1)
    gw_ll = link_local(GW7V6)

    def addressed() -> bool:
        out = e1.exec("ip", "-6", "addr", "show", "dev", "eth0", "scope", "global")
        return E1_V6 in out and "tentative" not in out

    def default_route() -> str:
        return e1.exec("ip", "-6", "route", "show", "default")

    # the EUI-64 address IPAM gave the port, the gateway as default router, the network's MTU
    await eventually(addressed, 8.0, "no global address", blocking=True, interval=0.2)
    await eventually(
        lambda: gw_ll in default_route(), 8.0, "no default route", blocking=True, interval=0.2
    )
    assert "proto ra" in default_route()
    assert e1.exec("cat", "/proc/sys/net/ipv6/conf/eth0/mtu").strip() == str(MTU)
    assert await asyncio.to_thread(e1.neighbour, gw_ll) == GW7V6
    # and through it, routed to a VM on the other host
    assert await asyncio.to_thread(e1.ping6, v6(A1), 2, 0.1)
    assert cloud.b.agent is not None and cloud.a.agent is not None
    assert cloud.b.agent.counters["router_advertisements"] >= 1
    assert cloud.a.agent.counters["router_advertisements"] == 0  # no local port of its own
    assert packet_ins(cloud) == [0, 0]
    # the router lets go of the subnet: one last advertisement, and the VM drops the route
    try:
        await cloud.apply(slaac_routed=False)
        await eventually(
            lambda: gw_ll not in default_route(),
            4.0,
            "the route stayed",
            blocking=True,
            interval=0.2,
        )
    finally:
        await cloud.apply()
    await eventually(
        lambda: gw_ll in default_route(), 8.0, "no default route", blocking=True, interval=0.2
    )


async def test_a_router_set_down_routes_nothing(cloud: Cloud) -> None:
    a1 = cloud.vm(A1)
    try:
        await cloud.apply(router_up=False)
        for ping, dst in ((a1.ping6, v6(B2)), (a1.ping, v4(B2)), (a1.ping6, "2001:db8:4::1")):
            assert not await asyncio.to_thread(ping, dst, 1, 0.2, 1), dst
        assert await asyncio.to_thread(a1.ping6, v6(B1), 1)  # switching goes on
    finally:
        await cloud.apply()
    assert await asyncio.to_thread(a1.ping6, v6(B2), 1)
    assert await asyncio.to_thread(a1.ping, v4(B2), 1)
