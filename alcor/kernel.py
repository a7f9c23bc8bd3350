"""The kernel: loads modules, starts them in dependency order, stops them in reverse.

A module is any object with `name`, `requires` (names of modules it needs), `async start(kernel)`
and `async stop()`; it may also offer `routes()` (aiohttp route definitions) that the API module
mounts, and `async ready()`, which returns once the module can do its job (systemd hears READY=1
only after every such gate has passed). Modules find each other through the kernel by class,
`kernel.get(Ports)` (or by a protocol they satisfy, `kernel.get(Transport)`), so the type checker
sees every call one module makes on another; never through globals. Peers that cannot import each
other's class (the resource managers, bound together by Neutron's rules) use `kernel.named(name)`
behind typed accessors (alcor/resources/base.py `Peers`).

Under systemd (Type=notify) the kernel reports STATUS= lines while it starts, READY=1, WATCHDOG=1
every half WatchdogSec while the event loop turns, and STOPPING=1 on shutdown.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import structlog

from alcor.config import Config, ConfigError

log = structlog.get_logger("alcor.kernel")

M = TypeVar("M")


@dataclass(frozen=True)
class KernelConfig:
    """[kernel]"""

    SECTION: ClassVar[str] = "kernel"
    plugins: list[str] = field(default_factory=list)  # optional modules from plugins/, by name


@runtime_checkable
class Module(Protocol):
    name: str
    requires: tuple[str, ...]

    async def start(self, kernel: Kernel) -> None: ...

    async def stop(self) -> None: ...


def notify(message: str) -> None:
    """Tell systemd about our state (Type=notify); a no-op when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            # Never block the event loop on a receiver that is not reading: drop the message.
            s.setblocking(False)
            s.connect(addr)
            s.send(message.encode())
    except OSError as e:
        log.warning("systemd.notify_failed", error=str(e), message=message.split("=", 1)[0])


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when systemd set none."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (e.g. a wrapper's child)
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


def order(modules: Iterable[Module]) -> list[Module]:
    """Dependency order (a module after everything it requires). ConfigError on a missing or cyclic need."""
    by_name = {m.name: m for m in modules}
    done: list[Module] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ConfigError(f"modules depend on each other in a cycle: {' -> '.join(chain + (name,))}")
        if name not in by_name:
            raise ConfigError(f"module {chain[-1]!r} needs {name!r}, which is not loaded")
        state[name] = "visiting"
        for dep in by_name[name].requires:
            visit(dep, chain + (name,))
        state[name] = "done"
        done.append(by_name[name])

    for name in by_name:
        visit(name, ())
    return done


PLUGINS = "alcor_plugins"  # the folder plugins/, installed under the project's name (setup.cfg)


def load_plugin(name: str, config: Config) -> Module:
    """Instantiate plugins/<name> (module alcor_plugins.<name>) by its `create(config)` factory."""
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"kernel.plugins: {name!r} is not a plugin name")
    try:
        mod = importlib.import_module(f"{PLUGINS}.{name}")
    except ModuleNotFoundError as e:
        if e.name in (f"{PLUGINS}.{name}", PLUGINS):
            raise ConfigError(f"kernel.plugins: no plugin named {name!r}") from None
        raise
    module: Module = mod.create(config)
    return module


class Kernel:
    """Owns the modules' lifecycle; the event loop runs in `run()`."""

    def __init__(self, config: Config, modules: Iterable[Module]) -> None:
        self.config = config
        self.modules = order(modules)
        self._by_name = {m.name: m for m in self.modules}
        self._started: list[Module] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False

    def get(self, cls: type[M]) -> M:
        """The loaded module that is a `cls` (a class, or a runtime-checkable protocol)."""
        for m in self.modules:
            if isinstance(m, cls):
                return m
        raise LookupError(f"no module of type {cls.__name__} is loaded")

    def has(self, cls: type) -> bool:
        return any(isinstance(m, cls) for m in self.modules)

    def has_named(self, name: str) -> bool:
        return name in self._by_name

    def named(self, name: str) -> Any:
        """The module called `name` (what `requires` names), untyped: wrap it in a typed accessor."""
        return self._by_name[name]

    def status(self, text: str) -> None:
        """One line for `systemctl status` (STATUS=)."""
        notify(f"STATUS={text}")

    async def start(self) -> None:
        for m in self.modules:
            log.info("module.starting", module=m.name)
            self.status(f"starting {m.name}")
            await m.start(self)
            self._started.append(m)
        log.info("kernel.ready", modules=[m.name for m in self.modules])

    async def announce_ready(self) -> None:
        """Wait for every module's `ready()` gate, then tell systemd READY=1."""
        for m in list(self._started):
            gate = getattr(m, "ready", None)
            if gate is not None and callable(gate):
                self.status(f"waiting for {m.name}")
                try:
                    await gate()
                except Exception:
                    log.exception("kernel.ready_gate_failed", module=m.name)
                    self.status(f"not ready: {m.name} failed its readiness gate")
                    return
        self.ready = True
        notify("READY=1")
        self.status("ready: " + ", ".join(m.name for m in self._started))
        log.info("kernel.announced_ready")

    async def _watchdog(self, interval: float) -> None:
        # Pinging from the loop itself means a loop stuck in a blocking call misses its pings and
        # systemd restarts the process, which is the point of the watchdog.
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        notify("STOPPING=1")
        self.status("stopping")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        while self._started:
            m = self._started.pop()
            try:
                await m.stop()
                log.info("module.stopped", module=m.name)
            except Exception:
                log.exception("module.stop_failed", module=m.name)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start everything, serve until SIGTERM/SIGINT, then stop in reverse order."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            # In tasks, so SIGTERM still stops a kernel whose gates never open (broker down).
            self._tasks.append(loop.create_task(self.announce_ready(), name="kernel.ready"))
            interval = watchdog_interval()
            if interval is not None:
                self._tasks.append(loop.create_task(self._watchdog(interval), name="kernel.watchdog"))
            await self._stop.wait()
            log.info("kernel.stopping")
        finally:
            await self.stop()
