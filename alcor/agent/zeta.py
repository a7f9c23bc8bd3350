"""Zeta redirection on the agent, as pure functions: which VPCs go to a gateway cluster, the select
group that spreads them over its FWDs, OAM message parsing, and the direct-path flow an OAM
"inject" asks for. No I/O: alcor/agent/oam.py puts these on the switch and the network.

    >>> msg = parse_oam(encode_oam(OamMessage(OP_INJECT, "10.0.0.5", "10.0.0.6", 0, 0, 1, 100,
    ...     "10.0.0.6", "172.31.255.2", "fa:16:3e:0b:00:06", "02:00:00:00:00:02", 5)))
    >>> (msg.vni, msg.dst_host_ip, msg.idle_timeout)
    (100, '172.31.255.2', 5)

A VPC is redirected when its `gateway_ids` name a gateway of type "zeta", status "ready", with at
least one FWD destination. Its flood flow (unknown unicast, broadcast) then outputs to local ports
and to the gateway's select group instead of copying to every member host; known neighbours keep
their own flows. The OAM message (44 bytes, big-endian):

    0  opcode u32 (0 inject, 1 delete)      4  inner source IP      8  inner destination IP
    12 source port u16   14 destination port u16   16 IP protocol u8   17 VNI (24 bits)
    -- a delete ends here (20 bytes) --
    20 destination instance IP   24 destination host IP   28 destination instance MAC (6)
    34 destination host MAC (6)  40 idle timeout s u16    42 reserved u16
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alcor.agent.ir import ETH_IP, T_L3, Action, Flow, Output, SetField, match

OP_INJECT = 0
OP_DELETE = 1
OAM_LEN = 44
OAM_DELETE_LEN = 20
DEFAULT_OAM_PORT = 8300
# An inject with idle timeout 0 would be a permanent flow nobody removes: use this instead.
DEFAULT_IDLE_TIMEOUT = 60

_HEAD = struct.Struct("!I4s4sHHB3s")  # the 20 bytes both opcodes carry
_TAIL = struct.Struct("!4s4s6s6sHH")  # the 24 more an inject carries

# Direct-path flows sit in L3 above every compiled flow (host routes 100, proxy ARP 150, own IP
# 200), so the 5-tuple wins over distributed routing and flooding alike.
P_DIRECT = 300
# Their cookies carry a tag the reconciler does not read back (its tag is 0xA1C0), so a
# reconcile never deletes them: they belong to Zeta and go by idle timeout or an OAM delete.
DIRECT_TAG = 0xA1C1 << 48
DIRECT_VNI_MASK = 0xFFFF_FFFF_FF00_0000  # tag + VNI: every direct flow of one VPC
# Select groups of ours: 0xA1C00000 + 20 bits of the gateway id's hash (below OFPG_MAX).
GROUP_BASE = 0xA1C0_0000
GROUP_SPAN = 1 << 20

_PORTED = {6: ("tcp_src", "tcp_dst"), 17: ("udp_src", "udp_dst"), 132: ("sctp_src", "sctp_dst")}


class OamError(ValueError):
    """An OAM message that cannot be used; `outcome` is the counter it goes to."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class OamMessage:
    opcode: int
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    proto: int
    vni: int
    # inject only (empty / 0 for a delete)
    dst_instance_ip: str = ""
    dst_host_ip: str = ""
    dst_instance_mac: str = ""
    dst_host_mac: str = ""
    idle_timeout: int = 0


def _ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_oam(data: bytes) -> OamMessage:
    """Decode one OAM datagram; raises OamError("malformed" | "unknown_opcode", why)."""
    if len(data) < 4:
        raise OamError("malformed", f"{len(data)} bytes, shorter than an opcode")
    (opcode,) = struct.unpack_from("!I", data)
    if opcode not in (OP_INJECT, OP_DELETE):
        raise OamError("unknown_opcode", f"opcode {opcode}")
    want = OAM_LEN if opcode == OP_INJECT else OAM_DELETE_LEN
    # A delete padded to the full 44 bytes is accepted too (its tail is ignored).
    if len(data) != want and not (opcode == OP_DELETE and len(data) == OAM_LEN):
        raise OamError("malformed", f"opcode {opcode} with {len(data)} bytes, expected {want}")
    _, sip, dip, sport, dport, proto, vni = _HEAD.unpack_from(data)
    head = (opcode, _ip(sip), _ip(dip), sport, dport, proto, int.from_bytes(vni, "big"))
    if head[6] == 0:
        raise OamError("malformed", "VNI 0")
    if opcode == OP_DELETE:
        return OamMessage(*head)
    iip, hip, imac, hmac, idle, _ = _TAIL.unpack_from(data, OAM_DELETE_LEN)
    msg = OamMessage(*head, _ip(iip), _ip(hip), _mac(imac), _mac(hmac), idle)
    if hip == b"\0\0\0\0" or iip == b"\0\0\0\0":
        raise OamError("malformed", "zero destination host or instance IP")
    if imac == b"\0" * 6 or imac[0] & 1:
        raise OamError("malformed", f"destination instance MAC {msg.dst_instance_mac}")
    return msg


def encode_oam(m: OamMessage) -> bytes:
    """The wire form of `m` (what a FWD sends; the stand-in and the tests use it)."""
    head = _HEAD.pack(
        m.opcode,
        ipaddress.IPv4Address(m.src_ip).packed,
        ipaddress.IPv4Address(m.dst_ip).packed,
        m.src_port,
        m.dst_port,
        m.proto,
        m.vni.to_bytes(3, "big"),
    )
    if m.opcode == OP_DELETE:
        return head
    return head + _TAIL.pack(
        ipaddress.IPv4Address(m.dst_instance_ip).packed,
        ipaddress.IPv4Address(m.dst_host_ip).packed,
        bytes.fromhex(m.dst_instance_mac.replace(":", "")),
        bytes.fromhex(m.dst_host_mac.replace(":", "")),
        m.idle_timeout,
        0,
    )


# --- redirection ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redirect:
    """One redirected VPC on this host: its gateway, select group, FWDs and OAM port."""

    vpc_id: str
    vni: int
    gateway_id: str
    group_id: int
    destinations: tuple[tuple[str, str], ...]  # (FWD IP, FWD MAC), sorted
    oam_port: int


def _vni(vpc: Mapping[str, Any]) -> int | None:
    seg = vpc.get("segmentation_id")
    return seg if isinstance(seg, int) and not isinstance(seg, bool) and seg > 0 else None


def _destinations(gw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    out = set()
    for d in gw.get("destinations") or ():
        try:
            ip = ipaddress.IPv4Address(str(d.get("ip")))
        except ValueError:
            continue
        mac = str(d.get("mac") or "").lower()
        if len(mac) == 17:
            out.add((str(ip), mac))
    return tuple(sorted(out, key=lambda d: (ipaddress.IPv4Address(d[0]), d[1])))


def redirects(goal: Mapping[str, Any]) -> dict[str, Redirect]:
    """VPC id -> Redirect, for every VPC of `goal` with a usable Zeta gateway.

    Group ids come from a hash of the gateway id; the rare collision is resolved by probing in
    gateway-id order, so equal goal states always give equal ids.
    """
    vpcs: Mapping[str, Mapping[str, Any]] = goal.get("vpc") or {}
    gateways: Mapping[str, Mapping[str, Any]] = goal.get("gateway") or {}
    chosen: list[tuple[str, str, int, Mapping[str, Any]]] = []
    for vpc_id in sorted(vpcs):
        vpc, vni = vpcs[vpc_id], _vni(vpcs[vpc_id])
        if vni is None:
            continue
        for gid in sorted(map(str, vpc.get("gateway_ids") or ())):
            gw = gateways.get(gid)
            if (
                gw is not None
                and gw.get("type", "zeta") == "zeta"
                and gw.get("status") == "ready"
                and str(gw.get("vpc_id")) == vpc_id
                and _destinations(gw)
            ):
                chosen.append((gid, vpc_id, vni, gw))
                break  # one gateway per VPC: the lowest id that is ready
    used: set[int] = set()
    out: dict[str, Redirect] = {}
    for gid, vpc_id, vni, gw in sorted(chosen):
        group = group_id_for(gid)
        while group in used:
            group = GROUP_BASE + (group - GROUP_BASE + 1) % GROUP_SPAN
        used.add(group)
        port = gw.get("oam_port")
        oam_port = port if isinstance(port, int) and 0 < port < 65536 else DEFAULT_OAM_PORT
        out[vpc_id] = Redirect(vpc_id, vni, gid, group, _destinations(gw), oam_port)
    return out


def group_id_for(gateway_id: str) -> int:
    digest = hashlib.blake2b(gateway_id.encode(), digest_size=4).digest()
    return GROUP_BASE + int.from_bytes(digest, "big") % GROUP_SPAN


def bucket_actions(r: Redirect, tun_ofport: int) -> list[tuple[Action, ...]]:
    """One bucket per FWD: inner eth_dst = FWD MAC, tunnel to the FWD with the VPC's VNI."""
    return [
        (
            SetField("eth_dst", mac),
            SetField("tunnel_id", r.vni),
            SetField("tun_ipv4_dst", ip),
            Output(tun_ofport),
        )
        for ip, mac in r.destinations
    ]


def groups(
    goal: Mapping[str, Any], tun_ofport: int | None
) -> dict[int, tuple[tuple[Action, ...], ...]]:
    """group id -> its buckets' actions: the select groups this host's switch should hold."""
    if tun_ofport is None:
        return {}
    return {r.group_id: tuple(bucket_actions(r, tun_ofport)) for r in redirects(goal).values()}


# --- the direct path -------------------------------------------------------------------------


def direct_cookie(m: OamMessage) -> int:
    """Tag, VNI and 24 bits of the 5-tuple: one VPC's direct flows share a cookie prefix."""
    key = f"{m.src_ip},{m.dst_ip},{m.src_port},{m.dst_port},{m.proto}".encode()
    low = int.from_bytes(hashlib.blake2b(key, digest_size=3).digest(), "big")
    return DIRECT_TAG | (m.vni << 24) | low


def vni_cookie(vni: int) -> int:
    return DIRECT_TAG | (vni << 24)


def direct_match(m: OamMessage) -> tuple[tuple[str, Any], ...]:
    """The 5-tuple within the VPC; ports only when non-zero (and only for TCP, UDP, SCTP)."""
    fields: dict[str, Any] = {"metadata": m.vni, "eth_type": ETH_IP}
    fields["ipv4_src"] = m.src_ip
    fields["ipv4_dst"] = m.dst_ip
    if m.proto:
        fields["ip_proto"] = m.proto
        names = _PORTED.get(m.proto)
        if names:
            if m.src_port:
                fields[names[0]] = m.src_port
            if m.dst_port:
                fields[names[1]] = m.dst_port
    return match(**fields)


def direct_flow(m: OamMessage, tun_ofport: int) -> Flow:
    """The flow an inject asks for: straight to the destination host, bypassing the FWD."""
    actions: tuple[Action, ...] = (
        SetField("eth_dst", m.dst_instance_mac),
        SetField("ipv4_dst", m.dst_instance_ip),
        SetField("tunnel_id", m.vni),
        SetField("tun_ipv4_dst", m.dst_host_ip),
        Output(tun_ofport),
    )
    return Flow(
        T_L3,
        P_DIRECT,
        direct_match(m),
        actions,
        cookie=direct_cookie(m),
        idle_timeout=m.idle_timeout or DEFAULT_IDLE_TIMEOUT,
    )


def delete_flow(m: OamMessage) -> Flow:
    """What identifies the flow a delete names (DELETE_STRICT: table, priority, match, cookie)."""
    return Flow(T_L3, P_DIRECT, direct_match(m), cookie=direct_cookie(m))
