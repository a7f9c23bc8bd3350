"""Every section of the configuration, by the module that owns it, and the loader over them all.

    >>> cfg = load(env={"ALCOR_API__PORT": "9797"})
    >>> from alcor.api.config import ApiConfig
    >>> cfg.get(ApiConfig).port
    9797

A new key is a field (type, default, comment) on its owner's dataclass and a line in
config/alcor.toml; a new section is a dataclass with `SECTION = "name"` in the module that owns
it, listed here (a plugin lists its own in its module's `SECTIONS`), and a [name] table in
config/alcor.toml (docs/architecture.md, "Configuration").
tests/unit/core/test_config.py fails until the file and the dataclasses agree.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Iterable, Mapping
from typing import Any

from alcor import config
from alcor.agent.config import AgentConfig, DhcpConfig, NodeConfig
from alcor.api.config import ApiConfig
from alcor.api.keystone import KeystoneAuthtokenConfig
from alcor.db.store import StoreConfig
from alcor.kernel import PLUGINS, KernelConfig
from alcor.log import LogConfig
from alcor.resources.networks import NetworkConfig
from alcor.resources.quotas import QuotaConfig
from alcor.southbound.dispatcher import Settings as SouthboundConfig
from alcor.southbound.gateways import GatewayConfig
from alcor.transport import MqConfig


def plugin_sections() -> tuple[type, ...]:
    """The sections of every plugin in plugins/, by name, whether loaded or not (so that a typo
    in [zeta] is caught before anyone adds "zeta" to [kernel] plugins)."""
    package = importlib.import_module(PLUGINS)
    found: list[type] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        found += getattr(importlib.import_module(f"{PLUGINS}.{info.name}"), "SECTIONS", ())
    return tuple(found)


# In the order of config/alcor.toml.
SECTIONS: tuple[type, ...] = (
    KernelConfig,
    LogConfig,
    StoreConfig,
    ApiConfig,
    KeystoneAuthtokenConfig,
    NetworkConfig,
    QuotaConfig,
    MqConfig,
    SouthboundConfig,
    GatewayConfig,
    NodeConfig,
    AgentConfig,
    DhcpConfig,
    *plugin_sections(),
)


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    layers: Iterable[tuple[str, Mapping[str, Any]]] = (),
) -> config.Config:
    """The program's configuration: config/alcor.toml ← `path` ← ALCOR_* ← `layers`."""
    return config.load(path, env, sections=SECTIONS, layers=layers)
