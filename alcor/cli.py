"""The `alcor` command and `python main.py`: run a role of the program.

    python main.py                 # dev run: controller + in-process transport + embedded agent
    python main.py controller      # the controller alone (RabbitMQ transport from config)
    python main.py agent           # the node agent alone
    alcor --config /etc/alcor/alcor.toml controller

and the operator's commands against a running one (alcor/admin.py):

    alcor status | alcor changes --follow | alcor node show NAME | alcor agent flows
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from typing import Any

import uvloop

from alcor import log as log_mod
from alcor import sections
from alcor.config import Config, ConfigError
from alcor.db.store import StoreError
from alcor.kernel import Kernel, KernelConfig, Module, load_plugin

ROLES = ("dev", "controller", "agent")


def modules_for(role: str, cfg: Config) -> list[Module]:
    from alcor.controller import controller_modules

    modules: list[Module] = []
    if role in ("dev", "controller"):
        modules += controller_modules(cfg)
    extra = _role_modules(role, cfg)
    modules += extra
    for name in cfg.get(KernelConfig).plugins:
        modules.append(load_plugin(name, cfg))
    if not any(m.name == "ops" for m in modules):
        # The agent role has no API: ops opens its own listener for /healthz, /readyz, /metrics.
        from alcor.ops import OpsModule

        modules.append(OpsModule(cfg, role))
    return modules


def _role_modules(role: str, cfg: Config) -> list[Module]:
    """Southbound and agent modules of the role (alcor/roles.py)."""
    from alcor import roles

    result: list[Module] = roles.modules(role, cfg)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alcor", description="Alcor-py SDN control plane",
        epilog="Operator commands: alcor status | changes [--follow] | node show NAME | "
               "agent flows (alcor status --help)")
    p.add_argument("role", nargs="?", default="dev", choices=ROLES,
                   help="dev (default): controller, in-process transport and a local agent; "
                        "controller; agent")
    p.add_argument("--config", "-c", help="TOML file layered over config/alcor.toml "
                                          "(also ALCOR_CONFIG)")
    p.add_argument("--port", type=int, help="HTTP API port (overrides api.port)")
    p.add_argument("--db", help="SQLite file (overrides store.path)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from alcor import admin

    if admin.wants(argv):
        return admin.main(argv)
    args = parser().parse_args(argv)
    try:
        flags: list[tuple[str, dict[str, Any]]] = []
        if args.port is not None:
            flags.append(("--port", {"api": {"port": args.port}}))
        if args.db is not None:
            flags.append(("--db", {"store": {"path": args.db}}))
        cfg = sections.load(args.config, layers=flags)
        logging = cfg.get(log_mod.LogConfig)
        log_mod.setup(logging.level, logging.format)
        kernel = Kernel(cfg, modules_for(args.role, cfg))
    except ConfigError as e:
        print(f"alcor: config error: {e}", file=sys.stderr)
        return 2
    try:
        if args.role == "controller":
            # libuv's event loop (uvloop): every API request, store round trip and dispatch
            # goes through the loop's sockets, callbacks and timers, which cost less in C; the
            # controllers' CPU per create dropped ~10 % with it (bench/api_ports.py, see
            # docs/performance.md). The agent and the dev run keep asyncio's loop.
            # The cyclic GC's young collections, every 700 allocations of containers by
            # default, were ~4 % of a controller's CPU under load (perf): a request allocates
            # thousands (bodies, rows, coroutines, futures) that reference counting frees
            # anyway, and each collection walks those still alive. Collected 20 times less
            # often, the walks mostly find them gone.
            gc.set_threshold(GC_YOUNG, 10, 10)
            uvloop.run(kernel.run())
        else:
            asyncio.run(kernel.run())
    except ConfigError as e:
        print(f"alcor: config error: {e}", file=sys.stderr)
        return 2
    except (StoreError, OSError) as e:
        print(f"alcor: cannot start: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


# Container allocations between the controller's young collections (CPython's default: 700).
GC_YOUNG = 14_000


def run(argv: Any = None) -> None:
    sys.exit(main(argv))
