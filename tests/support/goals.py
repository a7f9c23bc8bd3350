"""Goal states for agent tests, built the way docs/wire.md shapes them.

g = GoalBuilder("node-a")
g.node("node-b", "172.31.255.2")
g.vpc("vpc1", 100).subnet("s1", "vpc1", "10.0.0.0/24", "10.0.0.1", "fa:16:3e:00:00:01")
g.port("p1…", "vpc1", "s1", "10.0.0.5", "fa:16:3e:00:01:05", node="node-a")
goal = g.goal()
"""

from __future__ import annotations

import copy
from typing import Any

from alcor.agent.flows import GoalState


class GoalBuilder:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.res: dict[str, dict[str, dict[str, Any]]] = {
            t: {} for t in ("node", "vpc", "subnet", "router", "port", "security_group", "gateway")
        }

    def node(self, node_id: str, local_ip: str, mac: str = "02:00:00:00:00:99") -> GoalBuilder:
        self.res["node"][node_id] = {
            "id": node_id,
            "node_name": node_id,
            "local_ip": local_ip,
            "mac_address": mac,
        }
        return self

    def vpc(self, vpc_id: str, vni: int) -> GoalBuilder:
        self.res["vpc"][vpc_id] = {
            "id": vpc_id,
            "project_id": "p",
            "segmentation_id": vni,
            "mtu": 1450,
            "gateway_ids": [],
        }
        return self

    def subnet(
        self,
        subnet_id: str,
        vpc_id: str,
        cidr: str,
        gateway_ip: str | None = None,
        gateway_mac: str | None = None,
    ) -> GoalBuilder:
        self.res["subnet"][subnet_id] = {
            "id": subnet_id,
            "network_id": vpc_id,
            "cidr": cidr,
            "ip_version": 4,
            "gateway_ip": gateway_ip,
            "gateway_mac": gateway_mac,
        }
        return self

    def port(
        self,
        port_id: str,
        vpc_id: str,
        subnet_id: str,
        ip: str,
        mac: str,
        *,
        node: str,
        admin_state_up: bool = True,
        device_owner: str = "compute:nova",
    ) -> GoalBuilder:
        self.res["port"][port_id] = {
            "id": port_id,
            "network_id": vpc_id,
            "mac_address": mac,
            "fixed_ips": [{"subnet_id": subnet_id, "ip_address": ip}],
            "node_id": node,
            "device_owner": device_owner,
            "admin_state_up": admin_state_up,
            "allowed_address_pairs": [],
            "security_group_ids": [],
        }
        return self

    def router(
        self, router_id: str, subnet_ids: list[str], routes: list[dict[str, str]] | None = None
    ) -> GoalBuilder:
        self.res["router"][router_id] = {
            "id": router_id,
            "subnet_ids": list(subnet_ids),
            "routes": routes or [],
        }
        return self

    def remove(self, rtype: str, rid: str) -> GoalBuilder:
        self.res[rtype].pop(rid, None)
        return self

    def goal(self) -> GoalState:
        return GoalState(node_id=self.node_id, **copy.deepcopy(self.res))  # type: ignore[typeddict-item]
