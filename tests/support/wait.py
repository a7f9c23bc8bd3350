"""Waiting for what a test cannot be told about: poll a check until it holds, or fail at a deadline.

    value = await eventually(lambda: agent.statuses.get(port), 5.0, "the port never reported")

`check` may be a plain function, return an awaitable, or (blocking=True) block: then it runs in a
thread, so a subprocess call (ovs-ofctl, ip netns exec) does not stall the event loop. Its first
truthy value is returned; at the deadline the test fails with `what` (a string, or a function
that says what was seen instead).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def eventually(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    *,
    interval: float = 0.02,
    blocking: bool = False,
) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(check) if blocking else check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said} (not within {timeout:g} s)")
        await asyncio.sleep(interval)
