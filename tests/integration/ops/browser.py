"""Headless Chromium driven over the DevTools protocol, from the test's event loop.

    async with Browser.launch(tmp_path) as b:
        await b.open("http://127.0.0.1:9696/ui")
        names = await b.eval("[...document.querySelectorAll('.vpc-name')].map(e => e.textContent)")
        await b.screenshot(tmp_path / "page.png")

Debian's `chromium` runs with --headless --no-sandbox; the page talks to the controller served by
the same loop, so nothing here may block.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.wait import eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.proc = proc
        self.ws = ws
        self._ids = itertools.count(1)

    @classmethod
    @asynccontextmanager
    async def launch(cls, tmp: Path, width: int = 1400, height: int = 1000) -> AsyncIterator[Browser]:
        assert CHROMIUM is not None
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            f"--user-data-dir={tmp / 'chromium-profile'}", f"--window-size={width},{height}",
            "--remote-debugging-port=0", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            port = await asyncio.wait_for(_devtools_port(proc), 30)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = await r.json()
                page = next(t for t in targets if t["type"] == "page")
                async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    b = cls(proc, ws)
                    await b.send("Page.enable")
                    await b.send("Runtime.enable")
                    # Twice the pixels: screenshots read better, by people and by OCR alike.
                    await b.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                 deviceScaleFactor=2, mobile=False)
                    yield b
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), 30)).data)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def eval(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """The page's value of `expression`, once it is truthy."""

        async def value() -> Any:
            try:
                return await self.eval(expression)
            except RuntimeError:
                return None  # the page is still loading: its elements are not there yet

        return await eventually(
            value, timeout, f"the page never made this true: {expression}", interval=0.1
        )

    async def screenshot(self, path: Path) -> Path:
        r = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(r["data"]))
        return path


async def _devtools_port(proc: asyncio.subprocess.Process) -> int:
    assert proc.stderr is not None
    while True:
        line = (await proc.stderr.readline()).decode(errors="replace")
        if not line:
            raise RuntimeError(f"chromium exited ({proc.returncode}) before DevTools listened")
        m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if m:
            return int(m.group(1))
