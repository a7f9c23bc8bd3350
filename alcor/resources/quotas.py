"""Quotas (Neutron's `quotas` extension): how many of each resource a project may have.

A project's limits are `[quotas]`'s defaults unless an admin set its own (`PUT
/v2.0/quotas/{project_id}`); those are stored as a `quota` row per project, in the change log like
every write. A create is counted against its project's limit in the transaction that inserts it
(`check`), so the 409 `OverQuota` leaves nothing written; -1 is unlimited.

    PUT /v2.0/quotas/p1 {"quota": {"network": 2}}   → {"quota": {"network": 2, "port": -1, …}}
    GET /v2.0/quotas/p1/details                      → {"quota": {"network": {"limit": 2, "used": 1,
                                                                              "reserved": 0}, …}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from alcor.config import ConfigError
from alcor.db.backends import StoreModule
from alcor.db.changelog import Change
from alcor.db.store import Store, Tx
from alcor.errors import BadRequest, Conflict, invalid_attr
from alcor.resources.schema import Invalid, boolean, integer

if TYPE_CHECKING:
    from alcor.kernel import Kernel

log = structlog.get_logger("alcor.quotas")

TYPE = "quota"
UNLIMITED = -1


@dataclass(frozen=True)
class QuotaConfig:
    """[quotas]: each resource's default limit per project (Neutron's option names); -1 is
    unlimited. Neutron's own defaults are network 100, subnet 100, port 500, router 10,
    floatingip 50, security_group 10, security_group_rule 100."""

    SECTION: ClassVar[str] = "quotas"
    quota_network: int = UNLIMITED
    quota_subnet: int = UNLIMITED
    quota_port: int = UNLIMITED
    quota_router: int = UNLIMITED
    quota_floatingip: int = UNLIMITED
    quota_security_group: int = UNLIMITED
    quota_security_group_rule: int = UNLIMITED

    def check(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < UNLIMITED:
                raise ConfigError(f"quotas.{f.name} must be -1 (unlimited) or more, "
                                  f"got {getattr(self, f.name)}")

    def defaults(self) -> dict[str, int]:
        return {f.name.removeprefix("quota_"): getattr(self, f.name) for f in fields(self)}


_LIMIT = integer(UNLIMITED, 2**31 - 1)


def over_quota(resources: list[str]) -> Conflict:
    return Conflict(f"Quota exceeded for resources: {sorted(resources)}.", type="OverQuota")


class Quotas:
    """Owns the per-project limits; the resource managers ask `check` before they insert."""

    name = "quotas"
    requires = ("store",)

    def __init__(self, settings: QuotaConfig | None = None) -> None:
        self.defaults = (settings or QuotaConfig()).defaults()
        self.projects: dict[str, dict[str, int]] = {}  # project → the limits an admin set
        self.store: Store = None  # type: ignore[assignment]

    async def start(self, kernel: Kernel) -> None:
        self.store = kernel.get(StoreModule).store
        await self.reload()
        self.store.follow(self._followed)
        self.store.on_reload(self.reload)

    async def stop(self) -> None:
        pass

    async def reload(self) -> None:
        rows = await self.store.fetchall("SELECT id, body FROM resources WHERE type = ?", (TYPE,))
        self.projects = {pid: _limits(json.loads(body)) for pid, body in rows}

    def _followed(self, change: Change) -> None:
        # Another controller's change (a shared store): keep the limits current.
        if change.type != TYPE:
            return
        if change.body is None:
            self.projects.pop(change.id, None)
        else:
            self.projects[change.id] = _limits(change.body)

    def _forget(self, project: str) -> None:
        self.projects.pop(project, None)

    def limits(self, project_id: str) -> dict[str, int]:
        return {**self.defaults, **self.projects.get(project_id, {})}

    async def check(self, tx: Tx, resource: str, type: str, wanted: dict[str, int]) -> None:
        """409 OverQuota unless each project may have `wanted[project]` more of `resource`
        (counted in the create's transaction, before its inserts)."""
        if resource not in self.defaults:
            return
        for project, n in wanted.items():
            limit = self.limits(project)[resource]
            if limit == UNLIMITED:
                continue
            used = await _count(tx, type, project)
            if used + n > limit:
                log.info("quota.exceeded", project=project, resource=resource, limit=limit, used=used)
                raise over_quota([resource])

    async def used(self, project: str) -> dict[str, int]:
        types = {"network": "network", "subnet": "subnet", "port": "port", "router": "router",
                 "floatingip": "floatingip", "security_group": "security_group",
                 "security_group_rule": "security_group_rule"}
        rows = await self.store.fetchall(
            "SELECT type, COUNT(*) FROM resources WHERE project_id = ? GROUP BY type", (project,))
        counts = dict(rows)
        return {r: counts.get(t, 0) for r, t in types.items()}

    async def set(self, project: str, given: dict[str, int] | None,
                  check_limit: bool = False) -> dict[str, int]:
        """Set some of a project's limits (merged with those set before), or forget them all.
        `check_limit`: refuse a limit below what the project already has (400)."""
        if check_limit and given:
            used = await self.used(project)
            for r, limit in given.items():
                if limit != UNLIMITED and limit < used.get(r, 0):
                    raise BadRequest(f"Change would make usage less than 0 for the following "
                                     f"resources: {r}: the limit {limit} is below the "
                                     f"{used[r]} in use", type="InvalidQuotaValue")
        async with self.store.transaction() as tx:
            row = await tx.fetchone("SELECT body FROM resources WHERE type = ? AND id = ?", (TYPE, project))
            old = _limits(json.loads(row[0])) if row else {}
            if given is None:
                if row:
                    await tx.execute("DELETE FROM resources WHERE type = ? AND id = ?", (TYPE, project))
                    tx.record(TYPE, project, "delete", None, project_id=project)
                tx.after_commit(lambda: self._forget(project))
                return dict(self.defaults)
            new = {**old, **given}
            body = {**new, "project_id": project}
            text = json.dumps(body, separators=(",", ":"))
            if row:
                await tx.execute("UPDATE resources SET body = ? WHERE type = ? AND id = ?",
                                 (text, TYPE, project))
            else:
                await tx.insert("resources(type, id, project_id, parent_id, body)",
                                [(TYPE, project, project, None, text)])
            tx.record(TYPE, project, "update" if row else "create", body, project_id=project, text=text)
            tx.after_commit(lambda: self.projects.__setitem__(project, new))
        log.info("quota.updated", project=project, **given)
        return {**self.defaults, **new}


async def _count(tx: Tx, type: str, project: str) -> int:
    row = await tx.fetchone("SELECT COUNT(*) FROM resources WHERE type = ? AND project_id = ?",
                            (type, project))
    return int(row[0]) if row else 0


def _limits(body: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in body.items() if k not in ("project_id", "tenant_id")}


def quota_body(body: Any, defaults: dict[str, int]) -> tuple[dict[str, int], bool]:
    """`{"quota": {"network": 10, …}}`: known resources, each a limit of -1 or more."""
    if not isinstance(body, dict) or not isinstance(body.get("quota"), dict) or len(body) != 1:
        raise BadRequest("Unable to find 'quota' in request body")
    given = dict(body["quota"])
    # Neutron's quota-check-limit flags, not stored: `check_limit` refuses a limit below what is
    # in use, `force` sets it anyway (the default).
    flags = {}
    for flag in ("force", "check_limit"):
        if flag in given:
            try:
                flags[flag] = boolean(given.pop(flag))
            except Invalid as e:
                raise invalid_attr(flag, str(e)) from None
    unknown = sorted(k for k in given if k not in defaults)
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    out = {}
    for k, v in given.items():
        try:
            out[k] = _LIMIT(v)
        except Invalid as e:
            raise invalid_attr(k, str(e)) from None
    return out, flags.get("check_limit", False) and not flags.get("force", False)
