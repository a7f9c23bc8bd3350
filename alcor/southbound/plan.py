"""The plan of one batch: change-log rows in, each node's ops out. No I/O.

`plan` places the changes one by one (placement.py), moving the topology on, and keeps per node
only the last state of each resource (a message carries a resource at most once). It stops at the
change that makes the batch reach `max_ops` node-ops, so a batch's messages stay bounded. Nodes
come out **host first**: those that get a port of their own in this batch lead, so the broker
hands the host its port (and the agent reports it ACTIVE) before the neighbour fan-out of the
same batch.

    >>> from alcor.db.changelog import Change
    >>> from alcor.southbound.goalstate import Topology
    >>> node = {"node_id": "n1", "node_name": "h1", "local_ip": "10.0.0.1", "revision_number": 1}
    >>> p = plan(Topology(), [Change(7, 0.0, "node", "n1", "create", None, None, 1, node)], 6)
    >>> (p.rev, p.used, list(p.per_node), p.touched)
    (7, 1, ['n1'], [('node', 'n1')])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from alcor.southbound.goalstate import WIRE_TYPE, Key, Topology
from alcor.southbound.placement import ChangeLike, Op, place


class TimedChange(ChangeLike, Protocol):
    @property
    def ts(self) -> float: ...


@dataclass
class BatchPlan:
    rev: int  # the rev the batch ends at (the start rev when no change was used)
    used: int = 0  # changes consumed from the front of the input
    ops: int = 0  # node-ops placed (before the per-message compression)
    # node → its ops by (wire type, id), the last state of each; host-first order
    per_node: dict[str, dict[Key, Op]] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)  # nodes getting a port of their own
    touched: list[tuple[str, str]] = field(default_factory=list)  # (type, id) placed, in order
    first_ts: list[float] = field(default_factory=list)  # commit time of each change used


def plan(t: Topology, changes: Sequence[TimedChange], start_rev: int,
         max_ops: int = 200_000) -> BatchPlan:
    """Place `changes` (in rev order, after `start_rev`) into `t` and return the batch's ops."""
    out = BatchPlan(start_rev)
    per_node: dict[str, dict[Key, Op]] = {}
    touched: dict[tuple[str, str], None] = {}
    for c in changes:
        if c.type in WIRE_TYPE:
            for node, ops in place(t, c).items():
                bucket = per_node.setdefault(node, {})
                for op in ops:
                    bucket[(op["type"], op["id"])] = op
                    if op["type"] == "port" and _is_local(op, node):
                        out.hosts.add(node)
                out.ops += len(ops)
            touched[(c.type, c.id)] = None
        out.used += 1
        out.rev = c.rev
        out.first_ts.append(c.ts)
        if out.ops >= max_ops:
            break
    out.per_node = {n: per_node[n] for n in per_node if n in out.hosts}
    out.per_node.update((n, b) for n, b in per_node.items() if n not in out.hosts)
    out.touched = list(touched)
    return out


def _is_local(op: Op, node: str) -> bool:
    """A port upsert in its host's own variant (a neighbour's body names another node)."""
    body = op["body"]
    return body is not None and body.get("node_id") == node
