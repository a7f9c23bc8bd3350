"""The fast flow-mod codec is byte-for-byte os-ken's, and decodes back to the same flows."""

from __future__ import annotations

import struct

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from alcor.agent import codec
from alcor.agent.flows import Flow, compile_flows
from tests.unit.agent.test_flows import OFPORTS, two_vpcs


def flows() -> list[Flow]:
    return sorted(compile_flows(two_vpcs().goal(), OFPORTS).flows, key=repr)


def os_ken_bytes(msg: parser.OFPFlowMod, xid: int) -> bytes:
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def test_fast_encoding_equals_os_kens() -> None:
    for i, f in enumerate(flows()):
        assert codec.encode_add(f, i + 1) == os_ken_bytes(codec.add_msg(f), i + 1), f
        assert codec.encode_delete(f, i + 1) == os_ken_bytes(codec.delete_msg(f), i + 1), f


def stats_body(fs: list[Flow]) -> bytes:
    """A flow-stats reply body as a switch would send it, built from our flow-mod bytes."""
    out = b""
    for f in fs:
        mod = codec.encode_add(f, 1)
        tail = mod[8 + 40 :]  # match + instructions
        entry = struct.pack(
            "!HBxIIHHHH4xQQQ", 48 + len(tail), f.table, 1, 2, f.priority, f.idle_timeout,
            f.hard_timeout, 0, f.cookie, 10, 1000,
        ) + tail  # fmt: skip
        out += entry
    return out


def test_fast_decoding_round_trips_and_agrees_with_os_ken() -> None:
    fs = flows()
    body = stats_body(fs)
    assert codec.decode_flow_stats(body) == fs
    # the slow path (os-ken's parser) reads the same bytes the same way
    buf = bytearray(
        struct.pack(
            "!BBHIHH4x",
            ofp.OFP_VERSION,
            ofp.OFPT_MULTIPART_REPLY,
            16 + len(body),
            7,
            ofp.OFPMP_FLOW,
            0,
        )
        + body
    )
    msg = parser.OFPMultipartReply.parser(
        codec.DP, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, len(buf), 7, buf
    )
    assert [codec.from_stats(s) for s in msg.body] == fs
