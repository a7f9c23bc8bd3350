"""Port security with real packets on two hosts: what a VM sends with someone else's addresses
reaches nobody, on its host or across hosts; allowed address pairs let exactly theirs through;
port security off lets everything through.

VPC (VNI 400), subnet 10.5.0.0/24 (gateway 10.5.0.1). Host A: X (10.5.0.5, the attacker),
Y (10.5.0.7, a neighbour on the same host), V (10.5.0.8, with allowed address pairs), W (10.5.0.9,
port security off). Host B: Z (10.5.0.6). Every port with port security is in a group that
allows everything, so only port security stands between the frames and the neighbours; each
check sends a frame a sniffer must see next to the ones it must not (the control).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from os_ken.lib.packet import arp, dhcp, icmpv6, ipv4

from alcor.agent.ipv6 import link_local
from alcor.wire import GoalState
from tests.support import frames as F
from tests.support.goals import GoalBuilder
from tests.support.topology import HostPair, two_hosts, wait_taps

pytestmark = [pytest.mark.ovs, pytest.mark.asyncio(loop_scope="module")]

A, B = "node-a", "node-b"
GW = "fa:16:3e:50:00:01"
X, Y, V, W, Z = "f1000000-5555", "f2000000-5555", "f3000000-5555", "f4000000-5555", "f5000000-5555"
MAC = {
    X: "fa:16:3e:5a:00:05",
    Y: "fa:16:3e:5a:00:07",
    V: "fa:16:3e:5a:00:08",
    W: "fa:16:3e:5a:00:09",
    Z: "fa:16:3e:5b:00:06",
}
IP = {X: "10.5.0.5", Y: "10.5.0.7", V: "10.5.0.8", W: "10.5.0.9", Z: "10.5.0.6"}
VIP, VIP_MAC, PREFIX = "10.5.0.200", "fa:16:3e:5a:00:c8", "10.5.0.16/28"
STRANGER_MAC = "fa:16:3e:66:66:66"


def goal_for(node_id: str) -> GoalState:
    g = GoalBuilder(node_id).node(A, "172.31.253.1").node(B, "172.31.253.2")
    g.vpc("vpc1", 400).subnet("s1", "vpc1", "10.5.0.0/24", "10.5.0.1", GW)
    for pid, node in ((X, A), (Y, A), (Z, B)):
        g.port(pid, "vpc1", "s1", IP[pid], MAC[pid], node=node)
    pairs = [{"ip_address": VIP, "mac_address": VIP_MAC}, {"ip_address": PREFIX}]
    g.port(V, "vpc1", "s1", IP[V], MAC[V], node=A, allowed_address_pairs=pairs)
    g.port(W, "vpc1", "s1", IP[W], MAC[W], node=A, port_security=False)
    return g.goal()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cloud(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HostPair]:
    root = tmp_path_factory.mktemp("portsec")
    async with two_hosts(root, (A, B), ("172.31.253.1", "172.31.253.2"), (6731, 6732)) as (a, b):
        for pid in (X, Y, V, W):
            a.add_vm(pid, f"{IP[pid]}/24", MAC[pid], "10.5.0.1")
        b.add_vm(Z, f"{IP[Z]}/24", MAC[Z], "10.5.0.1")
        await wait_taps(a, b)
        cloud = HostPair(a, b)
        await cloud.apply_each(goal_for)
        yield cloud


async def heard(
    cloud: HostPair, sender: str, sent: list[bytes], by: tuple[str, ...] = (Y, Z)
) -> dict[str, list[bytes]]:
    """What each of `by` received while `sender` sent `sent` (raw, as they are)."""

    def go() -> dict[str, list[bytes]]:
        with contextlib.ExitStack() as stack:
            caught = {pid: stack.enter_context(cloud.vm(pid).sniffing()) for pid in by}
            cloud.vm(sender).send_frames(sent, count=2)
        return caught

    return await asyncio.to_thread(go)


def echoes_from(frames: list[bytes], src_ip: str, src_mac: str | None = None) -> int:
    """ICMP frames from src_ip (and src_mac, if given) among `frames`."""
    mac = bytes.fromhex(src_mac.replace(":", "")) if src_mac else None
    return sum(
        1
        for f in frames
        if F.caught([f], ipv4.ipv4, src=src_ip, proto=1) and (mac is None or f[6:12] == mac)
    )


async def test_spoofed_source_mac_and_ip_reach_nobody_on_the_host_or_across_hosts(
    cloud: HostPair,
) -> None:
    sent = []
    for victim in (Y, Z):
        sent.append(F.echo(MAC[X], MAC[victim], IP[X], IP[victim]))  # the control
        sent.append(F.echo(STRANGER_MAC, MAC[victim], "10.5.0.66", IP[victim]))  # both spoofed
        sent.append(F.echo(MAC[Y], MAC[victim], "10.5.0.67", IP[victim]))  # a neighbour's MAC
        sent.append(F.echo(MAC[X], MAC[victim], "10.5.0.68", IP[victim]))  # its MAC, another IP
    got = await heard(cloud, X, sent)
    for victim in (Y, Z):
        assert echoes_from(got[victim], IP[X]) >= 1  # the sniffer works, the path is open
        for spoofed in ("10.5.0.66", "10.5.0.67", "10.5.0.68"):
            assert echoes_from(got[victim], spoofed) == 0, (victim, spoofed)
    # and with the VM's own tools: an address it added itself gets it nowhere
    x = cloud.vm(X)
    await asyncio.to_thread(x.exec, "ip", "addr", "add", "10.5.0.69/24", "dev", "eth0")
    try:
        assert await asyncio.to_thread(x.ping, IP[Z], 1)
        out = await asyncio.to_thread(
            x.exec, "ping", "-c", "1", "-W", "1", "-I", "10.5.0.69", IP[Z], check=False
        )
        assert " 0 received" in out
    finally:
        await asyncio.to_thread(x.exec, "ip", "addr", "del", "10.5.0.69/24", "dev", "eth0")


async def test_spoofed_arp_poisons_no_neighbour(cloud: HostPair) -> None:
    y, z = cloud.vm(Y), cloud.vm(Z)
    assert await asyncio.to_thread(z.ping, IP[Y], 1)  # Z has Y's MAC, and the gateway's
    assert await asyncio.to_thread(z.ping, "10.5.0.1", 1)
    lies = [
        # "Y's IP is at X" and "the gateway is at X", as requests and as replies
        F.arp(MAC[X], MAC[X], IP[Y], IP[Y]),
        F.arp(MAC[X], MAC[X], IP[Y], IP[Z], op=2, dst=MAC[Z]),
        F.arp(MAC[X], MAC[X], "10.5.0.1", "10.5.0.1"),
        F.arp(MAC[X], MAC[X], "10.5.0.1", IP[Y], op=2, dst=MAC[Y]),
        # a sender MAC that is not its own
        F.arp(MAC[X], STRANGER_MAC, IP[X], IP[X]),
    ]
    control = F.arp(MAC[X], MAC[X], IP[X], IP[X])  # a gratuitous ARP for its own IP
    got = await heard(cloud, X, [control, *lies])
    for pid in (Y, Z):
        assert F.caught(got[pid], arp.arp, src_ip=IP[X], src_mac=MAC[X])
        assert not F.caught(got[pid], arp.arp, src_ip=IP[Y])
        assert not F.caught(got[pid], arp.arp, src_ip="10.5.0.1", src_mac=MAC[X])
        assert not F.caught(got[pid], arp.arp, src_mac=STRANGER_MAC)
    # the neighbours' ARP caches still say what they said
    assert await asyncio.to_thread(z.neighbour, IP[Y]) == MAC[Y]
    assert await asyncio.to_thread(z.neighbour, "10.5.0.1") == GW
    assert await asyncio.to_thread(y.neighbour, "10.5.0.1") in (GW, None)


async def test_spoofed_neighbour_advertisement_poisons_no_neighbour(cloud: HostPair) -> None:
    lla = {pid: str(link_local(MAC[pid])) for pid in MAC}
    control = F.neighbour_advert(MAC[X], lla[X], lla[X], MAC[X])
    lies = [
        F.neighbour_advert(MAC[X], lla[X], lla[Y], MAC[X]),  # "Y's address is at X"
        F.neighbour_advert(MAC[X], lla[X], lla[X], STRANGER_MAC),  # its address, another MAC
    ]
    got = await heard(cloud, X, [control, *lies])
    for pid in (Y, Z):
        assert F.caught(got[pid], icmpv6.nd_neighbor, dst=lla[X])
        assert not F.caught(got[pid], icmpv6.nd_neighbor, dst=lla[Y])
        adverts = F.caught(got[pid], icmpv6.nd_neighbor, dst=lla[X])
        assert all(a.option.hw_src == MAC[X] for a in adverts)


async def test_dhcp_server_replies_and_router_advertisements_from_a_vm_reach_nobody(
    cloud: HostPair,
) -> None:
    lla = str(link_local(MAC[X]))
    sent = [
        F.echo(MAC[X], MAC[Y], IP[X], IP[Y]),
        F.dhcp_offer(MAC[X], IP[X], "10.5.0.99"),
        F.router_advert(MAC[X], lla),
    ]
    got = await heard(cloud, X, sent)
    assert echoes_from(got[Y], IP[X]) >= 1
    for pid in (Y, Z):
        assert not F.caught(got[pid], dhcp.dhcp)
        assert not F.caught(got[pid], icmpv6.nd_router_advert)


async def test_allowed_address_pairs_let_exactly_their_addresses_through(cloud: HostPair) -> None:
    sent = [
        F.echo(VIP_MAC, MAC[Z], VIP, IP[Z]),  # the VIP, with its own MAC
        F.echo(MAC[V], MAC[Z], "10.5.0.20", IP[Z]),  # in the prefix, with the port's MAC
        F.arp(VIP_MAC, VIP_MAC, VIP, VIP),  # announcing the VIP
        F.echo(MAC[V], MAC[Z], "10.5.0.40", IP[Z]),  # outside the prefix
        F.echo(MAC[V], MAC[Z], VIP, IP[Z]),  # the VIP with the wrong MAC
        F.echo(VIP_MAC, MAC[Z], "10.5.0.21", IP[Z]),  # the prefix with the wrong MAC
    ]
    got = await heard(cloud, V, sent, by=(Z,))
    assert echoes_from(got[Z], VIP, VIP_MAC) >= 1 and echoes_from(got[Z], "10.5.0.20") >= 1
    assert F.caught(got[Z], arp.arp, src_ip=VIP, src_mac=VIP_MAC)
    assert echoes_from(got[Z], "10.5.0.40") == 0 and echoes_from(got[Z], "10.5.0.21") == 0
    assert echoes_from(got[Z], VIP, MAC[V]) == 0
    # with the VM's own tools: an address of its prefix answers pings from across hosts
    v, z = cloud.vm(V), cloud.vm(Z)
    await asyncio.to_thread(v.exec, "ip", "addr", "add", "10.5.0.20/32", "dev", "eth0")
    try:
        out = await asyncio.to_thread(
            v.exec, "ping", "-c", "1", "-W", "2", "-I", "10.5.0.20", IP[Z], check=False
        )
        assert " 1 received" in out
        assert await asyncio.to_thread(z.ping, "10.5.0.20", 1)
    finally:
        await asyncio.to_thread(v.exec, "ip", "addr", "del", "10.5.0.20/32", "dev", "eth0")


async def test_port_security_off_lets_everything_through(cloud: HostPair) -> None:
    sent = [
        F.echo(STRANGER_MAC, MAC[Z], "10.5.0.70", IP[Z]),
        F.arp(MAC[W], MAC[W], "10.5.0.71", "10.5.0.71"),
        F.dhcp_offer(MAC[W], IP[W], "10.5.0.98"),
    ]
    got = await heard(cloud, W, sent, by=(Z,))
    assert echoes_from(got[Z], "10.5.0.70") >= 1
    assert F.caught(got[Z], arp.arp, src_ip="10.5.0.71")
    assert F.caught(got[Z], dhcp.dhcp)
