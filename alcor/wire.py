"""The wire's vocabulary, shared by the controller's southbound and the host agent.

Both sides import this module and neither imports the other: what a host's goal state looks like
(docs/wire.md) is said here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

Body = Mapping[str, Any]

# The device_owner of a port that is a router's interface on a subnet (Neutron's name): never an
# OVS interface, it only tells a host its gateway's MAC.
ROUTER_INTERFACE = "network:router_interface"


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
