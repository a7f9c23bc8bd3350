"""Flows to OpenFlow 1.3 messages and back, the readable way: with os-ken's parser classes.

The compiler's `Flow` is plain data; this module is the one place that turns it into os-ken's
classes and back, so that a flow read back from the switch compares equal to the desired one when
they are the same. It is the reference: alcor/agent/fastcodec.py encodes and decodes the same
messages without building os-ken objects, and tests/unit/agent/test_codec.py checks that both
give the same bytes and flows.
"""

from __future__ import annotations

import base64
import functools
import struct
from typing import Any

from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from alcor.agent.ir import (
    REG_ZONE,
    Action,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    Group,
    Match,
    MatchValue,
    Move,
    Opaque,
    Output,
    OutputReg,
    Resubmit,
    SetField,
)

ALL_ONES64 = 0xFFFFFFFFFFFFFFFF

# Fields OVS has and os-ken does not know: Ericsson's ND extensions (OVS 2.11+, OXM class
# 0x1000), which let a flow turn a neighbour solicitation into the advertisement that answers it
# (the R/S/O flags, and the option type: source into target link-layer address). name ->
# (32-bit OXM header, value size); only ever set, never matched.
EXTRA_FIELDS = {"nd_reserved": (0x10000204, 4), "nd_options_type": (0x10000401, 1)}
# how os-ken names them when it parses them ("field_<class << 7 | field>")
_EXTRA_BY_OSKEN_NAME = {
    f"field_{h >> 16 << 7 | (h >> 9 & 0x7F)}": n for n, (h, _) in EXTRA_FIELDS.items()
}


class ExtraSetField(parser.OFPActionSetField):
    """OFPAT_SET_FIELD of one of EXTRA_FIELDS, serialized as OVS expects it."""

    def __init__(self, key: str, value: int) -> None:
        super().__init__(**{key: value})

    def serialize(self, buf: bytearray, offset: int) -> None:
        header, size = EXTRA_FIELDS[self.key]
        tlv = struct.pack("!I", header) + int(self.value).to_bytes(size, "big")
        self.len = 4 + len(tlv) + (-(4 + len(tlv)) % 8)
        raw = struct.pack("!HH", self.type, self.len) + tlv
        buf[offset:offset] = raw + b"\0" * (self.len - len(raw))


class CodecDatapath:
    """The stand-in os-ken's message classes want: a protocol module, a parser, no I/O."""

    ofproto = ofp
    ofproto_parser = parser
    id = 0

    def send_msg(self, msg: Any) -> None:  # os-ken calls this only from its own app framework
        raise RuntimeError("CodecDatapath does not send; use the OpenFlow channel")


DP = CodecDatapath()


def to_match(m: Match) -> parser.OFPMatch:
    return parser.OFPMatch(**dict(m))


def to_action(a: Action) -> Any:
    if isinstance(a, Output):
        return parser.OFPActionOutput(a.port, ofp.OFPCML_NO_BUFFER)
    if isinstance(a, SetField):
        if a.field in EXTRA_FIELDS:
            return ExtraSetField(a.field, int(a.value))
        return parser.OFPActionSetField(**{a.field: a.value})
    if isinstance(a, Move):
        # With NXM field headers, as OVS reports register moves back: what we send is then
        # byte-for-byte what a flow-stats read-back returns (see match_read_back).
        return parser.NXActionRegMove(
            src_field=_nxm_name(a.src), dst_field=_nxm_name(a.dst), n_bits=a.n_bits
        )
    if isinstance(a, DecTtl):
        return parser.OFPActionDecNwTtl()
    if isinstance(a, Group):
        return parser.OFPActionGroup(a.group_id)
    if isinstance(a, Ct):
        nested: list[Any] = [parser.OFPActionSetField(ct_mark=a.mark)] if a.mark is not None else []
        if a.nat is not None:
            nested.append(_nat(*a.nat))
        return parser.NXActionCT(
            flags=nicira_ext.NX_CT_F_COMMIT if a.commit else 0,
            zone_src=REG_ZONE,
            zone_ofs_nbits=_ZONE_BITS,
            recirc_table=nicira_ext.NX_CT_RECIRC_NONE if a.table is None else a.table,
            alg=0,
            actions=nested,
        )
    if isinstance(a, Conjunction):  # OVS numbers clauses from 0 on the wire
        return parser.NXActionConjunction(clause=a.clause - 1, n_clauses=a.n_clauses, id_=a.id)
    if isinstance(a, Resubmit):
        return parser.NXActionResubmitTable(in_port=_OFPP10_IN_PORT, table_id=a.table)
    if isinstance(a, OutputReg):
        return parser.NXActionOutputReg(ofs_nbits=nicira_ext.ofs_nbits(0, 31), src=a.reg, max_len=0)
    raise ValueError(f"cannot encode {a!r}")


_NAT_FLAGS = {"": 0, "src": 1, "dst": 2}  # NX_NAT_F_SRC, NX_NAT_F_DST


def _nat(kind: str, ip: str) -> Any:
    if not kind:
        return parser.NXActionNAT(flags=0)
    return parser.NXActionNAT(flags=_NAT_FLAGS[kind], range_ipv4_min=ip, range_ipv4_max=ip)


@functools.cache
def _nxm_name(name: str) -> str:
    """os-ken's name for the NXM header of a field ("eth_src_nxm"), or the field's own name when
    its NXM name is the OXM one's (os-ken calls NXM_NX_ND_TLL "nd_tll") or it has none."""
    try:
        ofp.oxm_from_user_header(name + "_nxm")
    except KeyError:
        return name
    return name + "_nxm"


_ZONE_BITS = nicira_ext.ofs_nbits(0, 15)  # zone=REG_ZONE[0..15]
_OFPP10_IN_PORT = 0xFFF8  # resubmit keeps the OpenFlow 1.0 port numbers: "the same in_port"


def to_instructions(flow: Flow) -> list[Any]:
    inst: list[Any] = []
    if flow.meter is not None:  # first, as OVS reports it back
        inst.append(parser.OFPInstructionMeter(flow.meter, ofp.OFPIT_METER))
    if flow.actions:
        actions = [to_action(a) for a in flow.actions]
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if flow.write_metadata is not None:
        inst.append(parser.OFPInstructionWriteMetadata(*flow.write_metadata))
    if flow.goto_table is not None:
        inst.append(parser.OFPInstructionGotoTable(flow.goto_table))
    return inst


def add_msg(flow: Flow) -> parser.OFPFlowMod:
    """OFPFC_ADD: installs the flow, or replaces the one with the same (table, priority, match)
    atomically (new actions and cookie, no window without a flow)."""
    return parser.OFPFlowMod(
        DP,
        cookie=flow.cookie,
        table_id=flow.table,
        command=ofp.OFPFC_ADD,
        idle_timeout=flow.idle_timeout,
        hard_timeout=flow.hard_timeout,
        priority=flow.priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        match=to_match(flow.match),
        instructions=to_instructions(flow),
    )


def delete_msg(flow: Flow) -> parser.OFPFlowMod:
    """OFPFC_DELETE_STRICT of exactly this flow: table, priority, match and our full cookie."""
    return parser.OFPFlowMod(
        DP,
        cookie=flow.cookie,
        cookie_mask=ALL_ONES64,
        table_id=flow.table,
        command=ofp.OFPFC_DELETE_STRICT,
        priority=flow.priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=to_match(flow.match),
    )


def match_value(value: Any) -> MatchValue:
    if isinstance(value, tuple):
        v, mask = value
        if isinstance(v, int):
            return (v, int(mask))
        return (str(v).lower(), str(mask).lower())
    if isinstance(value, str):
        return value.lower()
    return int(value)


def from_match(m: parser.OFPMatch) -> Match:
    return tuple(sorted((name, match_value(value)) for name, value in m.items()))


def from_action(a: Any) -> Action:
    if isinstance(a, parser.OFPActionOutput):
        return Output(a.port)
    if isinstance(a, parser.OFPActionSetField):
        value = a.value
        extra = _EXTRA_BY_OSKEN_NAME.get(a.key)
        if extra is not None:  # os-ken gives the raw bytes, base64-encoded
            return SetField(extra, int.from_bytes(base64.b64decode(value), "big"))
        return SetField(a.key, value.lower() if isinstance(value, str) else int(value))
    if isinstance(a, parser.NXActionRegMove) and a.src_ofs == 0 and a.dst_ofs == 0:
        return Move(_oxm_name(a.src_field), _oxm_name(a.dst_field), a.n_bits)
    if isinstance(a, parser.OFPActionDecNwTtl):
        return DecTtl()
    if isinstance(a, parser.OFPActionGroup):
        return Group(a.group_id)
    if isinstance(a, parser.NXActionCT):
        return _from_ct(a)
    if isinstance(a, parser.NXActionConjunction):
        return Conjunction(a.id, a.clause + 1, a.n_clauses)
    if isinstance(a, parser.NXActionResubmitTable) and a.in_port == _OFPP10_IN_PORT:
        return Resubmit(a.table_id)
    if isinstance(a, parser.NXActionOutputReg) and a.ofs_nbits == nicira_ext.ofs_nbits(0, 31):
        return OutputReg(_oxm_name(a.src))
    return Opaque(repr(a))


def _from_ct(a: Any) -> Action:
    """A ct action in the compiler's terms, if it is one the compiler emits."""
    mark: int | None = None
    nat: tuple[str, str] | None = None
    for nested in a.actions:
        if isinstance(nested, parser.OFPActionSetField) and nested.key == "ct_mark":
            mark = int(nested.value)
        elif isinstance(nested, parser.NXActionNAT) and nat is None:
            kind = {v: k for k, v in _NAT_FLAGS.items()}.get(nested.flags)
            lo, hi = nested.range_ipv4_min or "", nested.range_ipv4_max or ""
            if kind is None or lo != hi or bool(kind) != bool(lo) or nested.range_proto_min:
                return Opaque(repr(a))
            nat = (kind, str(lo))
        else:
            return Opaque(repr(a))
    if a.zone_src != REG_ZONE or a.zone_ofs_nbits != _ZONE_BITS or a.alg != 0:
        return Opaque(repr(a))
    if a.flags not in (0, nicira_ext.NX_CT_F_COMMIT):
        return Opaque(repr(a))
    table = None if a.recirc_table == nicira_ext.NX_CT_RECIRC_NONE else a.recirc_table
    return Ct(commit=bool(a.flags), table=table, mark=mark, nat=nat)


def _oxm_name(name: str) -> str:
    # OVS reports register moves with NXM headers; os-ken names those fields "eth_src_nxm", …
    return name.removesuffix("_nxm")


def from_stats(stat: parser.OFPFlowStats) -> Flow:
    """A flow as the switch reports it, in the compiler's terms."""
    actions: tuple[Action, ...] = ()
    write_metadata: tuple[int, int] | None = None
    goto: int | None = None
    meter: int | None = None
    for inst in stat.instructions:
        if isinstance(inst, parser.OFPInstructionMeter):
            meter = inst.meter_id
        elif (
            isinstance(inst, parser.OFPInstructionActions) and inst.type == ofp.OFPIT_APPLY_ACTIONS
        ):
            actions += tuple(from_action(a) for a in inst.actions)
        elif isinstance(inst, parser.OFPInstructionWriteMetadata):
            write_metadata = (inst.metadata, inst.metadata_mask)
        elif isinstance(inst, parser.OFPInstructionGotoTable):
            goto = inst.table_id
        else:
            actions += (Opaque(repr(inst)),)
    return Flow(
        table=stat.table_id,
        priority=stat.priority,
        match=from_match(stat.match),
        actions=actions,
        write_metadata=write_metadata,
        goto_table=goto,
        cookie=stat.cookie,
        idle_timeout=stat.idle_timeout,
        hard_timeout=stat.hard_timeout,
        meter=meter,
    )


def error_name(err_type: int, code: int) -> str:
    """OFPET_BAD_MATCH/OFPBMC_BAD_FIELD style name of an OpenFlow error."""
    tname = _ERROR_TYPES.get(err_type, f"type {err_type}")
    prefix = _CODE_PREFIX.get(err_type)
    cname = _codes(prefix).get(code, f"code {code}") if prefix else f"code {code}"
    return f"{tname}/{cname}"


_ERROR_TYPES = {getattr(ofp, n): n for n in dir(ofp) if n.startswith("OFPET_")}
_CODE_PREFIX = {
    ofp.OFPET_HELLO_FAILED: "OFPHFC_",
    ofp.OFPET_BAD_REQUEST: "OFPBRC_",
    ofp.OFPET_BAD_ACTION: "OFPBAC_",
    ofp.OFPET_BAD_INSTRUCTION: "OFPBIC_",
    ofp.OFPET_BAD_MATCH: "OFPBMC_",
    ofp.OFPET_FLOW_MOD_FAILED: "OFPFMFC_",
    ofp.OFPET_GROUP_MOD_FAILED: "OFPGMFC_",
    ofp.OFPET_PORT_MOD_FAILED: "OFPPMFC_",
    ofp.OFPET_TABLE_MOD_FAILED: "OFPTMFC_",
    ofp.OFPET_SWITCH_CONFIG_FAILED: "OFPSCFC_",
}


def _codes(prefix: str) -> dict[int, str]:
    return {getattr(ofp, n): n for n in dir(ofp) if n.startswith(prefix)}
