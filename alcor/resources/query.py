"""List requests: Neutron's filters, fields, sorting and pagination, turned into one SQL query.

`?name=a&name=b&status=ACTIVE` is (name = a OR name = b) AND status = ACTIVE; a parameter that is not
an attribute of the resource is a 400, as in Neutron with filter validation on. `changed_since=T`
keeps what was updated at or after T (Neutron's standard-attr-timestamp). `tags=a,b` keeps what has
every tag given, `tags-any=a,b` what has one of them, `not-tags` and `not-tags-any` the rest
(Neutron's standard-attr-tag). Filters run in the
database on the stored JSON bodies (alcor/db/dialect.py), so a list never loads rows it will not
return.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from multidict import MultiMapping

from alcor.db.dialect import SQLITE, Dialect
from alcor.errors import BadRequest
from alcor.resources.schema import Invalid, Resource

RESERVED = {"fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir"}
TAG_FILTERS = ("tags", "tags-any", "not-tags", "not-tags-any")
MAX_LIMIT = 10000
SQL_INT_MIN, SQL_INT_MAX = -(2**63), 2**63 - 1


@dataclass
class ListQuery:
    filters: dict[str, list[Any]] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    limit: int | None = None
    marker: str | None = None
    page_reverse: bool = False
    sort: list[tuple[str, str]] = field(default_factory=list)
    changed_since: str | None = None  # updated_at >= this (standard-attr-timestamp), as stored
    tags: dict[str, list[str]] = field(default_factory=dict)  # TAG_FILTERS → tags named


def changed_since(value: str) -> str:
    """Neutron's `changed_since` (ISO 8601, UTC unless it says otherwise) in the stored format."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"The input changed_since must be in the following format: "
                         f"YYYY-MM-DDTHH:MM:SS, got {value!r}") from None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(res: Resource, params: MultiMapping[str], extra_filters: frozenset[str] = frozenset()) -> ListQuery:
    q = ListQuery()
    for key in params:
        if key in RESERVED or key in q.filters:
            continue
        if key == "changed_since" and "updated_at" in res.attrs:
            q.changed_since = changed_since(params[key])
            continue
        if key in TAG_FILTERS and "tags" in res.attrs:
            # Neutron's form is one comma-separated list; repeating the parameter adds to it.
            q.tags[key] = [t for v in params.getall(key) for t in v.split(",") if t]
            continue
        attr = res.attrs.get(key)
        values = params.getall(key)
        if key in extra_filters:
            q.filters[key] = list(values)
            continue
        if attr is None or not attr.filterable:
            raise BadRequest(f"{key} is invalid attribute for filtering", type="HTTPBadRequest")
        conv = attr.filter or attr.validate
        out: list[Any] = []
        for v in values:
            if attr.kind == "integer":
                try:
                    n = int(v)
                except ValueError:
                    raise BadRequest(f"Invalid input for {key}. Reason: '{v}' is not an integer.") from None
                if not SQL_INT_MIN <= n <= SQL_INT_MAX:
                    # No stored value lies outside SQLite's 64-bit integers, and binding one fails.
                    raise BadRequest(f"Invalid input for {key}. Reason: '{v}' is out of range.")
                out.append(n)
                continue
            if attr.kind == "boolean":
                if v.lower() not in ("true", "false", "1", "0"):
                    raise BadRequest(f"Invalid input for {key}. Reason: '{v}' cannot be converted to boolean.")
                out.append(v.lower() in ("true", "1"))
                continue
            if attr.kind in ("array", "object") and attr.filter is None:
                raise BadRequest(f"{key} is invalid attribute for filtering")
            try:
                out.append(conv(v) if attr.filter else v)
            except Invalid as e:
                raise BadRequest(f"Invalid input for {key}. Reason: {e}.") from None
        q.filters[key] = out
    q.fields = [f for f in params.getall("fields", []) if f]
    for f in q.fields:
        if f not in res.attrs:
            # Neutron ignores unknown fields silently; we refuse, so a typo is visible.
            raise BadRequest(f"{f} is not a valid field for {res.collection}")
    if "limit" in params:
        try:
            q.limit = int(params["limit"])
        except ValueError:
            raise BadRequest(f"Bad limit request: Limit must be an integer, got {params['limit']!r}.") from None
        if q.limit < 0:
            raise BadRequest(f"Bad limit request: Limit must be an integer 0 or greater and not '{q.limit}'.")
        q.limit = min(q.limit, MAX_LIMIT) or None
    q.marker = params.get("marker") or None
    q.page_reverse = params.get("page_reverse", "false").lower() in ("true", "1")
    keys = params.getall("sort_key", [])
    dirs = params.getall("sort_dir", [])
    if dirs and len(dirs) != len(keys):
        raise BadRequest("The number of sort_keys and sort_dirs must be same")
    for i, k in enumerate(keys):
        attr = res.attrs.get(k)
        if attr is None or not attr.sortable or attr.kind in ("array", "object"):
            raise BadRequest(f"{k} is an invalid attribute for sort_keys")
        d = dirs[i].lower() if dirs else "asc"
        if d not in ("asc", "desc"):
            raise BadRequest(f"{d} is an invalid value for sort_dirs, valid values are: asc, desc")
        q.sort.append((k, d))
    return q


@dataclass
class SQL:
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, clause: str, *params: Any) -> None:
        self.where.append(clause)
        self.params.extend(params)


def filter_sql(res: Resource, q: ListQuery, sql: SQL, d: Dialect = SQLITE) -> None:
    if q.changed_since is not None:
        sql.add(f"{d.value('updated_at', 'string')} >= ?", q.changed_since)
    _tags_filter(q.tags, sql, d)
    for key, values in q.filters.items():
        attr = res.attrs.get(key)
        if key == "fixed_ips":
            _fixed_ips_filter(values, sql, d)
            continue
        if attr is not None and attr.kind == "array":
            marks = ",".join("?" * len(values))
            sql.add(f"EXISTS (SELECT 1 FROM {d.elements(key)} WHERE {d.element_text()} IN ({marks}))",
                    *values)
            continue
        kind = attr.kind if attr is not None else "string"
        if key == res.id_field or key == "id":
            col = "id"
        elif key in ("project_id", "tenant_id"):
            col = "project_id"
        elif res.parent_field and key == res.parent_field:
            col = "parent_id"
        else:
            col = d.value(key, kind)
        has_null = any(v is None or v == "" for v in values) and attr is not None and attr.kind != "string"
        vals = [d.param(v, kind) for v in values if not (has_null and v in (None, ""))]
        parts = []
        if vals:
            parts.append(f"{col} IN ({','.join('?' * len(vals))})")
        if has_null:
            parts.append(f"{col} IS NULL")
        sql.add("(" + " OR ".join(parts) + ")", *vals)


def _tags_filter(tags: dict[str, list[str]], sql: SQL, d: Dialect) -> None:
    def has(tag: str) -> str:
        return f"EXISTS (SELECT 1 FROM {d.elements('tags')} WHERE {d.element_text()} = ?)"
    for key, names in tags.items():
        if not names:
            continue
        every = " AND ".join(has(t) for t in names)
        some = " OR ".join(has(t) for t in names)
        clause = {"tags": every, "tags-any": some,
                  "not-tags": f"NOT ({every})", "not-tags-any": f"NOT ({some})"}[key]
        sql.add(f"({clause})", *names)


def _fixed_ips_filter(values: list[str], sql: SQL, d: Dialect) -> None:
    ors = []
    params: list[Any] = []
    for v in values:
        key, _, value = str(v).partition("=")
        if key not in ("ip_address", "subnet_id", "ip_address_substr"):
            raise BadRequest(f"Invalid fixed_ips filter {v!r}: use ip_address=…, subnet_id=… or ip_address_substr=…")
        if key == "ip_address_substr":
            ors.append(d.contains(d.element_text("j", "ip_address")))
        else:
            ors.append(f"{d.element_text('j', key)} = ?")
        params.append(value)
    sql.add(f"EXISTS (SELECT 1 FROM {d.elements('fixed_ips')} WHERE {' OR '.join(ors)})", *params)


def order_sql(res: Resource, q: ListQuery, d: Dialect = SQLITE) -> tuple[list[tuple[str, str, str]], str]:
    """The sort columns as (expression, direction, kind), always ending with id for a stable order."""
    cols: list[tuple[str, str, str]] = []
    for key, direction in q.sort:
        if key == res.id_field:
            continue
        kind = res.attrs[key].kind if key in res.attrs else "string"
        cols.append((d.value(key, kind), direction, kind))
    last = q.sort[-1][1] if q.sort else "asc"
    cols.append(("id", dict(q.sort).get(res.id_field, last), "string"))
    if q.page_reverse:
        cols = [(c, "desc" if o == "asc" else "asc", k) for c, o, k in cols]
    return cols, ", ".join(d.order(c, o) for c, o, _ in cols)


def marker_sql(cols: list[tuple[str, str, str]], marker_row: dict[str, Any], res: Resource,
               q: ListQuery, sql: SQL, d: Dialect = SQLITE) -> None:
    """Rows strictly after the marker in the sort order (lexicographic over the sort columns)."""
    values = []
    for (key, _), (_, _, kind) in zip([s for s in q.sort if s[0] != res.id_field], cols, strict=False):
        values.append(d.param(marker_row.get(key), kind))
    values.append(marker_row[res.id_field])
    ors = []
    params: list[Any] = []
    for i, (col, direction, _) in enumerate(cols):
        eqs = [d.same(cols[j][0]) for j in range(i)]
        op = ">" if direction == "asc" else "<"
        ors.append("(" + " AND ".join([*eqs, f"{col} {op} ?"]) + ")")
        params.extend(values[:i])
        params.append(values[i])
    sql.add("(" + " OR ".join(ors) + ")", *params)


def project(item: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    return {f: item[f] for f in fields if f in item}


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
