"""Nova plugin: tell Nova when a VM's port is plugged, unplugged or deleted, as Neutron does.

Nova boots a VM, then waits (`vif_plugging_timeout`, 300 s) for `network-vif-plugged` on each of
its ports; later it listens for `network-vif-unplugged` and `network-vif-deleted`. This plugin
derives those events from the change log, for ports whose `device_owner` is `compute:*`:

| port change                       | event                                  |
|-----------------------------------|----------------------------------------|
| DOWN → ACTIVE                     | network-vif-plugged, status completed  |
| DOWN → ERROR                      | network-vif-plugged, status failed     |
| ACTIVE → DOWN                     | network-vif-unplugged                  |
| deleted                           | network-vif-deleted                    |

each with `server_uuid` = the port's `device_id` and `tag` = the port id, and POSTs them, batched,
to Nova's `os-server-external-events` (the compute endpoint from Keystone's catalog, with the
`[nova]` credentials, as Neutron's `[nova]` section gives them).

Nothing is lost by a restart: deriving events and remembering them is one store transaction
(the change-log cursor, the ports' last known state and the outbox of events to send move
together), and an event leaves the outbox only once Nova has answered for it. Nova down or
failing: the batch is retried with backoff, the API never waits. Nova's answer that an instance
does not exist (404) or is not on a host (422) is final: logged and counted, not retried. A
cursor behind the change log's compaction horizon re-derives from the ports' current state.

Config [nova] (with "nova" in [kernel] plugins): `NovaConfig` below.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import structlog
from aiohttp import web

from alcor.api.auth import context
from alcor.api.keystone import ServiceCredentials
from alcor.config import Config, ConfigError
from alcor.context import Context
from alcor.db.backends import StoreModule
from alcor.db.changelog import Change
from alcor.db.store import Migration
from alcor.errors import policy
from alcor.resources.ports import Ports

if TYPE_CHECKING:
    from alcor.kernel import Kernel

log = structlog.get_logger("plugins.nova")

PLUGGED, UNPLUGGED, DELETED = "network-vif-plugged", "network-vif-unplugged", "network-vif-deleted"

MIGRATIONS: list[Migration] = [
    {
        "sqlite": """
    CREATE TABLE nova_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), rev INTEGER NOT NULL);
    CREATE TABLE nova_ports (port_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,
                             status TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE nova_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL,
                              event TEXT NOT NULL);
    """,
        "postgresql": """
    CREATE TABLE nova_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), rev BIGINT NOT NULL);
    CREATE TABLE nova_ports (port_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,
                             status TEXT NOT NULL);
    CREATE TABLE nova_outbox (seq BIGSERIAL PRIMARY KEY, rev BIGINT NOT NULL, event TEXT NOT NULL);
    """,
    },
]

@dataclass(frozen=True)
class NovaConfig(ServiceCredentials):
    """[nova] (with "nova" in [kernel] plugins): how to reach Nova, as Neutron's [nova] section
    (the login options are ServiceCredentials'; Nova's endpoint comes from Keystone's catalog)."""

    SECTION: ClassVar[str] = "nova"
    endpoint_type: Literal["public", "internal", "admin"] = "public"
    timeout: float = 30.0  # seconds per call to Keystone or Nova
    send_events_interval: float = 0.1  # seconds events are gathered into one call
    retry_max: float = 10.0  # the longest wait between retries while Nova fails
BATCH_MAX = 200
PERMANENT = {400, 404, 410, 422}  # per-event codes (and whole answers) that retrying cannot change


SECTIONS = (NovaConfig,)  # found by alcor/sections.py


# The functional core: a port's change → its events ------------------------------------------------

@dataclass(frozen=True, slots=True)
class Known:
    """What the plugin last saw of a compute port."""

    device_id: str
    status: str


def is_compute(body: dict[str, Any] | None) -> bool:
    return bool(body and str(body.get("device_owner") or "").startswith("compute:")
                and body.get("device_id"))


def events_for(change: Change, known: Known | None) -> tuple[list[dict[str, str]], Known | None]:
    """The events one change of a port gives, and what to remember of the port after it.

    >>> c = Change(7, 0.0, "port", "p1", "update", None, "n1", 2,
    ...            {"device_owner": "compute:nova", "device_id": "vm1", "status": "ACTIVE"})
    >>> events_for(c, Known("vm1", "DOWN"))[0]
    [{'name': 'network-vif-plugged', 'server_uuid': 'vm1', 'tag': 'p1', 'status': 'completed'}]
    """
    if change.op == "delete":
        if known is None:
            return [], None
        return [event(DELETED, known.device_id, change.id, "completed")], None
    body = change.body
    if not is_compute(body):
        return [], None  # not (or no longer) a VM's port: Nova is not waiting on it
    assert body is not None
    now = Known(str(body["device_id"]), str(body.get("status") or "DOWN"))
    before = known.status if known is not None and known.device_id == now.device_id else "DOWN"
    if before == now.status:
        return [], now
    if before == "ACTIVE" and now.status == "DOWN":
        return [event(UNPLUGGED, now.device_id, change.id, "completed")], now
    if before in ("DOWN", "BUILD") and now.status in ("ACTIVE", "ERROR"):
        status = "failed" if now.status == "ERROR" else "completed"
        return [event(PLUGGED, now.device_id, change.id, status)], now
    return [], now


def event(name: str, server: str, port: str, status: str) -> dict[str, str]:
    return {"name": name, "server_uuid": server, "tag": port, "status": status}


def outcome(http_status: int, answer: Any, sent: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Nova's answer to a batch → (indexes delivered or finally refused, indexes to retry)."""
    if http_status in (200, 207) and isinstance(answer, dict) and isinstance(answer.get("events"), list):
        done: list[int] = []
        again: list[int] = []
        got = answer["events"]
        for i in range(len(sent)):
            code = got[i].get("code", 200) if i < len(got) and isinstance(got[i], dict) else 200
            (again if code >= 500 else done).append(i)
        return done, again
    if http_status in PERMANENT:
        return list(range(len(sent))), []
    return [], list(range(len(sent)))


# The shell: change log → outbox → Nova --------------------------------------------------------------

class NovaNotifier:
    name = "nova"
    requires: tuple[str, ...] = ("store", "ports")

    def __init__(self, config: Config) -> None:
        cfg = config.get(NovaConfig)
        self.interval = cfg.send_events_interval
        self.retry_max = cfg.retry_max
        self.interface = cfg.endpoint_type
        self.region = cfg.region_name or None
        self._session = _session(cfg)
        self.kernel: Kernel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox = asyncio.Event()
        self._stopping = False
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "nova-events")
        self._warming: asyncio.Future[None] | None = None
        self.cursor = 0
        self.counters = {"derived": 0, "delivered": 0, "refused": 0, "retried_batches": 0,
                         "resyncs": 0}
        self.last_error = ""

    # --- lifecycle ---

    async def start(self, kernel: Kernel) -> None:
        self.kernel = kernel
        store = kernel.get(StoreModule).store
        self.store = store
        await store.migrate("nova", MIGRATIONS)
        row = await store.fetchone("SELECT rev FROM nova_cursor WHERE id = 1")
        if row is None:
            # First start: Nova is told about what happens from now on, not about every port that
            # was ever plugged (it is not waiting for those).
            await self._resync(store.changes.last_rev, announce=False)
        else:
            self.cursor = int(row[0])
        loop = asyncio.get_running_loop()
        # Log in to Keystone and find Nova now, so the first VM's event does not wait for it.
        self._warming = loop.run_in_executor(self._pool, self._warm)
        self._tasks = [loop.create_task(self._follow(), name="nova.follow"),
                       loop.create_task(self._send_loop(), name="nova.send")]
        self._outbox.set()  # whatever a previous run left in the outbox goes first
        log.info("nova.started", cursor=self.cursor, region=self.region, interface=self.interface)

    async def ready(self) -> None:
        """Once logged in to Keystone with Nova's endpoint found (or that attempt failed: the
        first send then tries again), so the first events leave at once."""
        if self._warming is not None:
            await asyncio.shield(self._warming)

    async def stop(self) -> None:
        self._stopping = True
        self._outbox.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- deriving events (one transaction per batch of change-log rows) ---

    async def _follow(self) -> None:
        changes = self.store.changes
        while not self._stopping:
            try:
                await changes.wait(self.cursor, 1.0)
                if changes.horizon > self.cursor:
                    await self._resync(changes.last_rev, announce=True)
                    continue
                rows = await changes.read(self.cursor, 1000)
                if rows:
                    await self._derive(rows)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store unavailable, a bug: the cursor did not move, try again
                log.exception("nova.follow_failed", cursor=self.cursor)
                await asyncio.sleep(1.0)

    async def _derive(self, rows: list[Change]) -> None:
        ports = [c for c in rows if c.type == "port"]
        async with self.store.transaction() as tx:
            known = await _known(tx, {c.id for c in ports})
            out: list[tuple[int, dict[str, str]]] = []
            for c in ports:
                evs, after = events_for(c, known.get(c.id))
                out += [(c.rev, e) for e in evs]
                known[c.id] = after
            await _remember(tx, known)
            if out:
                await tx.executemany("INSERT INTO nova_outbox(rev, event) VALUES (?, ?)",
                                     [(rev, json.dumps(e)) for rev, e in out])
            await _set_cursor(tx, rows[-1].rev)
        self.cursor = rows[-1].rev
        if out:
            self.counters["derived"] += len(out)
            for rev, e in out:
                log.info("nova.event_derived", rev=rev, name=e["name"], port=e["tag"],
                         server=e["server_uuid"], status=e["status"])
            self._outbox.set()

    async def _resync(self, upto: int, announce: bool) -> None:
        """Start over from the ports as they are (first start, or behind the compaction horizon):
        the difference with what was known becomes events (when `announce`)."""
        bodies = await self.kernel.get(Ports).list_all(_ADMIN) if self.kernel else []
        current = {b["id"]: b for b in bodies if is_compute(b)}
        async with self.store.transaction() as tx:
            known = await _known(tx, None)
            out: list[dict[str, str]] = []
            state: dict[str, Known | None] = {pid: None for pid in known}
            for pid, body in current.items():
                evs, after = events_for(Change(upto, time.time(), "port", pid, "update", None, None,
                                               None, body), known.get(pid))
                out += evs
                state[pid] = after
            for pid, k in known.items():
                if pid not in current and k is not None:
                    out.append(event(DELETED, k.device_id, pid, "completed"))
            await _remember(tx, state)
            if announce and out:
                await tx.executemany("INSERT INTO nova_outbox(rev, event) VALUES (?, ?)",
                                     [(upto, json.dumps(e)) for e in out])
            await _set_cursor(tx, upto)
        self.cursor = upto
        if announce:
            self.counters["resyncs"] += 1
            self.counters["derived"] += len(out)
            log.warning("nova.resynced", rev=upto, events=len(out))
            self._outbox.set()

    # --- sending ---

    async def _send_loop(self) -> None:
        while not self._stopping:
            try:
                await self._send_until_failure()
            except asyncio.CancelledError:
                raise
            except Exception:  # the outbox stays as it is: what was not sent is sent later
                log.exception("nova.send_loop_failed")
                await asyncio.sleep(1.0)

    async def _send_until_failure(self) -> None:
        backoff = 0.0
        while not self._stopping:
            if backoff:
                await asyncio.sleep(backoff)
            else:
                await self._outbox.wait()
                self._outbox.clear()
                await asyncio.sleep(self.interval)  # gather what comes meanwhile into one call
            rows = await self.store.fetchall(
                "SELECT seq, event FROM nova_outbox ORDER BY seq LIMIT ?", (BATCH_MAX,))
            if not rows:
                backoff = 0.0
                continue
            sent = [json.loads(e) for _, e in rows]
            try:
                status, answer = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._post, sent)
            except Exception as e:  # keystoneauth's connect failures, timeouts, auth errors
                status, answer = 0, None
                self.last_error = f"{type(e).__name__}: {e}"
            done, again = outcome(status, answer, sent)
            if done:
                await self._finish([rows[i][0] for i in done], sent, done, status, answer)
            if again:
                self.counters["retried_batches"] += 1
                backoff = min(max(backoff * 2, 0.5), self.retry_max)
                log.warning("nova.send_failed", status=status, events=len(again), retry_in=backoff,
                            error=self.last_error if status == 0 else _brief(answer))
            else:
                backoff = 0.0
                if len(rows) == BATCH_MAX:
                    self._outbox.set()

    def _warm(self) -> None:
        try:
            self._session.get_endpoint(service_type="compute", interface=self.interface,
                                       region_name=self.region)
        except Exception as e:  # Keystone not there yet: the first send logs in instead
            log.warning("nova.keystone_unreachable", error=f"{type(e).__name__}: {e}")

    def _post(self, events: list[dict[str, str]]) -> tuple[int, Any]:
        """On the plugin's thread: one POST to Nova's os-server-external-events."""
        r = self._session.post("/os-server-external-events", json={"events": events},
                               endpoint_filter={"service_type": "compute", "interface": self.interface,
                                                "region_name": self.region},
                               raise_exc=False, headers={"X-OpenStack-Nova-API-Version": "2.1"})
        try:
            body = r.json()
        except ValueError:
            body = r.text[:500]
        if r.status_code >= 400:
            self.last_error = f"HTTP {r.status_code}: {_brief(body)}"
        return r.status_code, body

    async def _finish(self, seqs: list[int], sent: list[dict[str, str]], done: list[int],
                      status: int, answer: Any) -> None:
        codes = [200] * len(sent)
        if isinstance(answer, dict) and isinstance(answer.get("events"), list):
            codes = [e.get("code", 200) if isinstance(e, dict) else 200 for e in answer["events"]]
            codes += [200] * (len(sent) - len(codes))
        elif status in PERMANENT:
            codes = [status] * len(sent)
        async with self.store.transaction() as tx:
            await tx.executemany("DELETE FROM nova_outbox WHERE seq = ?", [(s,) for s in seqs])
        for i in done:
            e, code = sent[i], codes[i]
            if code < 300:
                self.counters["delivered"] += 1
                log.info("nova.event_delivered", name=e["name"], port=e["tag"], server=e["server_uuid"])
            else:
                self.counters["refused"] += 1
                log.warning("nova.event_refused", name=e["name"], port=e["tag"],
                            server=e["server_uuid"], code=code)

    # --- operator view ---

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v2.0/alcor/nova", self._show)]

    async def _show(self, request: web.Request) -> web.Response:
        """What the plugin has derived and delivered, and what waits (admin)."""
        if not (await context(request)).allowed("get_nova"):
            raise policy("get_nova")
        row = await self.store.fetchone("SELECT COUNT(*) FROM nova_outbox")
        return web.json_response({"nova": {"cursor": self.cursor, "pending": int(row[0]),
                                           "counters": self.counters, "last_error": self.last_error}})


async def _known(tx: Any, ids: Iterable[str] | None) -> dict[str, Known | None]:
    if ids is None:
        rows = await tx.fetchall("SELECT port_id, device_id, status FROM nova_ports")
    else:
        wanted = list(ids)
        rows = []
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            rows += await tx.fetchall(
                "SELECT port_id, device_id, status FROM nova_ports WHERE port_id IN "
                f"({','.join('?' * len(chunk))})", chunk)
    return {pid: Known(dev, st) for pid, dev, st in rows}


async def _remember(tx: Any, state: dict[str, Known | None]) -> None:
    gone = [(pid,) for pid, k in state.items() if k is None]
    kept = [(pid, k.device_id, k.status) for pid, k in state.items() if k is not None]
    if gone:
        await tx.executemany("DELETE FROM nova_ports WHERE port_id = ?", gone)
    if kept:
        await tx.executemany("INSERT INTO nova_ports(port_id, device_id, status) VALUES (?, ?, ?) "
                             "ON CONFLICT(port_id) DO UPDATE SET device_id = excluded.device_id, "
                             "status = excluded.status", kept)


async def _set_cursor(tx: Any, rev: int) -> None:
    await tx.execute("INSERT INTO nova_cursor(id, rev) VALUES (1, ?) ON CONFLICT(id) DO UPDATE "
                     "SET rev = excluded.rev", (rev,))


def _brief(answer: Any) -> str:
    return (answer if isinstance(answer, str) else json.dumps(answer))[:300]


def _session(cfg: NovaConfig) -> Any:
    """A keystoneauth1 session from [nova]'s credentials (Neutron's option names). ConfigError."""
    from keystoneauth1 import loading, session

    if not cfg.auth_url:
        raise ConfigError("the nova plugin needs nova.auth_url (and Nova's service credentials)")
    try:
        loader: Any = loading.get_plugin_loader(cfg.auth_type)
    except Exception:
        raise ConfigError(f"nova.auth_type: unknown auth plugin {cfg.auth_type!r}") from None
    options = cfg.auth_options({o.dest for o in loader.get_options()})
    try:
        auth = loader.load_from_options(**options)
    except Exception as e:  # keystoneauth1's MissingRequiredOptions and friends
        raise ConfigError(f"nova: {e}") from None
    verify: Any = False if cfg.insecure else (cfg.cafile or True)
    return session.Session(auth=auth, verify=verify, timeout=cfg.timeout)


_ADMIN = Context("", True)  # the plugin reads every project's ports


def create(config: Config) -> NovaNotifier:
    return NovaNotifier(config)
