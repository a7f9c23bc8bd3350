"""Flow-mods encoded and flow stats decoded as bytes, fast: the agent's hot path to the switch.

Building an os-ken OFPFlowMod costs ~100 µs; 20,000 of them would be 2 s. A flow is made of
pieces that repeat across flows (eth_type=arp, metadata=VNI, move eth_src->eth_dst, ...), so
each OXM field and each action is encoded (and decoded) by os-ken once and cached as bytes;
a flow-mod is then the fixed header packed with os-ken's own pack strings plus those pieces.
tests/unit/agent/test_codec.py checks the result is byte-for-byte os-ken's (alcor/agent/codec.py,
the readable path, is the reference), and a read-back decodes to the same flows.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import ipaddress
import operator
import socket
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from alcor.agent.codec import ALL_ONES64, EXTRA_FIELDS, from_action, match_value, to_action
from alcor.agent.ir import Action, Flow, Match, MatchValue, Opaque, SetField

_HEADER = struct.Struct("!BBHI")
# ofp_flow_mod after the header, before the match (os-ken's OFP_FLOW_MOD_PACK_STR minus the match)
_FLOW_MOD = struct.Struct(ofp.OFP_FLOW_MOD_PACK_STR[: -len("HHBBBB")])
_STATS = struct.Struct("!HBxIIHHHH4xQQQ")  # ofp_flow_stats up to the match
_INST_HDR = struct.Struct("!HH")
_GOTO = struct.Struct("!HHB3x")
_WRITE_META = struct.Struct("!HH4xQQ")
_APPLY_HDR = struct.Struct("!HH4x")
_METER = struct.Struct("!HHI")
# a flow-mod's header, fixed part and match header in one pack (encode_add)
_ADD = struct.Struct(_HEADER.format + _FLOW_MOD.format[1:] + "HH")
_ADD_FIXED = _ADD.size - 4  # the match header counts in the match's length
_PAD = tuple(b"\0" * n for n in range(8))


class _Field:
    """One OXM field's header as os-ken encodes it, and how its value is packed.

    The header (and so the field numbering, NXM or OXM) always comes from os-ken; only the
    packing of a plain MAC, IPv4 or integer value is done here, because os-ken's generic
    conversions cost ~10 µs per value and a goal state has ~10^5 distinct values.
    """

    __slots__ = ("name", "header", "kind", "size")

    def __init__(self, name: str, sample: Any, header: bytes | None = None, size: int = 0) -> None:
        self.name = name
        if header is None:
            n, v, m = ofp.oxm_from_user(name, sample)
            buf = bytearray()
            ofp.oxm_serialize(n, v, m, buf, 0)
            size = len(v)
            header = bytes(buf[: len(buf) - size])
        self.size = size
        self.header = header
        text = str(sample)
        self.kind = (
            "ipv6" if text.startswith("::") else "mac" if ":" in text else
            "ipv4" if "." in text else "int"
        )  # fmt: skip

    def pack(self, value: Any) -> bytes:
        if self.kind == "mac":
            raw = bytes.fromhex(str(value).replace(":", ""))
        elif self.kind == "ipv4":
            raw = socket.inet_aton(str(value))
        elif self.kind == "ipv6":
            raw = socket.inet_pton(socket.AF_INET6, str(value))
        else:
            raw = int(value).to_bytes(self.size, "big")
        if len(raw) != self.size:
            raise ValueError(f"{self.name}={value!r}")
        return self.header + raw

    def unpack(self, raw: bytes) -> MatchValue:
        if self.kind == "mac":
            return ":".join(f"{b:02x}" for b in raw)
        if self.kind == "ipv4":
            return socket.inet_ntoa(raw)
        if self.kind == "ipv6":
            return str(ipaddress.IPv6Address(raw))  # the compiler's spelling of an address
        return int.from_bytes(raw, "big")


_FIELDS = {
    name: _Field(name, sample)
    for name, sample in {
        "in_port": 1, "metadata": 1, "eth_dst": "00:00:00:00:00:01", "eth_src": "00:00:00:00:00:01",
        "eth_type": 1, "ip_proto": 1, "ipv4_src": "0.0.0.1", "ipv4_dst": "0.0.0.1",
        "icmpv4_type": 1, "arp_op": 1, "arp_spa": "0.0.0.1", "arp_tpa": "0.0.0.1",
        "arp_sha": "00:00:00:00:00:01", "arp_tha": "00:00:00:00:00:01", "tunnel_id": 1,
        "tun_ipv4_dst": "0.0.0.1", "tun_ipv4_src": "0.0.0.1",
        "ipv6_src": "::1", "ipv6_dst": "::1", "icmpv6_type": 1, "icmpv6_code": 1,
        "ipv6_nd_target": "::1", "ipv6_nd_sll": "00:00:00:00:00:01",
    }.items()
} | {
    name: _Field(name, 0, struct.pack("!I", header), size)
    for name, (header, size) in EXTRA_FIELDS.items()
}  # fmt: skip
_FIELDS_BY_HEADER = {f.header: f for f in _FIELDS.values()}


@functools.lru_cache(maxsize=1 << 16)
def _oxm_bytes(name: str, value: MatchValue) -> tuple[Any, bytes]:
    field = _FIELDS.get(name)
    if field is not None and not isinstance(value, tuple):
        return None, field.pack(value)
    n, v, m = ofp.oxm_from_user(name, value)
    buf = bytearray()
    ofp.oxm_serialize(n, v, m, buf, 0)
    return n, bytes(buf)


@functools.lru_cache(maxsize=4096)
def _field_order(names: tuple[str, ...]) -> tuple[int, ...]:
    """os-ken's (and OVS's prerequisite-friendly) order of a match's fields, by shape."""
    sample = parser.OFPMatch(**{n: _SAMPLE.get(n, 0) for n in names})
    ordered = [k for k, _ in sample._fields2]
    return tuple(names.index(k) for k in ordered)


_SAMPLE: dict[str, Any] = {
    "eth_src": "00:00:00:00:00:00",
    "eth_dst": "00:00:00:00:00:00",
    "arp_sha": "00:00:00:00:00:00",
    "arp_tha": "00:00:00:00:00:00",
    "arp_spa": "0.0.0.0",
    "arp_tpa": "0.0.0.0",
    "ipv4_src": "0.0.0.0",
    "ipv4_dst": "0.0.0.0",
    "tun_ipv4_src": "0.0.0.0",
    "tun_ipv4_dst": "0.0.0.0",
    "ipv6_src": "::",
    "ipv6_dst": "::",
    "ipv6_nd_target": "::",
    "ipv6_nd_sll": "00:00:00:00:00:00",
}


def _match_tlvs(m: Match) -> list[bytes]:
    # map() rather than generators: this runs for every flow of a compile from scratch
    return [_oxm_tlv(m[i]) for i in _field_order(tuple(map(_first, m)))]


_first = operator.itemgetter(0)


@functools.lru_cache(maxsize=1 << 17)
def _oxm_tlv(item: tuple[str, MatchValue]) -> bytes:
    # a plain value packed here, not through _oxm_bytes' cache as well: most of a compile's
    # values are one flow's own (an address, a MAC), so a second cache is only a second miss
    name, value = item
    field = _FIELDS.get(name)
    if field is not None and not isinstance(value, tuple):
        return field.pack(value)
    return _oxm_bytes(name, value)[1]


def _match_from_tlvs(tlvs: list[bytes]) -> bytes:
    body = b"".join(tlvs)
    length = 4 + len(body)
    return struct.pack("!HH", ofp.OFPMT_OXM, length) + body + b"\0" * (-length % 8)


def match_bytes(m: Match) -> bytes:
    return _match_from_tlvs(_match_tlvs(m))


@functools.lru_cache(maxsize=1 << 16)
def action_bytes(a: Action) -> bytes:
    if isinstance(a, SetField) and a.field in _FIELDS:
        tlv = _FIELDS[a.field].pack(a.value)
        length = 4 + len(tlv)
        pad = -length % 8
        return struct.pack("!HH", ofp.OFPAT_SET_FIELD, length + pad) + tlv + b"\0" * pad
    buf = bytearray()
    to_action(a).serialize(buf, 0)
    return bytes(buf)


def instructions_bytes(flow: Flow) -> bytes:
    return _instructions(flow.actions, flow.write_metadata, flow.goto_table, flow.meter)


@functools.lru_cache(maxsize=1 << 16)
def _instructions(
    actions: tuple[Action, ...],
    write_metadata: tuple[int, int] | None,
    goto_table: int | None,
    meter: int | None,
) -> bytes:
    # cached whole: half the flows of a goal state share their instructions with another
    # (the same filter clause, lookup, tunnel or delivery), and the rest cost one miss
    out = b""
    if meter is not None:  # first, as OVS reports it back
        out += _METER.pack(ofp.OFPIT_METER, 8, meter)
    if actions:
        acts = b"".join(map(action_bytes, actions))
        out += _APPLY_HDR.pack(ofp.OFPIT_APPLY_ACTIONS, 8 + len(acts)) + acts
    if write_metadata is not None:
        out += _WRITE_META.pack(ofp.OFPIT_WRITE_METADATA, 24, *write_metadata)
    if goto_table is not None:
        out += _GOTO.pack(ofp.OFPIT_GOTO_TABLE, 8, goto_table)
    return out


def encode_add(flow: Flow, xid: int, signatures: SigCache | None = None) -> bytes:
    """The bytes of add_msg(flow) with this xid, without building os-ken objects; records the
    flow's read-back signature in `signatures` on the way (it costs one small sort here)."""
    tlvs = _match_tlvs(flow.match)
    instructions = instructions_bytes(flow)
    if signatures is not None:
        sig = (flow.table, flow.priority, tuple(sorted(tlvs)))
        signatures[id(flow)] = (flow, sig, instructions)
    match = b"".join(tlvs)
    mlen = 4 + len(match)
    pad = _PAD[-mlen % 8]
    length = _ADD_FIXED + mlen + len(pad) + len(instructions)
    return b"".join((
        _ADD.pack(
            ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, length, xid, flow.cookie, 0, flow.table,
            ofp.OFPFC_ADD, flow.idle_timeout, flow.hard_timeout, flow.priority,
            ofp.OFP_NO_BUFFER, 0, 0, 0, ofp.OFPMT_OXM, mlen,
        ),
        match, pad, instructions,
    ))  # fmt: skip


def encode_delete(flow: Flow, xid: int) -> bytes:
    """The bytes of delete_msg(flow) with this xid."""
    body = match_bytes(flow.match)
    fixed = _FLOW_MOD.pack(
        flow.cookie, ALL_ONES64, flow.table, ofp.OFPFC_DELETE_STRICT, 0, 0, flow.priority,
        ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, 0,
    )  # fmt: skip
    length = _HEADER.size + len(fixed) + len(body)
    return _HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, length, xid) + fixed + body


@functools.lru_cache(maxsize=1 << 16)
def _decode_oxm(raw: bytes) -> tuple[str, MatchValue]:
    for hlen in (4, 8):  # OXM header, or experimenter OXM header with its experimenter id
        field = _FIELDS_BY_HEADER.get(raw[:hlen])
        if field is not None and len(raw) == hlen + field.size:
            return field.name, field.unpack(raw[hlen:])
    n, v, m, _ = ofp.oxm_parse(raw, 0)
    name, value = ofp.oxm_to_user(n, v, m)  # masked values come back as (value, mask)
    return name, match_value(value)


@functools.lru_cache(maxsize=1 << 16)
def _decode_action(raw: bytes) -> Action:
    if raw[:2] == _SET_FIELD_TYPE:
        tlv_len = 4 + raw[7]
        name, value = _decode_oxm(raw[4 : 4 + tlv_len])
        if not isinstance(value, tuple):
            return SetField(name, value)
    return from_action(parser.OFPAction.parser(raw, 0))


_SET_FIELD_TYPE = struct.pack("!H", ofp.OFPAT_SET_FIELD)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic GC while ~10^5 acyclic objects are made or walked: at this heap size
    each automatic full collection costs hundreds of ms, and nothing here forms a cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def decode_flow_stats(body: bytes) -> list[Flow]:
    """The flows of a flow-stats multipart reply body (the part after the multipart header)."""
    with gc_paused():
        return _decode_flow_stats(body)


def _decode_flow_stats(body: bytes) -> list[Flow]:
    flows: list[Flow] = []
    pos, end = 0, len(body)
    while pos < end:
        (length, table, _, _, priority, idle, hard, _, cookie, _, _) = _STATS.unpack_from(body, pos)
        entry_end = pos + length
        if length < _STATS.size:
            raise ValueError(f"flow stats entry of {length} bytes")
        mpos = pos + _STATS.size
        mtype, mlen = struct.unpack_from("!HH", body, mpos)
        fields: list[tuple[str, MatchValue]] = []
        fpos, fend = mpos + 4, mpos + mlen
        while fpos < fend:
            flen = body[fpos + 3]
            fields.append(_decode_oxm(body[fpos : fpos + 4 + flen]))
            fpos += 4 + flen
        ipos = mpos + mlen + (-mlen % 8)
        actions: tuple[Action, ...] = ()
        write_metadata: tuple[int, int] | None = None
        goto: int | None = None
        meter: int | None = None
        while ipos < entry_end:
            itype, ilen = _INST_HDR.unpack_from(body, ipos)
            if ilen < 4:
                raise ValueError(f"instruction of {ilen} bytes")
            if itype == ofp.OFPIT_APPLY_ACTIONS:
                apos, aend = ipos + 8, ipos + ilen
                acts = []
                while apos < aend:
                    alen = struct.unpack_from("!H", body, apos + 2)[0]
                    if alen < 8:
                        raise ValueError(f"action of {alen} bytes")
                    acts.append(_decode_action(body[apos : apos + alen]))
                    apos += alen
                actions += tuple(acts)
            elif itype == ofp.OFPIT_GOTO_TABLE:
                goto = body[ipos + 4]
            elif itype == ofp.OFPIT_METER:
                meter = _METER.unpack_from(body, ipos)[2]
            elif itype == ofp.OFPIT_WRITE_METADATA:
                _, _, meta, mask = _WRITE_META.unpack_from(body, ipos)
                write_metadata = (meta, mask)
            else:
                actions += (Opaque(body[ipos : ipos + ilen].hex()),)
            ipos += ilen
        flows.append(
            Flow(
                table=table,
                priority=priority,
                match=tuple(sorted(fields)),
                actions=actions,
                write_metadata=write_metadata,
                goto_table=goto,
                cookie=cookie,
                idle_timeout=idle,
                hard_timeout=hard,
                meter=meter,
            )
        )
        pos = entry_end
    return flows


# --- matching read-back without decoding ---------------------------------------------------------
#
# After a reconnect every one of our flows is read back. Most are exactly as desired, and the
# switch then returns the same OXM fields (in its own order) and the same instructions (register
# moves are sent with NXM headers, as OVS reports them). So each desired flow has a signature,
# recorded when it is encoded for sending (or computed on first need), and a read-back entry
# with an equal signature is taken as that flow without decoding it. Anything else is decoded
# and diffed as usual.

FlowSig = tuple[int, int, tuple[bytes, ...]]  # table, priority, match fields (sorted TLVs)


def switch_signature(flow: Flow) -> tuple[FlowSig, bytes]:
    """(table, priority, match TLVs) and the instruction bytes the switch will report."""
    tlvs = tuple(sorted(_oxm_bytes(n, v)[1] for n, v in flow.match))
    return (flow.table, flow.priority, tlvs), instructions_bytes(flow)


SigCache = dict[int, tuple[Flow, FlowSig, bytes]]  # id(flow) -> (flow, signature, instructions)


def match_read_back(
    pages: list[bytes], desired: Iterable[Flow], cache: SigCache | None = None
) -> tuple[list[Flow], list[Flow]]:
    """(desired flows found installed as they are, other flows decoded) from flow-stats pages.

    `cache` keeps signatures between calls (a reconnect reuses them); it is rebuilt in place
    to hold exactly the desired flows.
    """
    if not any(pages):
        return [], []
    with gc_paused():
        return _match_read_back(pages, desired, cache if cache is not None else {})


def _match_read_back(
    pages: list[bytes], desired: Iterable[Flow], cache: SigCache
) -> tuple[list[Flow], list[Flow]]:
    index: dict[FlowSig, tuple[Flow, bytes]] = {}
    fresh: SigCache = {}
    for f in desired:
        hit = cache.get(id(f))
        if hit is not None and hit[0] is f:
            sig, instructions = hit[1], hit[2]
        else:
            sig, instructions = switch_signature(f)
        fresh[id(f)] = (f, sig, instructions)
        index[sig] = (f, instructions)
    cache.clear()
    cache.update(fresh)
    same: list[Flow] = []
    other: list[bytes] = []
    for body in pages:
        pos, end = 0, len(body)
        while pos < end:
            (length, table, _, _, priority, idle, hard, _, cookie, _, _) = _STATS.unpack_from(
                body, pos
            )
            if length < _STATS.size:
                raise ValueError(f"flow stats entry of {length} bytes")
            mpos = pos + _STATS.size
            mlen = struct.unpack_from("!H", body, mpos + 2)[0]
            tlvs = []
            fpos, fend = mpos + 4, mpos + mlen
            while fpos < fend:
                flen = 4 + body[fpos + 3]
                tlvs.append(body[fpos : fpos + flen])
                fpos += flen
            tlvs.sort()
            found = index.get((table, priority, tuple(tlvs)))
            ipos = mpos + mlen + (-mlen % 8)
            if (
                found is not None
                and found[0].cookie == cookie
                and found[0].idle_timeout == idle
                and found[0].hard_timeout == hard
                and body[ipos : pos + length] == found[1]
            ):
                same.append(found[0])
            else:
                other.append(body[pos : pos + length])
            pos += length
    return same, _decode_flow_stats(b"".join(other)) if other else []
