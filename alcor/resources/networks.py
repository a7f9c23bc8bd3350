"""Networks (Alcor's VPCs): a VXLAN segment each, its VNI allocated uniquely from the configured range.

A network's `mtu` is what its ports may send in one frame (without the Ethernet header), so it can
be no larger than what a VXLAN packet carries over the underlay: `[network] underlay_mtu` minus
the encapsulation. Neutron computes the same maximum from `global_physnet_mtu`; a larger request
is its 400, and a network created without an `mtu` gets the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from alcor.config import ConfigError
from alcor.context import Context
from alcor.db.changelog import Change
from alcor.db.store import Tx
from alcor.errors import Conflict, NeutronError, invalid_input, not_found
from alcor.resources import query as q
from alcor.resources.base import OTHER, Manager
from alcor.resources.ipam import VniAllocator
from alcor.resources.schema import (
    Attr,
    Resource,
    boolean,
    integer,
    list_of,
    nullable,
    one_of,
    standard,
    string,
)

# Outer IPv4 (20) + UDP (8) + VXLAN (8) headers and the inner Ethernet header (14): what a frame
# of a network's MTU grows by on the underlay. The agents' tunnels are IPv4 only.
VXLAN_OVERHEAD = 50
IPV4_MIN_MTU = 68
IPV6_MIN_MTU = 1280  # RFC 8200: an IPv6 link carries at least this


def max_mtu(underlay_mtu: int) -> int:
    """The largest network MTU the overlay carries without dropping (1450 over a 1500 underlay)."""
    return underlay_mtu - VXLAN_OVERHEAD


def min_mtu(ip_version: int) -> int:
    """The smallest network MTU a subnet of this IP version works on (a network itself may be
    smaller, as in Neutron: it then takes no subnet of that version)."""
    return IPV6_MIN_MTU if ip_version == 6 else IPV4_MIN_MTU


def mtu_subnet_conflict(network_id: str, minimum: int) -> Conflict:
    return Conflict(f"The subnets of network {network_id} need an MTU of at least {minimum}.",
                    type="NetworkMTUSubnetConflict")


log = structlog.get_logger("alcor.networks")



@dataclass(frozen=True)
class NetworkConfig:
    """[network]: the VNI range networks are given segments from, and the underlay's MTU."""

    SECTION: ClassVar[str] = "network"
    vni_min: int = 1000
    vni_max: int = 16000000
    # MTU of the underlay (the hosts' tunnel interfaces and everything between them); a network's
    # mtu is at most underlay_mtu - 50, and a network created without one gets that maximum
    underlay_mtu: int = 1500

    def check(self) -> None:
        if not 1 <= self.vni_min <= self.vni_max <= 2**24 - 1:
            raise ConfigError("network.vni_min..vni_max must lie within 1..16777215")
        # A network's MTU is at most underlay_mtu - 50 (VXLAN over IPv4), and never below IPv4's 68.
        if not 118 <= self.underlay_mtu <= 65535:
            raise ConfigError(f"network.underlay_mtu must be 118..65535, got {self.underlay_mtu}")

NETWORK = standard(Resource("network", "networks", "Network")).add(
    Attr("admin_state_up", boolean, default=True, put=True, kind="boolean"),
    Attr("status", string(), post=False),
    Attr("subnets", list_of(string()), post=False, kind="array"),
    Attr("shared", boolean, default=False, put=True, admin_only=True, kind="boolean"),
    Attr("router:external", boolean, default=False, put=True, admin_only=True, kind="boolean"),
    # Neutron's bounds: any non-negative MTU up to what the network carries; the subnets it may
    # take follow from it (min_mtu), checked when one is created and when the MTU changes.
    Attr("mtu", integer(0, 65535), put=True, kind="integer"),
    Attr("port_security_enabled", boolean, default=True, put=True, kind="boolean"),
    Attr("provider:network_type", one_of("vxlan", "flat"), default="vxlan", admin_only=True),
    Attr("provider:physical_network", nullable(string(64)), default=None, admin_only=True),
    Attr("provider:segmentation_id", nullable(integer(1, 2**24 - 1)), admin_only=True,
         kind="integer"),
    Attr("tags", list_of(string()), post=False, kind="array"),
)


def _check_provider(given: dict[str, Any]) -> None:
    """Neutron's rules for the provider attributes of the two types the hosts carry.

    A `vxlan` network is a segment of the overlay (its VNI allocated or given) and has no physical
    network. A `flat` network is a physical network reached untagged through each host's bridge
    mapping (`physnet1:br-ex` in the node record and the agent's config): it needs
    `provider:physical_network` and has no segmentation id. VLAN is not carried (no host tags).
    """
    ntype = given.get("provider:network_type", "vxlan")
    physnet = given.get("provider:physical_network")
    if ntype == "vxlan":
        if physnet is not None:
            raise invalid_input("provider:physical_network specified for vxlan network")
        return
    if not physnet:
        raise invalid_input("physical_network required for flat provider network")
    if given.get("provider:segmentation_id") is not None:
        raise invalid_input("provider:segmentation_id specified for flat provider network")


class Networks(Manager):
    res = NETWORK
    type = "network"

    def __init__(self, settings: NetworkConfig | None = None) -> None:
        super().__init__()
        settings = settings or NetworkConfig()
        self.vnis = VniAllocator(settings.vni_min, settings.vni_max)
        self.max_mtu = max_mtu(settings.underlay_mtu)
        # A flat network is the physical network itself: no encapsulation to take off.
        self.physnet_mtu = settings.underlay_mtu
        # id → body; networks are few and every port and subnet request checks one.
        self.index: dict[str, dict[str, Any]] = {}

    async def load(self) -> None:
        rows = await self.store.fetchall("SELECT vni FROM vni_allocations")
        self.vnis.used = {r[0] for r in rows}
        for body in await self.list_all(Context("", True)):
            self.index[body["id"]] = body
            if (body.get("mtu") or 0) > self.max_mtu:
                # Kept as it is (a tenant's VMs are configured with it), but the operator must know
                # that frames above the maximum are dropped between hosts.
                log.warning("network.mtu_above_overlay", network_id=body["id"], mtu=body["mtu"],
                            max_mtu=self.max_mtu)

    def reset(self) -> None:
        self.index.clear()
        self.vnis.used = set()

    def followed(self, change: Change) -> None:
        if change.op == "delete":
            old = self.index.pop(change.id, None)
            if old is not None:
                self.vnis.used.discard(old["provider:segmentation_id"])
            return
        assert change.body is not None
        self.index[change.id] = change.body
        if change.body.get("provider:segmentation_id") is not None:
            self.vnis.used.add(change.body["provider:segmentation_id"])

    def flat_network_on(self, physnet: str) -> str | None:
        """The flat network that already uses `physnet` (Neutron: one per physical network)."""
        return next((nid for nid, b in self.index.items()
                     if b.get("provider:network_type") == "flat"
                     and b.get("provider:physical_network") == physnet), None)

    # Neutron's get_network: a shared network is everyone's to use, and an external one everyone's
    # to see (routers' gateways and floating IPs are taken from it).

    field_rules = ("provider:network_type", "provider:physical_network", "provider:segmentation_id")

    def target(self, body: dict[str, Any]) -> dict[str, Any]:
        project = body.get("project_id") or ""
        return {"project_id": project, "tenant_id": project, "shared": bool(body.get("shared")),
                "router:external": bool(body.get("router:external"))}

    def target_classes(self, ctx: Context) -> list[dict[str, Any]]:
        return [{"project_id": p, "tenant_id": p, "shared": sh, "router:external": ext}
                for p in (ctx.project_id, OTHER) for sh in (False, True) for ext in (False, True)]

    def scope(self, ctx: Context, sql: q.SQL) -> None:
        def may(project: str, shared: bool, external: bool) -> bool:
            return ctx.allowed("get_network", {"project_id": project, "tenant_id": project,
                                               "shared": shared, "router:external": external})
        ors, params = [], []
        d = self.store.dialect
        for shared, external, clause in (
                (False, False, "TRUE"),
                (True, False, d.is_true("shared")),
                (False, True, d.is_true("router:external"))):
            if may(OTHER, shared, external):
                ors.append(clause)
            elif may(ctx.project_id, shared, external):
                ors.append(f"(project_id = ? AND {clause})")
                params.append(ctx.project_id)
        if "TRUE" in ors:
            return
        sql.add("(" + " OR ".join(ors) + ")" if ors else "FALSE", *params)

    def vpc_of(self, body: dict[str, Any]) -> str | None:
        return body["id"]

    def lookup(self, ctx: Context, id: str) -> dict[str, Any]:
        body = self.index.get(id)
        if body is None or not self.visible(ctx, body):
            raise not_found("Network", id)
        return body

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        _check_provider(given)
        if given.get("provider:network_type") == "flat":
            physnet = given["provider:physical_network"]
            if self.flat_network_on(physnet) is not None:
                raise Conflict(f"Unable to create the flat network. Physical network {physnet} "
                               f"is in use.", type="FlatNetworkInUse")
            given["provider:segmentation_id"] = None
            body = await self._create(ctx, given, tx, None)
            return body
        vni = given.pop("provider:segmentation_id", None)
        if vni is not None:
            if vni in self.vnis.used:
                raise Conflict(f"Unable to create the network. The tunnel ID {vni} is in use.",
                               type="TunnelIdInUse")
            self.vnis.used.add(vni)
        else:
            vni = self.vnis.allocate()
            if vni is None:
                raise NeutronError("Unable to create the network. No tenant network is available "
                                   "for allocation.", type="NoNetworkAvailable", status=503)
        tx.after_rollback(lambda: self.vnis.used.discard(vni))
        return await self._create(ctx, given, tx, vni)

    async def _create(self, ctx: Context, given: dict[str, Any], tx: Tx,
                      vni: int | None) -> dict[str, Any]:
        limit = self.max_mtu if vni is not None else self.physnet_mtu
        given["mtu"] = self._mtu(given.get("mtu", limit), limit)
        body = self.new_body(ctx, given)
        body.update({
            "status": "ACTIVE", "subnets": [], "provider:segmentation_id": vni,
            "tags": [],
        })
        if vni is not None:
            await tx.insert("vni_allocations(vni, network_id)", [(vni, body["id"])])
        await self.insert(tx, body)
        tx.after_commit(lambda: self.index.__setitem__(body["id"], body))
        return body

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        for key in ("provider:network_type", "provider:physical_network", "provider:segmentation_id"):
            if key in changes and changes[key] != current.get(key):
                raise invalid_input("Plugin does not support updating provider attributes")
        if "mtu" in changes and changes["mtu"] != current.get("mtu"):
            flat = current.get("provider:network_type") == "flat"
            changes["mtu"] = self._mtu(changes["mtu"], self.physnet_mtu if flat else self.max_mtu)
            versions = {a.net.version for a in self.peers.subnets.on_network(current["id"])}
            for version in sorted(versions):
                if changes["mtu"] < min_mtu(version):
                    raise mtu_subnet_conflict(current["id"], min_mtu(version))
        return await self.replace(tx, current, changes)

    async def replace(self, tx: Tx, body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        new = await super().replace(tx, body, changes)
        tx.after_commit(lambda: self.index.__setitem__(new["id"], new))
        return new

    def _mtu(self, mtu: int, limit: int) -> int:
        if mtu > limit:
            raise invalid_input(f"Requested MTU is too big, maximum is {limit}")
        return mtu

    async def set_subnets(self, tx: Tx, network_id: str, subnets: list[str]) -> None:
        """Record the network's subnet list (a change of the network, as in Neutron)."""
        current = await self.fetch(network_id, tx)
        if current is None:
            raise not_found("Network", network_id)
        await self.replace(tx, current, {"subnets": subnets})

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        nid = current["id"]
        ports = self.peers.ports
        if current.get("router:external") and self.kernel.has_named("floatingips"):
            await self.peers.floatingips.network_deleted(tx, nid)
        if await ports.count_on_network(tx, nid):
            raise Conflict(f"Unable to complete operation on network {nid}. There are one or "
                           f"more ports still in use on the network.", type="NetworkInUse")
        subnets = self.peers.subnets
        for sid in current.get("subnets", []):
            sub = await subnets.fetch(sid, tx)
            if sub is not None:
                await subnets.drop(tx, sub)
        await tx.execute("DELETE FROM vni_allocations WHERE network_id = ?", (nid,))
        await self.remove(tx, current)
        vni = current.get("provider:segmentation_id")

        def forget() -> None:
            self.index.pop(nid, None)
            if vni is not None:
                self.vnis.used.discard(vni)
        tx.after_commit(forget)
