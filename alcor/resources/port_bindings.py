"""A port's bindings (Neutron's binding-extended), as Nova's live migration uses them.

A port has one active binding, its `binding:host_id` (with `binding:vnic_type`, `binding:profile`
and the vif details the host gives); Nova adds an inactive binding for the destination host before
it moves the VM (`POST /v2.0/ports/{id}/bindings`), activates it when the VM runs there (`PUT
…/bindings/{host}/activate`: the port is bound to that host, its datapath follows, and the old
binding becomes inactive) and deletes the one left over. Inactive bindings are rows of their own
(`port_binding`, in the change log; no host programs anything for them); the active one is the
port itself, so it cannot disagree with what the port says.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from alcor.context import Context
from alcor.db.store import Tx
from alcor.errors import BadRequest, Conflict, NotFound, invalid_attr
from alcor.policy import enforce
from alcor.resources.ports import VNIC_TYPES, Ports
from alcor.resources.schema import Invalid, any_dict, one_of, string

if TYPE_CHECKING:
    from alcor.kernel import Kernel

TYPE = "port_binding"
# A binding's fields as the API checks them (and the OpenAPI document shows them).
BINDING_HOST = string(255)
BINDING_PROFILE = any_dict
BINDING_VNIC = one_of(*VNIC_TYPES)


def not_found(port_id: str, host: str) -> NotFound:
    return NotFound(f"Binding for port {port_id} for host {host} could not be found.",
                    type="PortBindingNotFound")


class PortBindings:
    """Owns the inactive bindings; the active one is the port's (alcor/resources/ports.py)."""

    name = "port_bindings"
    requires = ("store", "ports")

    def __init__(self) -> None:
        self.kernel: Kernel = None  # type: ignore[assignment]

    async def start(self, kernel: Kernel) -> None:
        self.kernel = kernel

    async def stop(self) -> None:
        pass

    async def drop_all(self, tx: Tx, port_id: str) -> None:
        """Forget a deleted port's inactive bindings (the ports manager calls this)."""
        rows = await tx.fetchall("SELECT id FROM resources WHERE type = ? AND parent_id = ?",
                                 (TYPE, port_id))
        for (bid,) in rows:
            await tx.execute("DELETE FROM resources WHERE type = ? AND id = ?", (TYPE, bid))
            tx.record(TYPE, bid, "delete", None)

    @property
    def ports(self) -> Ports:
        return self.kernel.get(Ports)

    def _binding(self, port: dict[str, Any], host: str, vnic: str, profile: dict[str, Any],
                 status: str) -> dict[str, Any]:
        vif = self.ports.binding_for({"binding:host_id": host, "binding:vnic_type": vnic})
        return {"host": host, "vnic_type": vnic, "profile": profile, "status": status,
                "vif_type": vif["binding:vif_type"], "vif_details": vif["binding:vif_details"]}

    def _active(self, port: dict[str, Any]) -> dict[str, Any] | None:
        host = port.get("binding:host_id")
        if not host:
            return None
        return {"host": host, "vnic_type": port.get("binding:vnic_type", "normal"),
                "profile": port.get("binding:profile") or {}, "status": "ACTIVE",
                "vif_type": port.get("binding:vif_type"), "vif_details": port.get("binding:vif_details") or {}}

    async def _inactive(self, tx: Tx | None, port_id: str) -> dict[str, dict[str, Any]]:
        sql, args = "SELECT body FROM resources WHERE type = ? AND parent_id = ?", (TYPE, port_id)
        store = self.ports.store
        rows = await (tx.fetchall(sql, args) if tx else store.fetchall(sql, args))
        out = {}
        for (text,) in rows:
            b = json.loads(text)
            out[b["host"]] = b
        return out

    async def _port(self, ctx: Context, port_id: str, action: str, tx: Tx | None = None) -> dict[str, Any]:
        port = await self.ports.get(ctx, port_id, tx)
        enforce(ctx, action, self.ports.target(port))
        return port

    # The API's entry points -----------------------------------------------------------------

    async def list(self, ctx: Context, port_id: str) -> list[dict[str, Any]]:
        port = await self._port(ctx, port_id, "get_port_binding")
        active = self._active(port)
        inactive = await self._inactive(None, port_id)
        return ([active] if active else []) + [inactive[h] for h in sorted(inactive)]

    async def show(self, ctx: Context, port_id: str, host: str) -> dict[str, Any]:
        for b in await self.list(ctx, port_id):
            if b["host"] == host:
                return b
        raise not_found(port_id, host)

    async def create(self, ctx: Context, port_id: str, body: Any) -> dict[str, Any]:
        given = _binding_body(body, create=True)
        host = given["host"]
        async with self.ports.store.transaction() as tx:
            port = await self._port(ctx, port_id, "create_port_binding", tx)
            inactive = await self._inactive(tx, port_id)
            if host == port.get("binding:host_id") or host in inactive:
                raise Conflict(f"Binding for port {port_id} on host {host} already exists.",
                               type="PortBindingAlreadyExists")
            vnic = given.get("vnic_type", port.get("binding:vnic_type", "normal"))
            profile = given.get("profile", {})
            if not port.get("binding:host_id"):
                # An unbound port: the new binding is its active one (Neutron's rule).
                new = await self._bind(ctx, tx, port, host, vnic, profile)
                out = self._active(new)
                assert out is not None
                return out
            b = self._binding(port, host, vnic, profile, "INACTIVE")
            text = json.dumps(b, separators=(",", ":"))
            await tx.insert("resources(type, id, project_id, parent_id, body)",
                            [(TYPE, f"{port_id}:{host}", port.get("project_id"), port_id, text)])
            tx.record(TYPE, f"{port_id}:{host}", "create", b, project_id=port.get("project_id"), text=text)
            return b

    async def update(self, ctx: Context, port_id: str, host: str, body: Any) -> dict[str, Any]:
        given = _binding_body(body, create=False)
        async with self.ports.store.transaction() as tx:
            port = await self._port(ctx, port_id, "update_port_binding", tx)
            if host == port.get("binding:host_id"):
                changes = {k: v for k, v in (("binding:vnic_type", given.get("vnic_type")),
                                             ("binding:profile", given.get("profile"))) if v is not None}
                new = await self.ports.update(ctx, port, changes, tx) if changes else port
                out = self._active(new)
                assert out is not None
                return out
            old = (await self._inactive(tx, port_id)).get(host)
            if old is None:
                raise not_found(port_id, host)
            b = self._binding(port, host, given.get("vnic_type", old["vnic_type"]),
                              given.get("profile", old["profile"]), "INACTIVE")
            text = json.dumps(b, separators=(",", ":"))
            await tx.execute("UPDATE resources SET body = ? WHERE type = ? AND id = ?",
                             (text, TYPE, f"{port_id}:{host}"))
            tx.record(TYPE, f"{port_id}:{host}", "update", b, project_id=port.get("project_id"), text=text)
            return b

    async def activate(self, ctx: Context, port_id: str, host: str) -> dict[str, Any]:
        async with self.ports.store.transaction() as tx:
            port = await self._port(ctx, port_id, "activate", tx)
            if host == port.get("binding:host_id"):
                raise Conflict(f"Binding for port {port_id} for host {host} is already active.",
                               type="PortBindingAlreadyActive")
            inactive = await self._inactive(tx, port_id)
            target = inactive.get(host)
            if target is None:
                raise not_found(port_id, host)
            old = self._active(port)
            await tx.execute("DELETE FROM resources WHERE type = ? AND id = ?", (TYPE, f"{port_id}:{host}"))
            tx.record(TYPE, f"{port_id}:{host}", "delete", None, project_id=port.get("project_id"))
            if old is not None:
                b = {**old, "status": "INACTIVE"}
                text = json.dumps(b, separators=(",", ":"))
                await tx.insert("resources(type, id, project_id, parent_id, body)",
                                [(TYPE, f"{port_id}:{old['host']}", port.get("project_id"), port_id, text)])
                tx.record(TYPE, f"{port_id}:{old['host']}", "create", b,
                          project_id=port.get("project_id"), text=text)
            new = await self._bind(ctx, tx, port, host, target["vnic_type"], target["profile"])
            out = self._active(new)
            assert out is not None
            return out

    async def delete(self, ctx: Context, port_id: str, host: str) -> None:
        async with self.ports.store.transaction() as tx:
            port = await self._port(ctx, port_id, "delete_port_binding", tx)
            if host == port.get("binding:host_id"):
                # The port's own binding: unbind it, as `binding:host_id` "" does.
                await self._bind(ctx, tx, port, "", port.get("binding:vnic_type", "normal"), {})
                return
            if host not in await self._inactive(tx, port_id):
                raise not_found(port_id, host)
            await tx.execute("DELETE FROM resources WHERE type = ? AND id = ?", (TYPE, f"{port_id}:{host}"))
            tx.record(TYPE, f"{port_id}:{host}", "delete", None, project_id=port.get("project_id"))

    async def _bind(self, ctx: Context, tx: Tx, port: dict[str, Any], host: str, vnic: str,
                    profile: dict[str, Any]) -> dict[str, Any]:
        """Make `host` the port's binding through the ports manager (status, vif details, and
        the datapath, which follows the port's change)."""
        return await self.ports.update(ctx, port, {"binding:host_id": host, "binding:vnic_type": vnic,
                                                   "binding:profile": profile}, tx)


def _binding_body(body: Any, *, create: bool) -> dict[str, Any]:
    """`{"binding": {"host", "vnic_type", "profile"}}` (host on create only)."""
    if not isinstance(body, dict) or set(body) != {"binding"} or not isinstance(body["binding"], dict):
        raise BadRequest("Unable to find 'binding' in request body")
    given = body["binding"]
    allowed = {"host", "vnic_type", "profile"} if create else {"vnic_type", "profile"}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    if create and "host" not in given:
        raise BadRequest("Failed to parse request. Required attribute 'host' not specified")
    out = {}
    for key, check in (("host", BINDING_HOST), ("vnic_type", BINDING_VNIC), ("profile", BINDING_PROFILE)):
        if key in given:
            try:
                out[key] = check(given[key])
            except Invalid as e:
                raise invalid_attr(key, str(e)) from None
    if create and not out["host"]:
        raise invalid_attr("host", "'' is not a valid host name")
    return out
