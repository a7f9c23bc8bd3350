"""A tiny OpenFlow pipeline interpreter over alcor.agent.ir.Flow, for pure unit tests.

It follows OVS's rules that the compiler relies on: highest priority wins, output to the ingress
port is dropped, OFPP_IN_PORT sends back, a resubmit comes back with the packet as the resubmitted
table left it, conjunctive matches (a complete conjunction above the best ordinary match looks up
its conj_id flow), and ct(): a connection table per zone (new, established, reply, ct_mark), the
tracked copy continuing at the ct's table while the actions after it see the packet as it was.
It is not OVS (no TCP state machine, nothing is ever invalid): integration tests check the real
thing.

    outs = simulate(flowset, {"in_port": 1, "eth_type": 0x806, ...})
    # [(ofport, packet_fields_after_actions), ...]
    ct = Conntrack()   # pass the same one to follow connections across packets
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from alcor.agent.compiler import FlowSet
from alcor.agent.ir import (
    CT_EST,
    CT_NEW,
    CT_RPL,
    CT_TRK,
    OFPP_IN_PORT,
    REG_ZONE,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    Group,
    Move,
    Output,
    OutputReg,
    Resubmit,
    SetField,
)

Packet = dict[str, Any]
_PORTS = (("tcp_src", "tcp_dst"), ("udp_src", "udp_dst"), ("sctp_src", "sctp_dst"))


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


def _conjunctive(f: Flow) -> bool:
    return bool(f.actions) and all(isinstance(a, Conjunction) for a in f.actions)


def lookup(flows: Iterable[Flow], table: int, pkt: Packet) -> Flow | None:
    hits = [
        f for f in flows if f.table == table and all(_field_matches(pkt, n, v) for n, v in f.match)
    ]
    hard = sorted((f for f in hits if not _conjunctive(f)), key=lambda f: -f.priority)
    floor = hard[0].priority if hard else -1
    # conjunctive matches above the best ordinary flow, highest priority first
    by_priority: dict[int, list[Flow]] = {}
    for f in hits:
        if _conjunctive(f) and f.priority > floor:
            by_priority.setdefault(f.priority, []).append(f)
    for prio in sorted(by_priority, reverse=True):
        clauses: dict[int, set[int]] = {}
        needed: dict[int, int] = {}
        for f in by_priority[prio]:
            for a in f.actions:
                assert isinstance(a, Conjunction)
                clauses.setdefault(a.id, set()).add(a.clause)
                needed[a.id] = a.n_clauses
        for cid in sorted(clauses):
            if len(clauses[cid]) == needed[cid]:
                found = lookup(
                    [f for f in flows if not _conjunctive(f)], table, {**pkt, "conj_id": cid}
                )
                if found is not None:
                    return found
    if not hard:
        return None
    if len(hard) > 1 and hard[0].priority == hard[1].priority:
        raise AssertionError(f"ambiguous flows for {pkt}: {hard[0]} / {hard[1]}")
    return hard[0]


class Conntrack:
    """Connections by zone: (zone, 5-tuple of the original direction) -> ct_mark."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, tuple[Any, ...]], int] = {}

    @staticmethod
    def key(pkt: Packet) -> tuple[Any, ...]:
        v = "ipv6" if "ipv6_src" in pkt else "ipv4"
        sport = dport = 0
        for s, d in _PORTS:
            if s in pkt:
                sport, dport = pkt[s], pkt[d]
        if pkt.get("icmpv4_type") in (0, 8) or pkt.get("icmpv6_type") in (128, 129):
            sport = dport = pkt.get("icmp_id", 0)
        return (pkt.get(f"{v}_src"), pkt.get(f"{v}_dst"), pkt.get("ip_proto"), sport, dport)

    def lookup(self, zone: int, pkt: Packet) -> tuple[int, int]:
        """(ct_state, ct_mark) of a packet in a zone."""
        k = self.key(pkt)
        if (zone, k) in self.entries:
            return CT_TRK | CT_EST, self.entries[(zone, k)]
        rev = (k[1], k[0], k[2], k[4], k[3])
        if (zone, rev) in self.entries:
            return CT_TRK | CT_EST | CT_RPL, self.entries[(zone, rev)]
        return CT_TRK | CT_NEW, 0

    def commit(self, zone: int, pkt: Packet, mark: int | None) -> None:
        k = self.key(pkt)
        rev = (k[1], k[0], k[2], k[4], k[3])
        if (zone, rev) in self.entries:
            k = rev
        old = self.entries.get((zone, k), 0)
        self.entries[(zone, k)] = old if mark is None else mark


def simulate(
    fs: FlowSet,
    pkt: Packet,
    *,
    trace: list[Flow] | None = None,
    ct: Conntrack | None = None,
) -> list[tuple[int, Packet]]:
    """Run one packet through the pipeline; return (output port, packet as sent) pairs."""
    regs = {f"reg{i}": 0 for i in range(16)}  # OVS starts every packet with zeroed registers
    pkt = {"metadata": 0, **regs, "ct_state": 0, "ct_mark": 0, "conj_id": 0, **pkt}
    outs: list[tuple[int, Packet]] = []
    _run(fs.flows, pkt, 0, ct if ct is not None else Conntrack(), outs, trace, 0)
    return outs


def _run(
    flows: Iterable[Flow],
    pkt: Packet,
    table: int | None,
    ct: Conntrack,
    outs: list[tuple[int, Packet]],
    trace: list[Flow] | None,
    depth: int,
) -> None:
    assert depth < 64, "resubmit loop"
    flows = list(flows)
    while table is not None:
        flow = lookup(flows, table, pkt)
        if flow is None:
            return  # table miss: drop (OpenFlow 1.3)
        if trace is not None:
            trace.append(flow)
        for action in flow.actions:
            if isinstance(action, Output | OutputReg):
                port = pkt[action.reg] if isinstance(action, OutputReg) else action.port
                if port == OFPP_IN_PORT:
                    outs.append((pkt["in_port"], dict(pkt)))
                elif port != pkt["in_port"]:
                    outs.append((port, dict(pkt)))
            elif isinstance(action, SetField):
                pkt[action.field] = action.value
            elif isinstance(action, Move):
                pkt[action.dst] = pkt.get(action.src)
            elif isinstance(action, DecTtl):
                pkt["ttl"] = pkt.get("ttl", 64) - 1
            elif isinstance(action, Resubmit):
                _run(flows, pkt, action.table, ct, outs, trace, depth + 1)
            elif isinstance(action, Ct):
                zone = pkt[REG_ZONE] & 0xFFFF
                if action.commit:
                    ct.commit(zone, pkt, action.mark)
                if action.table is not None:  # the tracked clone goes on there
                    state, mark = ct.lookup(zone, pkt)
                    clone = {**pkt, "ct_state": state, "ct_mark": mark, "ct_zone": zone}
                    _run(flows, clone, action.table, ct, outs, trace, depth + 1)
            elif isinstance(action, Group):
                raise AssertionError("groups are not simulated")
        if flow.write_metadata is not None:
            value, mask = flow.write_metadata
            pkt["metadata"] = (pkt["metadata"] & ~mask) | (value & mask)
        table = flow.goto_table


def arp_request(in_port: int, sha: str, spa: str, tpa: str, **extra: Any) -> Packet:
    arp = {"arp_op": 1, "arp_sha": sha, "arp_spa": spa, "arp_tha": "00:00:00:00:00:00", "arp_tpa": tpa}
    return frame(in_port, sha, "ff:ff:ff:ff:ff:ff", 0x0806, **{**arp, **extra})


def frame(in_port: int, src_mac: str, dst_mac: str, eth_type: int, **fields: Any) -> Packet:
    """An Ethernet frame arriving on `in_port`, with the header fields of what it carries."""
    return {"in_port": in_port, "eth_src": src_mac, "eth_dst": dst_mac, "eth_type": eth_type, **fields}


def ipv4(in_port: int, src_mac: str, dst_mac: str, src: str, dst: str, **extra: Any) -> Packet:
    """An ICMP echo request."""
    icmp = {"ip_proto": 1, "icmpv4_type": 8, "ttl": 64}
    return frame(in_port, src_mac, dst_mac, 0x0800, ipv4_src=src, ipv4_dst=dst, **{**icmp, **extra})


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
    ns = {
        "ip_proto": 58,
        "icmpv6_type": 135,
        "icmpv6_code": 0,
        "ipv6_nd_target": target,
        # OVS reads a missing option as all zeros
        "ipv6_nd_sll": (src_mac if sll is None else sll) if src != "::" else "00:00:00:00:00:00",
        "ttl": 255,
    }
    return frame(in_port, src_mac, group_mac, 0x86DD, ipv6_src=src, ipv6_dst=group, **{**ns, **extra})


def ipv6(in_port: int, src_mac: str, dst_mac: str, src: str, dst: str, **extra: Any) -> Packet:
    """An ICMPv6 echo request."""
    icmp = {"ip_proto": 58, "icmpv6_type": 128, "icmpv6_code": 0, "ttl": 64}
    return frame(in_port, src_mac, dst_mac, 0x86DD, ipv6_src=src, ipv6_dst=dst, **{**icmp, **extra})


def tcp(
    in_port: int, src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int
) -> Packet:
    pkt = ipv4(in_port, src_mac, dst_mac, src, dst, ip_proto=6, tcp_src=sport, tcp_dst=dport)
    del pkt["icmpv4_type"]
    return pkt


def reply(pkt: Packet, in_port: int) -> Packet:
    """The reply to a packet (addresses and ports swapped), sent from in_port."""
    out = dict(pkt, in_port=in_port)
    for a, b in (("eth_src", "eth_dst"), ("ipv4_src", "ipv4_dst"), *_PORTS):
        if a in pkt:
            out[a], out[b] = pkt[b], pkt[a]
    if out.get("icmpv4_type") == 8:
        out["icmpv4_type"] = 0
    return out
