"""Goal-state messages as bytes (docs/wire.md): deltas, snapshots, compression. No I/O.

An op shared by many nodes' messages (a neighbour's port goes to every member of its VPC) is
serialised once per batch (`cache`), and a port's body JSON comes from the topology's cache, so
a snapshot of 10,000 neighbours is mostly string joining.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from alcor.southbound.goalstate import Topology, goal_entries, vpc_entries
from alcor.wire import WIRE_VERSION


def _json_str(v: str) -> bytes:
    # UUIDs need no escaping; anything else goes through the encoder.
    if v.isascii() and '"' not in v and "\\" not in v and v.isprintable():
        return b'"' + v.encode() + b'"'
    return json.dumps(v).encode()


def _op_json(rev: int, wtype: str, id: str, verb: str, rn: int, body: bytes) -> bytes:
    return b'{"rev":%d,"type":"%s","id":%s,"op":"%s","revision_number":%d,"body":%s}' % (
        rev,
        wtype.encode(),
        _json_str(id),
        verb.encode(),
        rn,
        body,
    )


def encode_delta(
    node: str,
    kind: str,
    prev: int,
    rev: int,
    ops: Any,
    cache: dict[int, bytes],
    t: Topology | None = None,
    epoch: int = 0,
    vpcs: Mapping[str, int | None] | None = None,
    vpc: str = "",
    replace: Sequence[str] = (),
) -> bytes:
    """Serialise a message on a node's chain (or, with `vpc`, on that VPC's chain: `node` is
    then ignored); an op shared by many messages is encoded once, and a port's body JSON comes
    from the topology's cache. `vpcs`: the VPC chains the node starts or stops following;
    `replace`: VPCs whose whole shared state the ops carry (VPC snapshots, see `vpc_snapshot`)."""
    parts = []
    for op in ops:
        b = cache.get(id(op))
        if b is None:
            body = op["body"]
            if t is not None and op["type"] == "port" and body is not None:
                b = _op_json(
                    op["rev"],
                    "port",
                    op["id"],
                    op["op"],
                    op["revision_number"],
                    t.port_json(op["id"], body),
                )
                local = op.get("local")
                if local is not None:  # the host's variant, on a VPC's chain (wire.md)
                    b = b[:-1] + b',"local":' + json.dumps(local, separators=(",", ":")).encode() + b"}"
            else:
                b = json.dumps(op, separators=(",", ":")).encode()
            cache[id(op)] = b
        parts.append(b)
    return _head(node, kind, prev, rev, epoch, vpcs, vpc, replace) + b",".join(parts) + b"]}"


def _head(node: str, kind: str, prev: int, rev: int, epoch: int,
          vpcs: Mapping[str, int | None] | None, vpc: str = "",
          replace: Sequence[str] = ()) -> bytes:
    head: dict[str, Any] = {"v": WIRE_VERSION, "epoch": epoch}
    if vpc:
        head["vpc_id"] = vpc
    else:
        head["node_id"] = node
    head.update(kind=kind, prev_rev=prev, rev=rev)
    if vpcs:
        head["vpcs"] = dict(sorted(vpcs.items()))
    if replace:
        head["replace_vpcs"] = sorted(replace)
    return json.dumps(head, separators=(",", ":")).encode()[:-1] + b',"ops":['


def encode_snapshot(t: Topology, node: str, prev: int, rev: int, epoch: int = 0,
                    vpcs: Mapping[str, int] | None = None) -> tuple[bytes, int]:
    """A node's whole goal state as one snapshot message; returns (body, number of ops).

    Port bodies (nearly all of a big snapshot) come from the topology's JSON cache, so a
    snapshot of 10,000 neighbours is mostly string joining.
    """
    parts = []
    for wtype, id, body, rn in goal_entries(t, node):
        if wtype == "port":
            bj = t.port_json(id, body)
        else:
            bj = json.dumps(body, separators=(",", ":")).encode()
        parts.append(_op_json(rev, wtype, id, "upsert", rn, bj))
    head = _head(node, "snapshot", prev, rev, epoch, vpcs)
    return head + b",".join(parts) + b"]}", len(parts)


def vpc_snapshot(t: Topology, node: str, vpc: str, rev: int) -> list[dict[str, Any]]:
    """The ops of a VPC snapshot for `node` at `rev` (sent on its chain with `replace` and
    `vpcs: {vpc: rev}`): everything it holds of the VPC's shared state, as upserts. A gap on a
    VPC's chain costs this, not the node's whole snapshot."""
    return [{"rev": rev, "type": w, "id": i, "op": "upsert", "revision_number": rn, "body": b}
            for w, i, b, rn in vpc_entries(t, node, vpc)]


def pack(raw: bytes, over: int) -> bytes:
    """Compress a large message (zlib, RFC 1950: it starts with 0x78, JSON never does); a
    neighbour-heavy message shrinks 4-10x, which is what the broker's disk and network see."""
    if 0 < over < len(raw):
        return zlib.compress(raw, 1)
    return raw
