"""Security groups and their rules, with a default group per project and Neutron's rule validation.

Rules are rows of their own (the `/security-group-rules` API) and also part of their group's body; a
rule's create or delete is recorded in the change log as an update of its group, which is what a node
needs to reprogram.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from alcor.context import Context
from alcor.db.changelog import Change
from alcor.db.store import Tx
from alcor.errors import BadRequest, Conflict, NeutronError, not_found
from alcor.resources import query as q
from alcor.resources.base import OTHER, Manager, new_id, now
from alcor.resources.quotas import Quotas
from alcor.resources.schema import (
    Attr,
    Invalid,
    Resource,
    any_dict,
    boolean,
    cidr,
    described,
    integer,
    list_of,
    nullable,
    one_of,
    standard,
    string,
    uuid_str,
)
from alcor.wire import IP_PROTOCOLS

SECURITY_GROUP = standard(Resource("security_group", "security_groups", "SecurityGroup")).add(
    Attr("security_group_rules", list_of(any_dict), post=False, kind="array", filterable=False),
    Attr("stateful", boolean, default=True, put=True, kind="boolean"),
    Attr("shared", boolean, post=False, kind="boolean"),
    Attr("tags", list_of(string()), post=False, kind="array"),
)

PROTOCOLS = IP_PROTOCOLS
PORT_PROTOCOLS = {6, 17, 33, 132, 136}
ICMP = {1, 58}


def protocol(value: Any) -> str | None:
    if value is None or value in ("any", ""):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        v = value.lower()
        if v in PROTOCOLS:
            return v
        if v.isdigit() and 0 <= int(v) <= 255:
            return v
    # Neutron's own error type and text, not the generic "Invalid input for protocol".
    raise BadRequest(f"Security group rule protocol {value} not supported. Only protocol values "
                     f"{[None, *sorted(PROTOCOLS)]} and integer representations [0 to 255] are "
                     f"supported.", type="SecurityGroupRuleInvalidProtocol")


def port_value(value: Any) -> int | None:
    """A port_range_min/max: an integer 0..65535 (given as a number or a numeric string)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    raise BadRequest(f"Invalid value for port {value}", type="SecurityGroupInvalidPortValue")


described(port_value, {"type": "integer", "minimum": 0, "maximum": 65535, "nullable": True})


def ethertype(value: Any) -> str:
    if isinstance(value, str):
        for e in ("IPv4", "IPv6"):
            if value.lower() == e.lower():
                return e
    raise BadRequest(f"Security group rule for ethertype '{value}' not supported. Allowed values "
                     f"are ['IPv4', 'IPv6'].", type="SecurityGroupRuleInvalidEtherType")


described(ethertype, {"type": "string", "enum": ["IPv4", "IPv6"]})


def ip_prefix(value: Any) -> str | None:
    """remote_ip_prefix: a CIDR, or an address meaning its host prefix (10.0.0.1 → 10.0.0.1/32)."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and "/" not in value:
        try:
            return str(ipaddress.ip_network(value))
        except ValueError:
            pass
    try:
        return cidr(value)
    except Invalid:
        raise BadRequest(f"'{value}' is not a valid IP subnet.", type="InvalidCIDR") from None


described(ip_prefix, {"type": "string", "format": "cidr", "nullable": True})


def group_ref(value: Any) -> str | None:
    """A security group named by id: any string; one that names no group is a 404 (not a 400)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 255:
        raise Invalid(f"'{value}' is not a valid string")
    return value


described(group_ref, {"type": "string", "maxLength": 255, "nullable": True})


RULE = Resource("security_group_rule", "security_group_rules", "SecurityGroupRule",
                parent_field="security_group_id").add(
    Attr("id", uuid_str, post=False),
    Attr("project_id", string(255)),
    Attr("tenant_id", string(255)),
    Attr("security_group_id", string(255), optional=False),
    Attr("direction", one_of("ingress", "egress"), optional=False),
    Attr("ethertype", ethertype, default="IPv4"),
    Attr("protocol", protocol, default=None),
    Attr("port_range_min", port_value, default=None, kind="integer"),
    Attr("port_range_max", port_value, default=None, kind="integer"),
    Attr("remote_ip_prefix", ip_prefix, default=None),
    Attr("remote_group_id", group_ref, default=None),
    Attr("remote_address_group_id", nullable(uuid_str), default=None),
    Attr("normalized_cidr", nullable(string()), post=False),
    Attr("description", string(255), default=""),
    Attr("belongs_to_default_sg", boolean, post=False, kind="boolean"),
    Attr("revision_number", integer(), post=False, kind="integer"),
    Attr("created_at", string(), post=False),
    Attr("updated_at", string(), post=False),
)


def _proto_number(p: str | None) -> int | None:
    if p is None:
        return None
    return PROTOCOLS.get(p, int(p) if p.isdigit() else None)


V6_ONLY = {"ipv6-encap", "ipv6-frag", "ipv6-icmp", "icmpv6", "ipv6-nonxt", "ipv6-opts", "ipv6-route",
           "41", "44", "58", "59", "60", "43"}


def canonical_rule(r: dict[str, Any]) -> None:
    """Neutron's normal forms, before validation: ICMP under IPv6 is ipv6-icmp, and the whole port
    range 1-65535 is no range at all."""
    if r["ethertype"] == "IPv6":
        if r["protocol"] in ("icmp", "icmpv6"):
            r["protocol"] = "ipv6-icmp"
        elif r["protocol"] == "1":
            r["protocol"] = "58"
    if r["port_range_min"] == 1 and r["port_range_max"] == 65535:
        r["port_range_min"] = r["port_range_max"] = None


def check_rule(r: dict[str, Any]) -> None:
    """Neutron's checks of one rule's fields (not of its group), in Neutron's order and words."""
    canonical_rule(r)
    num = _proto_number(r["protocol"])
    lo, hi = r["port_range_min"], r["port_range_max"]
    if lo is not None or hi is not None:
        if r["protocol"] is None:
            raise BadRequest("Must also specify protocol if port range is given.",
                             type="SecurityGroupProtocolRequiredWithPorts")
        if num in PORT_PROTOCOLS:
            if lo == 0 or hi == 0:
                raise BadRequest("Invalid value for port 0", type="SecurityGroupInvalidPortValue")
            if lo is None or hi is None or lo > hi:
                raise BadRequest("For TCP/UDP protocols, port_range_min must be <= port_range_max",
                                 type="SecurityGroupInvalidPortRange")
        elif num in ICMP:
            for attr, name, v in (("port_range_min", "type", lo), ("port_range_max", "code", hi)):
                if v is not None and not 0 <= v <= 255:
                    raise BadRequest(f"Invalid value for ICMP {name} ({attr}) {v}. It must be 0 to 255.",
                                     type="SecurityGroupInvalidIcmpValue")
            if lo is None:
                raise BadRequest(f"ICMP code (port-range-max) {hi} is provided but ICMP type "
                                 f"(port-range-min) is missing.", type="SecurityGroupMissingIcmpType")
        else:
            raise BadRequest(f"Ports cannot be specified for protocol {num}. Ports are only supported "
                             f"for DCCP, SCTP, TCP, UDP, UDPLITE.", type="SecurityGroupInvalidProtocolForPort")
    if r["remote_ip_prefix"]:
        version = ipaddress.ip_network(r["remote_ip_prefix"]).version
        if f"IPv{version}" != r["ethertype"]:
            raise BadRequest(f"Conflicting value ethertype {r['ethertype']} for CIDR "
                             f"{r['remote_ip_prefix']}", type="SecurityGroupRuleParameterConflict")
    if r["protocol"] in V6_ONLY and r["ethertype"] == "IPv4":
        raise BadRequest(f"Invalid ethertype {r['ethertype']} for protocol {r['protocol']}.",
                         type="SecurityGroupEthertypeConflictWithProtocol")
    remotes = [k for k in ("remote_ip_prefix", "remote_group_id", "remote_address_group_id") if r.get(k)]
    if len(remotes) > 1:
        raise BadRequest("Only one of remote_ip_prefix or remote_group_id or remote_address_group_id "
                         "may be provided.", type="SecurityGroupMultipleRemoteEntites")


def check_not_default(name: str) -> None:
    """Only the project's own default group is called default (in any case): a second one would be
    ambiguous, so Neutron refuses the name on create and on rename."""
    if name.lower() == "default":
        raise Conflict("Default security group already exists.", type="SecurityGroupDefaultAlreadyExists")


def rule_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two rules the same rule (protocol by number, prefix canonical)."""
    num = _proto_number(r["protocol"])
    return (r["direction"], r["ethertype"], num, r["port_range_min"], r["port_range_max"],
            r.get("normalized_cidr") or r["remote_ip_prefix"], r["remote_group_id"],
            r.get("remote_address_group_id"))


class SecurityGroups(Manager):
    res = SECURITY_GROUP
    type = "security_group"

    def __init__(self) -> None:
        super().__init__()
        # Each project's default group: every port create needs it, and asking the database
        # inside the transaction cost a round trip while the writers' lock is held.
        self.defaults: dict[str, str] = {}

    async def load(self) -> None:
        rows = await self.store.fetchall(
            "SELECT project_id, id FROM resources WHERE type = 'security_group' AND "
            f"{self.store.dialect.text('name')} = 'default'")
        for project_id, sg_id in rows:
            self.defaults.setdefault(project_id, sg_id)

    def reset(self) -> None:
        self.defaults.clear()

    def followed(self, change: Change) -> None:
        if change.op == "create" and change.body and change.body.get("name") == "default":
            self.defaults.setdefault(change.body.get("project_id") or "", change.id)
        elif change.op == "delete":
            self._forget_default(change.id)

    def _forget_default(self, sg_id: str) -> None:
        for project_id, known in list(self.defaults.items()):
            if known == sg_id:
                del self.defaults[project_id]

    async def list_raw(self, ctx: Context, lq: q.ListQuery) -> tuple[list[str], bool]:
        await self.ensure_default_looked_at(ctx, lq)
        return await super().list_raw(ctx, lq)

    async def ensure_default_looked_at(self, ctx: Context, lq: q.ListQuery) -> None:
        """Neutron creates a project's default group the first time its groups or rules are
        listed: the caller's project, or for an admin the one its `project_id` filter names (an
        admin listing everything creates none)."""
        named = lq.filters.get("project_id") or lq.filters.get("tenant_id")
        if ctx.is_admin:
            project = str(named[0]) if named else ""
        else:
            project = ctx.project_id
        if project:
            await self.ensure_default(project)

    async def ensure_default(self, project_id: str) -> str:
        row = await self._default_row(project_id, None)
        if row:
            return row
        async with self.store.transaction() as tx:
            return await self.default_for(tx, project_id)

    async def _default_row(self, project_id: str, tx: Tx | None) -> str | None:
        sql = ("SELECT id FROM resources WHERE type = 'security_group' AND project_id = ? AND "
               f"{self.store.dialect.text('name')} = 'default' LIMIT 1")
        row = await (tx.fetchone(sql, (project_id,)) if tx else self.store.fetchone(sql, (project_id,)))
        return row[0] if row else None

    async def default_for(self, tx: Tx, project_id: str) -> str:
        """The project's default group, created (with Neutron's default rules) in tx if missing."""
        known = self.defaults.get(project_id)
        if known:
            return known  # inside the transaction the indexes are current (a shared store too)
        existing = await self._default_row(project_id, tx)
        if existing:
            self.defaults[project_id] = existing
            return existing
        sg_id = new_id()
        ts = now()
        rules = []
        for ethertype in ("IPv4", "IPv6"):
            for direction, remote in (("egress", None), ("ingress", sg_id)):
                rules.append(self._rule_body(project_id, {
                    "security_group_id": sg_id, "direction": direction, "ethertype": ethertype,
                    "protocol": None, "port_range_min": None, "port_range_max": None,
                    "remote_ip_prefix": None, "remote_group_id": remote,
                    "remote_address_group_id": None, "description": "",
                }, default=True))
        body = {
            "id": sg_id, "name": "default", "description": "Default security group",
            "project_id": project_id, "tenant_id": project_id, "security_group_rules": rules,
            "stateful": True, "shared": False, "tags": [], "revision_number": 1,
            "created_at": ts, "updated_at": ts,
        }
        await self.insert(tx, body)
        rules_mgr = self.peers.security_group_rules
        for r in rules:
            await rules_mgr.put_row(tx, r)
        def remember() -> None:
            self.defaults.setdefault(project_id, sg_id)
        tx.after_commit(remember)
        return sg_id

    def _rule_body(self, project_id: str, given: dict[str, Any], default: bool) -> dict[str, Any]:
        ts = now()
        body = {"id": new_id(), **given}
        body.update(project_id=project_id, tenant_id=project_id, revision_number=0,
                    created_at=ts, updated_at=ts, belongs_to_default_sg=default,
                    normalized_cidr=given.get("remote_ip_prefix"))
        return body

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        body = self.new_body(ctx, given)
        check_not_default(body["name"])
        await self.default_for(tx, body["project_id"])
        rules = []
        for ethertype in ("IPv4", "IPv6"):
            rules.append(self._rule_body(body["project_id"], {
                "security_group_id": body["id"], "direction": "egress", "ethertype": ethertype,
                "protocol": None, "port_range_min": None, "port_range_max": None,
                "remote_ip_prefix": None, "remote_group_id": None, "remote_address_group_id": None,
                "description": "",
            }, default=False))
        if self.kernel.has(Quotas):
            # A new group's own egress rules count against the project's rule quota, as in
            # Neutron (a group that could hold none of its rules is refused whole).
            await self.kernel.get(Quotas).check(tx, "security_group_rule", "security_group_rule",
                                                {body["project_id"]: len(rules)})
        body.update(security_group_rules=rules, shared=False, tags=[])
        await self.insert(tx, body)
        rules_mgr = self.peers.security_group_rules
        for r in rules:
            await rules_mgr.put_row(tx, r)
        return body

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        if "name" in changes:
            check_not_default(changes["name"])
            if current["name"] == "default":
                raise Conflict("Updating default security group not allowed.",
                               type="SecurityGroupCannotUpdateDefault")
        if changes.get("stateful", current["stateful"]) != current["stateful"] and \
                await self._in_use(tx, current["id"]):
            # Its ports' connections would change tracking under them (and might end up with
            # stateful and stateless groups at once): Neutron refuses it while the group is used.
            raise NeutronError(f"Security Group {current['id']} in use.", type="SecurityGroupInUse",
                               status=409)
        return await self.replace(tx, current, changes)

    async def _in_use(self, tx: Tx, sg_id: str) -> bool:
        """Whether a port names the group (SQLite or PostgreSQL, by the store's dialect)."""
        d = self.store.dialect
        row = await tx.fetchone(
            f"SELECT 1 FROM resources WHERE type = 'port' AND EXISTS (SELECT 1 FROM "
            f"{d.elements('security_groups')} WHERE {d.element_text()} = ?) LIMIT 1", (sg_id,))
        return row is not None

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        if current["name"] == "default" and not ctx.is_admin:
            raise Conflict("Insufficient rights for removing default security group.",
                           type="SecurityGroupCannotRemoveDefault")
        if await self._in_use(tx, current["id"]):
            raise NeutronError(f"Security Group {current['id']} in use.", type="SecurityGroupInUse",
                               status=409)
        await tx.execute("DELETE FROM resources WHERE type = 'security_group_rule' AND parent_id = ?",
                         (current["id"],))
        await self.remove(tx, current)
        tx.after_commit(lambda: self._forget_default(current["id"]))

    async def check_ids(self, ctx: Context, tx: Tx, ids: list[str], project_id: str,
                        port_id: str = "") -> None:
        """The groups a port asks for exist and are its project's, and are all stateful or all
        stateless (a port's connections are tracked or not)."""
        stateful = set()
        for sg_id in ids:
            body = await self.fetch(sg_id, tx)
            if body is None or not (ctx.is_admin or body["project_id"] == project_id):
                raise not_found("SecurityGroup", sg_id)
            stateful.add(bool(body.get("stateful", True)))
        if len(stateful) > 1:
            raise Conflict("Error Cannot apply both stateful and stateless security groups on the "
                           f"same port at the same time while attempting the operation on port "
                           f"{port_id} while attempting the operation.", type="SecurityGroupConflict")


class SecurityGroupRules(Manager):
    res = RULE
    type = "security_group_rule"
    requires = ("store", "security_groups")

    async def put_row(self, tx: Tx, body: dict[str, Any]) -> None:
        # Written without a change-log row of its own: the group's update carries it.
        await tx.insert("resources(type, id, project_id, parent_id, body)",
                        [(self.type, body["id"], body["project_id"], body["security_group_id"],
                          q.dumps(body))])

    def target(self, body: dict[str, Any]) -> dict[str, Any]:
        # A rule is its group's project's (rules take their group's project).
        project = body.get("project_id") or ""
        return {"project_id": project, "tenant_id": project, "security_group:project_id": project}

    async def create_target(self, ctx: Context, given: dict[str, Any]) -> dict[str, Any]:
        sgs: SecurityGroups = self.peers.security_groups
        sg = await sgs.fetch(given["security_group_id"])
        if sg is None or not sgs.visible(ctx, sg):
            raise not_found("SecurityGroup", given["security_group_id"])
        return self.target(sg)

    async def list_raw(self, ctx: Context, lq: q.ListQuery) -> tuple[list[str], bool]:
        sgs: SecurityGroups = self.peers.security_groups
        await sgs.ensure_default_looked_at(ctx, lq)
        return await super().list_raw(ctx, lq)

    def scope(self, ctx: Context, sql: q.SQL) -> None:
        mine = self.target({"project_id": ctx.project_id})
        if ctx.allowed("get_security_group_rule", self.target({"project_id": OTHER})):
            return
        if ctx.allowed("get_security_group_rule", mine):
            sql.add("project_id = ?", ctx.project_id)
        else:
            sql.add("FALSE")

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        sgs: SecurityGroups = self.peers.security_groups
        sg = await sgs.fetch(given["security_group_id"], tx)
        if sg is None or not sgs.visible(ctx, sg):
            raise not_found("SecurityGroup", given["security_group_id"])
        project = given.pop("project_id", None) or given.pop("tenant_id", None) or sg["project_id"]
        given.pop("tenant_id", None)
        if project != sg["project_id"] and not ctx.is_admin:
            raise BadRequest("Specifying 'project_id' or 'tenant_id' other than the authenticated "
                             "project in request requires admin privileges")
        check_rule(given)
        if given.get("remote_address_group_id"):
            # Address groups are not built (no address-group extension): a rule naming one would
            # be enforced as if it named no remote at all.
            raise BadRequest("Unrecognized attribute(s) 'remote_address_group_id'")
        if given["remote_group_id"]:
            remote = await sgs.fetch(given["remote_group_id"], tx)
            if remote is None or not sgs.visible(ctx, remote):
                raise not_found("SecurityGroup", given["remote_group_id"])
        body = sgs._rule_body(sg["project_id"], given, default=sg["name"] == "default")
        body["revision_number"] = 0
        for existing in sg["security_group_rules"]:
            if rule_key(existing) == rule_key(body):
                raise Conflict(f"Security group rule already exists. Rule id is {existing['id']}.",
                               type="SecurityGroupRuleExists")
        await self.put_row(tx, body)
        await sgs.replace(tx, sg, {"security_group_rules": [*sg["security_group_rules"], body]})
        return body

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        raise BadRequest("Security group rules cannot be updated.")

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        sgs: SecurityGroups = self.peers.security_groups
        sg = await sgs.fetch(current["security_group_id"], tx)
        await tx.execute("DELETE FROM resources WHERE type = ? AND id = ?", (self.type, current["id"]))
        if sg is not None:
            await sgs.replace(tx, sg, {"security_group_rules": [
                r for r in sg["security_group_rules"] if r["id"] != current["id"]]})
