"""The wire between the controller's southbound and the host agents: what both ends must agree on.

Both sides import this module and neither imports the other: the message version, the resource
types a goal state holds and their snapshot order, the shape of a host's goal state
(docs/wire.md), and the order-independent digest by which the two sides compare it.

    >>> digest({"node": {}}) == digest({})
    True
    >>> digest({"node": {"n1": {"local_ip": "10.0.0.1"}}}) == digest({})
    False
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, TypedDict

# The "v" of every message, either way; a message of another version is rejected, never applied.
# 2: per-VPC multicast chains beside each node's own chain (docs/wire.md).
WIRE_VERSION = 2

# The queue the controller consumes agents' reports from, unless [southbound] controller_queue
# says otherwise.
CONTROLLER_QUEUE = "alcor.controller"

# A node's own durable queue, unless its record names another (`mq_queue`): the one place the
# name is built, for the node registry, the dispatcher and the agent alike.
NODE_QUEUE_PREFIX = "alcor.node."


def node_queue(node_id: str) -> str:
    """The default queue of a node: `alcor.node.<node_id>`.

    >>> node_queue("9f0c")
    'alcor.node.9f0c'
    """
    return NODE_QUEUE_PREFIX + node_id


def vpc_key(vpc_id: str) -> str:
    """The routing key of a VPC's multicast channel, on each member node's exchange: the
    members' queues are bound under it while they follow the VPC's chain.

    >>> vpc_key("4e1a")
    'alcor.vpc.4e1a'
    """
    return "alcor.vpc." + vpc_id


def vpc_stream(vpc_id: str) -> str:
    """The stream a VPC's chain is appended to on each broker its members use, with
    `[southbound] vpc_channel = "stream"` (a stream is a queue of its own: the same name as
    the routing key, which names no queue).

    >>> vpc_stream("4e1a")
    'alcor.vpc.4e1a'
    """
    return "alcor.vpc." + vpc_id

# Wire types, in the order a snapshot lists them (peers and VPCs before what refers to them).
WIRE_TYPES = (
    "node", "vpc", "subnet", "router", "security_group", "gateway", "floating_ip", "port",
)  # fmt: skip

Body = Mapping[str, Any]

# The device_owner of a port that is a router's interface on a subnet (Neutron's name): never an
# OVS interface, it only tells a host its gateway's MAC.
ROUTER_INTERFACE = "network:router_interface"
# A router's port on an external network: never an OVS interface either; the gateway node it is
# bound to carries it (alcor/agent/gateway.py).
ROUTER_GATEWAY = "network:router_gateway"

# A security group rule's `protocol` is a name from this table, a number (as text) or null
# (any): the API validates it, the wire carries it as given, the agent matches its number.
IP_PROTOCOLS = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "icmp": 1, "icmpv6": 58, "igmp": 2,
    "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58, "ipv6-nonxt": 59,
    "ipv6-opts": 60, "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46, "sctp": 132, "tcp": 6,
    "udp": 17, "udplite": 136, "vrrp": 112,
}  # fmt: skip


def protocol_number(protocol: Any) -> int | None:
    """A rule's protocol as an IP protocol number; None for any (and for what is not one)."""
    if protocol is None or protocol in ("", "any"):
        return None
    text = str(protocol).lower()
    if text in IP_PROTOCOLS:
        return IP_PROTOCOLS[text]
    return int(text) if text.isdigit() and int(text) <= 255 else None


class GoalState(TypedDict, total=False):
    """A host's goal state as docs/wire.md describes it: plain dicts of wire bodies by id."""

    node_id: str
    node: Mapping[str, Body]
    vpc: Mapping[str, Body]
    subnet: Mapping[str, Body]
    router: Mapping[str, Body]
    port: Mapping[str, Body]
    security_group: Mapping[str, Body]
    gateway: Mapping[str, Body]


# -- digest ------------------------------------------------------------------------------------

_DIGEST_MOD = 1 << 256


def canonical(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values, equal text (what a digest hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def resource_hash(wtype: str, id: str, body: Body) -> int:
    """One resource's share of a digest: SHA-256 of the canonical JSON of [type, id, body]."""
    h = hashlib.sha256(canonical([wtype, id, body]).encode()).digest()
    return int.from_bytes(h, "big")


def combine(total: int, share: int, sign: int = 1) -> int:
    return (total + sign * share) % _DIGEST_MOD


def hex_digest(total: int) -> str:
    return f"{total % _DIGEST_MOD:064x}"


def digest(goal: Mapping[str, Any]) -> str:
    """Order-independent digest of a goal state's live resources: the sum of their hashes mod 2^256.

    A sum (not a hash of one big document) lets the agent keep it current per op instead of
    re-serialising 10,000 neighbours after every message.
    """
    total = 0
    for wtype in WIRE_TYPES:
        for id, body in (goal.get(wtype) or {}).items():
            total = combine(total, resource_hash(wtype, id, body))
    return hex_digest(total)
