"""A tiny OpenFlow pipeline interpreter over alcor.agent.ir.Flow, for pure unit tests.

It follows OVS's rules that the compiler relies on: highest priority wins, output to the ingress
port is dropped, OFPP_IN_PORT sends back. It is not OVS: integration tests check the real thing.

    outs = simulate(flowset, {"in_port": 1, "eth_type": 0x806, ...})
    # [(ofport, packet_fields_after_actions), ...]
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from alcor.agent.compiler import FlowSet
from alcor.agent.ir import OFPP_IN_PORT, DecTtl, Flow, Group, Move, Output, SetField

Packet = dict[str, Any]


def _field_matches(pkt: Packet, name: str, want: Any) -> bool:
    have = pkt.get(name)
    if have is None:
        return False
    if isinstance(want, tuple):
        value, mask = want
        if isinstance(value, int):
            return (int(have) & mask) == (value & mask)
        plen = bin(int(ipaddress.ip_address(mask))).count("1")
        net = ipaddress.ip_network(f"{value}/{plen}")
        return ipaddress.ip_address(have) in net
    return have == want


def lookup(flows: Iterable[Flow], table: int, pkt: Packet) -> Flow | None:
    hits = [
        f for f in flows if f.table == table and all(_field_matches(pkt, n, v) for n, v in f.match)
    ]
    if not hits:
        return None
    hits.sort(key=lambda f: -f.priority)
    if len(hits) > 1 and hits[0].priority == hits[1].priority:
        raise AssertionError(f"ambiguous flows for {pkt}: {hits[0]} / {hits[1]}")
    return hits[0]


def simulate(
    fs: FlowSet, pkt: Packet, *, trace: list[Flow] | None = None
) -> list[tuple[int, Packet]]:
    """Run one packet through the pipeline; return (output port, packet as sent) pairs."""
    pkt = {"metadata": 0, **pkt}
    outs: list[tuple[int, Packet]] = []
    table: int | None = 0
    while table is not None:
        flow = lookup(fs.flows, table, pkt)
        if flow is None:
            break  # table miss: drop (OpenFlow 1.3)
        if trace is not None:
            trace.append(flow)
        for action in flow.actions:
            if isinstance(action, Output):
                if action.port == OFPP_IN_PORT:
                    outs.append((pkt["in_port"], dict(pkt)))
                elif action.port != pkt["in_port"]:
                    outs.append((action.port, dict(pkt)))
            elif isinstance(action, SetField):
                pkt[action.field] = action.value
            elif isinstance(action, Move):
                pkt[action.dst] = pkt.get(action.src)
            elif isinstance(action, DecTtl):
                pkt["ttl"] = pkt.get("ttl", 64) - 1
            elif isinstance(action, Group):
                raise AssertionError("groups are not simulated")
        if flow.write_metadata is not None:
            value, mask = flow.write_metadata
            pkt["metadata"] = (pkt["metadata"] & ~mask) | (value & mask)
        table = flow.goto_table
    return outs


def arp_request(in_port: int, sha: str, spa: str, tpa: str, **extra: Any) -> Packet:
    return {
        "in_port": in_port,
        "eth_src": sha,
        "eth_dst": "ff:ff:ff:ff:ff:ff",
        "eth_type": 0x0806,
        "arp_op": 1,
        "arp_sha": sha,
        "arp_spa": spa,
        "arp_tha": "00:00:00:00:00:00",
        "arp_tpa": tpa,
        **extra,
    }


def ipv4(in_port: int, src_mac: str, dst_mac: str, src: str, dst: str, **extra: Any) -> Packet:
    return {
        "in_port": in_port,
        "eth_src": src_mac,
        "eth_dst": dst_mac,
        "eth_type": 0x0800,
        "ipv4_src": src,
        "ipv4_dst": dst,
        "ip_proto": 1,
        "icmpv4_type": 8,
        "ttl": 64,
        **extra,
    }


def solicited_node(ip: str) -> tuple[str, str]:
    """The solicited-node multicast group of an IPv6 address, and its Ethernet address."""
    low = ipaddress.IPv6Address(ip).packed[-3:]
    group = ipaddress.IPv6Address(bytes.fromhex("ff02" + "00" * 9 + "01ff") + low)
    return str(group), "33:33:ff:" + ":".join(f"{b:02x}" for b in low)


def neighbour_solicitation(
    in_port: int, src_mac: str, src: str, target: str, *, sll: str | None = None, **extra: Any
) -> Packet:
    """An NS as a host sends it to resolve `target` (from "::" for DAD, without an SLL option)."""
    group, group_mac = solicited_node(target)
    return {
        "in_port": in_port,
        "eth_src": src_mac,
        "eth_dst": group_mac,
        "eth_type": 0x86DD,
        "ipv6_src": src,
        "ipv6_dst": group,
        "ip_proto": 58,
        "icmpv6_type": 135,
        "icmpv6_code": 0,
        "ipv6_nd_target": target,
        # OVS reads a missing option as all zeros
        "ipv6_nd_sll": (src_mac if sll is None else sll) if src != "::" else "00:00:00:00:00:00",
        "ttl": 255,
        **extra,
    }


def ipv6(in_port: int, src_mac: str, dst_mac: str, src: str, dst: str, **extra: Any) -> Packet:
    return {
        "in_port": in_port,
        "eth_src": src_mac,
        "eth_dst": dst_mac,
        "eth_type": 0x86DD,
        "ipv6_src": src,
        "ipv6_dst": dst,
        "ip_proto": 58,
        "icmpv6_type": 128,
        "icmpv6_code": 0,
        "ttl": 64,
        **extra,
    }
