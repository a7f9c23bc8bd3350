"""Keystone tokens through keystonemiddleware, and Neutron's default policy for the roles they
carry, against a real Keystone (tests/support/keystone.py): who may see and do what."""

from __future__ import annotations

import asyncio
import time

import pytest

from alcor.api.app import HttpModule
from tests.conftest import require
from tests.support import keystone as ks
from tests.support.controller import running_controller

SHORT_LIFE = 8  # seconds, for the Keystone whose tokens are seen expiring (room for a loaded machine)


class As:
    """Plain HTTP with one user's Keystone token (and optionally a service token)."""

    def __init__(self, client, token: str, service_token: str | None = None) -> None:
        self.c, self.h = client, {"X-Auth-Token": token}
        if service_token:
            self.h["X-Service-Token"] = service_token

    async def get(self, path):
        return await self.c.get(path, headers=self.h)

    async def post(self, path, body):
        return await self.c.post(path, body, headers=self.h)

    async def put(self, path, body):
        return await self.c.put(path, body, headers=self.h)

    async def delete(self, path):
        return await self.c.delete(path, headers=self.h)


@pytest.fixture
async def api(tmp_path, keystone):
    async with running_controller(tmp_path, api__auth="keystone",
                                  keystone_authtoken=keystone.authtoken_section(token_cache_time=1)
                                  ) as (kernel, client):
        client.kernel = kernel
        yield client


def tokens(keystone, *users):
    return [keystone.token(u) for u in users]


async def test_no_or_bad_token_is_401_with_where_to_get_one(api, keystone):
    for headers in ({}, {"X-Auth-Token": "gAAAAAB-not-a-token"}):
        r = await api.get("/v2.0/networks", headers=headers)
        assert r.status == 401 and r.error["type"] == "HTTPUnauthorized", r.body
        assert r.headers["WWW-Authenticate"] == f'Keystone uri="{keystone.url}"'
    # Version discovery stays open, as keystoneauth needs it before it has a token.
    assert (await api.get("/")).status == 200


async def test_projects_see_only_their_own(api, keystone):
    alice, bob = (As(api, t) for t in tokens(keystone, "alice", "bob"))
    made = await alice.post("/v2.0/networks", {"network": {"name": "a-net"}})
    assert made.status == 201, made.body
    net = made.body["network"]
    assert net["project_id"] == keystone.projects["p1"]
    assert [n["name"] for n in (await alice.get("/v2.0/networks")).body["networks"]] == ["a-net"]
    assert (await bob.get("/v2.0/networks")).body["networks"] == []
    for r in (await bob.get(f"/v2.0/networks/{net['id']}"),
              await bob.put(f"/v2.0/networks/{net['id']}", {"network": {"name": "x"}}),
              await bob.delete(f"/v2.0/networks/{net['id']}"),
              await bob.post("/v2.0/ports", {"port": {"network_id": net["id"]}})):
        assert r.status == 404, r.body
    # Naming another project is the admin's privilege.
    r = await bob.post("/v2.0/networks", {"network": {"project_id": keystone.projects["p1"]}})
    assert r.status == 400


async def test_reader_reads_but_cannot_write(api, keystone):
    alice, rita = (As(api, t) for t in tokens(keystone, "alice", "rita"))
    net = (await alice.post("/v2.0/networks", {"network": {"name": "a-net"}})).body["network"]
    assert (await rita.get(f"/v2.0/networks/{net['id']}")).status == 200
    assert [n["id"] for n in (await rita.get("/v2.0/networks")).body["networks"]] == [net["id"]]
    for r in (await rita.post("/v2.0/networks", {"network": {"name": "r"}}),
              await rita.put(f"/v2.0/networks/{net['id']}", {"network": {"name": "x"}}),
              await rita.delete(f"/v2.0/networks/{net['id']}"),
              await rita.post("/v2.0/security-groups", {"security_group": {"name": "r"}})):
        assert r.status == 403 and r.error["type"] == "PolicyNotAuthorized", r.body
    assert (await alice.get(f"/v2.0/networks/{net['id']}")).body["network"]["name"] == "a-net"


async def test_admin_sees_every_project_and_sets_admin_attributes(api, keystone):
    alice, adam = (As(api, t) for t in tokens(keystone, "alice", "adam"))
    await alice.post("/v2.0/networks", {"network": {"name": "a-net"}})
    r = await alice.post("/v2.0/networks", {"network": {"name": "pub", "shared": True}})
    assert r.status == 403 and "create_network:shared" in r.error["message"]
    pub = await adam.post("/v2.0/networks", {"network": {"name": "pub", "shared": True,
                                                         "project_id": keystone.projects["p2"]}})
    assert pub.status == 201 and pub.body["network"]["project_id"] == keystone.projects["p2"]
    assert {n["name"] for n in (await adam.get("/v2.0/networks")).body["networks"]} == {"a-net", "pub"}
    # Provider attributes are the admin's to read; the network is everyone's to use.
    seen = (await alice.get(f"/v2.0/networks/{pub.body['network']['id']}")).body["network"]
    assert "provider:segmentation_id" not in seen and seen["shared"] is True
    assert "provider:segmentation_id" in pub.body["network"]
    nodes = await alice.get("/v2.0/alcor/nodes")
    assert nodes.status == 403
    assert (await adam.get("/v2.0/alcor/nodes")).status == 200


async def test_service_binds_ports_and_reads_their_binding(api, keystone):
    """Nova's service user binds a tenant's port to a host; the tenant cannot, nor read binding:*."""
    alice, nova = (As(api, t) for t in tokens(keystone, "alice", "nova"))
    adam = As(api, keystone.token("adam"))
    assert (await adam.post("/v2.0/alcor/nodes", {"node": {"node_name": "cmp1",
                                                           "local_ip": "172.16.0.3"}})).status == 201
    net = (await alice.post("/v2.0/networks", {"network": {"name": "a-net"}})).body["network"]
    await alice.post("/v2.0/subnets", {"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/24",
                                                   "ip_version": 4}})
    port = (await alice.post("/v2.0/ports", {"port": {"network_id": net["id"]}})).body["port"]
    assert not any(k.startswith("binding:") and k != "binding:vnic_type" for k in port)
    r = await alice.put(f"/v2.0/ports/{port['id']}", {"port": {"binding:host_id": "cmp1"}})
    assert r.status == 403 and "update_port:binding:host_id" in r.error["message"]
    # Nova sees the tenant's port (service role), binds it and reads the binding.
    listed = await nova.get(f"/v2.0/ports?device_id=&network_id={net['id']}")
    assert [p["id"] for p in listed.body["ports"]] == [port["id"]]
    bound = await nova.put(f"/v2.0/ports/{port['id']}", {"port": {
        "binding:host_id": "cmp1", "device_id": "3b5d0c8e-6f1e-4c53-9a55-2d3e4f5a6b7c",
        "device_owner": "compute:nova", "binding:profile": {"migrating_to": "cmp2"}}})
    assert bound.status == 200, bound.body
    assert bound.body["port"]["binding:vif_type"] == "ovs"
    assert bound.body["port"]["binding:vif_details"]["bridge_name"] == "br-int"
    mine = (await alice.get(f"/v2.0/ports/{port['id']}")).body["port"]
    assert mine["device_owner"] == "compute:nova" and "binding:host_id" not in mine
    assert all("binding:vif_type" not in p for p in (await alice.get("/v2.0/ports")).body["ports"])
    # The service role reaches ports, not everything: no networks of its own to make elsewhere.
    r = await nova.post("/v2.0/networks", {"network": {"project_id": keystone.projects["p1"]}})
    assert r.status in (400, 403)


async def test_revoked_token_is_refused_once_the_cache_lets_go(api, keystone):
    token = keystone.token("alice")
    alice = As(api, token)
    assert (await alice.get("/v2.0/networks")).status == 200
    admin = keystone.session("admin")
    r = admin.delete(f"{keystone.url}/auth/tokens", headers={"X-Subject-Token": token})
    assert r.status_code == 204
    await asyncio.sleep(1.2)  # token_cache_time = 1 in this test's [keystone_authtoken]
    r = await alice.get("/v2.0/networks")
    assert r.status == 401 and "WWW-Authenticate" in r.headers
    # A token revoked before it was ever seen is refused at once.
    fresh = keystone.token("bob")
    admin.delete(f"{keystone.url}/auth/tokens", headers={"X-Subject-Token": fresh})
    assert (await As(api, fresh).get("/v2.0/networks")).status == 401


@pytest.fixture
def short_lived_keystone(tmp_path):
    """A second Keystone whose tokens last SHORT_LIFE seconds (keystoneauth renews its own tokens
    when they have under two minutes left, so the session's Keystone keeps the usual hour)."""
    why = ks.available()
    require(why is None, why or "")
    with ks.running_keystone(tmp_path, expiration=SHORT_LIFE) as k:
        yield k


async def test_expired_token_is_refused(tmp_path, short_lived_keystone):
    keystone = short_lived_keystone
    async with running_controller(tmp_path, api__auth="keystone",
                                  keystone_authtoken=keystone.authtoken_section()) as (_, api):
        # The middleware's own service token first, so alice's short token is spent on hers only.
        assert (await As(api, keystone.token("alice")).get("/v2.0/networks")).status == 200
        issued = time.monotonic()
        token = keystone.token("alice")
        assert (await As(api, token).get("/v2.0/networks")).status == 200
        # Cached, but never past the token's own expiry.
        await asyncio.sleep(max(0.0, SHORT_LIFE + 1.0 - (time.monotonic() - issued)))
        r = await As(api, token).get("/v2.0/networks")
        assert r.status == 401, r.body
        assert (await As(api, keystone.token("alice")).get("/v2.0/networks")).status == 200


async def test_validation_is_cached_and_off_the_loop(api, keystone):
    auth = api.kernel.get(HttpModule).auth
    alice = As(api, keystone.token("alice"))
    before = auth.validations
    loop = asyncio.get_running_loop()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    t = loop.create_task(ticker())
    started = time.monotonic()
    r = await alice.get("/v2.0/networks")
    first = time.monotonic() - started
    t.cancel()
    assert r.status == 200
    # The loop kept turning while Keystone was asked (a blocking call would freeze the ticker).
    assert ticks >= first / 0.001 * 0.3, (ticks, first)
    for _ in range(20):
        assert (await alice.get("/v2.0/networks")).status == 200
    assert auth.validations == before + 1


async def test_service_token_needs_the_service_role(api, keystone):
    """A user's token plus a service token (Nova's way): the service token must carry a role of
    service_token_roles (service_token_roles_required = true)."""
    alice, nova, bob = tokens(keystone, "alice", "nova", "bob")
    assert (await As(api, alice, nova).get("/v2.0/networks")).status == 200
    r = await As(api, alice, bob).get("/v2.0/networks")
    assert r.status == 401


async def test_bad_keystone_config_stops_the_program(keystone):
    from alcor import sections
    from alcor.config import ConfigError
    from alcor.controller import HttpModule

    base = {"api": {"auth": "keystone", "port": 0}}
    for section, text in (
        ({**keystone.authtoken_section(), "usernme": "typo"}, "keystone_authtoken.usernme"),
        ({k: v for k, v in keystone.authtoken_section().items() if k != "auth_url"}, "auth_url"),
        ({**keystone.authtoken_section(), "auth_type": "nonesuch"}, "auth_type"),
        ({**keystone.authtoken_section(), "token_cache_time": "soon"}, "token_cache_time"),
    ):
        with pytest.raises(ConfigError, match=text):
            cfg = sections.load(env={}, layers=[("test", {**base, "keystone_authtoken": section})])
            HttpModule(cfg, [])
