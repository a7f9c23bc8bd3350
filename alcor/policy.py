"""Neutron's default policy for Keystone's roles (admin, member, reader, service), in one table.

`RULES` below is the whole policy, in oslo.policy's rule language (the one Neutron's own defaults
and every OpenStack operator's policy.yaml use). An operator overrides any rule by name in a
policy file (`[api] policy_file`, oslo.policy's YAML or JSON format); a name the table does not
have is a config error, so a typo cannot silently leave a default in force.

The roles, as Neutron 2024.1 gives them:
- reader: sees its project's resources; member: also creates, changes and deletes them; admin:
  everything in every project; service (Nova, …): sees and changes ports in any project, binds
  them to hosts (`binding:host_id`, `binding:profile`) and reads `binding:*`.
- Everyone sees shared networks and their subnets, and external (`router:external`) networks.
- The owner of a network sees and manages the ports others put on it.

What a rule sees of its target, so that one decision holds for a whole class of rows (lists are
scoped in SQL from these decisions, never row by row): `project_id`/`tenant_id` (the resource's
project), `network:project_id` (its network's, for subnets and ports), `shared` and
`router:external` (the network's), `network_device` ("True" for a port owned `network:*`), and
`security_group:project_id` for rules.

    policy = Policy()                                   # or Policy("/etc/alcor/policy.yaml")
    policy.check("get_port:binding:host_id", {"project_id": "p1"}, ctx)   # → False for a member
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alcor.config import ConfigError
from alcor.errors import Forbidden

if TYPE_CHECKING:
    from alcor.context import Context

# The building blocks (named rules other rules refer to).
BASE = [
    ("context_is_admin", "role:admin", "Cloud admin: every project's resources"),
    ("service_api", "role:service", "A service (Nova, …) acting for its users"),
    ("owner", "project_id:%(project_id)s", "The resource is the caller's project's"),
    ("network_owner", "project_id:%(network:project_id)s", "The resource's network is the caller's project's"),
    ("sg_owner", "project_id:%(security_group:project_id)s", "The rule's group is the caller's project's"),
    ("shared", "'True':%(shared)s", "The (resource's) network is shared"),
    ("external", "'True':%(router:external)s", "The network is external"),
    ("network_device", "'True':%(network_device)s", "The port is owned by a network:* device"),
    ("admin_only", "rule:context_is_admin", ""),
    ("admin_or_service", "rule:context_is_admin or rule:service_api", ""),
    ("project_reader", "role:reader and rule:owner", ""),
    ("project_member", "role:member and rule:owner", ""),
    ("admin_or_project_reader", "rule:context_is_admin or rule:project_reader", ""),
    ("admin_or_project_member", "rule:context_is_admin or rule:project_member", ""),
    ("net_owner_reader", "role:reader and rule:network_owner", ""),
    ("net_owner_member", "role:member and rule:network_owner", ""),
    ("admin_or_net_owner_member", "rule:context_is_admin or rule:net_owner_member", ""),
    ("admin_net_owner_member_or_service",
     "rule:context_is_admin or rule:net_owner_member or rule:service_api", ""),
]

NETWORK = [
    ("create_network", "rule:admin_or_project_member", "Create a network"),
    ("create_network:shared", "rule:admin_only", ""),
    ("create_network:router:external", "rule:admin_only", ""),
    ("create_network:provider:network_type", "rule:admin_only", ""),
    ("create_network:provider:physical_network", "rule:admin_only", ""),
    ("create_network:provider:segmentation_id", "rule:admin_only", ""),
    ("get_network", "rule:admin_or_project_reader or rule:service_api or rule:shared or rule:external",
     "See a network"),
    ("get_network:provider:network_type", "rule:admin_or_service", ""),
    ("get_network:provider:physical_network", "rule:admin_or_service", ""),
    ("get_network:provider:segmentation_id", "rule:admin_or_service", ""),
    ("update_network", "rule:admin_or_project_member", "Change a network"),
    ("update_network:shared", "rule:admin_only", ""),
    ("update_network:router:external", "rule:admin_only", ""),
    ("update_network:provider:network_type", "rule:admin_only", ""),
    ("update_network:provider:physical_network", "rule:admin_only", ""),
    ("update_network:provider:segmentation_id", "rule:admin_only", ""),
    ("delete_network", "rule:admin_or_project_member", "Delete a network"),
]

SUBNET = [
    ("create_subnet", "rule:admin_or_net_owner_member", "Create a subnet (on one's own network)"),
    ("get_subnet", "rule:admin_or_project_reader or rule:net_owner_reader or rule:shared or "
                   "rule:service_api", "See a subnet"),
    ("update_subnet", "rule:admin_or_net_owner_member", ""),
    ("delete_subnet", "rule:admin_or_net_owner_member", ""),
]

SUBNETPOOL = [
    ("create_subnetpool", "rule:admin_or_project_member", "Create a subnet pool"),
    ("create_subnetpool:shared", "rule:admin_only", ""),
    ("get_subnetpool", "rule:admin_or_project_reader or rule:shared", "See a subnet pool"),
    ("update_subnetpool", "rule:admin_or_project_member", ""),
    ("delete_subnetpool", "rule:admin_or_project_member", ""),
]

_PORT_ATTRS = ("device_owner", "mac_address", "fixed_ips:ip_address", "fixed_ips:subnet_id",
               "port_security_enabled", "allowed_address_pairs", "binding:host_id", "binding:profile")
_PORT_ATTR_RULE = {
    "device_owner": "not rule:network_device or rule:admin_net_owner_member_or_service",
    "mac_address": "rule:admin_net_owner_member_or_service",
    "fixed_ips:ip_address": "rule:admin_net_owner_member_or_service",
    "fixed_ips:subnet_id": "rule:admin_net_owner_member_or_service or rule:shared",
    "port_security_enabled": "rule:admin_net_owner_member_or_service",
    "allowed_address_pairs": "rule:admin_or_net_owner_member",
    "binding:host_id": "rule:admin_or_service",
    "binding:profile": "rule:admin_or_service",
}
PORT = [
    ("create_port", "rule:admin_or_project_member or rule:net_owner_member or rule:service_api",
     "Create a port"),
    *[(f"create_port:{a}", _PORT_ATTR_RULE[a], "") for a in _PORT_ATTRS],
    ("get_port", "rule:admin_or_project_reader or rule:net_owner_reader or rule:service_api",
     "See a port"),
    ("get_port:binding:vif_type", "rule:admin_or_service", ""),
    ("get_port:binding:vif_details", "rule:admin_or_service", ""),
    ("get_port:binding:host_id", "rule:admin_or_service", ""),
    ("get_port:binding:profile", "rule:admin_or_service", ""),
    ("update_port", "rule:admin_or_project_member or rule:net_owner_member or rule:service_api",
     "Change a port"),
    *[(f"update_port:{a}", _PORT_ATTR_RULE[a], "") for a in _PORT_ATTRS],
    ("delete_port", "rule:admin_or_project_member or rule:net_owner_member or rule:service_api",
     "Delete a port"),
    # binding-extended: Nova's live migration (a service) and admins
    ("create_port_binding", "rule:admin_or_service", "Add a binding for another host"),
    ("get_port_binding", "rule:admin_or_service", ""),
    ("update_port_binding", "rule:admin_or_service", ""),
    ("delete_port_binding", "rule:admin_or_service", ""),
    ("activate", "rule:admin_or_service", "Make a port's binding for a host its active one"),
]

ROUTER = [
    ("create_router", "rule:admin_or_project_member", "Create a router"),
    ("create_router:external_gateway_info", "rule:admin_or_project_member", ""),
    ("create_router:external_gateway_info:enable_snat", "rule:admin_only", ""),
    ("create_router:external_gateway_info:external_fixed_ips", "rule:admin_only", ""),
    ("get_router", "rule:admin_or_project_reader", "See a router"),
    ("update_router", "rule:admin_or_project_member", "Change a router"),
    ("update_router:external_gateway_info", "rule:admin_or_project_member", ""),
    ("update_router:external_gateway_info:enable_snat", "rule:admin_only", ""),
    ("update_router:external_gateway_info:external_fixed_ips", "rule:admin_only", ""),
    ("delete_router", "rule:admin_or_project_member", "Delete a router"),
    ("add_router_interface", "rule:admin_or_project_member", "Attach a subnet or port"),
    ("remove_router_interface", "rule:admin_or_project_member", "Detach a subnet or port"),
]

SECURITY_GROUP = [
    ("create_security_group", "rule:admin_or_project_member", ""),
    ("get_security_group", "rule:admin_or_project_reader", ""),
    ("update_security_group", "rule:admin_or_project_member", ""),
    ("delete_security_group", "rule:admin_or_project_member", ""),
    ("create_security_group_rule", "rule:context_is_admin or (role:member and rule:sg_owner)", ""),
    ("get_security_group_rule", "rule:admin_or_project_reader or (role:reader and rule:sg_owner)", ""),
    ("delete_security_group_rule", "rule:context_is_admin or (role:member and rule:sg_owner)", ""),
]

FLOATINGIP = [
    ("create_floatingip", "rule:admin_or_project_member", "Create a floating IP"),
    ("create_floatingip:floating_ip_address", "rule:admin_only", ""),
    ("get_floatingip", "rule:admin_or_project_reader", "See a floating IP"),
    ("update_floatingip", "rule:admin_or_project_member", "Associate or disassociate it"),
    ("delete_floatingip", "rule:admin_or_project_member", "Delete a floating IP"),
]

ALCOR = [
    ("create_node", "rule:admin_only", "Register a compute host"),
    ("get_node", "rule:admin_only", ""),
    ("update_node", "rule:admin_only", ""),
    ("delete_node", "rule:admin_only", ""),
    ("get_changes", "rule:admin_only", "Read the change log"),
    ("get_topology", "rule:admin_only", "The topology page and goal-state summaries"),
    ("get_southbound", "rule:admin_only", ""),
    ("get_agent_flows", "rule:admin_only", ""),
    ("get_agent", "rule:admin_only", "Neutron's agents: one per node's agent, one L3 agent per gateway node"),
    ("update_agent", "rule:admin_only", "An agent's description; an L3 agent's admin_state_up"),
    ("delete_agent", "rule:admin_only", "An Open vSwitch agent: its node"),
    ("get_zeta", "rule:admin_only", ""),
    ("get_nova", "rule:admin_only", "What the Nova plugin derived, delivered and holds"),
    ("get_quotas", "rule:admin_only", "List the projects with limits of their own"),
    ("get_quota", "rule:context_is_admin or rule:project_reader", "A project's limits"),
    ("update_quota", "rule:admin_only", ""),
    ("delete_quota", "rule:admin_only", ""),
    ("create_gateway", "rule:admin_or_project_member", "A network's Zeta gateway"),
    ("get_gateway", "rule:admin_or_project_reader", ""),
    ("update_gateway", "rule:admin_or_project_member", ""),
    ("delete_gateway", "rule:admin_or_project_member", ""),
]



def _tag_rules(resources: list[tuple[str, str]], table: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Neutron's tag rules (`get_networks_tags`, `create_…` for one tag, `update_…` for all of
    them, `delete_…`): who sees a resource sees its tags, who may change it may change them."""
    rule = {n: c for n, c, _ in table}
    out = []
    for name, collection in resources:
        out.append((f"get_{collection}_tags", rule[f"get_{name}"], ""))
        for verb in ("create", "update", "delete"):
            out.append((f"{verb}_{collection}_tags", rule[f"update_{name}"], ""))
    return out


TAGS = _tag_rules([("network", "networks"), ("subnet", "subnets"), ("port", "ports"),
                   ("router", "routers"), ("security_group", "security_groups"),
                   ("subnetpool", "subnetpools")],
                  [*NETWORK, *SUBNET, *SUBNETPOOL, *PORT, *ROUTER, *SECURITY_GROUP])

RULES: list[tuple[str, str, str]] = [*BASE, *NETWORK, *SUBNET, *SUBNETPOOL, *PORT, *ROUTER,
                                     *FLOATINGIP, *SECURITY_GROUP, *TAGS, *ALCOR]
MEMO_MAX = 50_000


class Policy:
    """The table above, with the operator's overrides, evaluated by oslo.policy and memoised (a
    decision depends only on the caller's project and roles and on the few target fields above)."""

    def __init__(self, policy_file: str | None = None) -> None:
        from oslo_config import cfg
        from oslo_policy import policy as oslo

        conf = cfg.ConfigOpts()
        conf([], project="alcor", default_config_files=[])
        if policy_file:
            path = Path(policy_file)
            if not path.is_file():
                raise ConfigError(f"api.policy_file: {policy_file} does not exist")
        self._enforcer = oslo.Enforcer(conf, policy_file=policy_file or None, use_conf=True)
        self._enforcer.register_defaults([oslo.RuleDefault(n, c, description=d) for n, c, d in RULES])
        try:
            self._enforcer.load_rules()
            if policy_file:
                self._enforcer.check_rules(raise_on_violation=True)
        except Exception as e:  # a bad YAML file or rule string: oslo.policy's own message
            raise ConfigError(f"api.policy_file: {e}") from None
        unknown = sorted(set(self._enforcer.file_rules) - {n for n, _, _ in RULES})
        if unknown:
            raise ConfigError(f"api.policy_file: unknown rule {unknown[0]!r} (see alcor/api/policy.py)")
        self._enforcer.use_conf = False  # loaded once: no file stat on every decision
        self.names = frozenset(n for n, _, _ in RULES)
        self._memo: OrderedDict[tuple[Any, ...], bool] = OrderedDict()

    def check(self, action: str, target: Mapping[str, Any], ctx: Context) -> bool:
        # The key is the caller (a Context compares by project, user and roles) and the target
        # as given: its values are strings and booleans, each builder lists the same fields in
        # the same order, so this is as exact as the sorted text and ~3x cheaper (a create asks
        # about ten times).
        key = (action, ctx, tuple(target.items()))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        creds = {"project_id": ctx.project_id, "user_id": ctx.user_id, "roles": sorted(ctx.roles),
                 "service_roles": sorted(ctx.service_roles)}
        answer = bool(self._enforcer.enforce(action, {k: str(v) for k, v in target.items()}, creds))
        self._memo[key] = answer
        if len(self._memo) > MEMO_MAX:
            self._memo.popitem(last=False)
        return answer

    def is_admin(self, ctx: Context) -> bool:
        return self.check("context_is_admin", {}, ctx)

    def has(self, action: str) -> bool:
        return action in self.names


def enforce(ctx: Context, action: str, target: Mapping[str, Any] | None = None) -> None:
    """403 `(rule:<action>) is disallowed by policy` unless the policy allows it."""
    if not ctx.allowed(action, target):
        raise Forbidden(f"({'rule:' + action}) is disallowed by policy")
