"""The OpenAPI 3 document of the HTTP API, generated from the resources' own schemas.

    doc = document({"/v2.0/networks": NETWORK, "/v2.0/ports": PORT})
    openapi_spec_validator.validate(doc)

Every attribute's JSON Schema comes from its validator (`alcor.resources.schema.described`), who may
set it from `Attr.post` / `Attr.put`, and which query parameters a list takes from `Attr.filterable`
and `Attr.sortable`: the same `Resource` that validates a request describes it, so the document
cannot drift from what the API accepts. Addresses use the standard `ipv4`/`ipv6` formats; subnets
use the custom format `cidr` (a client generating data registers it, as the schemathesis test does).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from alcor.resources.nodes import AGENT
from alcor.resources.port_bindings import BINDING_HOST, BINDING_PROFILE, BINDING_VNIC
from alcor.resources.query import TAG_FILTERS
from alcor.resources.quotas import QuotaConfig
from alcor.resources.schema import MISSING, Attr, Resource, json_schema_of

OPENAPI_VERSION = "3.0.3"

# Status codes with Neutron's error body, per kind of operation (the API never answers 500 on purpose).
ERRORS = {
    "list": (400, 401, 403, 404, 503),  # 404: a marker that is not there
    "show": (401, 403, 404, 503),
    "create": (400, 401, 403, 404, 409, 413, 503),
    "update": (400, 401, 403, 404, 409, 412, 413, 503),
    "delete": (400, 401, 403, 404, 409, 412, 503),
    "action": (400, 401, 403, 404, 409, 413, 503),
}
DESCRIPTIONS = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden by policy", 404: "Not found",
                409: "Conflict", 412: "If-Match revision_number failed", 413: "Body too large",
                503: "Database or backend unavailable"}
JSON = "application/json"


def attr_schema(attr: Attr, *, response: bool = False) -> dict[str, Any]:
    """An attribute's JSON Schema; in a response, also null when its default is None."""
    schema = copy.deepcopy(json_schema_of(attr.validate) or {})
    if response and attr.default is None and not schema.get("nullable"):
        schema["nullable"] = True
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    notes = []
    if attr.admin_only:
        notes.append("admin only")
    if attr.default is not MISSING and attr.post and not callable(attr.default):
        notes.append(f"default {attr.default!r}")
    if notes and not response:
        schema["description"] = "; ".join(notes)
    return schema


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def resource_schemas(res: Resource) -> dict[str, dict[str, Any]]:
    """`Port` (a response body), `PortCreate` and `PortUpdate` (request bodies)."""
    name = _pascal(res.name)
    created = {a.name: attr_schema(a) for a in res.attrs.values() if a.post}
    create: dict[str, Any] = {"type": "object", "properties": created, "additionalProperties": False}
    required = [a.name for a in res.attrs.values() if a.post and not a.optional]
    if required:
        create["required"] = required
    return {
        # Responses may carry attributes a module adds (e.g. a node's sync state), and `fields=`
        # may leave any attribute out: nothing is required, nothing extra is refused.
        name: {"type": "object",
               "properties": {a.name: attr_schema(a, response=True) for a in res.attrs.values()}},
        f"{name}Create": create,
        f"{name}Update": {"type": "object", "additionalProperties": False,
                          "properties": {a.name: attr_schema(a) for a in res.attrs.values() if a.put}},
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _responses(kind: str, ok: int, schema: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {str(ok): _json(schema) if schema is not None else {"description": "Done"}}
    for code in ERRORS[kind]:
        out[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    return out


def _envelope(key: str, inner: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: inner}, "required": [key],
            "additionalProperties": False}


def _filter_param(attr: Attr) -> dict[str, Any] | None:
    """A list filter (`?name=a&name=b`), as the API's query parser accepts it."""
    if not attr.filterable or (attr.kind in ("array", "object") and attr.filter is None):
        return None
    if attr.kind == "integer":
        item: dict[str, Any] = {"type": "integer"}
    elif attr.kind == "boolean":
        item = {"type": "boolean"}
    else:
        item = {"type": "string"}
    return {"name": attr.name, "in": "query", "required": False, "style": "form", "explode": True,
            "schema": {"type": "array", "items": item}}


def list_params(res: Resource) -> list[dict[str, Any]]:
    fields = sorted(res.attrs)
    sortable = sorted(a.name for a in res.attrs.values()
                      if a.sortable and a.kind not in ("array", "object"))
    params = [p for p in (_filter_param(a) for a in res.attrs.values()) if p is not None]
    if "tags" in res.attrs:
        # standard-attr-tag's filters: each a comma-separated list of tags (alcor/resources/query.py)
        params = [p for p in params if p["name"] != "tags"]
        params += [{"name": key, "in": "query", "required": False, "style": "form",
                    "explode": True, "description": "comma-separated tags",
                    "schema": {"type": "array", "items": {"type": "string"}}}
                   for key in TAG_FILTERS]
    params += [
        {"name": "fields", "in": "query", "style": "form", "explode": True,
         "schema": {"type": "array", "items": {"enum": fields}}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "marker", "in": "query", "schema": {"type": "string", "format": "uuid"}},
        {"name": "page_reverse", "in": "query", "schema": {"type": "boolean"}},
        {"name": "sort_key", "in": "query", "style": "form", "explode": True,
         "schema": {"type": "array", "items": {"enum": sortable}}},
        {"name": "sort_dir", "in": "query", "style": "form", "explode": True,
         "schema": {"type": "array", "items": {"enum": ["asc", "desc"]}}},
    ]
    return params


def collection_paths(path: str, res: Resource) -> dict[str, dict[str, Any]]:
    name, plural, tag = _pascal(res.name), res.collection, res.collection
    item = _ref(name)
    links = {"type": "array", "items": _ref("Link")}
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    if_match = {"name": "If-Match", "in": "header", "required": False,
                "description": "revision_number=N: refuse (412) unless the resource is at N",
                "schema": {"type": "string"}}
    fields = {"name": "fields", "in": "query", "style": "form", "explode": True,
              "schema": {"type": "array", "items": {"enum": sorted(res.attrs)}}}
    create_body = {"oneOf": [_envelope(res.name, _ref(f"{name}Create")),
                             _envelope(plural, {"type": "array", "minItems": 1,
                                                "items": _ref(f"{name}Create")})]}
    created = {"oneOf": [_envelope(res.name, item),
                         _envelope(plural, {"type": "array", "items": item})]}
    return {
        path: {
            "get": {"operationId": f"list_{plural}", "tags": [tag], "summary": f"List {plural}",
                    "parameters": list_params(res),
                    "responses": _responses("list", 200, {
                        "type": "object", "required": [plural],
                        "properties": {plural: {"type": "array", "items": item},
                                       f"{plural}_links": links}})},
            "post": {"operationId": f"create_{res.name}", "tags": [tag],
                     "summary": f"Create one {res.name}, or many at once (atomic)",
                     "requestBody": {"required": True, "content": {JSON: {"schema": create_body}}},
                     "responses": _responses("create", 201, created)},
        },
        path + "/{id}": {
            "parameters": [id_param],
            "get": {"operationId": f"show_{res.name}", "tags": [tag], "parameters": [fields],
                    "responses": _responses("show", 200, _envelope(res.name, item))},
            "put": {"operationId": f"update_{res.name}", "tags": [tag], "parameters": [if_match],
                    "requestBody": {"required": True, "content": {JSON: {
                        "schema": _envelope(res.name, _ref(f"{name}Update"))}}},
                    "responses": _responses("update", 200, _envelope(res.name, item))},
            "delete": {"operationId": f"delete_{res.name}", "tags": [tag], "parameters": [if_match],
                       "responses": _responses("delete", 204, None)},
        },
    }


def _router_actions() -> dict[str, Any]:
    from alcor.resources.routers import INTERFACE

    body = json_schema_of(INTERFACE) or {"type": "object"}
    info = {"type": "object", "properties": {
        "id": {"type": "string"}, "tenant_id": {"type": "string"}, "project_id": {"type": "string"},
        "subnet_id": {"type": "string"}, "subnet_ids": {"type": "array", "items": {"type": "string"}},
        "port_id": {"type": "string"}, "network_id": {"type": "string"}}}
    out = {}
    for action in ("add_router_interface", "remove_router_interface"):
        out[f"/v2.0/routers/{{id}}/{action}"] = {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "put": {"operationId": action, "tags": ["routers"],
                    "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
                    "responses": _responses("action", 200, info)}}
    return out


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _tag_paths(path: str, res: Resource) -> dict[str, Any]:
    """standard-attr-tag on one collection: a resource's tags, and each tag."""
    tags = _envelope("tags", {"type": "array", "items": {"type": "string", "minLength": 1,
                                                          "maxLength": 255}})
    plural = res.collection
    return {
        f"{path}/{{id}}/tags": {
            "parameters": [_path_param("id")],
            "get": {"operationId": f"list_{res.name}_tags", "tags": [plural],
                    "responses": _responses("show", 200, tags)},
            "put": {"operationId": f"replace_{res.name}_tags", "tags": [plural],
                    "summary": "Replace all its tags",
                    "requestBody": {"required": True, "content": {JSON: {"schema": tags}}},
                    "responses": _responses("update", 200, tags)},
            "delete": {"operationId": f"clear_{res.name}_tags", "tags": [plural],
                       "responses": _responses("delete", 204, None)},
        },
        f"{path}/{{id}}/tags/{{tag}}": {
            "parameters": [_path_param("id"), _path_param("tag")],
            "get": {"operationId": f"check_{res.name}_tag", "tags": [plural],
                    "summary": "204 if it has the tag, 404 otherwise",
                    "responses": _responses("show", 204, None)},
            "put": {"operationId": f"add_{res.name}_tag", "tags": [plural],
                    "responses": _responses("update", 201, None)},
            "delete": {"operationId": f"remove_{res.name}_tag", "tags": [plural],
                       "responses": _responses("delete", 204, None)},
        },
    }


def _quota_paths() -> dict[str, Any]:
    """Neutron's quotas and quota_details: a project's limits, their defaults, what it uses."""
    names = sorted(QuotaConfig().defaults())
    limit = {"type": "integer", "minimum": -1, "description": "-1: unlimited"}
    limits = {"type": "object", "properties": {n: limit for n in names}}
    update = {"type": "object", "additionalProperties": False, "properties": {
        **{n: limit for n in names},
        "check_limit": {"type": "boolean", "description": "refuse a limit below what is used"},
        "force": {"type": "boolean"}}}
    detail = {"type": "object", "properties": {"limit": {"type": "integer"},
                                               "used": {"type": "integer"},
                                               "reserved": {"type": "integer"}}}
    owned = {"type": "object", "properties": {
        **{n: limit for n in names}, "project_id": {"type": "string"}, "tenant_id": {"type": "string"}}}
    one = "/v2.0/quotas/{project_id}"
    param = [_path_param("project_id")]
    return {
        "/v2.0/quotas": {"get": {"operationId": "list_quotas", "tags": ["quotas"],
                                 "summary": "The projects with limits of their own (admin)",
                                 "responses": _responses("list", 200, _envelope(
                                     "quotas", {"type": "array", "items": owned}))}},
        one: {
            "parameters": param,
            "get": {"operationId": "show_quota", "tags": ["quotas"],
                    "responses": _responses("show", 200, _envelope("quota", limits))},
            "put": {"operationId": "update_quota", "tags": ["quotas"], "summary": "Set limits (admin)",
                    "requestBody": {"required": True, "content": {JSON: {
                        "schema": _envelope("quota", update)}}},
                    "responses": _responses("update", 200, _envelope("quota", limits))},
            "delete": {"operationId": "reset_quota", "tags": ["quotas"],
                       "summary": "Back to the defaults (admin)",
                       "responses": _responses("delete", 204, None)},
        },
        one + "/default": {"parameters": param, "get": {
            "operationId": "show_quota_default", "tags": ["quotas"],
            "responses": _responses("show", 200, _envelope("quota", owned))}},
        one + "/details": {"parameters": param, "get": {
            "operationId": "show_quota_details", "tags": ["quotas"],
            "responses": _responses("show", 200, _envelope("quota", {
                "type": "object", "properties": {n: detail for n in names}}))}},
    }


def _binding_paths() -> dict[str, Any]:
    """binding-extended: a port's bindings, one per host, one of them active."""
    host, vnic, profile = (json_schema_of(v) or {} for v in (BINDING_HOST, BINDING_VNIC,
                                                             BINDING_PROFILE))
    binding = {"type": "object", "properties": {
        "host": host, "vnic_type": vnic, "profile": profile,
        "status": {"enum": ["ACTIVE", "INACTIVE"]}, "vif_type": {"type": "string"},
        "vif_details": {"type": "object"}}}
    create = {"type": "object", "additionalProperties": False, "required": ["host"],
              "properties": {"host": host, "vnic_type": vnic, "profile": profile}}
    update = {"type": "object", "additionalProperties": False,
              "properties": {"vnic_type": vnic, "profile": profile}}
    path = "/v2.0/ports/{id}/bindings"
    one = path + "/{host}"
    return {
        path: {
            "parameters": [_path_param("id")],
            "get": {"operationId": "list_port_bindings", "tags": ["ports"],
                    "responses": _responses("list", 200, _envelope(
                        "bindings", {"type": "array", "items": binding}))},
            "post": {"operationId": "create_port_binding", "tags": ["ports"],
                     "summary": "Bind the port to another host too (inactive; active if unbound)",
                     "requestBody": {"required": True, "content": {JSON: {
                         "schema": _envelope("binding", create)}}},
                     "responses": _responses("create", 201, _envelope("binding", binding))},
        },
        one: {
            "parameters": [_path_param("id"), _path_param("host")],
            "get": {"operationId": "show_port_binding", "tags": ["ports"],
                    "responses": _responses("show", 200, _envelope("binding", binding))},
            "put": {"operationId": "update_port_binding", "tags": ["ports"],
                    "requestBody": {"required": True, "content": {JSON: {
                        "schema": _envelope("binding", update)}}},
                    "responses": _responses("update", 200, _envelope("binding", binding))},
            "delete": {"operationId": "delete_port_binding", "tags": ["ports"],
                       "responses": _responses("delete", 204, None)},
        },
        one + "/activate": {
            "parameters": [_path_param("id"), _path_param("host")],
            "put": {"operationId": "activate_port_binding", "tags": ["ports"],
                    "summary": "Make this host's binding the port's active one",
                    "responses": _responses("action", 200, _envelope("binding", binding))},
        },
    }


def _agent_paths() -> dict[str, Any]:
    """Neutron's agents, from the node records (alcor/api/agents.py)."""
    agent = _ref("Agent")
    return {
        "/v2.0/agents": {"get": {"operationId": "list_agents", "tags": ["agents"],
                                 "summary": "Agents from the node records and their liveness "
                                            "(admin; empty for anyone else)",
                                 "parameters": [p for p in list_params(AGENT)
                                                if p["name"] not in ("limit", "marker",
                                                                     "page_reverse", "sort_key",
                                                                     "sort_dir")],
                                 "responses": _responses("list", 200, _envelope(
                                     "agents", {"type": "array", "items": agent}))}},
        "/v2.0/agents/{id}": {
            "parameters": [_path_param("id")],
            "get": {"operationId": "show_agent", "tags": ["agents"],
                    "responses": _responses("show", 200, _envelope("agent", agent))},
            "put": {"operationId": "update_agent", "tags": ["agents"],
                    "summary": "An agent's description; an L3 agent's admin_state_up (admin)",
                    "requestBody": {"required": True, "content": {JSON: {
                        "schema": _envelope("agent", _ref("AgentUpdate"))}}},
                    "responses": _responses("update", 200, _envelope("agent", agent))},
            "delete": {"operationId": "delete_agent", "tags": ["agents"],
                       "summary": "An Open vSwitch agent: its node (admin)",
                       "responses": _responses("delete", 204, None)},
        },
    }


def _fixed_paths() -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    html = {"text/html": {"schema": {"type": "string"}}}
    any_obj = {"type": "object"}
    check = {"type": "object", "properties": {
        "status": {"enum": ["ok", "failing"]},
        "checks": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"ok": {"type": "boolean"}, "detail": {"type": "string"}}}}}}
    return {
        "/": {"get": {"operationId": "versions", "tags": ["discovery"],
                      "responses": {"200": _json({"type": "object", "required": ["versions"],
                                                  "properties": {"versions": {"type": "array"}}})}}},
        "/v2.0/extensions": {"get": {"operationId": "list_extensions", "tags": ["discovery"],
                                     "responses": _responses("list", 200, _envelope(
                                         "extensions", {"type": "array", "items": any_obj}))}},
        "/v2.0/extensions/{alias}": {
            "parameters": [{"name": "alias", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"operationId": "show_extension", "tags": ["discovery"],
                    "responses": _responses("show", 200, _envelope("extension", any_obj))}},
        "/v2.0/alcor/changes": {"get": {
            "operationId": "list_changes", "tags": ["alcor"],
            "summary": "The change log after `since`; `wait` long-polls for the next rev (admin)",
            "parameters": [
                {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 60}}],
            "responses": _responses("list", 200, _ref("Changes"))}},
        "/v2.0/alcor/topology": {"get": {
            "operationId": "show_topology", "tags": ["alcor"],
            "summary": "VPCs, subnets, ports and hosts with their sync state (admin); `after` and "
                       "`wait` long-poll for a change",
            "parameters": [
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 30}}],
            "responses": _responses("list", 200, _envelope("topology", any_obj))}},
        "/healthz": {"get": {"operationId": "healthz", "tags": ["operations"],
                             "summary": "Alive: the event loop answers",
                             "responses": {"200": _json(check)}}},
        "/readyz": {"get": {"operationId": "readyz", "tags": ["operations"],
                            "summary": "Ready: store writable, transport connected",
                            "responses": {"200": _json(check), "503": _json(check, "Not ready")}}},
        "/metrics": {"get": {"operationId": "metrics", "tags": ["operations"],
                             "summary": "Prometheus text format",
                             "responses": {"200": {"description": "OK", "content": text}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "tags": ["operations"],
                                  "responses": {"200": _json(any_obj)}}},
        "/ui": {"get": {"operationId": "ui", "tags": ["operations"], "summary": "The topology page",
                        "responses": {"200": {"description": "OK", "content": html}}}},
    }


def _components() -> dict[str, Any]:
    error = {"type": "object", "required": ["NeutronError"], "properties": {"NeutronError": {
        "type": "object", "required": ["type", "message", "detail"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                       "detail": {"type": "string"}}}}}
    change = {"type": "object", "properties": {
        "rev": {"type": "integer"}, "time": {"type": "number"}, "type": {"type": "string"},
        "id": {"type": "string"}, "op": {"enum": ["create", "update", "delete"]},
        "project_id": {"type": "string", "nullable": True}, "vpc_id": {"type": "string", "nullable": True},
        "revision_number": {"type": "integer", "nullable": True},
        "body": {"type": "object", "nullable": True}}}
    return {
        "schemas": {
            "NeutronError": error,
            "Link": {"type": "object", "properties": {"rel": {"type": "string"},
                                                      "href": {"type": "string"}}},
            "Change": change,
            "Changes": {"type": "object", "required": ["changes", "last_rev", "horizon"], "properties": {
                "changes": {"type": "array", "items": _ref("Change")},
                "last_rev": {"type": "integer"}, "horizon": {"type": "integer"},
                "changes_links": {"type": "array", "items": _ref("Link")}}},
        },
        "responses": {f"E{code}": _json(_ref("NeutronError"), text)
                      for code, text in DESCRIPTIONS.items()},
        "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}},
    }


def document(collections: Mapping[str, Resource], *, version: str = "0.1.0", quotas: bool = True,
             bindings: bool = True) -> dict[str, Any]:
    """The whole document for the collections served (URL path → resource schema); `quotas` and
    `bindings`: whether the quotas and binding-extended APIs are served too."""
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Alcor-py API", "version": version,
                 "description": "Neutron v2.0 networking API with Alcor's nodes and change log. "
                                "Errors are Neutron's NeutronError body."},
        # noauth ignores the token; token auth needs it. Both are valid for the same document.
        "security": [{}, {"token": []}],
        "paths": {},
        "components": _components(),
    }
    for path, res in collections.items():
        doc["components"]["schemas"].update(resource_schemas(res))
        doc["paths"].update(collection_paths(path, res))
        if "tags" in res.attrs:
            doc["paths"].update(_tag_paths(path, res))
    served = {res.collection for res in collections.values()}
    if "routers" in served:
        doc["paths"].update(_router_actions())
    if "nodes" in served:
        agent = resource_schemas(AGENT)
        doc["components"]["schemas"].update(Agent=agent["Agent"], AgentUpdate=agent["AgentUpdate"])
        doc["paths"].update(_agent_paths())
    if quotas:
        doc["paths"].update(_quota_paths())
    if bindings and "ports" in served:
        doc["paths"].update(_binding_paths())
    doc["paths"].update(_fixed_paths())
    return doc
