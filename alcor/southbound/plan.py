"""The plan of one batch: change-log rows in, each node's ops out. No I/O.

`plan` places the changes one by one (placement.py), moving the topology on, and keeps per node
only the last state of each resource (a message carries a resource at most once). It stops at the
change that makes the batch reach `max_ops` node-ops, so a batch's messages stay bounded. Nodes
come out **host first**: those that get a port of their own in this batch lead, so the broker
hands the host its port (and the agent reports it ACTIVE) before the neighbour fan-out of the
same batch.

**Channels.** A VPC whose member nodes reach `Channels.multicast_nodes` is served on its
multicast chain (one message per batch, copied by the broker to every member's queue) until
they fall to `unicast_nodes` or fewer (hysteresis: a VPC at the threshold does not flap). On a
multicast VPC, an op that every member following the chain would get alike (a neighbour's port,
a subnet, the VPC, a gateway) moves from the members' node messages to the VPC's message; the
rest stays on the node chains: a port's host gets its own variant there (and skips the
neighbour variant of its own port on the chain), and a node that starts following the chain in
this batch (its first port in the VPC, or the VPC's switch to multicast) gets all of the batch's
ops for it on its node chain with `vpcs: {vpc: rev}` (follow from `rev` on; what the chain
carries up to `rev` is dropped). A node that stops following gets `vpcs: {vpc: null}` (with the
deletes if it left the VPC). The dispatcher binds the followers' queues before it publishes,
and unbinds those that stop. When the members would not all get the chain's op alike (several
changes of one batch moving a node in and out), the key stays unicast for everyone.

    >>> from alcor.db.changelog import Change
    >>> from alcor.southbound.goalstate import Topology
    >>> node = {"node_id": "n1", "node_name": "h1", "local_ip": "10.0.0.1", "revision_number": 1}
    >>> p = plan(Topology(), [Change(7, 0.0, "node", "n1", "create", None, None, 1, node)], 6)
    >>> (p.rev, p.used, list(p.per_node), p.touched)
    (7, 1, ['n1'], [('node', 'n1')])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from alcor.southbound.goalstate import WIRE_TYPE, Key, Topology
from alcor.southbound.placement import ChangeLike, Op, place


class TimedChange(ChangeLike, Protocol):
    @property
    def ts(self) -> float: ...


@dataclass(frozen=True)
class Channels:
    """When a VPC is served on a multicast chain ([southbound] multicast_nodes / unicast_nodes)."""

    multicast_nodes: int = 16  # 0: never
    unicast_nodes: int = 8

    def multicast(self, was: bool, members: int) -> bool:
        if self.multicast_nodes <= 0 or members == 0:
            return False
        return members > self.unicast_nodes if was else members >= self.multicast_nodes


# Wire types whose body every member of their VPC holds alike (a port's host excepted).
_SHARED = frozenset(("port", "subnet", "vpc", "gateway"))


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
    # VPC → its chain's ops (multicast VPCs only)
    per_vpc: dict[str, dict[Key, Op]] = field(default_factory=dict)
    multicast: set[str] = field(default_factory=set)  # multicast VPCs after this batch
    # node → {vpc: rev (follow its chain from rev on) | None (stop following)}
    follow: dict[str, dict[str, int | None]] = field(default_factory=dict)
    binds: list[tuple[str, str]] = field(default_factory=list)  # (node, vpc) to bind first
    unbinds: list[tuple[str, str]] = field(default_factory=list)  # (node, vpc) to unbind first


def plan(
    t: Topology,
    changes: Sequence[TimedChange],
    start_rev: int,
    max_ops: int = 200_000,
    multicast: Set[str] = frozenset(),
    channels: Channels | None = None,
) -> BatchPlan:
    """Place `changes` (in rev order, after `start_rev`) into `t` and return the batch's ops.

    `multicast`: the VPCs on a multicast chain before the batch; `channels`: when to switch
    (None: every VPC unicast, as in a plan without chains)."""
    out = BatchPlan(start_rev)
    per_node: dict[str, dict[Key, Op]] = {}
    touched: dict[tuple[str, str], None] = {}
    moved: dict[str, set[str]] = {}
    gone: dict[Key, str] = {}  # deleted keys → their VPC
    followers = {v: set(t.members.get(v, ())) for v in multicast}
    for c in changes:
        if c.type in WIRE_TYPE:
            if c.op == "delete" and WIRE_TYPE[c.type] in _SHARED:
                old = t.get(c.type, c.id)
                if old is not None:
                    gone[(WIRE_TYPE[c.type], c.id)] = _vpc_of(WIRE_TYPE[c.type], c.id, old) or ""
            placed = place(t, c, moved)
            for node, ops in placed.items():
                bucket = per_node.setdefault(node, {})
                for op in ops:
                    bucket[(op["type"], op["id"])] = op
                out.ops += len(ops)
            if c.type == "port":
                host = t.port_node(c.id)  # it got the port in its own variant, if anything
                if host is not None and host in placed:
                    out.hosts.add(host)
            touched[(c.type, c.id)] = None
        out.used += 1
        out.rev = c.rev
        out.first_ts.append(c.ts)
        if out.ops >= max_ops:
            break
    if channels is not None:
        _split(t, out, per_node, followers, moved, gone, channels)
    for n in out.follow:
        per_node.setdefault(n, {})  # a message even without ops: it changes what n follows
    out.per_node = {n: per_node[n] for n in per_node if n in out.hosts}
    out.per_node.update((n, b) for n, b in per_node.items() if n not in out.hosts)
    out.touched = list(touched)
    return out


def _vpc_of(wtype: str, id: str, body: Mapping[str, Any] | None) -> str | None:
    """The VPC a shared key belongs to, from its (wire or source) body."""
    if wtype == "vpc":
        return id
    if body is None:
        return None
    v = body.get("vpc_id") if wtype == "gateway" else body.get("network_id")
    return str(v) if v else None


def _split(
    t: Topology,
    out: BatchPlan,
    per_node: dict[str, dict[Key, Op]],
    before: dict[str, set[str]],
    moved: dict[str, set[str]],
    gone: dict[Key, str],
    channels: Channels,
) -> None:
    """Choose each VPC's channel after the batch, who starts and stops following which chain,
    and move the ops every follower gets alike onto the VPC's chain."""
    vpcs = set(before) | {v for vs in moved.values() for v in vs}
    vpcs |= {v for v, members in t.members.items() if members}
    after: dict[str, set[str]] = {}
    joined: dict[str, set[str]] = {}
    for v in sorted(vpcs):
        members = set(t.members.get(v, ()))
        was = v in before
        if not channels.multicast(was, len(members)):
            for n in sorted(before.get(v, ())):
                out.follow.setdefault(n, {})[v] = None
                out.unbinds.append((n, v))
            continue
        out.multicast.add(v)
        after[v] = members
        subs_before = before.get(v, set())
        new = members - subs_before if was else set(members)
        new |= {n for n in members if v in moved.get(n, ())}
        joined[v] = new
        for n in sorted(new):
            out.follow.setdefault(n, {})[v] = out.rev
            out.binds.append((n, v))
        for n in sorted(subs_before - members):
            out.follow.setdefault(n, {})[v] = None
            out.unbinds.append((n, v))
    if not after:
        return
    # key → op id → (op, the nodes getting that op)
    offers: dict[Key, dict[int, tuple[Op, list[str]]]] = {}
    key_vpc: dict[Key, str] = {}
    for n, bucket in per_node.items():
        for key, op in bucket.items():
            if key[0] not in _SHARED:
                continue
            kv = key_vpc.get(key)
            if kv is None:
                kv = key_vpc[key] = _vpc_of(key[0], key[1], op["body"]) or gone.get(key) or ""
            if kv not in after:
                continue
            slot = offers.setdefault(key, {}).setdefault(id(op), (op, []))
            slot[1].append(n)
    for key, by_op in offers.items():
        v = key_vpc[key]
        op, getting = max(by_op.values(), key=lambda x: len(x[1]))
        body = op["body"]
        skip = {str(body.get("node_id"))} if key[0] == "port" and body is not None else set()
        chain = after[v] - joined[v] - skip  # who will apply the chain's op
        got = set(getting)
        # Every follower applying the chain's op got exactly it; the other followers drop it
        # (joined: it is at or below their start; the host: its own port) and keep theirs;
        # nodes that stop following are unbound before it is published.
        if not chain or not chain <= got or not (got - chain) & after[v] <= joined[v] | skip:
            continue  # not every follower alike: this key stays on the node chains
        out.per_vpc.setdefault(v, {})[key] = op
        for n in chain:
            del per_node[n][key]
    for n in [n for n, b in per_node.items() if not b and n not in out.follow]:
        del per_node[n]

