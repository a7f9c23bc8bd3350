"""Every section of the configuration, by the module that owns it, and the loader over them all.

    >>> cfg = load(env={"ALCOR_API__PORT": "9797"})
    >>> from alcor.api.config import ApiConfig
from alcor.api.keystone import KeystoneAuthtokenConfig
    >>> cfg.get(ApiConfig).port
    9797

A new key is a field (type, default, comment) on its owner's dataclass and a line in
config/alcor.toml; a new section is a dataclass with `SECTION = "name"` in the module that owns
it, listed here, and a [name] table in config/alcor.toml (docs/architecture.md, "Configuration").
tests/unit/core/test_config.py fails until the file and the dataclasses agree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from alcor import config
from alcor.agent.config import AgentConfig, NodeConfig
from alcor.api.config import ApiConfig
from alcor.api.keystone import KeystoneAuthtokenConfig
from alcor.db.store import StoreConfig
from alcor.kernel import KernelConfig
from alcor.log import LogConfig
from alcor.resources.networks import NetworkConfig
from alcor.southbound.dispatcher import Settings as SouthboundConfig
from alcor.transport import MqConfig
from plugins.nova import NovaConfig
from plugins.rabbitmq import RabbitConfig
from plugins.zeta import ZetaConfig

# In the order of config/alcor.toml.
SECTIONS: tuple[type, ...] = (
    KernelConfig,
    LogConfig,
    StoreConfig,
    ApiConfig,
    KeystoneAuthtokenConfig,
    NetworkConfig,
    MqConfig,
    SouthboundConfig,
    NodeConfig,
    AgentConfig,
    RabbitConfig,
    ZetaConfig,
    NovaConfig,
)


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    layers: Iterable[tuple[str, Mapping[str, Any]]] = (),
) -> config.Config:
    """The program's configuration: config/alcor.toml ← `path` ← ALCOR_* ← `layers`."""
    return config.load(path, env, sections=SECTIONS, layers=layers)
