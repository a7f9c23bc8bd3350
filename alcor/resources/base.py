"""What every resource manager shares: scoped reads, and writes that carry their change-log row.

A manager owns one resource type: its rows, its in-memory indexes and its rules. It writes only inside
`store.transaction()` and always through `insert`/`replace`/`remove` here, so the row and its change-log
entry commit together and `revision_number`/`updated_at` move as Neutron's do.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from alcor.context import Context
from alcor.db.backends import StoreModule
from alcor.db.changelog import Change
from alcor.db.store import Store, Tx
from alcor.errors import BadRequest, NotFound, PreconditionFailed, invalid_input, not_found, policy
from alcor.policy import enforce
from alcor.resources import query as q
from alcor.resources.quotas import Quotas
from alcor.resources.schema import Resource, check_create, check_update, tenant_of

if TYPE_CHECKING:
    from alcor.kernel import Kernel
    from alcor.resources.floatingips import FloatingIps
    from alcor.resources.networks import Networks
    from alcor.resources.nodes import Nodes
    from alcor.resources.ports import Ports
    from alcor.resources.routers import Routers
    from alcor.resources.security_groups import SecurityGroupRules, SecurityGroups
    from alcor.resources.subnetpools import SubnetPools
    from alcor.resources.subnets import Subnets

P = TypeVar("P")


# A project id no caller has: the target of "another project's resource" in policy decisions.
OTHER = "\x00another-project"


def now() -> str:
    return _stamp(int(time.time()))


@functools.lru_cache(maxsize=1)
def _stamp(second: int) -> str:
    """A second's timestamp as Neutron writes it (formatted once per second, not per write)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def new_id() -> str:
    return str(uuid.uuid4())


def dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


class _Peer(Generic[P]):
    """One peer manager: found by its module name (the attribute's) and checked to be `cls`."""

    def __init__(self, cls: str) -> None:
        self.cls = cls

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, peers: Peers, owner: type | None = None) -> P:
        found = peers.kernel.named(self.name)
        if type(found).__name__ != self.cls:
            raise TypeError(f"module {self.name!r} is a {type(found).__name__}, not a {self.cls}")
        return cast(P, found)


class Peers:
    """The other resource managers, typed, so mypy checks every call one makes on another.

    Neutron's rules bind them to each other (a port needs its network, a network with ports
    cannot go, a subnet's gateway may be a router's interface), so they cannot import each
    other's classes without a cycle; each is found by its module name at call time, and checked
    to be of the class its accessor promises.
    """

    networks: _Peer[Networks] = _Peer("Networks")
    subnets: _Peer[Subnets] = _Peer("Subnets")
    subnetpools: _Peer[SubnetPools] = _Peer("SubnetPools")
    ports: _Peer[Ports] = _Peer("Ports")
    routers: _Peer[Routers] = _Peer("Routers")
    nodes: _Peer[Nodes] = _Peer("Nodes")
    security_groups: _Peer[SecurityGroups] = _Peer("SecurityGroups")
    security_group_rules: _Peer[SecurityGroupRules] = _Peer("SecurityGroupRules")
    floatingips: _Peer[FloatingIps] = _Peer("FloatingIps")

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel


class Manager:
    """Base of the resource managers (each is also a kernel module)."""

    res: Resource
    type: str                     # change-log type: network, subnet, port, …
    requires: tuple[str, ...] = ("store",)
    admin_only_create = False     # e.g. nodes
    # Filters that are not attributes of the body (Neutron's hidden filters, e.g. a subnet's
    # `shared`, which is its network's): the manager turns them into SQL (`extra_filter_sql`).
    extra_filters: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.name = self.res.collection
        self.store: Store = None  # type: ignore[assignment]
        self.kernel: Kernel = None  # type: ignore[assignment]
        self.peers: Peers = None  # type: ignore[assignment]

    async def start(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.peers = Peers(kernel)
        self.store = kernel.get(StoreModule).store
        await self.load()
        # On a shared store (PostgreSQL) other controllers write too: their changes reach the
        # indexes through `followed`, in rev order, before any transaction of ours checks them.
        self.store.follow(self._on_change)
        self.store.on_reload(self.reload)

    async def stop(self) -> None:
        pass

    async def load(self) -> None:
        """Rebuild in-memory indexes from the store (override where a manager keeps any)."""

    def reset(self) -> None:
        """Forget the in-memory indexes (before `load` builds them again)."""

    async def reload(self) -> None:
        self.reset()
        await self.load()

    def _on_change(self, change: Change) -> None:
        if change.type == self.type:
            self.followed(change)

    def followed(self, change: Change) -> None:
        """Another controller committed this change of our type: bring the indexes along.
        Applying one the indexes already show must be harmless (see PgStore._reload)."""

    # Reads -------------------------------------------------------------------------------------
    #
    # What a caller sees is what the policy's get_<resource> rule says (alcor/api/policy.py). A rule
    # sees only a few fields of its target (`target`), so a list is scoped in SQL from the decisions
    # for each class of rows (`scope`), never row by row.

    def target(self, body: dict[str, Any]) -> dict[str, Any]:
        """What the policy rules see of a resource."""
        project = body.get("project_id") or ""
        return {"project_id": project, "tenant_id": project}

    def scope(self, ctx: Context, sql: q.SQL) -> None:
        """Restrict to what the caller may see: its own project's rows, or every row."""
        action = f"get_{self.res.name}"
        if ctx.allowed(action, {"project_id": OTHER, "tenant_id": OTHER}):
            return
        if ctx.allowed(action, {"project_id": ctx.project_id, "tenant_id": ctx.project_id}):
            sql.add("project_id = ?", ctx.project_id)
        else:
            sql.add("FALSE")

    def visible(self, ctx: Context, body: dict[str, Any]) -> bool:
        return ctx.allowed(f"get_{self.res.name}", self.target(body))

    def hidden_fields(self, ctx: Context, body: dict[str, Any]) -> list[str]:
        """Attributes of this body the caller may not read (get_<resource>:<attr> rules)."""
        if not self.field_rules:
            return []
        t = self.target(body)
        return [a for a in self.field_rules if not ctx.allowed(f"get_{self.res.name}:{a}", t)]

    def sees_all_fields(self, ctx: Context) -> bool:
        """True when no row of a list needs attributes taken out for this caller (checked over every
        class of target, memoised): the list is then served from the stored text as is."""
        if not self.field_rules:
            return True
        return all(ctx.allowed(f"get_{self.res.name}:{a}", t)
                   for t in self.target_classes(ctx) for a in self.field_rules)

    def target_classes(self, ctx: Context) -> list[dict[str, Any]]:
        """One target per combination of the target fields, relative to the caller."""
        own, other = ctx.project_id, OTHER
        return [{"project_id": p, "tenant_id": p} for p in (own, other)]

    # get_<resource>:<attr> rules of this resource (attributes some callers may not read).
    field_rules: tuple[str, ...] = ()

    async def fetch(self, id: str, tx: Tx | None = None) -> dict[str, Any] | None:
        sql = "SELECT body FROM resources WHERE type = ? AND id = ?"
        row = await (tx.fetchone(sql, (self.type, id)) if tx else self.store.fetchone(sql, (self.type, id)))
        return json.loads(row[0]) if row else None

    async def get(self, ctx: Context, id: str, tx: Tx | None = None) -> dict[str, Any]:
        body = await self.fetch(id, tx)
        if body is None or not self.visible(ctx, body):
            raise not_found(self.res.neutron_name, id)
        return body

    async def list_raw(self, ctx: Context, lq: q.ListQuery) -> tuple[list[str], bool]:
        """Stored JSON bodies (text) in order, and whether a full page was returned."""
        sql = q.SQL()
        sql.add("type = ?", self.type)
        self.scope(ctx, sql)
        extra = {k: lq.filters.pop(k) for k in list(lq.filters) if k in self.extra_filters}
        if extra:
            self.extra_filter_sql(extra, sql)
        q.filter_sql(self.res, lq, sql, self.store.dialect)
        cols, order = q.order_sql(self.res, lq, self.store.dialect)
        if lq.marker:
            marker = await self.fetch(lq.marker)
            if marker is None or not self.visible(ctx, marker):
                raise not_found(self.res.neutron_name, lq.marker)
            q.marker_sql(cols, marker, self.res, lq, sql, self.store.dialect)
        text = f"SELECT body FROM resources WHERE {' AND '.join(sql.where)} ORDER BY {order}"
        if lq.limit:
            text += f" LIMIT {int(lq.limit)}"
        rows = await self.store.fetchall(text, sql.params)
        bodies = [r[0] for r in rows]
        if lq.page_reverse:
            bodies.reverse()
        return bodies, bool(lq.limit) and len(bodies) == lq.limit

    def extra_filter_sql(self, filters: dict[str, list[str]], sql: q.SQL) -> None:
        """SQL for the `extra_filters` given (raw query-string values)."""
        raise NotImplementedError

    async def list_all(self, ctx: Context, lq: q.ListQuery | None = None) -> list[dict[str, Any]]:
        bodies, _ = await self.list_raw(ctx, lq or q.ListQuery())
        return [json.loads(b) for b in bodies]

    # Writes ------------------------------------------------------------------------------------

    def vpc_of(self, body: dict[str, Any]) -> str | None:
        return body.get("network_id")

    def parent_of(self, body: dict[str, Any]) -> str | None:
        return body.get(self.res.parent_field) if self.res.parent_field else None

    def new_body(self, ctx: Context, given: dict[str, Any]) -> dict[str, Any]:
        """Standard attributes for a new resource: id, project, revision 1, timestamps."""
        project = tenant_of(self.res, given, ctx.project_id, ctx.is_admin)
        ts = now()
        body: dict[str, Any] = {self.res.id_field: new_id()}
        body.update(given)
        body.update(project_id=project, tenant_id=project, revision_number=1, created_at=ts, updated_at=ts)
        return body

    async def insert(self, tx: Tx, body: dict[str, Any]) -> None:
        id = body[self.res.id_field]
        text = dumps(body)
        await tx.insert("resources(type, id, project_id, parent_id, body)",
                        [(self.type, id, body.get("project_id"), self.parent_of(body), text)])
        tx.record(self.type, id, "create", body, project_id=body.get("project_id"),
                  vpc_id=self.vpc_of(body), revision_number=body.get("revision_number"), text=text)

    async def replace(self, tx: Tx, body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """Apply changes to a stored body: revision_number + 1, updated_at now, one change-log row."""
        new = dict(body)
        new.update(changes)
        new["revision_number"] = body.get("revision_number", 0) + 1
        new["updated_at"] = now()
        id = new[self.res.id_field]
        text = dumps(new)
        await tx.execute(
            "UPDATE resources SET body = ?, parent_id = ?, project_id = ? WHERE type = ? AND id = ?",
            (text, self.parent_of(new), new.get("project_id"), self.type, id),
        )
        tx.record(self.type, id, "update", new, project_id=new.get("project_id"),
                  vpc_id=self.vpc_of(new), revision_number=new["revision_number"], text=text)
        return new

    async def remove(self, tx: Tx, body: dict[str, Any]) -> None:
        id = body[self.res.id_field]
        await tx.execute("DELETE FROM resources WHERE type = ? AND id = ?", (self.type, id))
        tx.record(self.type, id, "delete", None, project_id=body.get("project_id"),
                  vpc_id=self.vpc_of(body), revision_number=body.get("revision_number", 0) + 1)

    # The API's entry points (overridden per resource) -------------------------------------------

    def check_create(self, ctx: Context, body: Any) -> dict[str, Any]:
        if self.admin_only_create and not ctx.is_admin:
            raise policy(f"create_{self.res.name}")
        # Who may set which attribute is the policy's (create_<resource>:<attr>), checked in
        # create_many once the target is known; without a policy (internal callers), admin_only.
        return check_create(self.res, body, is_admin=ctx.is_admin or ctx.policy is not None)

    def check_update(self, ctx: Context, body: Any) -> dict[str, Any]:
        return check_update(self.res, body, is_admin=ctx.is_admin or ctx.policy is not None)

    async def create_target(self, ctx: Context, given: dict[str, Any]) -> dict[str, Any]:
        """The policy target of a resource about to be created from `given` (checked attributes)."""
        project = given.get("project_id") or given.get("tenant_id") or ctx.project_id
        return self.target({**given, "project_id": project})

    def attr_actions(self, given: dict[str, Any]) -> list[str]:
        """The `<attr>` suffixes of the per-attribute rules a request's body touches."""
        return [k for k in given if k in self.res.attrs]

    def enforce_write(self, ctx: Context, action: str, target: dict[str, Any],
                      given: dict[str, Any] | None = None) -> None:
        """The rule for the action, then one per attribute the body sets (where the policy has one)."""
        enforce(ctx, action, target)
        if given and ctx.policy is not None:
            for attr in self.attr_actions(given):
                name = f"{action}:{attr}"
                if ctx.policy.has(name):
                    enforce(ctx, name, target)

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        body = self.new_body(ctx, given)
        await self.insert(tx, body)
        return body

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        return await self.replace(tx, current, changes)

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        await self.remove(tx, current)

    # Orchestration: one transaction per request ---------------------------------------------

    async def create_many(self, ctx: Context, bodies: list[Any]) -> list[dict[str, Any]]:
        """Create one or many (bulk) atomically: all commit or none does."""
        checked = [self.check_create(ctx, b) for b in bodies]
        action = f"create_{self.res.name}"
        for b, c in zip(bodies, checked, strict=True):
            tenant_of(self.res, dict(c), ctx.project_id, ctx.is_admin)  # its 400 before any 403
            try:
                target = await self.create_target(ctx, c)
            except NotFound:
                # The target is looked up in the in-memory indexes, outside the transaction. On
                # a shared store they may not have followed yet what another controller just
                # committed (a client that created the network there, then the port here):
                # bring them up to the last committed rev, then look again.
                if not await self.store.catch_up():
                    raise
                target = await self.create_target(ctx, c)
            self.enforce_write(ctx, action, target, b)
        async with self.store.transaction() as tx:
            if self.kernel.has(Quotas):
                # Neutron's count: what the project has, plus what this request asks for (a
                # default security group made on the way is not asked for, so it does not count).
                wanted: dict[str, int] = {}
                for c in checked:
                    p = c.get("project_id") or c.get("tenant_id") or ctx.project_id
                    wanted[p] = wanted.get(p, 0) + 1
                await self.kernel.get(Quotas).check(tx, self.res.name, self.type, wanted)
            return [await self.create(ctx, c, tx) for c in checked]

    async def update_one(self, ctx: Context, id: str, body: Any, if_match: int | None) -> dict[str, Any]:
        changes = self.check_update(ctx, body)
        async with self.store.transaction() as tx:
            current = await self.get(ctx, id, tx)
            self.check_write(ctx, f"update_{self.res.name}", current, body)
            check_revision(current, if_match)
            if not changes:
                return current
            return await self.update(ctx, current, changes, tx)

    async def delete_one(self, ctx: Context, id: str, if_match: int | None) -> None:
        async with self.store.transaction() as tx:
            current = await self.get(ctx, id, tx)
            self.check_write(ctx, f"delete_{self.res.name}", current)
            check_revision(current, if_match)
            await self.delete(ctx, current, tx)

    def check_write(self, ctx: Context, action: str, current: dict[str, Any],
                    given: Any = None) -> None:
        """May the caller do `action` to a resource it can see? As Neutron: 403 when it may see it
        but not change it (a shared network), 404 when it may not even see it."""
        target = self.target(current)
        if not ctx.allowed(action, target) and not self.visible(ctx, current):
            raise not_found(self.res.neutron_name, current[self.res.id_field])
        self.enforce_write(ctx, action, target, given if isinstance(given, dict) else None)

    def check_owner_write(self, ctx: Context, current: dict[str, Any]) -> None:
        """The caller may change this resource (404 when it may not see it, 403 otherwise)."""
        self.check_write(ctx, f"update_{self.res.name}", current)

    # Tags (Neutron's standard-attr-tag): part of the resource's body, so a tag change is an update
    # of the resource (revision_number + 1, one change-log row) in its own manager's transaction.

    @property
    def taggable(self) -> bool:
        return "tags" in self.res.attrs

    def tag_action(self, ctx: Context, verb: str) -> str:
        """Neutron's `<verb>_<collection>_tags` rule, or the resource's own rule for a resource
        the policy table has no tag rules for."""
        name = f"{verb}_{self.res.collection}_tags"
        if ctx.policy is None or ctx.policy.has(name):
            return name
        return f"get_{self.res.name}" if verb == "get" else f"update_{self.res.name}"

    async def get_tags(self, ctx: Context, id: str) -> list[str]:
        body = await self.get(ctx, id)
        enforce(ctx, self.tag_action(ctx, "get"), self.target(body))
        return list(body.get("tags") or [])

    async def has_tag(self, ctx: Context, id: str, tag: str) -> None:
        if tag not in await self.get_tags(ctx, id):
            raise tag_not_found(tag, self.res.name, id)

    async def change_tags(self, ctx: Context, id: str, verb: str, tags: list[str] | None = None,
                          add: str | None = None, drop: str | None = None) -> list[str]:
        """Replace the tags (`tags`), add one (`add`), remove one (`drop`) or all (none given)."""
        async with self.store.transaction() as tx:
            current = await self.get(ctx, id, tx)
            self.check_write(ctx, self.tag_action(ctx, verb), current)
            old = list(current.get("tags") or [])
            if tags is not None:
                new = sorted(tags)
            elif add is not None:
                new = sorted({*old, add})
            elif drop is not None:
                if drop not in old:
                    raise tag_not_found(drop, self.res.name, id)
                new = [t for t in old if t != drop]
            else:
                new = []
            if new != old:
                await self.replace(tx, current, {"tags": new})
            return new


MAX_TAG_LEN = 255


def tag(value: Any) -> str:
    """One tag (Neutron: a string of at most 255 characters)."""
    if not isinstance(value, str) or not value:
        raise invalid_input(f"'{value}' is not a valid tag")
    if len(value) > MAX_TAG_LEN:
        raise invalid_input(f"'{value}' exceeds maximum length of {MAX_TAG_LEN}")
    return value


def tags_body(body: Any) -> list[str]:
    """The body of `PUT …/tags`: `{"tags": [unique tags]}`."""
    if not isinstance(body, dict) or set(body) != {"tags"} or not isinstance(body["tags"], list):
        raise invalid_input("Invalid tags body")
    tags = [tag(t) for t in body["tags"]]
    if len(set(tags)) != len(tags):
        raise invalid_input(f"Duplicate items in the list: '{', '.join(tags)}'")
    return tags


def tag_not_found(tag: str, resource: str, id: str) -> NotFound:
    return NotFound(f"Tag {tag} could not be found for {resource} {id}.", type="TagNotFound")


def check_revision(current: dict[str, Any], if_match: int | None) -> None:
    if if_match is not None and current.get("revision_number") != if_match:
        raise PreconditionFailed(
            f"Constrained to {if_match}, but current revision is {current.get('revision_number')}"
        )


def parse_if_match(header: str | None) -> int | None:
    """`If-Match: revision_number=N` (Neutron's revision-if-match extension); other ETags are ignored."""
    if not header:
        return None
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "revision_number":
            try:
                return int(value)
            except ValueError:
                raise BadRequest(f"Invalid If-Match value {header!r}: revision_number must be an integer") from None
    return None
