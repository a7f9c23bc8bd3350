"""Nodes (Alcor's node manager): the compute hosts, their tunnel endpoint and their own MQ settings.

Ports bind to a node by `node_name`. Only admins see or change nodes. A node's agents, as Neutron's
`/v2.0/agents` shows them (alcor/api/agents.py), are derived from its record; what an admin sets on
one of them (`admin_state_up`, `description`) is kept in the record's `agents`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from alcor.context import Context
from alcor.db.changelog import Change
from alcor.db.store import Tx
from alcor.errors import Conflict, policy
from alcor.resources.base import Manager
from alcor.resources.schema import (
    Attr,
    Invalid,
    Resource,
    boolean,
    described,
    dict_of,
    ip_address,
    json_schema_of,
    mac_address,
    nullable,
    one_of,
    standard,
    string,
    uuid_str,
)
from alcor.transport import MqConfig
from alcor.wire import node_queue

_PHYSNET = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def bridge_mappings(value: Any) -> dict[str, str]:
    """`{"physnet1": "br-ex"}`: the physical networks this host reaches, each through an OVS
    bridge (Neutron's `bridge_mappings`, as its OVS agent reports it in `configurations`); also
    accepted as Neutron's config spells it, `["physnet1:br-ex"]` or `"physnet1:br-ex,..."`."""
    if isinstance(value, str):
        value = [v for v in (x.strip() for x in value.split(",")) if v]
    if isinstance(value, list):
        pairs: dict[str, Any] = {}
        for item in value:
            physnet, sep, bridge = str(item).partition(":") if isinstance(item, str) else ("", "", "")
            if not sep:
                raise Invalid(f"'{item}' is not a valid mapping (physical_network:bridge)")
            if physnet in pairs:
                raise Invalid(f"physical network '{physnet}' is mapped twice")
            pairs[physnet] = bridge
        value = pairs
    if not isinstance(value, dict):
        raise Invalid(f"'{value}' is not a valid bridge mapping")
    out: dict[str, str] = {}
    bridges: set[str] = set()
    for physnet, bridge in value.items():
        if not isinstance(physnet, str) or not _PHYSNET.match(physnet):
            raise Invalid(f"'{physnet}' is not a valid physical network name")
        if not isinstance(bridge, str) or not _BRIDGE.match(bridge):
            raise Invalid(f"'{bridge}' is not a valid bridge name (at most 15 characters)")
        if bridge in bridges:
            raise Invalid(f"bridge '{bridge}' is mapped twice")
        bridges.add(bridge)
        out[physnet] = bridge
    return dict(sorted(out.items()))


described(bridge_mappings, {"type": "object", "additionalProperties": {"type": "string"}})

# The agents a node shows: every node runs an Open vSwitch agent (L2, distributed L3, DHCP,
# security groups); a node whose bridge_mappings reach a physical network also hosts router
# gateways, shown as an L3 agent of its own, as Neutron's network nodes show theirs.
OVS_AGENT = "Open vSwitch agent"
L3_AGENT = "L3 agent"
AGENT_TYPES = (OVS_AGENT, L3_AGENT)

# Neutron's agent record; only admin_state_up and description may be changed (PUT /v2.0/agents/{id}).
AGENT = Resource("agent", "agents", "Agent").add(
    Attr("id", uuid_str, post=False),
    Attr("agent_type", one_of(*AGENT_TYPES), post=False),
    Attr("binary", string(), post=False),
    Attr("topic", string(), post=False),
    Attr("host", string(), post=False),
    Attr("admin_state_up", boolean, post=False, put=True, kind="boolean"),
    Attr("alive", boolean, post=False, kind="boolean"),
    Attr("availability_zone", nullable(string()), post=False),
    Attr("description", nullable(string(255)), post=False, put=True),
    Attr("configurations", dict_of({}, extra=True), post=False, kind="object", filterable=False),
    Attr("created_at", string(), post=False),
    Attr("started_at", nullable(string()), post=False),
    Attr("heartbeat_timestamp", nullable(string()), post=False),
    Attr("resources_synced", nullable(boolean), post=False, kind="boolean"),
    Attr("resource_versions", dict_of({}, extra=True), post=False, kind="object", filterable=False),
)
_AGENT_SETTINGS = dict_of({"admin_state_up": (boolean, False),
                           "description": (nullable(string(255)), False)})


def agent_settings(value: Any) -> dict[str, dict[str, Any]]:
    """`{"L3 agent": {"admin_state_up": false}}`: what an admin set on the node's agents."""
    if not isinstance(value, dict) or not set(value) <= set(AGENT_TYPES):
        raise Invalid(f"'{value}' is not a valid agents dictionary (keys: {list(AGENT_TYPES)})")
    return {k: _AGENT_SETTINGS(v) for k, v in value.items()}


described(agent_settings, {"type": "object", "properties": {
    t: json_schema_of(_AGENT_SETTINGS) or {} for t in AGENT_TYPES}, "additionalProperties": False})


def agent_setting(node: dict[str, Any], agent_type: str, key: str) -> Any:
    """An agent's admin_state_up (default true) or description (default null), from its node."""
    settings = (node.get("agents") or {}).get(agent_type) or {}
    return settings.get(key, True if key == "admin_state_up" else None)


def hosts_gateways(node: dict[str, Any], physnet: str) -> bool:
    """May router gateways on `physnet` be placed on this node? It must map the physical
    network, and an admin must not have turned its L3 agent's admin_state_up off (as Neutron
    takes the routers off an L3 agent that is disabled)."""
    return physnet in (node.get("bridge_mappings") or {}) and \
        agent_setting(node, L3_AGENT, "admin_state_up") is not False

NODE = standard(Resource("node", "nodes", "Node", id_field="node_id"), named=False).add(
    Attr("node_id", uuid_str),
    Attr("node_name", string(255), optional=False, put=True),
    Attr("local_ip", ip_address, optional=False, put=True),
    Attr("mac_address", mac_address, default=None, put=True),
    Attr("mq_url", string(1024), put=True),
    Attr("mq_vhost", string(255), put=True),
    Attr("mq_exchange", string(255), put=True),
    Attr("mq_queue", string(255), put=True),
    # The host's integration bridge, as its agent is configured ([agent] bridge, datapath_type):
    # os-vif plugs VM taps there from the ports' binding:vif_details.
    Attr("bridge_name", string(15), default="br-int", put=True),
    Attr("datapath_type", one_of("system", "netdev"), default="system", put=True),
    # The physical networks the host reaches ({"physnet1": "br-ex"}), as its agent's [agent]
    # bridge_mappings: a node mapping an external network's physical network can host router
    # gateways (a gateway node).
    Attr("bridge_mappings", bridge_mappings, default=dict, put=True, kind="object",
         filterable=False),
    # Set through PUT /v2.0/agents/{id}, not here (one writer per field).
    Attr("agents", agent_settings, post=False, kind="object", filterable=False),
)
del NODE.attrs["id"]


class Nodes(Manager):
    res = NODE
    type = "node"

    def __init__(self, mq_defaults: MqConfig | None = None) -> None:
        super().__init__()
        self.mq = mq_defaults or MqConfig()
        # node id -> its sync state; set by the southbound module when one runs (it sits above
        # the resources and reads them; they never import it)
        self.sync: Callable[[str], dict[str, Any]] | None = None
        # node id -> its agent's liveness ({"alive", "heartbeat_timestamp", "started_at"}), set
        # by the southbound module, which hears the agents (/v2.0/agents shows it)
        self.liveness: Callable[[str], dict[str, Any]] | None = None
        self._by_name: dict[str, dict[str, Any]] = {}

    async def load(self) -> None:
        for body in await self.list_all(Context("", True)):
            self._by_name[body["node_name"]] = body

    def reset(self) -> None:
        self._by_name.clear()

    def followed(self, change: Change) -> None:
        old = next((n for n, b in self._by_name.items() if b["node_id"] == change.id), None)
        if old is not None:
            del self._by_name[old]
        if change.body is not None:
            self._by_name[change.body["node_name"]] = change.body

    def all(self) -> list[dict[str, Any]]:
        return list(self._by_name.values())

    def by_name(self, name: str) -> dict[str, Any] | None:
        return self._by_name.get(name)

    def vpc_of(self, body: dict[str, Any]) -> str | None:
        return None

    def require_admin(self, ctx: Context, action: str) -> None:
        if not ctx.allowed(f"{action}_node"):
            raise policy(f"{action}_node")

    def check_create(self, ctx: Context, body: Any) -> dict[str, Any]:
        self.require_admin(ctx, "create")
        return super().check_create(ctx, body)

    def check_update(self, ctx: Context, body: Any) -> dict[str, Any]:
        self.require_admin(ctx, "update")
        return super().check_update(ctx, body)

    def visible(self, ctx: Context, body: dict[str, Any]) -> bool:
        self.require_admin(ctx, "get")
        return True

    def scope(self, ctx: Context, sql: Any) -> None:
        self.require_admin(ctx, "get")

    def check_write(self, ctx: Context, action: str, current: dict[str, Any], given: Any = None) -> None:
        self.require_admin(ctx, action.split("_", 1)[0])

    async def create_target(self, ctx: Context, given: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        wanted_id = given.pop("node_id", None)
        if given["node_name"] in self._by_name:
            raise Conflict(f"Node name {given['node_name']} is in use.", type="NodeNameInUse")
        body = self.new_body(ctx, given)
        if wanted_id:
            if await self.fetch(wanted_id, tx) is not None:
                raise Conflict(f"Node {wanted_id} already exists.", type="NodeExists")
            body = {"node_id": wanted_id, **{k: v for k, v in body.items() if k != "node_id"}}
        body.setdefault("mq_url", self.mq.url)
        body.setdefault("mq_vhost", self.mq.vhost)
        body.setdefault("mq_exchange", self.mq.exchange)
        body.setdefault("mq_queue", node_queue(body["node_id"]))
        body.setdefault("agents", {})
        await self.insert(tx, body)
        await self._rebind(tx, body)
        tx.after_commit(lambda: self._by_name.__setitem__(body["node_name"], body))
        return body

    async def _rebind(self, tx: Tx, node: dict[str, Any]) -> None:
        """The ports that ask for this host get its binding now: those that asked before it was
        registered (binding_failed → ovs), and bound ones when its bridge or datapath changes."""
        ports = self.peers.ports
        d = self.store.dialect
        rows = await tx.fetchall(
            f"SELECT body FROM resources WHERE type = 'port' AND {d.text('binding:host_id')} = ?",
            (node["node_name"],))
        for (text,) in rows:
            port = json.loads(text)
            binding = ports.binding_for(port, node)
            if any(port.get(k) != v for k, v in binding.items()):
                await ports.replace(tx, port, binding)

    async def _bound_ports(self, tx: Tx, name: str) -> int:
        row = await tx.fetchone(
            "SELECT COUNT(*) FROM resources WHERE type = 'port' AND "
            f"{self.store.dialect.text('binding:host_id')} = ?", (name,))
        return int(row[0])

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        old_name = current["node_name"]
        new_name = changes.get("node_name", old_name)
        if new_name != old_name:
            if new_name in self._by_name:
                raise Conflict(f"Node name {new_name} is in use.", type="NodeNameInUse")
            if await self._bound_ports(tx, old_name):
                raise Conflict(f"Node {old_name} has ports bound to it; it cannot be renamed.",
                               type="NodeInUse")
        new = await self.replace(tx, current, changes)
        if any(new.get(k) != current.get(k) for k in ("bridge_name", "datapath_type")):
            await self._rebind(tx, new)

        def reindex() -> None:
            self._by_name.pop(old_name, None)
            self._by_name[new["node_name"]] = new
        tx.after_commit(reindex)
        return new

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        if await self._bound_ports(tx, current["node_name"]):
            raise Conflict(f"Node {current['node_name']} has ports bound to it.", type="NodeInUse")
        await self.remove(tx, current)

        def forget() -> None:
            self._by_name.pop(current["node_name"], None)
        tx.after_commit(forget)

    async def set_agent(self, ctx: Context, node_id: str, agent_type: str,
                        changes: dict[str, Any]) -> dict[str, Any]:
        """Record what an admin set on one of the node's agents: an update of the node, so the
        change log carries it (the gateway placement reads an L3 agent's admin_state_up)."""
        async with self.store.transaction() as tx:
            current = await self.get(ctx, node_id, tx)
            self.require_admin(ctx, "update")
            agents = dict(current.get("agents") or {})
            mine = {**agents.get(agent_type, {}), **changes}
            if mine == agents.get(agent_type, {}):
                return current
            agents[agent_type] = mine
            new = await self.replace(tx, current, {"agents": agents})
            tx.after_commit(lambda: self._by_name.__setitem__(new["node_name"], new))
            return new

    def show_extra(self, body: dict[str, Any]) -> dict[str, Any]:
        """What the southbound knows of this node's sync state, when it is loaded."""
        return self.sync(body["node_id"]) if self.sync is not None else {}
