"""Liveness and readiness: what /healthz and /readyz answer, and what gates systemd's READY=1.

    checks = await readiness(kernel, role="controller")
    # {"store": Check(ok=True, detail="writable"), "transport": Check(ok=True, detail="in-process"), …}

Alive means the event loop answers. Ready means every part this role needs works: the controller's
store takes a write and its HTTP site is bound, the southbound transport is connected; an agent
consumes its queue and listens for its switch. Each check looks a module up by name and is skipped
when the module is not loaded, so the same code serves every role.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alcor.agent.stream import StreamModule
from alcor.api.app import HttpModule
from alcor.db.backends import StoreModule
from alcor.ops.metrics import datapath_of, stream_of, transport_of
from alcor.southbound import SouthboundModule

if TYPE_CHECKING:
    from alcor.kernel import Kernel

STORE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


async def _store(kernel: Kernel) -> Check:
    store = kernel.get(StoreModule).store
    try:
        ok = await asyncio.wait_for(store.writable(), STORE_TIMEOUT)
    except TimeoutError:
        return Check(False, f"no write transaction within {STORE_TIMEOUT:g}s")
    return Check(ok, "writable" if ok else "not writable")


def _api(kernel: Kernel) -> Check:
    api = kernel.get(HttpModule)
    if getattr(api, "runner", None) is None:
        return Check(False, "not listening")
    return Check(True, f"listening on port {api.port}")


def transport_check(transport: Any) -> Check:
    """Connected, as far as the transport lets us see: its own `connected`, or its brokers."""
    connected = getattr(transport, "connected", None)
    if connected is not None:
        ok = bool(connected() if callable(connected) else connected)
        return Check(ok, "connected" if ok else "not connected")
    brokers = getattr(transport, "brokers", None)
    if brokers is None:
        return Check(True, "in-process")
    if not brokers:
        # The RabbitMQ transport opens connections on first use; none has been needed yet.
        return Check(True, "no broker connection opened yet")
    down = [f"{url} vhost {vhost}" for (url, vhost), b in brokers.items()
            if getattr(b, "connection", None) is None or b.connection.is_closed]
    if down:
        return Check(False, "not connected: " + ", ".join(_redact(d) for d in down))
    return Check(True, f"{len(brokers)} broker connection(s) open")


def _redact(text: str) -> str:
    if "@" not in text:
        return text
    scheme, _, rest = text.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _stream(kernel: Kernel) -> Check:
    stream = stream_of(kernel)
    # `_sub` is set once the node's queue is consumed; the stream has no public flag for it yet.
    if stream is None or getattr(stream, "_sub", None) is None:
        return Check(False, "node queue not consumed yet")
    return Check(True, f"consuming {stream.address.queue}")


def _switch_listener(dp: Any) -> Check:
    server = getattr(dp, "_server", None)
    listening = getattr(server, "_server", None) is not None
    listen = getattr(getattr(dp, "config", None), "listen", "?")
    if not listening:
        return Check(False, f"OpenFlow listener {listen} not up")
    connected = getattr(dp, "connected", None)
    switch = "switch connected" if connected is not None and connected.is_set() else "no switch yet"
    return Check(True, f"listening on {listen}, {switch}")


async def readiness(kernel: Kernel, role: str) -> dict[str, Check]:
    checks: dict[str, Check] = {}
    if kernel.has(StoreModule):
        checks["store"] = await _store(kernel)
    if kernel.has(HttpModule):
        checks["api"] = _api(kernel)
    if kernel.has(SouthboundModule):
        checks["transport"] = transport_check(kernel.get(SouthboundModule).transport)
    if role == "agent":
        # The dev run's embedded agent waits for its node to be registered; that must not make the
        # controller unready, so only the agent role checks its stream and switch listener.
        transport = transport_of(kernel)
        if transport is not None and not kernel.has(SouthboundModule):
            checks["transport"] = transport_check(transport)
        if kernel.has(StreamModule):
            checks["stream"] = _stream(kernel)
        dp = datapath_of(kernel)
        if dp is not None:
            checks["switch_listener"] = _switch_listener(dp)
    return checks


def summary(checks: dict[str, Check]) -> dict[str, Any]:
    ok = all(c.ok for c in checks.values())
    return {"status": "ok" if ok else "failing", "checks": {n: c.as_dict() for n, c in checks.items()}}
