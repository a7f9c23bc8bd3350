"""What each role of the program runs, beyond the controller's own modules (alcor/controller.py).

- dev: the southbound dispatcher on the in-process transport, an agent stream for this host (which
  registers the host as a node) and this host's datapath on Open vSwitch, all in one process;
- controller: the dispatcher (transport from `[southbound] transport`; "rabbitmq" needs the
  rabbitmq plugin);
- agent: the agent stream for `[node] id` over the rabbitmq plugin, and the datapath.

The one place that puts the controller's southbound and the host agent together: neither package
imports the other (they share alcor/wire.py and alcor/transport.py).
"""

from __future__ import annotations

from typing import Any

from alcor.agent.datapath import DatapathModule
from alcor.agent.stream import StreamModule
from alcor.api.config import ApiConfig
from alcor.config import Config
from alcor.southbound import SouthboundModule
from alcor.southbound.dispatcher import Settings


def stream_module(config: Config, embedded: bool) -> StreamModule:
    """The agent stream, given the two things of the controller's sections it must agree on."""
    return StreamModule(
        config,
        embedded,
        controller_queue=config.get(Settings).controller_queue,
        admin_project=config.get(ApiConfig).admin_project,
    )


def southbound_modules(role: str, config: Config) -> list[Any]:
    """The dispatcher and agent stream of each role (no datapath)."""
    if role == "dev":
        return [SouthboundModule(config), stream_module(config, embedded=True)]
    if role == "controller":
        return [SouthboundModule(config)]
    if role == "agent":
        return [stream_module(config, embedded=False)]
    raise ValueError(f"unknown role {role!r}")


def modules(role: str, cfg: Config) -> list[Any]:
    mods = southbound_modules(role, cfg)
    if role in ("dev", "agent"):
        mods.append(DatapathModule(cfg))
    return mods
