"""Zeta's management API, as a client with retries: every call is retried with exponential
backoff (and jitter) on connection errors, timeouts, 5xx and 429; other 4xx answers fail at once.

    zc = ZetaClient("http://zeta-mgmt:8080", timeout=5, attempts=5)
    reply = await zc.register_vpc(vpc_id, vni)   # {"zgc_id", "gws": [{"ip", "mac"}], "port_ibo"}
    await zc.post_ports([{...}]); await zc.delete_port(port_id); await zc.deregister_vpc(vpc_id)
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger("alcor.zeta.client")


class ZetaError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ZetaClient:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 5,
        backoff: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout, self.attempts = timeout, max(1, attempts)
        self.backoff, self.backoff_max = backoff, backoff_max
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0
        self.retries = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def call(self, method: str, path: str, body: Any = None, *, gone_ok: bool = False) -> Any:
        """One management call with retries; the JSON answer (None when it has none)."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            self.calls += 1
            try:
                async with self._http().request(method, self.url + path, json=body) as r:
                    if r.status < 300:
                        if r.status == 204 or r.content_type != "application/json":
                            return None
                        return await r.json()
                    if r.status == 404 and gone_ok:
                        return None  # deleting what Zeta no longer has is done
                    text = (await r.text())[:200]
                    err = ZetaError(
                        f"{method} {path}: HTTP {r.status}: {text}",
                        retryable=r.status >= 500 or r.status == 429,
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                err = ZetaError(f"{method} {path}: {type(exc).__name__}: {exc}", retryable=True)
            if not err.retryable or attempt == self.attempts:
                raise err
            self.retries += 1
            log.warning(
                "zeta.call_retry", method=method, path=path, attempt=attempt, error=str(err)
            )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: no herd after an outage
            delay = min(delay * 2, self.backoff_max)
        raise AssertionError("unreachable")

    async def register_vpc(self, vpc_id: str, vni: int) -> dict[str, Any]:
        reply = await self.call("POST", "/vpcs", {"vpc_id": vpc_id, "vni": vni})
        if not isinstance(reply, dict) or not isinstance(reply.get("gws"), list):
            raise ZetaError(f"POST /vpcs: unexpected answer {reply!r:.200}", retryable=False)
        return reply

    async def get_vpc(self, vpc_id: str) -> dict[str, Any]:
        reply = await self.call("GET", f"/vpcs/{vpc_id}")
        if not isinstance(reply, dict):
            raise ZetaError(f"GET /vpcs/{vpc_id}: unexpected answer", retryable=False)
        return reply

    async def deregister_vpc(self, vpc_id: str) -> None:
        await self.call("DELETE", f"/vpcs/{vpc_id}", gone_ok=True)

    async def post_ports(self, ports: list[dict[str, Any]]) -> None:
        if ports:
            await self.call("POST", "/ports", ports)

    async def delete_port(self, port_id: str) -> None:
        await self.call("DELETE", f"/ports/{port_id}", gone_ok=True)
