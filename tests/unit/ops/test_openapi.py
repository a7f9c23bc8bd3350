"""The OpenAPI document is valid OpenAPI 3 and says what the resource schemas say."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from alcor.controller import PATHS
from alcor.ops.openapi import document
from alcor.resources.floatingips import FLOATINGIP
from alcor.resources.networks import NETWORK
from alcor.resources.nodes import NODE
from alcor.resources.ports import PORT
from alcor.resources.routers import ROUTER
from alcor.resources.security_groups import RULE, SECURITY_GROUP
from alcor.resources.subnetpools import SUBNETPOOL
from alcor.resources.subnets import SUBNET

RESOURCES = {"networks": NETWORK, "subnets": SUBNET, "subnetpools": SUBNETPOOL,
             "ports": PORT, "routers": ROUTER,
             "security_groups": SECURITY_GROUP, "security_group_rules": RULE, "nodes": NODE,
             "floatingips": FLOATINGIP}
DOC = document({PATHS[c]: r for c, r in RESOURCES.items()})


def test_the_document_is_valid_openapi_3() -> None:
    validate(DOC)  # raises on any violation of the OpenAPI 3.0 specification
    assert DOC["openapi"].startswith("3.")


def test_every_collection_has_its_five_operations() -> None:
    for collection, path in PATHS.items():
        assert set(DOC["paths"][path]) == {"get", "post"}, collection
        assert {"get", "put", "delete"} <= set(DOC["paths"][path + "/{id}"]), collection
    assert "/v2.0/routers/{id}/add_router_interface" in DOC["paths"]
    for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/ui", "/v2.0/alcor/changes"):
        assert probe in DOC["paths"]


@pytest.mark.parametrize("collection", sorted(RESOURCES))
def test_request_bodies_follow_who_may_set_what(collection: str) -> None:
    res = RESOURCES[collection]
    name = "".join(p.capitalize() for p in res.name.split("_"))
    create = DOC["components"]["schemas"][f"{name}Create"]
    update = DOC["components"]["schemas"][f"{name}Update"]
    assert set(create["properties"]) == {a.name for a in res.attrs.values() if a.post}
    assert set(create.get("required", [])) == {a.name for a in res.attrs.values() if a.post and not a.optional}
    assert set(update["properties"]) == {a.name for a in res.attrs.values() if a.put}
    assert create["additionalProperties"] is False and update["additionalProperties"] is False


def test_attribute_schemas_come_from_the_validators() -> None:
    ports = DOC["components"]["schemas"]["PortCreate"]["properties"]
    assert ports["network_id"] == {"type": "string", "format": "uuid"}
    assert ports["binding:vnic_type"]["enum"][0] == "normal"
    assert "admin only" in ports["binding:host_id"]["description"]
    fixed = ports["fixed_ips"]["items"]
    assert set(fixed["properties"]) == {"subnet_id", "ip_address"}
    nets = DOC["components"]["schemas"]["NetworkCreate"]["properties"]
    assert nets["mtu"] == {"type": "integer", "minimum": 0, "maximum": 65535}
    subnet = DOC["components"]["schemas"]["Subnet"]["properties"]
    assert subnet["gateway_ip"]["nullable"] is True
    assert subnet["ipv6_ra_mode"]["enum"][-1] is None  # nullable enums carry null explicitly


def test_list_filters_are_the_filterable_attributes() -> None:
    params = {p["name"] for p in DOC["paths"]["/v2.0/ports"]["get"]["parameters"]}
    assert {"name", "network_id", "device_id", "mac_address", "binding:host_id", "fixed_ips"} <= params
    assert {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"} <= params
    assert "binding:profile" not in params  # filterable=False
    assert "security_groups" not in params  # a list attribute the API refuses to filter on


def test_tags_quotas_bindings_and_agents_are_documented() -> None:
    paths = DOC["paths"]
    for collection in ("networks", "subnets", "subnetpools", "ports", "routers",
                       "security_groups", "floatingips"):
        base = PATHS[collection]
        assert set(paths[f"{base}/{{id}}/tags"]) == {"parameters", "get", "put", "delete"}
        assert set(paths[f"{base}/{{id}}/tags/{{tag}}"]) == {"parameters", "get", "put", "delete"}
        listed = {p["name"] for p in paths[base]["get"]["parameters"]}
        assert {"tags", "tags-any", "not-tags", "not-tags-any"} <= listed, collection
    assert "/v2.0/alcor/nodes/{id}/tags" not in paths  # nodes carry no tags
    quota = paths["/v2.0/quotas/{project_id}"]
    assert set(quota) == {"parameters", "get", "put", "delete"}
    limits = quota["put"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["quota"]
    assert {"network", "port", "security_group_rule", "check_limit"} <= set(limits["properties"])
    assert {"/v2.0/quotas", "/v2.0/quotas/{project_id}/default",
            "/v2.0/quotas/{project_id}/details"} <= set(paths)
    bindings = paths["/v2.0/ports/{id}/bindings"]
    assert set(bindings) == {"parameters", "get", "post"}
    create = bindings["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["properties"]["binding"]["required"] == ["host"]
    assert "put" in paths["/v2.0/ports/{id}/bindings/{host}/activate"]
    assert {"get", "put", "delete"} <= set(paths["/v2.0/ports/{id}/bindings/{host}"])
    agent = paths["/v2.0/agents/{id}"]
    assert {"get", "put", "delete"} <= set(agent)
    assert set(DOC["components"]["schemas"]["AgentUpdate"]["properties"]) == {
        "admin_state_up", "description"}


def test_what_is_not_served_is_not_documented() -> None:
    doc = document({PATHS["networks"]: NETWORK}, quotas=False, bindings=False)
    assert not any(p.startswith(("/v2.0/quotas", "/v2.0/ports", "/v2.0/agents")) for p in doc["paths"])
    validate(doc)
