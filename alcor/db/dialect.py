"""The SQL that differs between the two stores: reading attributes out of the stored JSON bodies.

Resource rows keep their body as JSON text (SQLite `TEXT`, PostgreSQL `json`, which keeps the text
as written), and lists filter and sort on attributes inside it. Everything else the managers write
is plain SQL that both engines run as is, with `?` placeholders (the PostgreSQL store renumbers
them `$1, $2, …`).

    d = store.dialect
    sql = f"SELECT id FROM resources WHERE type = 'port' AND {d.text('device_id')} = ?"
"""

from __future__ import annotations

import re
from typing import Any

_SIMPLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _key(key: str) -> str:
    if "'" in key or '"' in key:
        raise ValueError(f"attribute name {key!r} cannot be used in SQL")
    return key


class Dialect:
    name: str
    lock_row = ""  # appended to a SELECT that must lock the rows it reads until commit

    def text(self, key: str, col: str = "body") -> str:
        """The attribute as text (strings compare equal to a str parameter; NULL when absent)."""
        raise NotImplementedError

    def value(self, key: str, kind: str, col: str = "body") -> str:
        """The attribute typed by its schema kind, for comparisons and ORDER BY."""
        raise NotImplementedError

    def param(self, value: Any, kind: str) -> Any:
        """A Python value as the parameter that compares with `value(key, kind)`."""
        raise NotImplementedError

    def is_true(self, key: str, col: str = "body") -> str:
        """A boolean attribute is true."""
        raise NotImplementedError

    def elements(self, key: str, col: str = "body", alias: str = "j") -> str:
        """A table of a JSON array attribute's elements: `alias.value` is each element (JSON)."""
        raise NotImplementedError

    def element_text(self, alias: str = "j", key: str | None = None) -> str:
        """An element of `elements()` as text (scalar arrays), or its member `key` as text."""
        raise NotImplementedError

    def contains(self, haystack: str) -> str:
        """`haystack` contains the text parameter."""
        raise NotImplementedError

    def same(self, a: str) -> str:
        """`a` equals the parameter, NULL equal to NULL."""
        raise NotImplementedError

    def order(self, expr: str, direction: str) -> str:
        """An ORDER BY term; NULL sorts first ascending, as in SQLite."""
        return f"{expr} {direction.upper()}"


class SQLite(Dialect):
    name = "sqlite"

    @staticmethod
    def _path(key: str) -> str:
        # Quoted when the name has a colon, as binding:host_id.
        return f"$.{key}" if _SIMPLE.match(key) else f'$."{_key(key)}"'

    def text(self, key: str, col: str = "body") -> str:
        return f"json_extract({col}, '{self._path(key)}')"

    def value(self, key: str, kind: str, col: str = "body") -> str:
        return self.text(key, col)  # json_extract keeps the JSON type

    def param(self, value: Any, kind: str) -> Any:
        return int(value) if isinstance(value, bool) else value

    def is_true(self, key: str, col: str = "body") -> str:
        return f"{self.text(key, col)} = 1"

    def elements(self, key: str, col: str = "body", alias: str = "j") -> str:
        return f"json_each({col}, '{self._path(key)}') AS {alias}"

    def element_text(self, alias: str = "j", key: str | None = None) -> str:
        if key is None:
            return f"{alias}.value"
        return f"json_extract({alias}.value, '{self._path(key)}')"

    def contains(self, haystack: str) -> str:
        return f"instr({haystack}, ?) > 0"

    def same(self, a: str) -> str:
        return f"{a} IS ?"


class PostgreSQL(Dialect):
    name = "postgresql"
    lock_row = " FOR UPDATE"

    def text(self, key: str, col: str = "body") -> str:
        return f"({col}->>'{_key(key)}')"

    def value(self, key: str, kind: str, col: str = "body") -> str:
        t = self.text(key, col)
        if kind == "integer":
            return f"({t})::bigint"
        if kind == "boolean":
            return f"({t})::boolean"
        # Byte order, as SQLite sorts, whatever the database's collation.
        return f'{t} COLLATE "C"'

    def param(self, value: Any, kind: str) -> Any:
        if kind == "integer" and not isinstance(value, bool):
            return int(value)
        if kind == "boolean":
            return bool(value)
        return value if value is None or isinstance(value, str) else str(value)

    def is_true(self, key: str, col: str = "body") -> str:
        return f"{self.text(key, col)} = 'true'"

    def elements(self, key: str, col: str = "body", alias: str = "j") -> str:
        # A missing or non-array attribute is an empty table, as json_each makes it in SQLite.
        return (f"json_array_elements(CASE WHEN json_typeof({col}->'{_key(key)}') = 'array' "
                f"THEN {col}->'{_key(key)}' ELSE '[]'::json END) AS {alias}(value)")

    def element_text(self, alias: str = "j", key: str | None = None) -> str:
        if key is None:
            return f"({alias}.value #>> '{{}}')"
        return f"({alias}.value->>'{_key(key)}')"

    def contains(self, haystack: str) -> str:
        return f"strpos({haystack}, ?) > 0"

    def same(self, a: str) -> str:
        return f"{a} IS NOT DISTINCT FROM ?"

    def order(self, expr: str, direction: str) -> str:
        nulls = "FIRST" if direction.lower() == "asc" else "LAST"
        return f"{expr} {direction.upper()} NULLS {nulls}"


SQLITE = SQLite()
POSTGRESQL = PostgreSQL()


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, …` (outside quoted literals and identifiers)."""
    out = []
    n = 0
    quote = ""
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)
