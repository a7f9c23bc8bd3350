"""`/v2.0/agents` (Neutron's `agent` extension), derived from the node records and their liveness.

Every node runs one agent: an "Open vSwitch agent" (L2, L3 distributed, DHCP, security groups on
its integration bridge); a node whose `bridge_mappings` reach a physical network also hosts router
gateways, shown as an "L3 agent" of its own, as Neutron's network nodes show theirs. `alive` is the
southbound's liveness (a node silent for longer than `[gateway] agent_down_time` is down). The
records are read-only here: an agent is registered, renamed or removed through its node.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from alcor.api.auth import context
from alcor.errors import BadRequest, NeutronError
from alcor.policy import enforce
from alcor.resources import query as q
from alcor.resources.nodes import Nodes

# Fixed namespace: an L3 agent's id is derived from its node's, so it is stable across restarts.
_L3_NAMESPACE = uuid.UUID("7b0e3c52-9f3c-4d53-8f44-5b4ef0c1a6d2")
OVS_AGENT = "Open vSwitch agent"
L3_AGENT = "L3 agent"
_FILTERS = ("id", "agent_type", "binary", "topic", "host", "alive", "admin_state_up",
            "availability_zone", "description")


def agents_of(node: dict[str, Any], liveness: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent records of one node (Neutron's fields)."""
    mappings = dict(node.get("bridge_mappings") or {})
    common = {
        "binary": "alcor-agent", "topic": "N/A", "host": node.get("node_name"),
        "admin_state_up": True, "alive": bool(liveness.get("alive")),
        "created_at": _neutron_time(node.get("created_at")),
        "started_at": liveness.get("started_at") and _neutron_time(liveness["started_at"]),
        "heartbeat_timestamp": liveness.get("heartbeat_timestamp"),
        "description": None, "resources_synced": None, "resource_versions": {},
    }
    out = [{
        "id": node["node_id"], "agent_type": OVS_AGENT, "availability_zone": None,
        "configurations": {"bridge_mappings": mappings, "tunneling_ip": node.get("local_ip"),
                           "tunnel_types": ["vxlan"], "integration_bridge":
                           node.get("bridge_name", "br-int"),
                           "datapath_type": node.get("datapath_type", "system")},
        **common,
    }]
    if mappings:
        out.append({
            "id": str(uuid.uuid5(_L3_NAMESPACE, node["node_id"])), "agent_type": L3_AGENT,
            "availability_zone": "nova",
            "configurations": {"agent_mode": "legacy", "bridge_mappings": mappings,
                               "external_network_bridge": ""},
            **{**common, "binary": "alcor-agent"},
        })
    return out


def _neutron_time(v: Any) -> Any:
    """Neutron shows agents' times as `YYYY-MM-DD HH:MM:SS`."""
    return v.replace("T", " ").rstrip("Z") if isinstance(v, str) else v


def _matches(agent: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        v = agent.get(key)
        if isinstance(v, bool):
            v = str(v).lower()
            values = [x.lower() for x in values]
        if str(v) not in values and not (v is None and "" in values):
            return False
    return True


def routes(nodes: Nodes) -> list[web.RouteDef]:
    def all_agents() -> list[dict[str, Any]]:
        out = []
        for node in sorted(nodes.all(), key=lambda b: b["node_id"]):
            live = nodes.liveness(node["node_id"]) if nodes.liveness is not None else {}
            out.extend(agents_of(node, live))
        return out

    async def list_agents(request: web.Request) -> web.Response:
        ctx = await context(request)
        enforce(ctx, "get_agent")
        fields = [f for f in request.query.getall("fields", []) if f]
        filters: dict[str, list[str]] = {}
        for key in request.query:
            if key in ("fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir"):
                continue
            if key not in _FILTERS:
                raise BadRequest(f"{key} is invalid attribute for filtering", type="HTTPBadRequest")
            filters[key] = request.query.getall(key)
        found = [a for a in all_agents() if _matches(a, filters)]
        found = [q.project(a, fields) for a in found] if fields else found
        return web.Response(text=q.dumps({"agents": found}), content_type="application/json")

    async def show_agent(request: web.Request) -> web.Response:
        ctx = await context(request)
        enforce(ctx, "get_agent")
        aid = request.match_info["id"]
        for a in all_agents():
            if a["id"] == aid:
                fields = [f for f in request.query.getall("fields", []) if f]
                body = q.project(a, fields) if fields else a
                return web.Response(text=q.dumps({"agent": body}), content_type="application/json")
        raise NeutronError(f"Agent {aid} could not be found.", type="AgentNotFound", status=404)

    return [web.get("/v2.0/agents", list_agents), web.get("/v2.0/agents/{id}", show_agent)]
