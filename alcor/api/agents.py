"""`/v2.0/agents` (Neutron's `agent` extension), derived from the node records and their liveness.

Every node runs one agent: an "Open vSwitch agent" (L2, L3 distributed, DHCP, security groups on
its integration bridge); a node whose `bridge_mappings` reach a physical network also hosts router
gateways, shown as an "L3 agent" of its own, as Neutron's network nodes show theirs. `alive` is the
southbound's liveness (a node silent for longer than `[gateway] agent_down_time` is down).

An admin may change an agent's `description`, and an L3 agent's `admin_state_up`: off, its node
hosts no router gateway (those there move to another gateway node). Deleting an Open vSwitch agent
deletes its node (as `DELETE /v2.0/alcor/nodes/{id}`: refused while ports are bound there); an L3
agent is its node's bridge mappings and goes with them. Only admins see agents: a list is empty for
anyone else, and one agent 404, as in Neutron.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from alcor.api.auth import context
from alcor.context import Context
from alcor.errors import BadRequest, Conflict, NeutronError
from alcor.policy import enforce
from alcor.resources import query as q
from alcor.resources.nodes import AGENT, L3_AGENT, OVS_AGENT, Nodes, agent_setting
from alcor.resources.schema import check_update

# Fixed namespace: an L3 agent's id is derived from its node's, so it is stable across restarts.
_L3_NAMESPACE = uuid.UUID("7b0e3c52-9f3c-4d53-8f44-5b4ef0c1a6d2")
_FILTERS = ("id", "agent_type", "binary", "topic", "host", "alive", "admin_state_up",
            "availability_zone", "description")


def agents_of(node: dict[str, Any], liveness: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent records of one node (Neutron's fields)."""
    mappings = dict(node.get("bridge_mappings") or {})
    common = {
        "binary": "alcor-agent", "topic": "N/A", "host": node.get("node_name"),
        "alive": bool(liveness.get("alive")),
        "created_at": _neutron_time(node.get("created_at")),
        "started_at": liveness.get("started_at") and _neutron_time(liveness["started_at"]),
        "heartbeat_timestamp": liveness.get("heartbeat_timestamp"),
        "resources_synced": None, "resource_versions": {},
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
            "id": l3_agent_id(node["node_id"]), "agent_type": L3_AGENT,
            "availability_zone": "nova",
            "configurations": {"agent_mode": "legacy", "bridge_mappings": mappings,
                               "external_network_bridge": ""},
            **common,
        })
    for a in out:
        for key in ("admin_state_up", "description"):
            a[key] = agent_setting(node, a["agent_type"], key)
    return out


def l3_agent_id(node_id: str) -> str:
    return str(uuid.uuid5(_L3_NAMESPACE, node_id))


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


def routes(nodes: Nodes, body: Callable[[web.Request], Awaitable[Any]]) -> list[web.RouteDef]:
    """The agents API over `nodes`; `body` reads a request's JSON body (the API's, with its limits)."""
    def all_agents() -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(agent, its node) for every agent, in node order."""
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for node in sorted(nodes.all(), key=lambda b: b["node_id"]):
            live = nodes.liveness(node["node_id"]) if nodes.liveness is not None else {}
            out.extend((a, node) for a in agents_of(node, live))
        return out

    def find(ctx: Context, aid: str) -> tuple[dict[str, Any], dict[str, Any]]:
        # Neutron answers 404, not 403, to whoever may not see agents: nothing is given away.
        if ctx.allowed("get_agent"):
            for a, node in all_agents():
                if a["id"] == aid:
                    return a, node
        raise NeutronError(f"Agent {aid} could not be found.", type="AgentNotFound", status=404)

    def render(key: str, body: Any) -> web.Response:
        return web.Response(text=q.dumps({key: body}), content_type="application/json")

    async def list_agents(request: web.Request) -> web.Response:
        ctx = await context(request)
        fields = [f for f in request.query.getall("fields", []) if f]
        filters: dict[str, list[str]] = {}
        for key in request.query:
            if key in ("fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir"):
                continue
            if key not in _FILTERS:
                raise BadRequest(f"{key} is invalid attribute for filtering", type="HTTPBadRequest")
            filters[key] = request.query.getall(key)
        if not ctx.allowed("get_agent"):
            return render("agents", [])  # Neutron's policy filters every row out
        found = [a for a, _ in all_agents() if _matches(a, filters)]
        return render("agents", [q.project(a, fields) for a in found] if fields else found)

    async def show_agent(request: web.Request) -> web.Response:
        a, _ = find(await context(request), request.match_info["id"])
        fields = [f for f in request.query.getall("fields", []) if f]
        return render("agent", q.project(a, fields) if fields else a)

    async def update_agent(request: web.Request) -> web.Response:
        ctx = await context(request)
        a, node = find(ctx, request.match_info["id"])
        enforce(ctx, "update_agent")
        data = await body(request)
        if not isinstance(data, dict) or set(data) != {"agent"}:
            raise BadRequest("Unable to find 'agent' in request body")
        changes = check_update(AGENT, data["agent"], is_admin=True)
        if a["agent_type"] == OVS_AGENT and changes.get("admin_state_up") is False:
            # Neutron's Open vSwitch agent keeps its ports working whatever the flag says; here
            # it would promise what nothing does, so it is refused.
            raise BadRequest("An Open vSwitch agent's admin_state_up cannot be turned off: its "
                             "node's ports are served regardless (move them, or delete the node).")
        new = await nodes.set_agent(ctx, node["node_id"], a["agent_type"], changes)
        live = nodes.liveness(node["node_id"]) if nodes.liveness is not None else {}
        updated = next(x for x in agents_of(new, live) if x["id"] == a["id"])
        return render("agent", updated)

    async def delete_agent(request: web.Request) -> web.Response:
        ctx = await context(request)
        a, node = find(ctx, request.match_info["id"])
        enforce(ctx, "delete_agent")
        if a["agent_type"] == L3_AGENT:
            raise Conflict(f"Agent {a['id']} is the L3 agent of node {node['node_name']}: it goes "
                           f"when the node's bridge_mappings no longer reach a physical network.",
                           type="AgentInUse")
        await nodes.delete_one(ctx, node["node_id"], None)
        return web.Response(status=204)

    return [web.get("/v2.0/agents", list_agents), web.get("/v2.0/agents/{id}", show_agent),
            web.put("/v2.0/agents/{id}", update_agent),
            web.delete("/v2.0/agents/{id}", delete_agent)]

