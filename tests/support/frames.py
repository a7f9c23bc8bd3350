"""Ethernet frames for tests that send what a well-behaved VM would not (spoofed, rogue), built
with os-ken's packet library, and a reader for what a sniffer caught.

    frame = arp(src_mac=mac, sha=mac, spa="10.0.0.1", tpa="10.0.0.1", op=2)   # a lie
    vm.send_frame(frame)
"""

from __future__ import annotations

from typing import Any

from os_ken.lib.packet import arp as arp_pkt
from os_ken.lib.packet import dhcp, ethernet, icmp, icmpv6, ipv4, ipv6, packet, udp

BROADCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES = "ff02::1"
ALL_NODES_MAC = "33:33:00:00:00:01"


def _build(*protocols: Any) -> bytes:
    p = packet.Packet()
    for proto in protocols:
        p.add_protocol(proto)
    p.serialize()
    return bytes(p.data)


def arp(src_mac: str, sha: str, spa: str, tpa: str, *, op: int = 1, dst: str = BROADCAST) -> bytes:
    return _build(
        ethernet.ethernet(dst=dst, src=src_mac, ethertype=0x0806),
        arp_pkt.arp(opcode=op, src_mac=sha, src_ip=spa, dst_mac="00:00:00:00:00:00", dst_ip=tpa),
    )


def echo(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, ident: int = 0x4242) -> bytes:
    return _build(
        ethernet.ethernet(dst=dst_mac, src=src_mac, ethertype=0x0800),
        ipv4.ipv4(src=src_ip, dst=dst_ip, proto=1),
        icmp.icmp(type_=8, code=0, data=icmp.echo(id_=ident, seq=1, data=b"alcor-probe")),
    )


def neighbour_advert(src_mac: str, src_ip: str, target: str, tll: str) -> bytes:
    """An unsolicited NA (override set) to all nodes: 'target is at tll'."""
    return _build(
        ethernet.ethernet(dst=ALL_NODES_MAC, src=src_mac, ethertype=0x86DD),
        ipv6.ipv6(src=src_ip, dst=ALL_NODES, nxt=58, hop_limit=255),
        icmpv6.icmpv6(
            type_=icmpv6.ND_NEIGHBOR_ADVERT,
            data=icmpv6.nd_neighbor(res=0b001, dst=target, option=icmpv6.nd_option_tla(hw_src=tll)),
        ),
    )


def router_advert(src_mac: str, src_ip: str) -> bytes:
    return _build(
        ethernet.ethernet(dst=ALL_NODES_MAC, src=src_mac, ethertype=0x86DD),
        ipv6.ipv6(src=src_ip, dst=ALL_NODES, nxt=58, hop_limit=255),
        icmpv6.icmpv6(type_=icmpv6.ND_ROUTER_ADVERT, data=icmpv6.nd_router_advert(rou_l=1800)),
    )


def dhcp_offer(src_mac: str, src_ip: str, yiaddr: str) -> bytes:
    """What a rogue DHCP server in a VM would broadcast."""
    options = dhcp.options(option_list=[dhcp.option(tag=dhcp.DHCP_MESSAGE_TYPE_OPT, value=b"\x02")])
    return _build(
        ethernet.ethernet(dst=BROADCAST, src=src_mac, ethertype=0x0800),
        ipv4.ipv4(src=src_ip, dst="255.255.255.255", proto=17),
        udp.udp(src_port=67, dst_port=68),
        dhcp.dhcp(op=2, chaddr="fa:16:3e:99:99:99", yiaddr=yiaddr, siaddr=src_ip, options=options),
    )


def parse(frame: bytes) -> packet.Packet:
    return packet.Packet(frame)


def caught(frames: list[bytes], kind: Any, **fields: Any) -> list[Any]:
    """The headers of class `kind` (arp.arp, ipv4.ipv4, ...) in `frames` whose attributes
    equal `fields`."""
    out = []
    for f in frames:
        for proto in parse(f).protocols:
            for p in (proto, getattr(proto, "data", None)):  # ND messages sit inside ICMPv6
                if isinstance(p, kind) and all(getattr(p, k, None) == v for k, v in fields.items()):
                    out.append(p)
    return out
