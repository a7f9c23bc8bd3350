"""Configuration: typed sections, each declared once by the module that owns it, loaded in layers.

A section is a frozen dataclass with a `SECTION` name; its fields are the keys, their annotations
the types and their defaults the defaults (config/alcor.toml lists the same keys and defaults, and
tests/unit/core/test_config.py holds the two together). `load` layers the shipped file, the
operator's file, the environment (ALCOR_<SECTION>__<KEY>) and any explicit layers (the command
line), checks every section, key and value, and returns a `Config`; a module asks it for its own
section by class, so the type checker sees every key it reads:

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     SECTION = "demo"  # not annotated: a class attribute, not a key
    ...     port: int = 1
    ...     debug: bool = False
    >>> cfg = load(env={"ALCOR_DEMO__DEBUG": "true"}, sections=[Demo], shipped=None)
    >>> cfg.get(Demo)
    Demo(port=1, debug=True)
    >>> load(env={"ALCOR_DEMO__PROT": "2"}, sections=[Demo], shipped=None)
    Traceback (most recent call last):
    ...
    alcor.config.ConfigError: environment ALCOR_DEMO__PROT: unknown key demo.prot (did you mean port?)

Any mistake is one `ConfigError` line, which the program prints before it exits with status 2.
Supported field types: bool, int, float, str, list[str], Literal[...] (one of the choices), and
dict[str, <a dataclass>] (a table of tables, e.g. api.tokens; not settable from the environment).
A section may define `check(self)` for rules across keys (raise ConfigError). A field with
`metadata={"config": False}` is runtime state filled in by its owner, not a key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "alcor.toml"

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


class Config:
    """The checked configuration: one instance of each section's class."""

    def __init__(self, sections: Iterable[Any] = ()) -> None:
        self._by_class: dict[type, Any] = {type(s): s for s in sections}

    def get(self, cls: type[T]) -> T:
        """This section as loaded; its defaults when the Config was made without it (tests)."""
        found = self._by_class.get(cls)
        if found is None:
            found = self._by_class[cls] = cls()
        return typing.cast(T, found)

    def sections(self) -> list[Any]:
        return list(self._by_class.values())

    def __repr__(self) -> str:
        return f"Config({', '.join(map(repr, self._by_class.values()))})"


def keys(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """A section's keys by name (fields that are runtime state are not keys)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("config", True)}


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{f.name} has no default")


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    sections: Iterable[type],
    layers: Iterable[tuple[str, Mapping[str, Any]]] = (),
    shipped: Path | None = SHIPPED,
) -> Config:
    """Defaults ← shipped file ← `path` (or ALCOR_CONFIG) ← environment ← `layers`.

    `layers` are (origin, {section: {key: value}}) pairs checked like a file, e.g. the command
    line's ("--port", {"api": {"port": 8080}}). Raises ConfigError.
    """
    env = os.environ if env is None else env
    by_name = {cls.SECTION: cls for cls in sections}  # type: ignore[attr-defined]
    values: dict[str, dict[str, Any]] = {name: {} for name in by_name}
    files = [shipped] if shipped is not None and shipped.exists() else []
    if path is None and env.get("ALCOR_CONFIG"):
        path = env["ALCOR_CONFIG"]
    if path is not None:
        files.append(Path(path))
    for f in files:
        _merge(values, by_name, _read(f), str(f))
    _apply_env(values, by_name, env)
    for origin, data in layers:
        _merge(values, by_name, data, origin)
    out = []
    for name, cls in by_name.items():
        section = cls(**values[name])
        check = getattr(section, "check", None)
        if check is not None:
            check()
        out.append(section)
    return Config(out)


def _read(f: Path) -> dict[str, Any]:
    try:
        with open(f, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {f} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {f} is not valid TOML: {e}") from None


def _unknown(what: str, name: str, known: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{what}{hint}")


def _merge(
    values: dict[str, dict[str, Any]],
    by_name: Mapping[str, type],
    data: Mapping[str, Any],
    origin: str,
) -> None:
    for name, table in data.items():
        if name not in by_name:
            raise _unknown(f"{origin}: unknown section [{name}]", name, by_name)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{origin}: [{name}] must be a table")
        fields = keys(by_name[name])
        hints = typing.get_type_hints(by_name[name])
        for key, value in table.items():
            where = f"{origin}: {name}.{key}"
            if key not in fields:
                raise _unknown(f"{where}: unknown key", key, fields)
            values[name][key] = _typed(value, hints[key], where)


def _apply_env(
    values: dict[str, dict[str, Any]], by_name: Mapping[str, type], env: Mapping[str, str]
) -> None:
    for var, raw in sorted(env.items()):
        if not var.startswith("ALCOR_") or "__" not in var:
            continue  # ALCOR_CONFIG, ALCOR_URL, ...: not a key
        name, _, key = var[len("ALCOR_") :].lower().partition("__")
        where = f"environment {var}"
        if name not in by_name:
            raise _unknown(f"{where}: unknown section [{name}]", name, by_name)
        fields = keys(by_name[name])
        if key not in fields:
            raise _unknown(f"{where}: unknown key {name}.{key}", key, fields)
        hint = typing.get_type_hints(by_name[name])[key]
        values[name][key] = _from_text(raw, hint, where, f"{name}.{key}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return "a list of strings"
    if typing.get_origin(hint) is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _typed(value: Any, hint: Any, where: str) -> Any:
    """A TOML value checked against the key's type (no conversion from strings: TOML has types)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, str) and value not in choices:
            # the one case-insensitive key: synchronous = "full" has always meant FULL
            value = next((c for c in choices if c.lower() == value.lower()), value)
        if value not in choices:
            raise ConfigError(f"{where} must be {_describe(hint)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
        return list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        entry_cls = typing.get_args(hint)[1]
        return {k: _entry(entry_cls, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{where}: unsupported type {hint!r}")
    if not ok:
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
    return value


def _entry(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table")
    fields = keys(cls)
    hints = typing.get_type_hints(cls)
    for key in value:
        if key not in fields:
            raise _unknown(f"{where}.{key}: unknown key", key, fields)
    missing = [k for k, f in fields.items() if k not in value and _required(f)]
    if missing:
        raise ConfigError(f"{where} needs {missing[0]} = …")
    return cls(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in value.items()})


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_TRUE, _FALSE = ("true", "1"), ("false", "0")


def _from_text(raw: str, hint: Any, where: str, key: str) -> Any:
    """An environment variable's text as the type of `key`."""
    text = raw.strip()
    origin = typing.get_origin(hint)
    if origin is Literal:
        return _typed(text, hint, f"{where}: {key}")
    if origin is list:
        return [p.strip() for p in text.split(",") if p.strip()]
    if origin is dict:
        raise ConfigError(f"{where}: a table cannot be set from the environment; use a file")
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{where}: expected true, false, 1 or 0, got {raw!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if hint is float:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: expected a finite number, got {raw!r}")
        return number
    if hint is str:
        return raw
    raise TypeError(f"{where}: unsupported type {hint!r}")

