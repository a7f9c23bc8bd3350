"""The agent's local goal state and the ordering rule (docs/architecture.md, "Revisions"), as a pure state machine.

`AgentModel.receive(message)` decides, for one controller message, whether it is a duplicate, a
gap (ask for a snapshot), a delta to apply op by op, or a snapshot that replaces the model. The
rule holds per chain: the node's own chain (`applied_rev`) and the chain of each multicast VPC
the node follows (`chains`: VPC → applied rev), which the node's chain starts (`vpcs: {vpc:
rev}`) and stops (`vpcs: {vpc: null}`); a VPC message of a chain not followed is dropped. Each
resource keeps the `revision_number` it was written with; an op older than what is held is stale and
ignored; a delete leaves a tombstone so a late, older upsert cannot bring the resource back. The
model keeps its digest current op by op (see `alcor.wire.digest`).

    >>> m = AgentModel("n1")
    >>> m.receive(parse_message(b'{"v":2,"node_id":"n1","kind":"snapshot","prev_rev":0,"rev":5,"ops":[]}'))
    <Outcome.SNAPSHOT: 'snapshot'>
    >>> m.applied_rev
    5
"""

from __future__ import annotations

import enum
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from alcor.wire import (
    ROUTER_INTERFACE,
    WIRE_TYPES,
    WIRE_VERSION,
    combine,
    hex_digest,
    resource_hash,
)

_TYPES = frozenset(WIRE_TYPES)
# What a VPC's chain carries: what every member of the VPC holds alike.
_SHARED = frozenset(("port", "subnet", "vpc", "gateway"))


class MalformedMessage(ValueError):
    """A node-queue message that is not a valid controller message; it is rejected, never applied."""


@dataclass(frozen=True, slots=True)
class WireOp:
    rev: int
    type: str
    id: str
    op: str  # "upsert" | "delete"
    revision_number: int
    body: dict[str, Any] | None
    # On a VPC's chain, a port's op may carry the fields its host's own variant adds to `body`
    # (the neighbour variant): the host applies body + local, everyone else body.
    local: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    node_id: str  # "" on a VPC's chain
    kind: str  # "delta" | "snapshot"
    prev_rev: int
    rev: int
    ops: tuple[WireOp, ...]
    # The dispatching leader's epoch (0 from a controller that sends none): rises at every
    # takeover; a message from an older epoch than the agent has seen comes from a deposed leader.
    epoch: int = 0
    vpc_id: str = ""  # set on a VPC's chain (then node_id is "")
    # On the node's chain: VPC chains to follow from a rev on (None: stop following).
    vpcs: tuple[tuple[str, int | None], ...] = ()
    # On the node's chain: VPCs whose shared state this delta carries whole (a VPC snapshot,
    # the answer to a gap on that VPC's chain): what the node held of them is replaced.
    replace_vpcs: tuple[str, ...] = ()
    # On the node's chain, with the VPC chains on streams (`[southbound] vpc_channel =
    # "stream"`): the dispatcher's wall clock (ms) before this message was built. Every message
    # of the chains it starts with a rev above their start rev was appended to its stream at
    # this time or later: the agent reads each of them from there (docs/wire.md). 0: the
    # chains it starts travel on the node's queue (bound routing key).
    since: int = 0


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise MalformedMessage(f"{what} must be a non-negative integer")
    return v


MAX_MESSAGE = 256 << 20  # bytes, after decompression


def unpack(raw: bytes) -> bytes:
    """A message body is JSON, or JSON compressed with zlib (first byte 0x78; docs/wire.md)."""
    if raw[:1] != b"\x78":
        return raw
    z = zlib.decompressobj()
    try:
        out = z.decompress(raw, MAX_MESSAGE)
    except zlib.error as e:
        raise MalformedMessage(f"bad zlib body: {e}") from None
    if z.unconsumed_tail:
        raise MalformedMessage("message too large")
    return out


def parse_message(raw: bytes) -> Message:
    """Decode and validate a whole message before any of it is applied."""
    try:
        d = json.loads(unpack(raw))
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedMessage(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise MalformedMessage("not a JSON object")
    if d.get("v") != WIRE_VERSION:
        raise MalformedMessage(f"unsupported version {d.get('v')!r}")
    vpc_id = d.get("vpc_id")
    node_id = d.get("node_id")
    if vpc_id is not None:
        if not isinstance(vpc_id, str) or not vpc_id or node_id is not None:
            raise MalformedMessage("vpc_id must be a string, without node_id")
        node_id = ""
    elif not isinstance(node_id, str) or not node_id:
        raise MalformedMessage("node_id must be a string")
    kind = d.get("kind")
    if kind not in ("delta", "snapshot") or (vpc_id is not None and kind != "delta"):
        raise MalformedMessage(f"unknown kind {kind!r}")
    raw_vpcs = d.get("vpcs", {})
    if not isinstance(raw_vpcs, dict) or (vpc_id is not None and raw_vpcs):
        raise MalformedMessage("vpcs must be an object, on a node's chain")
    vpcs = []
    for v, r in raw_vpcs.items():
        if r is None and kind == "snapshot":
            raise MalformedMessage("a snapshot lists only the chains to follow")
        vpcs.append((v, None if r is None else _int(r, "a vpcs rev")))
    replace = d.get("replace_vpcs", [])
    starts = {v for v, r in vpcs if r is not None}
    if (not isinstance(replace, list) or kind != "delta" or vpc_id is not None) and replace:
        raise MalformedMessage("replace_vpcs must be a list, on a node's delta")
    if any(not isinstance(v, str) or v not in starts for v in replace):
        raise MalformedMessage("replace_vpcs must name VPC chains this message starts")
    prev_rev = _int(d.get("prev_rev"), "prev_rev")
    rev = _int(d.get("rev"), "rev")
    if rev < prev_rev:
        raise MalformedMessage("rev is below prev_rev")
    raw_ops = d.get("ops")
    if not isinstance(raw_ops, list):
        raise MalformedMessage("ops must be a list")
    ops = []
    for o in raw_ops:
        if not isinstance(o, dict):
            raise MalformedMessage("an op must be an object")
        op_rev = _int(o.get("rev"), "op rev")
        if op_rev > rev or (kind == "delta" and op_rev <= prev_rev):
            raise MalformedMessage(f"op rev {op_rev} outside ({prev_rev}, {rev}]")
        t, i, verb = o.get("type"), o.get("id"), o.get("op")
        if t not in (_SHARED if vpc_id is not None else _TYPES):
            raise MalformedMessage(f"unknown resource type {t!r}")
        if not isinstance(i, str) or not i:
            raise MalformedMessage("op id must be a string")
        if verb not in ("upsert", "delete") or (kind == "snapshot" and verb != "upsert"):
            raise MalformedMessage(f"bad op {verb!r} in a {kind}")
        body = o.get("body")
        if verb == "upsert" and not isinstance(body, dict):
            raise MalformedMessage("an upsert needs an object body")
        rn = _int(o.get("revision_number", 0), "revision_number")
        local = o.get("local")
        if local is not None and (
            vpc_id is None or t != "port" or not isinstance(body, dict)
            or not isinstance(local, dict) or not body.get("node_id")
            or any(k in body for k in local)
        ):
            raise MalformedMessage("local: fields a bound port's host adds, on a VPC's chain")
        ops.append(WireOp(op_rev, t, i, verb, rn, body if verb == "upsert" else None, local))
    epoch = _int(d.get("epoch", 0), "epoch")
    since = _int(d.get("since", 0), "since")
    if since and vpc_id is not None:
        raise MalformedMessage("since is for a node's chain")
    return Message(node_id, kind, prev_rev, rev, tuple(ops), epoch, vpc_id or "", tuple(vpcs),
                   tuple(replace), since)


class Outcome(enum.Enum):
    DUPLICATE = "duplicate"  # already applied: ack and drop
    GAP = "gap"  # something was lost: ask for a snapshot
    VPC_GAP = "vpc_gap"  # something was lost on a VPC's chain: ask for that VPC's state
    WAITING = "waiting"  # a delta while a snapshot is awaited: dropped
    APPLIED = "applied"
    SNAPSHOT = "snapshot"
    DEPOSED = "deposed"  # from a leader older than one already heard: refused, never applied


@dataclass
class AgentModel:
    """One node's goal state as the agent holds it, with per-resource revisions and tombstones."""

    node_id: str
    applied_rev: int = 0
    # A fresh agent has nothing: it asks for a snapshot (hello) and applies no delta before it.
    awaiting_snapshot: bool = True
    epoch: int = 0  # the highest leader epoch heard from
    resources: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {t: {} for t in WIRE_TYPES}
    )
    chains: dict[str, int] = field(default_factory=dict)  # VPC chains followed → applied rev
    # VPC chains with a gap, awaiting that VPC's state on the node's chain (their messages
    # are dropped meanwhile; the node's chain and the other VPCs' go on).
    broken: set[str] = field(default_factory=set)
    revisions: dict[tuple[str, str], int] = field(default_factory=dict)
    tombstones: dict[tuple[str, str], int] = field(default_factory=dict)
    # The change-log rev of the op each resource (or tombstone) was last written by. With the
    # VPC chains on streams, a node's chain and a VPC's chain arrive from two sources, in no
    # order between them; an op older (by revision_number, then by rev) than the one held is
    # stale whichever source it came from (docs/wire.md, "Two sources").
    op_revs: dict[tuple[str, str], int] = field(default_factory=dict)
    stale_ops: int = 0
    _hashes: dict[tuple[str, str], int] = field(default_factory=dict)
    _total: int = 0

    def receive(self, msg: Message) -> Outcome:
        """The ordering rule. The caller acknowledges the message whatever the outcome, except
        DEPOSED, which it refuses."""
        if msg.epoch < self.epoch:
            return Outcome.DEPOSED
        self.epoch = msg.epoch
        if msg.vpc_id:
            return self._receive_vpc(msg)
        if msg.kind == "snapshot":
            # A snapshot replaces the model whatever its prev_rev, unless it is an old one
            # redelivered after newer deltas were applied.
            if not self.awaiting_snapshot and msg.rev < self.applied_rev:
                return Outcome.DUPLICATE
            self._replace(msg)
            return Outcome.SNAPSHOT
        if msg.rev <= self.applied_rev:
            return Outcome.DUPLICATE
        if self.awaiting_snapshot:
            return Outcome.WAITING
        if msg.prev_rev > self.applied_rev:
            self.awaiting_snapshot = True
            return Outcome.GAP
        if any(v in self.broken and v not in msg.replace_vpcs for v, _ in msg.vpcs):
            # A chain with a gap would start or stop without the VPC's state: what the node
            # holds of that VPC may be stale, so only a snapshot can make it whole.
            self.awaiting_snapshot = True
            return Outcome.GAP
        for v in msg.replace_vpcs:
            self._drop_vpc(v)
        for op in msg.ops:
            if op.rev > self.applied_rev:
                self._apply(op)
        self.applied_rev = msg.rev
        for v, r in msg.vpcs:
            self.broken.discard(v)
            if r is None:
                held = self.chains.pop(v, None)
                if held is not None and held >= msg.rev:
                    # The VPC's chain ran ahead of this one (a stream read faster than the
                    # node's queue): the node applied that VPC's changes of the batch it left
                    # in, or later ones, which its leave's deletes do not cover. A node that
                    # stops following a chain this way is no longer a member (a switch to
                    # unicast ends the chain, so it never runs past the switch): it holds
                    # nothing of the VPC's shared state.
                    self._drop_vpc(v)
            else:
                self.chains[v] = r
        return Outcome.APPLIED

    def _receive_vpc(self, msg: Message) -> Outcome:
        """A VPC chain's message: the same rule on that chain's rev. For one of this node's own
        ports the op's body with its `local` fields is applied; without them, the op (the
        neighbour variant) is skipped: the node's chain carries its local variant."""
        if self.awaiting_snapshot:
            return Outcome.WAITING
        held = self.chains.get(msg.vpc_id)
        if held is None or msg.rev <= held:
            return Outcome.DUPLICATE  # not followed (any more, or yet), or applied already
        if msg.vpc_id in self.broken:
            return Outcome.WAITING
        if msg.prev_rev > held:
            # Only this chain is broken: the VPC's state, not a whole snapshot, repairs it.
            self.broken.add(msg.vpc_id)
            return Outcome.VPC_GAP
        me = self.node_id
        for op in msg.ops:
            if op.rev <= held:
                continue
            if op.type == "port" and op.body is not None and op.body.get("node_id") == me:
                if op.local is not None and op.body is not None:
                    self._apply(WireOp(op.rev, op.type, op.id, op.op, op.revision_number,
                                       {**op.body, **op.local}))
                continue
            self._apply(op)
        self.chains[msg.vpc_id] = msg.rev
        return Outcome.APPLIED

    def _apply(self, op: WireOp) -> None:
        key = (op.type, op.id)
        held = self.revisions.get(key, self.tombstones.get(key, -1))
        if op.revision_number < held or (
            op.revision_number == held and op.rev < self.op_revs.get(key, -1)
        ):
            self.stale_ops += 1
            return
        self.op_revs[key] = op.rev
        if op.op == "upsert":
            assert op.body is not None
            self.tombstones.pop(key, None)
            self._set(key, op.body, op.revision_number)
        else:
            self._drop(key)
            self.tombstones[key] = op.revision_number

    def _set(self, key: tuple[str, str], body: dict[str, Any], revision_number: int) -> None:
        old = self._hashes.get(key)
        if old is not None:
            self._total = combine(self._total, old, -1)
        h = resource_hash(key[0], key[1], body)
        self._hashes[key] = h
        self._total = combine(self._total, h)
        self.resources[key[0]][key[1]] = body
        self.revisions[key] = revision_number

    def _drop(self, key: tuple[str, str]) -> None:
        old = self._hashes.pop(key, None)
        if old is not None:
            self._total = combine(self._total, old, -1)
        self.resources[key[0]].pop(key[1], None)
        self.revisions.pop(key, None)

    def _drop_vpc(self, vpc: str) -> None:
        """Forget what a VPC's chain carries (its ports, subnets, record and gateways) before
        the VPC's state replaces it. Tombstones stay: they only ever block older upserts."""
        for t in _SHARED:
            field = "vpc_id" if t == "gateway" else "network_id"
            for i, body in list(self.resources[t].items()):
                if (i if t == "vpc" else body.get(field)) == vpc:
                    self._drop((t, i))

    def _replace(self, msg: Message) -> None:
        self.resources = {t: {} for t in WIRE_TYPES}
        self.revisions.clear()
        self.tombstones.clear()
        self.op_revs.clear()
        self._hashes.clear()
        self._total = 0
        for op in msg.ops:
            assert op.body is not None
            self._set((op.type, op.id), op.body, op.revision_number)
            self.op_revs[(op.type, op.id)] = op.rev
        self.applied_rev = msg.rev
        self.chains = {v: r for v, r in msg.vpcs if r is not None}
        self.broken.clear()
        self.awaiting_snapshot = False

    def goal(self) -> dict[str, Any]:
        """The goal state for the flow compiler (docs/wire.md): live resources only, copied."""
        goal: dict[str, Any] = {"node_id": self.node_id}
        for t, items in self.resources.items():
            goal[t] = dict(items)
        return goal

    def digest(self) -> str:
        return hex_digest(self._total)

    def floating_ips(self) -> list[str]:
        """Ids of the floating IPs this node holds: those of the routers whose gateway it carries
        (it reports their status, as Neutron's L3 agent does)."""
        return sorted(self.resources.get("floating_ip", {}))

    def local_ports(self) -> list[str]:
        """Ids of the ports this node hosts (the ones it reports a status for)."""
        return sorted(
            pid
            for pid, p in self.resources["port"].items()
            if p.get("node_id") == self.node_id
            and p.get("device_owner") != ROUTER_INTERFACE
        )
