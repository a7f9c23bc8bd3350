"""Router advertisements (alcor/agent/ra.py): what is sent, to whom, and when."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from typing import Any

from os_ken.lib.packet import ethernet, ipv6, packet

from alcor.agent.ipv6 import link_local
from alcor.agent.ir import tap_name
from alcor.agent.ra import (
    PREFIX_AUTONOMOUS,
    PREFIX_ON_LINK,
    Advert,
    RouterAdvertiser,
    advertisements,
    router_advertisement,
)
from tests.support.goals import GW1V6, OFPORTS, PA1, PA2, PA3, PB1, QA1, dual_stack


def parse(frame: bytes) -> tuple[Any, Any, dict[str, Any]]:
    """Ethernet and IPv6 headers (os-ken), and the RA itself read by hand: os-ken 4.2 parses
    every option after the first as that option's data."""
    pkt = packet.Packet(frame)
    eth, ip = pkt.get_protocol(ethernet.ethernet), pkt.get_protocol(ipv6.ipv6)
    body = frame[14 + 40 :]
    typ, code, _csum, ch_l, flags, lifetime = struct.unpack_from("!BBHBBH", body)
    ra: dict[str, Any] = {"type": typ, "code": code, "ch_l": ch_l, "flags": flags, "lifetime": lifetime}
    pos = 16
    while pos < len(body):
        otype, olen = body[pos], body[pos + 1] * 8
        opt = body[pos : pos + olen]
        if otype == 1:
            ra["sll"] = ":".join(f"{b:02x}" for b in opt[2:8])
        elif otype == 5:
            ra["mtu"] = struct.unpack_from("!I", opt, 4)[0]
        elif otype == 3:
            plen, pflags, valid, preferred = struct.unpack_from("!BBII", opt, 2)
            prefix = str(ipaddress.IPv6Address(opt[16:32]))
            ra["prefix"] = (prefix, plen, pflags >> 5, valid, preferred)
        pos += olen
    # the ICMPv6 checksum is right
    pseudo = ip_pseudo_header(ip.src, ip.dst, len(body))
    assert checksum(pseudo + body) == 0
    return eth, ip, ra


def ip_pseudo_header(src: str, dst: str, length: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!I3xB", length, 58)
    )


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_an_advertisement_is_what_a_router_interface_sends_for_slaac() -> None:
    eth, ip, ra = parse(router_advertisement(GW1V6, "2001:db8:1::/64", 1450))
    assert (eth.src, eth.dst) == (GW1V6, "33:33:00:00:00:01")
    assert (ip.src, ip.dst, ip.hop_limit) == (link_local(GW1V6), "ff02::1", 255)
    assert (ra["type"], ra["code"]) == (134, 0)
    assert (ra["ch_l"], ra["flags"], ra["lifetime"]) == (64, 0, 1800)  # M, O off: no DHCPv6
    assert ra["sll"] == GW1V6 and ra["mtu"] == 1450
    on_link_autonomous = PREFIX_ON_LINK | PREFIX_AUTONOMOUS
    assert ra["prefix"] == ("2001:db8:1::", 64, on_link_autonomous, 86400, 14400)


def test_a_withdrawal_ends_the_default_route_and_the_prefix() -> None:
    _, _, ra = parse(router_advertisement(GW1V6, "2001:db8:1::/64", 1450, lifetime=0))
    assert ra["lifetime"] == 0 and ra["prefix"][4] == 0 and ra["prefix"][0] == "2001:db8:1::"


def goal_with_slaac() -> dict[str, Any]:
    g = dual_stack()
    g.res["subnet"]["s1v6"]["ipv6_ra_mode"] = "slaac"
    return dict(g.goal())


def test_advertised_to_active_local_ports_of_slaac_subnets_on_a_router() -> None:
    goal = goal_with_slaac()
    live = [PA1, PA2, PA3, QA1]
    ads = advertisements(goal, OFPORTS, live)
    # s1v6 only: PA2 is on s2v6 (no RA mode), QA1 on VPC2's subnet; PB1 is on host B
    assert sorted(ads) == [(PA1, "s1v6"), (PA3, "s1v6")]
    assert ads[(PA1, "s1v6")].ofport == OFPORTS[tap_name(PA1)]
    assert parse(ads[(PA1, "s1v6")].packet)[2]["mtu"] == 1450  # the VPC's mtu
    assert advertisements(goal, OFPORTS, [PA1, PB1]).keys() == {(PA1, "s1v6")}
    # a port not (yet) active gets nothing, nor does anyone once the router lets go of the subnet
    assert advertisements(goal, OFPORTS, [PA3]).keys() == {(PA3, "s1v6")}
    down = {**goal, "router": {"r1": {**goal["router"]["r1"], "admin_state_up": False}}}
    assert advertisements(down, OFPORTS, live) == {}  # a router set down advertises nothing
    goal["subnet"]["s1v6"] = {**goal["subnet"]["s1v6"], "gateway_mac": None}
    assert advertisements(goal, OFPORTS, live) == {}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[float, int, bytes]] = []

    async def packet_out(self, data: bytes, actions: list[Any], in_port: int | None = None) -> None:
        self.sent.append((asyncio.get_running_loop().time(), actions[0].port, data))


async def test_sent_at_once_then_on_schedule_then_withdrawn() -> None:
    ad = Advert(
        PA1, "s1v6", 7, router_advertisement(GW1V6, "2001:db8:1::/64", 1450),
        router_advertisement(GW1V6, "2001:db8:1::/64", 1450, lifetime=0),
    )  # fmt: skip
    sw = Recorder()
    counters: dict[str, int] = {}
    ra = RouterAdvertiser(interval=0.2, initial=(0.0, 0.05, 0.1), counters=counters)
    try:
        ra.update(sw, {(PA1, "s1v6"): ad}, {PA1: 7})
        await asyncio.sleep(0.42)
        times = [t - sw.sent[0][0] for t, _, _ in sw.sent]
        want = [0.0, 0.05, 0.1, 0.3]  # the burst, then every 0.2 s
        assert len(times) == 4 and all(abs(t - w) < 0.03 for t, w in zip(times, want, strict=True))
        assert {port for _, port, _ in sw.sent} == {7} and counters["router_advertisements"] == 4
        # the same advertisement again changes nothing; the port losing it gets a withdrawal
        ra.update(sw, {(PA1, "s1v6"): ad}, {PA1: 7})
        n = len(sw.sent)
        ra.update(sw, {}, {PA1: 7})
        await asyncio.sleep(0.05)
        assert len(sw.sent) == n + 1 and parse(sw.sent[-1][2])[2]["lifetime"] == 0
        # a port that went away gets nothing more; without a switch nothing is sent
        ra.update(sw, {(PA1, "s1v6"): ad}, {PA1: 7})
        ra.update(sw, {}, {})
        ra.update(None, {(PA1, "s1v6"): ad}, {PA1: 7})
        n = len(sw.sent)
        await asyncio.sleep(0.1)
        assert len(sw.sent) in (n, n + 1)  # at most the one already due when it was replaced
    finally:
        await ra.stop()
