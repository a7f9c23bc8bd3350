"""One schema per resource: the attributes a resource has, who may set them, how they are checked.

The same `Resource` drives request validation, filters and sorting in the API, the stored body and
(through the change log) the southbound wire. Validators convert and return the value, or raise
`Invalid(reason)`, which the API renders as Neutron's "Invalid input for <attr>. Reason: …".
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alcor.errors import BadRequest, invalid_attr, policy

MISSING: Any = object()


class Invalid(Exception):
    """A value failed validation; the message is Neutron's reason text."""


Validator = Callable[[Any], Any]


def described(v: Validator, json_schema: dict[str, Any]) -> Validator:
    """Attach the JSON Schema of what `v` accepts, so the OpenAPI document is derived from the
    validators themselves (alcor/ops/openapi.py) rather than kept as a second copy."""
    v.json_schema = json_schema  # type: ignore[attr-defined]
    return v


def json_schema_of(v: Validator) -> dict[str, Any] | None:
    """The JSON Schema `described` attached to a validator, if any."""
    schema: dict[str, Any] | None = getattr(v, "json_schema", None)
    return schema


@dataclass(frozen=True)
class Attr:
    name: str
    validate: Validator
    default: Any = MISSING          # MISSING: required on create when `post` (unless `optional`)
    post: bool = True               # may be given on create
    put: bool = False               # may be given on update
    optional: bool = True           # False: required on create
    admin_only: bool = False        # only admin may set it (create or update)
    filter: Validator | None = None  # query-string converter; None: same as validate on strings
    filterable: bool = True
    sortable: bool = True
    kind: str = "string"            # JSON type for documentation: string, integer, boolean, array, object


@dataclass
class Resource:
    name: str                 # singular: "port"
    collection: str           # plural: "ports"
    neutron_name: str         # CamelCase for errors: "Port"
    attrs: dict[str, Attr] = field(default_factory=dict)
    id_field: str = "id"
    parent_field: str | None = None  # indexed column: network_id for subnets and ports

    def __post_init__(self) -> None:
        self.attrs = {a.name: a for a in self.attrs.values()} if isinstance(self.attrs, dict) else self.attrs

    def add(self, *attrs: Attr) -> Resource:
        for a in attrs:
            self.attrs[a.name] = a
        return self


# Validators ----------------------------------------------------------------------------------------

def string(max_len: int = 255) -> Validator:
    def v(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"'{value}' is not a valid string")
        if len(value) > max_len:
            raise Invalid(f"'{value}' exceeds maximum length of {max_len}")
        return value
    return described(v, {"type": "string", "maxLength": max_len})


def nullable(inner: Validator) -> Validator:
    def v(value: Any) -> Any:
        return None if value is None else inner(value)
    doc = dict(json_schema_of(inner) or {})
    if "enum" in doc:
        doc["enum"] = [*doc["enum"], None]  # OpenAPI 3.0: `nullable` alone does not widen an enum
    return described(v, {**doc, "nullable": True})


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise Invalid(f"'{value}' cannot be converted to boolean")


described(boolean, {"type": "boolean"})


def uuid_str(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"'{value}' is not a valid UUID")
    try:
        uuid.UUID(value)
    except ValueError:
        raise Invalid(f"'{value}' is not a valid UUID") from None
    return value


described(uuid_str, {"type": "string", "format": "uuid"})


def project_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise Invalid(f"'{value}' is not a valid project id")
    return value


described(project_id, {"type": "string", "minLength": 1, "maxLength": 255})


def integer(lo: int | None = None, hi: int | None = None) -> Validator:
    def v(value: Any) -> int:
        if isinstance(value, bool):
            raise Invalid(f"'{value}' is not an integer")
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise Invalid(f"'{value}' is not an integer") from None
        if not isinstance(value, int):
            raise Invalid(f"'{value}' is not an integer")
        if lo is not None and value < lo:
            raise Invalid(f"'{value}' is too small - must be at least '{lo}'")
        if hi is not None and value > hi:
            raise Invalid(f"'{value}' is too large - must be no larger than '{hi}'")
        return value
    bounds = {k: b for k, b in (("minimum", lo), ("maximum", hi)) if b is not None}
    return described(v, {"type": "integer", **bounds})


def ip_address(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"'{value}' is not a valid IP address")
    try:
        # Neutron refuses the shortened forms inet_aton would take ("10.1").
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid(f"'{value}' is not a valid IP address") from None


described(ip_address, {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})


def cidr(value: Any) -> str:
    """A subnet in any spelling; returned canonical (host bits cleared, as Neutron stores it)."""
    if not isinstance(value, str) or "/" not in value:
        raise Invalid(f"'{value}' is not a valid IP subnet")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise Invalid(f"'{value}' is not a valid IP subnet") from None


described(cidr, {"type": "string", "format": "cidr"})  # a custom format, see alcor/ops/openapi.py


def ip_or_cidr(value: Any) -> str:
    if isinstance(value, str) and "/" in value:
        return cidr(value)
    return ip_address(value)


described(ip_or_cidr, {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"},
                                                    {"format": "cidr"}]})


_MAC = re.compile(r"^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$", re.IGNORECASE)


def mac_address(value: Any) -> str:
    if not isinstance(value, str) or not _MAC.match(value):
        raise Invalid(f"'{value}' is not a valid MAC address")
    mac = value.lower().replace("-", ":")
    first = int(mac[:2], 16)
    if mac == "00:00:00:00:00:00" or first & 1:
        # Multicast and the zero MAC cannot be a port's address.
        raise Invalid(f"'{value}' is not a valid MAC address")
    return mac


described(mac_address, {"type": "string", "pattern": "^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$"})


def one_of(*choices: Any) -> Validator:
    def v(value: Any) -> Any:
        if value not in choices:
            raise Invalid(f"'{value}' is not in {list(choices)}")
        return value
    return described(v, {"enum": list(choices)})


def int_one_of(*choices: int) -> Validator:
    """One of some integers, also given as their decimal text (Neutron's convert_to_int: clients
    send `"ip_version": "4"`)."""
    def v(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or value not in choices:
            raise Invalid(f"'{value}' is not in {list(choices)}")
        return int(value)
    return described(v, {"enum": list(choices)})


def list_of(inner: Validator, unique: bool = False) -> Validator:
    def v(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid(f"'{value}' is not a list")
        out = [inner(x) for x in value]
        if unique and len(set(map(str, out))) != len(out):
            raise Invalid(f"Duplicate items in the list: '{', '.join(map(str, value))}'")
        return out
    items = json_schema_of(inner) or {}
    return described(v, {"type": "array", "items": items, **({"uniqueItems": True} if unique else {})})


def dict_of(schema: dict[str, tuple[Validator, bool]], *, extra: bool = False) -> Validator:
    """A dict with known keys; schema: key → (validator, required)."""
    def v(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid(f"'{value}' is not a dictionary")
        unknown = set(value) - set(schema)
        if unknown and not extra:
            raise Invalid(f"Unrecognized attribute(s) '{', '.join(sorted(unknown))}'")
        out: dict[str, Any] = dict(value) if extra else {}
        for key, (inner, required) in schema.items():
            if key in value:
                out[key] = inner(value[key])
            elif required:
                raise Invalid(f"Validation of dictionary's keys failed. Expected keys: {{'{key}'}}")
        return out
    doc: dict[str, Any] = {"type": "object",
                           "properties": {k: json_schema_of(i) or {} for k, (i, _) in schema.items()},
                           "additionalProperties": extra}
    required = [k for k, (_, r) in schema.items() if r]
    if required:
        doc["required"] = required
    return described(v, doc)


def any_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"'{value}' is not a dictionary")
    return value


described(any_dict, {"type": "object"})


# Request checking ----------------------------------------------------------------------------------

def _check(attr: Attr, value: Any) -> Any:
    try:
        return attr.validate(value)
    except Invalid as e:
        raise invalid_attr(attr.name, str(e)) from None


def check_create(res: Resource, body: Any, *, is_admin: bool) -> dict[str, Any]:
    """Validate one create request body; returns the given attributes converted, defaults filled."""
    if not isinstance(body, dict):
        raise BadRequest(f"Invalid input: the {res.name} must be a JSON object.")
    unknown = [k for k in body if k not in res.attrs or not res.attrs[k].post]
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(sorted(unknown))}'")
    out: dict[str, Any] = {}
    for name, attr in res.attrs.items():
        if not attr.post:
            continue
        if name in body:
            if attr.admin_only and not is_admin:
                raise policy(f"create_{res.name}:{name}")
            out[name] = _check(attr, body[name])
        elif not attr.optional:
            raise BadRequest(f"Failed to parse request. Required attribute '{name}' not specified")
        elif attr.default is not MISSING:
            out[name] = attr.default() if callable(attr.default) else attr.default
    return out


def check_update(res: Resource, body: Any, *, is_admin: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"Invalid input: the {res.name} must be a JSON object.")
    bad = [k for k in body if k not in res.attrs]
    if bad:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(sorted(bad))}'")
    ro = [k for k in body if not res.attrs[k].put]
    if ro:
        raise BadRequest(f"Cannot update read-only attribute {ro[0]}")
    out: dict[str, Any] = {}
    for name, value in body.items():
        attr = res.attrs[name]
        if attr.admin_only and not is_admin:
            raise policy(f"update_{res.name}:{name}")
        out[name] = _check(attr, value)
    return out


def tenant_of(res: Resource, given: dict[str, Any], ctx_project: str, is_admin: bool) -> str:
    """Neutron's project_id/tenant_id rules: both may be given if equal; only admin names another project."""
    project = given.pop("project_id", None)
    tenant = given.pop("tenant_id", None)
    if project and tenant and project != tenant:
        raise BadRequest("'project_id' and 'tenant_id' do not match")
    wanted = project or tenant or ctx_project
    if wanted != ctx_project and not is_admin:
        raise BadRequest(
            "Specifying 'project_id' or 'tenant_id' other than the authenticated project in "
            "request requires admin privileges"
        )
    return wanted


# Attributes every Neutron resource shares -------------------------------------------------------

def standard(res: Resource, *, named: bool = True, described: bool = True) -> Resource:
    res.add(
        Attr("id", uuid_str, post=False),
        Attr("project_id", project_id, default=MISSING),
        Attr("tenant_id", project_id, default=MISSING),
        Attr("revision_number", integer(), post=False, kind="integer"),
        Attr("created_at", string(), post=False),
        Attr("updated_at", string(), post=False),
    )
    if named:
        res.add(Attr("name", string(255), default="", put=True))
    if described:
        res.add(Attr("description", string(255), default="", put=True))
    return res
