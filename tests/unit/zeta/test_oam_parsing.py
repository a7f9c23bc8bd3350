"""OAM messages: every field at its offset, big-endian, both opcodes, and what is refused."""

from __future__ import annotations

import struct

import pytest

from alcor.agent import zeta
from alcor.agent.zeta import OamError, OamMessage, encode_oam, parse_oam

INJECT = OamMessage(
    zeta.OP_INJECT,
    "10.0.0.5",
    "10.0.0.6",
    40000,
    80,
    6,
    0x123456,
    "10.0.0.7",
    "172.31.255.2",
    "fa:16:3e:0b:00:06",
    "52:54:00:00:00:02",
    30,
)


def hand_built(opcode: int = 0, *, tail: bool = True, vni: bytes = b"\x12\x34\x56") -> bytes:
    """The 44 bytes written out field by field, independently of the encoder."""
    head = (
        opcode.to_bytes(4, "big")
        + bytes([10, 0, 0, 5])
        + bytes([10, 0, 0, 6])
        + (40000).to_bytes(2, "big")
        + (80).to_bytes(2, "big")
        + bytes([6])
        + vni
    )
    if not tail:
        return head
    return head + (
        bytes([10, 0, 0, 7])
        + bytes([172, 31, 255, 2])
        + bytes.fromhex("fa163e0b0006")
        + bytes.fromhex("525400000002")
        + (30).to_bytes(2, "big")
        + b"\xbe\xef"  # reserved: ignored whatever it holds
    )


def test_inject_every_field_big_endian() -> None:
    data = hand_built()
    assert len(data) == 44
    assert parse_oam(data) == INJECT
    m = parse_oam(data)
    assert (m.src_port, m.dst_port) == (40000, 80)  # 0x9C40 read big-endian, not 0x409C
    assert m.vni == 0x123456 and m.proto == 6 and m.idle_timeout == 30


def test_encode_is_the_inverse_and_matches_the_layout() -> None:
    assert encode_oam(INJECT)[:42] == hand_built()[:42]
    assert encode_oam(INJECT)[42:] == b"\0\0"
    assert parse_oam(encode_oam(INJECT)) == INJECT


def test_delete_is_the_first_20_bytes() -> None:
    data = hand_built(1, tail=False)
    assert len(data) == 20
    m = parse_oam(data)
    assert m.opcode == zeta.OP_DELETE
    assert (m.src_ip, m.dst_ip, m.src_port, m.dst_port, m.proto, m.vni) == (
        "10.0.0.5",
        "10.0.0.6",
        40000,
        80,
        6,
        0x123456,
    )
    assert m.dst_host_ip == "" and m.idle_timeout == 0
    assert encode_oam(m) == data
    # a sender that pads a delete to 44 bytes is understood too
    assert parse_oam(data + bytes(24)).opcode == zeta.OP_DELETE


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0\0",
        hand_built()[:43],  # truncated inject
        hand_built()[:20],  # an inject without its tail
        hand_built() + b"\0",  # oversized inject
        hand_built(1, tail=False)[:19],  # truncated delete
        hand_built(1, tail=False) + b"\0",  # delete neither 20 nor 44 bytes
        hand_built(vni=b"\0\0\0"),  # VNI 0 is no VPC
        hand_built()[:24] + bytes(4) + hand_built()[28:],  # destination host 0.0.0.0
        hand_built()[:28] + bytes.fromhex("ffffffffffff") + hand_built()[34:],  # multicast MAC
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(OamError) as e:
        parse_oam(data)
    assert e.value.outcome == "malformed"


@pytest.mark.parametrize("opcode", [2, 255, 0x01000000, 0xFFFFFFFF])
def test_unknown_opcode(opcode: int) -> None:
    for data in (hand_built(opcode), struct.pack("!I", opcode)):
        with pytest.raises(OamError) as e:
            parse_oam(data)
        assert e.value.outcome == "unknown_opcode"
