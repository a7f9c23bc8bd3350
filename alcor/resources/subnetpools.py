"""Subnet pools (Neutron's subnet_allocation): prefixes that subnets are carved from.

A subnet created with `subnetpool_id` and no `cidr` gets the first free block of `prefixlen`
(or the pool's `default_prefixlen`) in the pool's prefixes; one created with a `cidr` must lie in
them. Either way it may not overlap another subnet of the same pool, on any network, and a
project may hold at most `default_quota` addresses of the pool (IPv4; IPv6 counts /64s). The
pool's prefixes may grow on update, never shrink; a pool with subnets cannot be deleted.

    >>> free_block([ipaddress.ip_network("10.0.0.0/24")], [ipaddress.ip_network("10.0.0.0/26")], 26)
    IPv4Network('10.0.0.64/26')
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from alcor.context import Context
from alcor.db.store import Tx
from alcor.errors import Conflict, NeutronError, invalid_input, not_found
from alcor.resources import query as q
from alcor.resources.base import OTHER, Manager
from alcor.resources.schema import (
    Attr,
    Resource,
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

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_PREFIXLEN = integer(0, 128)


def prefixlen(value: Any) -> int:
    """A prefix length, as a number or as the string Neutron shows it as ("24")."""
    return _PREFIXLEN(value)


PREFIXLEN = described(prefixlen, {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 128},
                                            {"type": "string", "pattern": "^[0-9]{1,3}$"}]})

SUBNETPOOL = standard(Resource("subnetpool", "subnetpools", "SubnetPool")).add(
    Attr("prefixes", list_of(cidr), optional=False, put=True, kind="array"),
    Attr("default_prefixlen", PREFIXLEN, put=True, kind="string"),
    Attr("min_prefixlen", PREFIXLEN, put=True, kind="string"),
    Attr("max_prefixlen", PREFIXLEN, put=True, kind="string"),
    Attr("default_quota", nullable(integer(0)), default=None, put=True, kind="integer"),
    Attr("shared", boolean, default=False, admin_only=True, kind="boolean"),
    Attr("is_default", boolean, post=False, kind="boolean"),
    Attr("ip_version", one_of(4, 6), post=False, kind="integer"),
    Attr("address_scope_id", nullable(uuid_str), post=False),
    Attr("tags", list_of(string()), post=False, kind="array"),
)

# Neutron's bounds when a pool does not give its own.
MIN_PREFIXLEN = {4: 8, 6: 64}
MAX_PREFIXLEN = {4: 32, 6: 128}


def compact(prefixes: list[Net]) -> list[Net]:
    """The prefixes merged and sorted, as Neutron stores them."""
    return list(ipaddress.collapse_addresses(prefixes))  # type: ignore[type-var]


def free_block(prefixes: list[Net], used: list[Net], prefixlen: int) -> Net | None:
    """The first block of `prefixlen` inside `prefixes` that overlaps none of `used`."""
    for p in prefixes:
        if p.prefixlen > prefixlen:
            continue
        size = 1 << (p.max_prefixlen - prefixlen)
        clashes = sorted((u for u in used if u.overlaps(p)), key=lambda u: int(u.network_address))
        addr, last = int(p.network_address), int(p.broadcast_address)
        while addr + size - 1 <= last:
            cand = ipaddress.ip_network((addr, prefixlen))
            clash = next((u for u in clashes if u.overlaps(cand)), None)
            if clash is None:
                return cand
            after = int(clash.broadcast_address) + 1
            addr = -(-after // size) * size  # the next aligned block past the clash
    return None


def quota_units(net: Net) -> int:
    """What a subnet costs of a pool's default_quota: addresses (IPv4), /64s (IPv6)."""
    return net.num_addresses if net.version == 4 else 1 << max(0, 64 - net.prefixlen)


class SubnetPools(Manager):
    res = SUBNETPOOL
    type = "subnetpool"

    # Who sees a pool (get_subnetpool): its project, and everyone when it is shared.

    def target(self, body: dict[str, Any]) -> dict[str, Any]:
        project = body.get("project_id") or ""
        return {"project_id": project, "tenant_id": project, "shared": bool(body.get("shared"))}

    def target_classes(self, ctx: Context) -> list[dict[str, Any]]:
        return [{"project_id": p, "tenant_id": p, "shared": sh}
                for p in (ctx.project_id, OTHER) for sh in (False, True)]

    def scope(self, ctx: Context, sql: q.SQL) -> None:
        def may(project: str, shared: bool) -> bool:
            return ctx.allowed("get_subnetpool", {"project_id": project, "tenant_id": project,
                                                  "shared": shared})
        if may(OTHER, False):
            return
        ors, params = [], []
        if may(ctx.project_id, False):
            ors.append("project_id = ?")
            params.append(ctx.project_id)
        if may(OTHER, True):
            ors.append(self.store.dialect.is_true("shared"))
        sql.add("(" + " OR ".join(ors) + ")" if ors else "FALSE", *params)

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        prefixes = [ipaddress.ip_network(p) for p in given["prefixes"]]
        if not prefixes:
            raise invalid_input("A subnet pool needs at least one prefix")
        versions = {p.version for p in prefixes}
        if len(versions) != 1:
            raise invalid_input("Illegal prefix bounds: the prefixes of a subnet pool must all be "
                                "of one IP version")
        version = versions.pop()
        bounds = self._bounds(version, given, {})
        body = self.new_body(ctx, given)
        body.update(_shown(bounds), prefixes=[str(p) for p in compact(prefixes)], ip_version=version,
                    is_default=False, address_scope_id=None, tags=[])
        await self.insert(tx, body)
        return body

    def _bounds(self, version: int, given: dict[str, Any], current: dict[str, Any]) -> dict[str, int]:
        """min ≤ default ≤ max within the IP version's range (Neutron's defaults where not given)."""
        lo = int(given.get("min_prefixlen", current.get("min_prefixlen", MIN_PREFIXLEN[version])))
        hi = int(given.get("max_prefixlen", current.get("max_prefixlen", MAX_PREFIXLEN[version])))
        default = int(given.get("default_prefixlen", current.get("default_prefixlen", lo)))
        if not 0 <= lo <= default <= hi <= MAX_PREFIXLEN[version]:
            raise NeutronError(f"Illegal prefix bounds: min_prefixlen={lo}, default_prefixlen="
                               f"{default}, max_prefixlen={hi} (min ≤ default ≤ max ≤ "
                               f"{MAX_PREFIXLEN[version]})", type="IllegalSubnetPoolPrefixBounds",
                               status=400)
        return {"min_prefixlen": lo, "default_prefixlen": default, "max_prefixlen": hi}

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        version = current["ip_version"]
        if "prefixes" in changes:
            new = [ipaddress.ip_network(p) for p in changes["prefixes"]]
            if any(p.version != version for p in new):
                raise invalid_input(f"The prefixes of subnet pool {current['id']} must be IPv{version}")
            old = [ipaddress.ip_network(p) for p in current["prefixes"]]
            if not all(any(o.subnet_of(n) for n in new) for o in old):  # type: ignore[arg-type]
                raise NeutronError("Illegal update to prefixes: the existing prefixes must lie in "
                                   "the new ones (a pool's prefixes only grow)",
                                   type="IllegalSubnetPoolPrefixUpdate", status=400)
            changes["prefixes"] = [str(p) for p in compact(new)]
        changes.update(_shown(self._bounds(version, changes, current)))
        return await self.replace(tx, current, changes)

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        if await self._subnets_of(tx, current["id"]):
            raise Conflict(f"Subnet pool {current['id']} is in use by one or more subnets.",
                           type="SubnetPoolInUse")
        await self.remove(tx, current)

    async def _subnets_of(self, tx: Tx, pool_id: str) -> list[dict[str, Any]]:
        d = self.store.dialect
        rows = await tx.fetchall(
            f"SELECT body FROM resources WHERE type = 'subnet' AND {d.text('subnetpool_id')} = ?",
            (pool_id,))
        return [json.loads(r[0]) for r in rows]

    # What the subnets manager asks when a subnet names a pool -----------------------------------

    async def allocate(self, ctx: Context, tx: Tx, pool_id: str, project_id: str, ip_version: int,
                       cidr: str | None, prefixlen: int | None) -> str:
        """The CIDR of a new subnet of `project_id` from the pool: `cidr` checked, or the first
        free block of `prefixlen` (the pool's default_prefixlen if None)."""
        pool = await self.fetch(pool_id, tx)
        if pool is None or not self.visible(ctx, pool):
            raise not_found("SubnetPool", pool_id)
        if pool["ip_version"] != ip_version:
            raise invalid_input(f"Cannot allocate an IPv{ip_version} subnet from IPv"
                                f"{pool['ip_version']} subnet pool {pool_id}")
        if cidr is not None and prefixlen is not None:
            raise invalid_input("cidr and prefixlen must not be supplied together")
        prefixes = [ipaddress.ip_network(p) for p in pool["prefixes"]]
        subnets = await self._subnets_of(tx, pool_id)
        used = [ipaddress.ip_network(s["cidr"]) for s in subnets]
        if cidr is not None:
            net = ipaddress.ip_network(cidr)
            if not any(net.subnet_of(p) for p in prefixes):  # type: ignore[arg-type]
                raise allocation_error(f"Cidr {net} is not within the prefixes of subnet pool {pool_id}")
            if any(net.overlaps(u) for u in used):
                raise allocation_error(f"Cidr {net} overlaps another subnet of subnet pool {pool_id}")
        else:
            plen = int(pool["default_prefixlen"]) if prefixlen is None else prefixlen
            found = free_block(prefixes, used, plen)
            if found is None:
                raise allocation_error(f"Insufficient prefix space to allocate a /{plen} from "
                                       f"subnet pool {pool_id}")
            net = found
        if not int(pool["min_prefixlen"]) <= net.prefixlen <= int(pool["max_prefixlen"]):
            raise allocation_error(f"Prefix length {net.prefixlen} is outside subnet pool {pool_id}'s "
                                   f"bounds {pool['min_prefixlen']}..{pool['max_prefixlen']}")
        quota = pool.get("default_quota")
        if quota is not None:
            held = sum(quota_units(ipaddress.ip_network(s["cidr"])) for s in subnets
                       if s.get("project_id") == project_id)
            if held + quota_units(net) > quota:
                raise Conflict(f"Per-project quota for subnet pool {pool_id} ({quota}) would be "
                               f"exceeded by {net}", type="SubnetPoolQuotaExceeded")
        return str(net)


def _shown(bounds: dict[str, int]) -> dict[str, str]:
    """Neutron shows a pool's prefix lengths as strings ("24"); clients compare them so."""
    return {k: str(v) for k, v in bounds.items()}


def allocation_error(message: str) -> NeutronError:
    return NeutronError(f"Failed to allocate subnet: {message}.", type="SubnetAllocationError",
                        status=400)
