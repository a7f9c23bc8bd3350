"""Port security as the pipeline runs it (pure): what a local port may send, and what it may not."""

from __future__ import annotations

import ipaddress

from alcor.agent import portsec
from alcor.agent.compiler import compile_flows
from alcor.agent.ipv6 import link_local
from alcor.agent.ir import T_CLASSIFY, T_PORT_SECURITY, T_RESPOND
from tests.support.flowsim import Packet, arp_request, ipv4, simulate
from tests.support.goals import GW1, MAC, OFPORTS, PA1, PA2, PA3, PB1, VX, two_vpcs

P1, P2, P3 = (OFPORTS["tap" + p[:11]] for p in (PA1, PA2, PA3))
FLOOD = {P2, P3, VX}  # the rest of VPC 1: its other local ports and host B
LLA1 = link_local(MAC[PA1])


def sent(goal: object, pkt: Packet) -> set[int]:
    return {port for port, _ in simulate(compile_flows(goal, OFPORTS), pkt)}


def icmp6(src: str, mac: str, icmp_type: int, dst: str = "ff02::1", **extra: object) -> Packet:
    return {
        "in_port": P1,
        "eth_src": mac,
        "eth_dst": "33:33:00:00:00:01",
        "eth_type": 0x86DD,
        "ipv6_src": src,
        "ipv6_dst": dst,
        "ip_proto": 58,
        "icmpv6_type": icmp_type,
        **extra,
    }


def test_the_link_local_address_is_allowed_with_the_ports_mac() -> None:
    pairs = portsec.allowed_pairs(two_vpcs().goal()["port"][PA1])
    assert (MAC[PA1], ipaddress.IPv6Network("fe80::f816:3eff:fe0a:5/128")) in pairs


def test_own_addresses_pass_spoofed_ones_are_dropped_before_any_port() -> None:
    goal = two_vpcs().goal()
    # its own MAC and IP: to the local neighbour and through the tunnel to the remote one
    assert sent(goal, ipv4(P1, MAC[PA1], MAC[PA3], "10.0.0.5", "10.0.0.7")) == {P3}
    assert sent(goal, ipv4(P1, MAC[PA1], MAC[PB1], "10.0.0.5", "10.0.0.6")) == {VX}
    # a spoofed source MAC, or source IP, or both: dropped, locally and towards host B
    for mac, ip in (
        (MAC[PA3], "10.0.0.5"),
        (MAC[PA1], "10.0.0.7"),
        ("fa:16:3e:66:66:66", "10.0.0.66"),
    ):
        assert sent(goal, ipv4(P1, mac, MAC[PA3], ip, "10.0.0.7")) == set()
        assert sent(goal, ipv4(P1, mac, MAC[PB1], ip, "10.0.0.6")) == set()
    # another ethertype (a VLAN-tagged frame, say) is nothing a port may send
    assert (
        sent(goal, {"in_port": P1, "eth_src": MAC[PA1], "eth_dst": MAC[PA3], "eth_type": 0x8100})
        == set()
    )


def test_arp_is_checked_on_sender_mac_and_ip() -> None:
    goal = two_vpcs().goal()
    # a gratuitous ARP for its own IP floods (nobody is fooled); claiming the gateway's IP, a
    # neighbour's IP, or with another sender MAC, it reaches nobody
    assert sent(goal, arp_request(P1, MAC[PA1], "10.0.0.5", "10.0.0.5")) == FLOOD
    for sha, spa in ((MAC[PA1], "10.0.0.1"), (MAC[PA1], "10.0.0.6"), (MAC[PA3], "10.0.0.5")):
        assert sent(goal, arp_request(P1, sha, spa, spa)) == set()
    spoof = arp_request(P1, MAC[PA1], "10.0.0.5", "10.0.0.7", arp_sha=MAC[PB1])
    assert sent(goal, spoof) == set()
    # an ARP probe (RFC 5227) from 0.0.0.0 is allowed: nobody learns from it
    assert sent(goal, arp_request(P1, MAC[PA1], "0.0.0.0", "10.0.0.9")) == FLOOD
    # the responder still answers the port's own questions
    [(port, reply)] = simulate(
        compile_flows(goal, OFPORTS), arp_request(P1, MAC[PA1], "10.0.0.5", "10.0.0.1")
    )
    assert port == P1 and reply["arp_sha"] == GW1


def test_allowed_address_pairs_let_exactly_their_addresses_through() -> None:
    g = two_vpcs()
    vip_mac = "fa:16:3e:aa:aa:aa"
    g.res["port"][PA1]["allowed_address_pairs"] = [
        {"ip_address": "10.0.0.200", "mac_address": vip_mac},  # a VIP with its own MAC
        {"ip_address": "10.0.0.16/28", "mac_address": None},  # a prefix, with the port's MAC
    ]
    goal = g.goal()
    assert sent(goal, ipv4(P1, vip_mac, MAC[PA3], "10.0.0.200", "10.0.0.7")) == {P3}
    assert sent(goal, arp_request(P1, vip_mac, "10.0.0.200", "10.0.0.200")) == FLOOD
    for ip in ("10.0.0.16", "10.0.0.31"):
        assert sent(goal, ipv4(P1, MAC[PA1], MAC[PA3], ip, "10.0.0.7")) == {P3}
    # just outside, or the VIP with the port's MAC, or the prefix with the VIP's MAC: dropped
    for mac, ip in (
        (MAC[PA1], "10.0.0.32"),
        (MAC[PA1], "10.0.0.15"),
        (MAC[PA1], "10.0.0.200"),
        (vip_mac, "10.0.0.20"),
    ):
        assert sent(goal, ipv4(P1, mac, MAC[PA3], ip, "10.0.0.7")) == set(), (mac, ip)


def test_port_security_off_lets_everything_through() -> None:
    g = two_vpcs()
    g.res["port"][PA1]["port_security_enabled"] = False
    g.res["port"][PA1]["security_group_ids"] = []
    fs = compile_flows(g.goal(), OFPORTS)
    [classify] = [
        f for f in fs.flows if f.table == T_CLASSIFY and dict(f.match).get("in_port") == P1
    ]
    assert classify.goto_table == T_RESPOND and not classify.actions
    assert not [
        f for f in fs.flows if f.table == T_PORT_SECURITY and dict(f.match).get("in_port") == P1
    ]
    goal = g.goal()
    assert sent(goal, ipv4(P1, "fa:16:3e:66:66:66", MAC[PA3], "10.9.9.9", "10.0.0.7")) == {P3}
    assert sent(goal, arp_request(P1, MAC[PA1], "10.0.0.1", "10.0.0.99")) == FLOOD


def test_dhcp_servers_and_router_advertisements_from_vms_are_dropped() -> None:
    goal = two_vpcs().goal()
    offer = ipv4(P1, MAC[PA1], "ff:ff:ff:ff:ff:ff", "10.0.0.5", "255.255.255.255", ip_proto=17)
    del offer["icmpv4_type"]
    assert sent(goal, {**offer, "udp_src": 67, "udp_dst": 68}) == set()
    # a DHCP client before it has an address may ask (broadcast, from 0.0.0.0)
    assert sent(goal, {**offer, "ipv4_src": "0.0.0.0", "udp_src": 68, "udp_dst": 67}) == FLOOD
    assert sent(goal, icmp6(LLA1, MAC[PA1], 134)) == set()  # router advertisement
    assert sent(goal, icmp6(LLA1, MAC[PA1], 128)) == FLOOD  # an echo from its link-local


def test_neighbour_discovery_is_checked_on_source_target_and_link_layer_address() -> None:
    goal = two_vpcs().goal()
    other = "fe80::f816:3eff:fe0a:7"  # PA3's link-local address
    na = {"ipv6_nd_target": LLA1, "ipv6_nd_tll": MAC[PA1]}
    assert sent(goal, icmp6(LLA1, MAC[PA1], 136, **na)) == FLOOD
    assert (
        sent(goal, icmp6(LLA1, MAC[PA1], 136, **{**na, "ipv6_nd_tll": "00:00:00:00:00:00"}))
        == FLOOD
    )
    # advertising someone else's address, or its own with another MAC: dropped
    assert (
        sent(goal, icmp6(LLA1, MAC[PA1], 136, ipv6_nd_target=other, ipv6_nd_tll=MAC[PA1])) == set()
    )
    assert (
        sent(goal, icmp6(LLA1, MAC[PA1], 136, ipv6_nd_target=LLA1, ipv6_nd_tll=MAC[PA3])) == set()
    )
    # a solicitation from its address with its MAC, or for DAD from ::, without one
    assert (
        sent(goal, icmp6(LLA1, MAC[PA1], 135, ipv6_nd_target=other, ipv6_nd_sll=MAC[PA1])) == FLOOD
    )
    dad = icmp6("::", MAC[PA1], 135, ipv6_nd_target=LLA1, ipv6_nd_sll="00:00:00:00:00:00")
    assert sent(goal, dad) == FLOOD
    # a solicitation claiming another MAC, or from another address: dropped
    assert (
        sent(goal, icmp6(LLA1, MAC[PA1], 135, ipv6_nd_target=other, ipv6_nd_sll=MAC[PA3])) == set()
    )
    assert (
        sent(goal, icmp6(other, MAC[PA1], 135, ipv6_nd_target=other, ipv6_nd_sll=MAC[PA1])) == set()
    )
    assert sent(goal, {**dad, "ipv6_nd_sll": MAC[PA1]}) == set()  # :: with an address: no
