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
        "/v2.0/agents": {"get": {"operationId": "list_agents", "tags": ["agents"],
                                 "summary": "Agents from the node records and their liveness (admin)",
                                 "responses": _responses("list", 200, _envelope(
                                     "agents", {"type": "array", "items": any_obj}))}},
        "/v2.0/agents/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"operationId": "show_agent", "tags": ["agents"],
                    "responses": _responses("show", 200, _envelope("agent", any_obj))}},
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


def document(collections: Mapping[str, Resource], *, version: str = "0.1.0") -> dict[str, Any]:
    """The whole document for the collections served (URL path → resource schema)."""
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
    if any(res.collection == "routers" for res in collections.values()):
        doc["paths"].update(_router_actions())
    doc["paths"].update(_fixed_paths())
    return doc
