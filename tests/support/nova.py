"""A stand-in for the part of Nova that Neutron talks to: `POST /v2.1/os-server-external-events`.

This is a peer of the program under test (what Nova's API does with the call), not a mock of any of
its code: it authenticates the caller's token against the real Keystone (as Nova's own
keystonemiddleware would), applies Nova's policy for the call (the `service` or `admin` role),
checks the body the way Nova's schema does, answers as Nova answers (200; 207 with a code per event
when some instances are unknown; 404 when none is known), and records what it accepted.

    nova = NovaStandin(keystone, servers={"9c1…"})
    await nova.start()                      # http://127.0.0.1:PORT/v2.1 → register it as `compute`
    await nova.down(); await nova.up()      # Nova away for a while, back on the same port
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.process import free_port

NAMES = {"network-changed", "network-vif-plugged", "network-vif-unplugged", "network-vif-deleted",
         "volume-extended", "power-update", "accelerator-request-bound", "volume-reimaged"}
STATUSES = {"failed", "completed", "in-progress"}


@dataclass
class Received:
    at: float  # when the call arrived (before Nova's own token check)
    event: dict[str, Any]
    user: str


@dataclass
class NovaStandin:
    keystone: Any
    servers: set[str] = field(default_factory=set)
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    calls: list[tuple[int, str]] = field(default_factory=list)  # (status, caller) per POST
    runner: web.AppRunner | None = None
    _admin: Any = None
    _tokens: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2.1"

    async def start(self) -> NovaStandin:
        app = web.Application()
        app.add_routes([web.post("/v2.1/os-server-external-events", self._events)])
        self.runner = web.AppRunner(app, access_log=None)
        # Nova's own login to Keystone happens before it serves (not inside the first call).
        await asyncio.get_running_loop().run_in_executor(None, self._validate, "warm-up")
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def down(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def up(self) -> None:
        await self.start()

    stop = down

    def _validate(self, token: str) -> dict[str, Any] | None:
        """Keystone's word on the token (GET /v3/auth/tokens), kept for a few seconds as
        keystonemiddleware keeps it."""
        hit = self._tokens.get(token)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        if self._admin is None:
            self._admin = self.keystone.session("admin")
        r = self._admin.get(f"{self.keystone.url}/auth/tokens", headers={"X-Subject-Token": token},
                            raise_exc=False)
        info = r.json()["token"] if r.status_code == 200 else None
        if info is not None:
            self._tokens[token] = (time.monotonic() + 5.0, info)
        return info

    async def _events(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        token = request.headers.get("X-Auth-Token", "")
        info = await asyncio.get_running_loop().run_in_executor(None, self._validate, token) if token else None
        if info is None:
            self.calls.append((401, ""))
            return web.json_response({"error": {"code": 401, "title": "Unauthorized"}}, status=401)
        user = info["user"]["name"]
        roles = {r["name"] for r in info.get("roles", [])}
        if not roles & {"service", "admin"}:  # os_compute_api:os-server-external-events:create
            self.calls.append((403, user))
            return web.json_response({"forbidden": {"code": 403, "message": "Policy doesn't allow "
                                      "os_compute_api:os-server-external-events:create"}}, status=403)
        try:
            body = await request.json()
            events = body["events"]
            assert isinstance(events, list) and events
            for e in events:
                assert set(e) <= {"name", "server_uuid", "status", "tag"}
                assert e["name"] in NAMES and e.get("status", "completed") in STATUSES
                uuid.UUID(e["server_uuid"])
        except (ValueError, KeyError, AssertionError, TypeError):
            self.calls.append((400, user))
            return web.json_response({"badRequest": {"code": 400, "message": "Invalid input"}}, status=400)
        answer = []
        for e in events:
            code = 200 if e["server_uuid"] in self.servers else 404
            answer.append({**e, "status": e.get("status", "completed"), "code": code})
            if code == 200:
                self.received.append(Received(arrived, dict(e), user))
        codes = {a["code"] for a in answer}
        status = 200 if codes == {200} else 404 if codes == {404} else 207
        self.calls.append((status, user))
        if status == 404:
            return web.json_response({"itemNotFound": {"code": 404, "message": "No instances found "
                                                       "for any event"}}, status=404)
        return web.json_response({"events": answer}, status=status)

    def got(self, name: str | None = None, tag: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in self.received
                if (name is None or r.event["name"] == name) and (tag is None or r.event["tag"] == tag)]
