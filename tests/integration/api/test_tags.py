"""Tags on every standard resource (Neutron's standard-attr-tag): the tag API, the list filters,
and that a tag change is an update of its resource (revision, change log)."""

KINDS = (("network", "networks"), ("subnet", "subnets"), ("port", "ports"),
         ("router", "routers"), ("security_group", "security-groups"))


async def _resources(ctl, net):
    network, subnet = net
    port = await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    router = await ctl.create("router", "/v2.0/routers", name="r")
    sg = await ctl.create("security_group", "/v2.0/security-groups", name="g")
    return dict(zip((k for k, _ in KINDS), (network, subnet, port, router, sg), strict=True))


async def test_tag_api_on_every_resource(ctl, net):
    made = await _resources(ctl, net)
    for kind, path in KINDS:
        body = (await ctl.get(f"/v2.0/{path}/{made[kind]['id']}")).body[kind]
        url = f"/v2.0/{path}/{body['id']}/tags"
        assert (await ctl.get(url)).body == {"tags": []}
        assert (await ctl.put(f"{url}/red")).status == 201
        assert (await ctl.put(f"{url}/red")).status == 201  # already there: no change
        r = await ctl.put(url, {"tags": ["blue", "green"]})
        assert r.status == 200 and r.body == {"tags": ["blue", "green"]}, (kind, r.body)
        assert (await ctl.get(f"{url}/blue")).status == 204
        r = await ctl.get(f"{url}/red")
        assert r.status == 404 and r.error["type"] == "TagNotFound"
        assert (await ctl.delete(f"{url}/blue")).status == 204
        assert (await ctl.delete(f"{url}/blue")).status == 404
        got = (await ctl.get(f"/v2.0/{path}/{body['id']}")).body[kind]
        assert got["tags"] == ["green"]
        # red, then blue+green, then green: three updates of the resource
        assert got["revision_number"] == body["revision_number"] + 3, kind
        assert (await ctl.delete(url)).status == 204
        assert (await ctl.get(url)).body == {"tags": []}


async def test_bad_tags_are_neutrons_400_and_unknown_resources_404(ctl, net):
    network, _ = net
    url = f"/v2.0/networks/{network['id']}/tags"
    for bad in ({"tags": "red"}, {"tag": ["red"]}, {"tags": ["a", "a"]}, {"tags": [1]},
                {"tags": ["x" * 256]}, ["red"]):
        r = await ctl.put(url, bad)
        assert r.status == 400 and r.error["type"] == "InvalidInput", bad
    assert (await ctl.put(f"{url}/{'x' * 256}")).status == 400
    assert (await ctl.get(f"/v2.0/networks/{network['id']}")).body["network"]["tags"] == []
    missing = "/v2.0/ports/4c5d0f5e-0000-4000-8000-000000000000/tags"
    r = await ctl.get(missing)
    assert r.status == 404 and r.error["type"] == "PortNotFound"
    assert (await ctl.put(f"{missing}/red")).status == 404


async def test_another_projects_tags_are_not_found(ctl, net):
    network, _ = net
    other = ctl.as_project("tenant-b")
    url = f"/v2.0/networks/{network['id']}/tags"
    assert (await other.get(url)).status == 404
    assert (await other.put(f"{url}/mine")).status == 404
    assert (await other.put(url, {"tags": ["mine"]})).status == 404
    assert (await other.delete(url)).status == 404
    own = await other.create("network", "/v2.0/networks", name="b")
    assert (await other.put(f"/v2.0/networks/{own['id']}/tags/b")).status == 201


async def test_tag_filters(ctl):
    tagged = {"n1": ["red"], "n2": ["red", "blue"], "n3": ["blue"], "n4": []}
    for name, tags in tagged.items():
        n = await ctl.create("network", "/v2.0/networks", name=name)
        if tags:
            await ctl.put(f"/v2.0/networks/{n['id']}/tags", {"tags": tags})

    async def names(query):
        r = await ctl.get(f"/v2.0/networks?{query}")
        assert r.status == 200, r.body
        return sorted(n["name"] for n in r.body["networks"])

    assert await names("tags=red") == ["n1", "n2"]
    assert await names("tags=red,blue") == ["n2"]
    assert await names("tags=red&tags=blue") == ["n2"]
    assert await names("tags-any=red,blue") == ["n1", "n2", "n3"]
    assert await names("not-tags=red,blue") == ["n1", "n3", "n4"]
    assert await names("not-tags-any=red,blue") == ["n4"]
    assert await names("tags=red&not-tags=blue") == ["n1"]
    assert await names("tags-any=red&name=n2") == ["n2"]
    assert await names("tags=green") == []


async def test_a_tag_change_is_in_the_change_log(ctl, net):
    network, _ = net
    last = (await ctl.get("/v2.0/alcor/changes?since=0&limit=10000")).body["last_rev"]
    await ctl.put(f"/v2.0/networks/{network['id']}/tags/prod")
    changes = (await ctl.get(f"/v2.0/alcor/changes?since={last}")).body["changes"]
    assert [(c["type"], c["id"], c["op"]) for c in changes] == [("network", network["id"], "update")]
    assert changes[0]["body"]["tags"] == ["prod"]
