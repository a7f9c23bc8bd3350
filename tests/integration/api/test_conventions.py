"""The API conventions real clients rely on: discovery, filters, fields, paging, sorting, timestamps."""


async def test_version_document_for_keystoneauth(ctl):
    r = await ctl.get("/")
    v = r.body["versions"][0]
    assert v["id"] == "v2.0" and v["status"] == "CURRENT"
    assert v["links"][0]["rel"] == "self" and v["links"][0]["href"] == f"{ctl.base}/v2.0/"


async def test_filters_and_or_and_unknown(ctl):
    for name, shared in (("a", False), ("b", True), ("c", False)):
        await ctl.create("network", "/v2.0/networks", name=name, shared=shared)
    names = lambda r: sorted(n["name"] for n in r.body["networks"])  # noqa: E731
    assert names(await ctl.get("/v2.0/networks?name=a&name=b")) == ["a", "b"]
    assert names(await ctl.get("/v2.0/networks?name=a&name=b&shared=true")) == ["b"]
    assert names(await ctl.get("/v2.0/networks?shared=False")) == ["a", "c"]
    r = await ctl.get("/v2.0/networks?colour=blue")
    assert r.status == 400 and r.error["type"] == "HTTPBadRequest"
    r = await ctl.get("/v2.0/networks?shared=perhaps")
    assert r.status == 400


async def test_port_filters_fixed_ips_and_device(ctl, net):
    network, subnet = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], device_id="vm-7",
                         fixed_ips=[{"ip_address": "10.0.0.40"}])
    await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    ids = lambda r: [x["id"] for x in r.body["ports"]]  # noqa: E731
    assert ids(await ctl.get("/v2.0/ports?device_id=vm-7")) == [p["id"]]
    assert ids(await ctl.get("/v2.0/ports?fixed_ips=ip_address%3D10.0.0.40")) == [p["id"]]
    assert len(ids(await ctl.get(f"/v2.0/ports?fixed_ips=subnet_id%3D{subnet['id']}"))) == 2
    assert ids(await ctl.get(f"/v2.0/ports?mac_address={p['mac_address']}")) == [p["id"]]
    assert len(ids(await ctl.get(f"/v2.0/ports?network_id={network['id']}"))) == 2
    assert ids(await ctl.get("/v2.0/ports?binding%3Ahost_id=nowhere")) == []


async def test_fields(ctl):
    n = await ctl.create("network", "/v2.0/networks", name="f")
    r = await ctl.get("/v2.0/networks?fields=id&fields=name")
    assert r.body["networks"] == [{"id": n["id"], "name": "f"}]
    r = await ctl.get(f"/v2.0/networks/{n['id']}?fields=name")
    assert r.body["network"] == {"name": "f"}


async def test_pagination_and_sorting(ctl):
    made = []
    for i in range(7):
        made.append(await ctl.create("network", "/v2.0/networks", name=f"n{i % 3}-{i}"))
    seen, url = [], "/v2.0/networks?limit=3&sort_key=name&sort_dir=asc"
    while url:
        r = await ctl.get(url.replace(ctl.base, ""))
        page = r.body["networks"]
        seen += [n["name"] for n in page]
        nxt = [link for link in r.body.get("networks_links", []) if link["rel"] == "next"]
        url = nxt[0]["href"] if nxt and page else None
    assert seen == sorted(n["name"] for n in made)
    r = await ctl.get("/v2.0/networks?sort_key=name&sort_dir=desc")
    assert [n["name"] for n in r.body["networks"]] == sorted((n["name"] for n in made), reverse=True)
    # A previous link walks back.
    first = await ctl.get("/v2.0/networks?limit=3&sort_key=name")
    second = await ctl.get(first.body["networks_links"][0]["href"].replace(ctl.base, ""))
    prev = [link for link in second.body["networks_links"] if link["rel"] == "previous"][0]
    back = await ctl.get(prev["href"].replace(ctl.base, ""))
    assert [n["id"] for n in back.body["networks"]] == [n["id"] for n in first.body["networks"]]
    assert (await ctl.get("/v2.0/networks?sort_key=bogus")).status == 400
    assert (await ctl.get("/v2.0/networks?sort_key=name&sort_dir=up")).status == 400
    assert (await ctl.get("/v2.0/networks?limit=x")).status == 400
    assert (await ctl.get("/v2.0/networks?marker=4c5d0f5e-0000-4000-8000-000000000000")).status == 404


async def test_token_mode(tmp_path, backend):
    from tests.support.controller import running_controller
    tokens = {"s3cret-admin": {"project": "ops", "role": "admin"},
              "s3cret-t": {"project": "tenant-x", "role": "member"}}
    async with running_controller(tmp_path, backend, api__auth="token", api__tokens=tokens) as (_, c):
        r = await c.get("/v2.0/networks")
        assert r.status == 401 and r.error["type"] == "HTTPUnauthorized"
        r = await c.get("/v2.0/networks", headers={"X-Auth-Token": "wrong"})
        assert r.status == 401
        r = await c.post("/v2.0/networks", {"network": {"name": "t"}}, headers={"X-Auth-Token": "s3cret-t"})
        assert r.status == 201 and r.body["network"]["project_id"] == "tenant-x"
        r = await c.post("/v2.0/networks", {"network": {"shared": True}}, headers={"X-Auth-Token": "s3cret-t"})
        assert r.status == 403
        r = await c.get("/v2.0/networks", headers={"X-Auth-Token": "s3cret-admin"})
        assert len(r.body["networks"]) == 1


async def test_changed_since(ctl):
    import asyncio
    old = await ctl.create("network", "/v2.0/networks", name="old")
    await asyncio.sleep(1.1)  # timestamps have whole seconds, as Neutron's
    new = await ctl.create("network", "/v2.0/networks", name="new")
    names = lambda r: sorted(n["name"] for n in r.body["networks"])  # noqa: E731
    since = new["updated_at"]
    assert names(await ctl.get(f"/v2.0/networks?changed_since={since}")) == ["new"]
    assert names(await ctl.get(f"/v2.0/networks?changed_since={since[:-1]}")) == ["new"]
    assert names(await ctl.get(f"/v2.0/networks?changed_since={old['created_at']}")) == ["new", "old"]
    # an offset is honoured: this is 2000-01-01T00:00:00Z
    assert names(await ctl.get("/v2.0/networks?changed_since=1999-12-31T23:00:00-01:00")) == ["new", "old"]
    assert names(await ctl.get("/v2.0/networks?changed_since=2999-01-01T01:00:00%2B01:00")) == []
    await ctl.put(f"/v2.0/networks/{old['id']}", {"network": {"name": "old2"}})
    assert names(await ctl.get(f"/v2.0/networks?changed_since={since}")) == ["new", "old2"]
    r = await ctl.get("/v2.0/networks?changed_since=yesterday")
    assert r.status == 400 and "changed_since" in r.error["message"]


async def test_description_on_every_standard_resource(ctl, net):
    network, subnet = net
    port = await ctl.create("port", "/v2.0/ports", network_id=network["id"], description="p")
    router = await ctl.create("router", "/v2.0/routers", description="r")
    sg = await ctl.create("security_group", "/v2.0/security-groups", name="g", description="g")
    for kind, path, body in (("network", "networks", network), ("subnet", "subnets", subnet),
                             ("port", "ports", port), ("router", "routers", router),
                             ("security_group", "security-groups", sg)):
        r = await ctl.put(f"/v2.0/{path}/{body['id']}", {kind: {"description": f"new {kind}"}})
        assert r.status == 200, (kind, r.body)
        got = (await ctl.get(f"/v2.0/{path}/{body['id']}")).body[kind]
        assert got["description"] == f"new {kind}"
    assert port["description"] == "p" and router["description"] == "r"


async def test_ports_by_a_part_of_their_address(ctl, net):
    # Neutron's ip-substring-filtering: fixed_ips=ip_address_substr=… matches any part of an address
    network, _ = net
    made = {}
    for ip in ("10.0.0.14", "10.0.0.41", "10.0.0.5"):
        made[ip] = (await ctl.create("port", "/v2.0/ports", network_id=network["id"],
                                     fixed_ips=[{"ip_address": ip}]))["id"]

    async def ips(substr):
        r = await ctl.get(f"/v2.0/ports?fixed_ips=ip_address_substr%3D{substr}")
        assert r.status == 200, r.body
        return sorted(ip for ip, pid in made.items() if pid in {p["id"] for p in r.body["ports"]})

    assert await ips("0.0.0.") == ["10.0.0.14", "10.0.0.41", "10.0.0.5"]
    assert await ips("4") == ["10.0.0.14", "10.0.0.41"]
    assert await ips(".41") == ["10.0.0.41"]
    assert await ips("10.0.0.5") == ["10.0.0.5"]
    assert await ips("99") == []
    r = await ctl.get("/v2.0/ports?fixed_ips=ip_address_substr%3D4&fixed_ips=ip_address%3D10.0.0.5")
    assert len(r.body["ports"]) == 3  # values of one filter are or-ed, as Neutron's
    r = await ctl.get("/v2.0/ports?fixed_ips=mac%3D1")
    assert r.status == 400 and "NeutronError" in r.body


async def test_bulk_items_bare_or_wrapped_and_numbers_as_text(ctl):
    # Neutron's clients send bulk items as {"security_group": {...}} and ip_version as "4".
    r = await ctl.post("/v2.0/security-groups", {"security_groups": [
        {"security_group": {"name": "w1"}}, {"name": "w2"}]})
    assert r.status == 201 and [g["name"] for g in r.body["security_groups"]] == ["w1", "w2"]
    net = await ctl.create("network", "/v2.0/networks", name="n")
    r = await ctl.post("/v2.0/subnets", {"subnet": {"network_id": net["id"], "ip_version": "4",
                                                    "cidr": "10.8.0.0/24"}})
    assert r.status == 201 and r.body["subnet"]["ip_version"] == 4
    r = await ctl.post("/v2.0/subnets", {"subnet": {"network_id": net["id"], "ip_version": "5",
                                                    "cidr": "10.9.0.0/24"}})
    assert r.status == 400
