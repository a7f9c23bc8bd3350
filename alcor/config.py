"""Configuration: the shipped TOML file, the operator's file, then ALCOR_* environment overrides.

Every key is declared in DEFAULTS with its type, so a typo or a wrong type is one clear line at start
(`ConfigError`), never a traceback from deep inside a module.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "alcor.toml"

# The shape and defaults of the whole configuration. A section whose default is an empty dict
# named in FREE_SECTIONS accepts any keys (e.g. api.tokens).
DEFAULTS: dict[str, dict[str, Any]] = {
    "kernel": {"plugins": []},
    "log": {"level": "info", "format": "auto"},
    "store": {"path": "var/alcor.db", "synchronous": "FULL", "retention": 10000},
    "api": {
        "host": "127.0.0.1",
        "port": 9696,
        "max_body_bytes": 1048576,
        "auth": "noauth",
        "admin_project": "admin",
        "drain_seconds": 10,
        "tokens": {},
    },
    "network": {"vni_min": 1000, "vni_max": 16000000, "underlay_mtu": 1500},
    "mq": {"url": "amqp://guest:guest@127.0.0.1:5672/", "vhost": "/", "exchange": "alcor"},
}
FREE_SECTIONS = {("api", "tokens")}
# Sections that plugins and later modules own; their keys are checked by their owner.
OPEN_SECTIONS = {"southbound", "agent", "zeta", "rabbitmq", "metrics", "node"}

CHOICES = {
    ("log", "level"): {"debug", "info", "warning", "error"},
    ("log", "format"): {"auto", "console", "json"},
    ("store", "synchronous"): {"NORMAL", "FULL"},
    ("api", "auth"): {"noauth", "token"},
}


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


Config = dict[str, dict[str, Any]]


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults ← shipped file ← `path` ← environment. Raises ConfigError."""
    env = os.environ if env is None else env
    cfg: Config = copy.deepcopy(DEFAULTS)
    files = [SHIPPED] if SHIPPED.exists() else []
    if path is None and env.get("ALCOR_CONFIG"):
        path = env["ALCOR_CONFIG"]
    if path is not None:
        files.append(Path(path))
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {f} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {f} is not valid TOML: {e}") from None
        _merge(cfg, data, str(f))
    _apply_env(cfg, env)
    _check(cfg)
    return cfg


def _merge(cfg: Config, data: Mapping[str, Any], origin: str) -> None:
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        if section not in cfg:
            if section in OPEN_SECTIONS:
                cfg[section] = {}
            else:
                raise ConfigError(f"{origin}: unknown section [{section}]")
        for key, value in values.items():
            where = f"{origin}: {section}.{key}"
            if (section, key) in FREE_SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where} must be a table")
                cfg[section][key] = copy.deepcopy(value)
                continue
            if section in OPEN_SECTIONS and section not in DEFAULTS:
                cfg[section][key] = value
                continue
            if key not in cfg[section]:
                raise ConfigError(f"{where}: unknown key")
            cfg[section][key] = _coerce(value, DEFAULTS[section][key], where)


def _apply_env(cfg: Config, env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith("ALCOR_") or "__" not in name:
            continue
        section, _, key = name[len("ALCOR_") :].lower().partition("__")
        where = f"environment {name}"
        if section not in cfg:
            if section in OPEN_SECTIONS:
                cfg[section] = {}
            else:
                raise ConfigError(f"{where}: unknown section [{section}]")
        if section in DEFAULTS and key not in DEFAULTS[section]:
            raise ConfigError(f"{where}: unknown key {section}.{key}")
        default = DEFAULTS.get(section, {}).get(key, cfg[section].get(key, ""))
        cfg[section][key] = _from_text(raw, default, where)


def _from_text(raw: str, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if isinstance(default, list):
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


def _coerce(value: Any, default: Any, where: str) -> Any:
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{where}: expected {expected.__name__}, got {type(value).__name__}")
    return copy.deepcopy(value)


def _check(cfg: Config) -> None:
    for (section, key), allowed in CHOICES.items():
        value = cfg[section][key]
        if isinstance(value, str) and section == "store":
            value = cfg[section][key] = value.upper()
        if value not in allowed:
            raise ConfigError(f"{section}.{key} must be one of {sorted(allowed)}, got {value!r}")
    net = cfg["network"]
    if not 1 <= net["vni_min"] <= net["vni_max"] <= 2**24 - 1:
        raise ConfigError("network.vni_min..vni_max must lie within 1..16777215")
    # A network's MTU is at most underlay_mtu - 50 (VXLAN over IPv4), and never below IPv4's 68.
    if not 118 <= net["underlay_mtu"] <= 65535:
        raise ConfigError(f"network.underlay_mtu must be 118..65535, got {net['underlay_mtu']}")
    if not 1 <= cfg["api"]["port"] <= 65535:
        raise ConfigError(f"api.port must be 1..65535, got {cfg['api']['port']}")
    for token, entry in cfg["api"]["tokens"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("project"), str):
            raise ConfigError(f"api.tokens.{token} needs project = \"…\"")
        if entry.get("role", "member") not in ("admin", "member"):
            raise ConfigError(f"api.tokens.{token}.role must be admin or member")
    if cfg["api"]["auth"] == "token" and not cfg["api"]["tokens"]:
        raise ConfigError("api.auth = \"token\" needs at least one [api.tokens.<token>]")
