"""What each role of the program runs, beyond the controller's own modules (alcor/controller.py).

- dev: the southbound dispatcher on the in-process transport, an agent stream for this host (which
  registers the host as a node) and this host's datapath on Open vSwitch;
- controller: the dispatcher (transport from `[southbound] transport`);
- agent: the agent stream for `[node] id` over RabbitMQ, and the datapath.
"""

from __future__ import annotations

from typing import Any

from alcor.agent.datapath import DatapathModule
from alcor.config import Config
from alcor.southbound import role_modules


def modules(role: str, cfg: Config) -> list[Any]:
    mods = role_modules(role, cfg)
    if role in ("dev", "agent"):
        mods.append(DatapathModule(cfg))
    return mods
