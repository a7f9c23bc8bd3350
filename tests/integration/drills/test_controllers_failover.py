"""Several `python main.py controller` processes on one PostgreSQL database and RabbitMQ, with
agents (the real AgentStream, no datapath) in the test: every controller serves the API, one
dispatches, and when it dies or stalls another takes over and everything converges.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import require
from tests.support.broker import broker_up
from tests.support.cluster import Cluster
from tests.support.postgres import private_server, temp_database
from tests.support.process import ROOT

pytestmark = [pytest.mark.rabbitmq]

NODES = 3


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    require(broker_up(), "the failover drills need RabbitMQ at 127.0.0.1:5672")
    async with temp_database() as db:
        c = Cluster(tmp_path, db, request.param)
        try:
            await c.start()
            yield c
        finally:
            await c.close()


async def _scene(c: Cluster) -> tuple[dict[str, Any], list[str]]:
    first = c.programs[0]
    nodes = []
    for i in range(NODES):
        nodes.append(await c.create(first, "node", "/v2.0/alcor/nodes", node_name=f"host-{i}",
                                    local_ip=f"172.16.0.{i + 1}"))
    for n in nodes:
        await c.add_agent(n)
    net = await c.create(first, "network", "/v2.0/networks", name="ha")
    await c.create(first, "subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.50.0.0/20",
                   ip_version=4)
    return net, [n["node_name"] for n in nodes]


async def _burst(c: Cluster, net: dict[str, Any], hosts: list[str], n: int,
                 accepted: list[dict[str, Any]], stop: asyncio.Event | None = None) -> None:
    """Port creates spread over every live controller, 4 at a time; 503s and dead controllers
    are retried elsewhere. Each accepted port is recorded."""
    counter = itertools.count()

    async def one() -> None:
        i = next(counter)
        body = {"port": {"network_id": net["id"], "binding:host_id": hosts[i % len(hosts)],
                         "name": f"p{i}"}}
        for attempt in range(100):
            live = c.alive()
            p = live[(i + attempt) % len(live)]
            try:
                status, reply = await c.call(p, "POST", "/v2.0/ports", body, timeout=3)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            if status == 201:
                accepted.append(reply["port"])
                return
            assert status == 503, (status, reply)
            await asyncio.sleep(0.05)
        raise AssertionError("no controller took the create")

    async def worker(k: int) -> None:
        for _ in range(k):
            if stop is not None and stop.is_set():
                return
            await one()

    await asyncio.gather(*(worker(n // 4) for _ in range(4)))


async def _converged(c: Cluster, accepted: list[dict[str, Any]], timeout: float = 60) -> float:
    """Every agent holds every accepted port, every port is ACTIVE, every node in sync (as a
    live controller reports it). Returns the seconds it took."""
    t0 = time.monotonic()
    want = {p["id"] for p in accepted}
    last: Any = None
    while time.monotonic() - t0 < timeout:
        held = [set(s.model.resources.get("port", {})) for s in c.agents.values()]
        if all(want <= h for h in held):
            p = c.alive()[0]
            status, body = await c.call(p, "GET", "/v2.0/ports?fields=id&fields=status")
            states = {x["id"]: x["status"] for x in body["ports"]}
            _, nodes = await c.call(p, "GET", "/v2.0/alcor/nodes")
            sync = []
            detail = []
            for n in nodes["nodes"]:
                _, one = await c.call(p, "GET", f"/v2.0/alcor/nodes/{n['node_id']}")
                sync.append(one["node"].get("in_sync"))
                agent = c.agents[n["node_id"]]
                detail.append({k: one["node"].get(k) for k in (
                    "goal_rev", "applied_rev", "digest_match", "snapshot_pending")} | {
                    "agent_rev": agent.model.applied_rev, "agent_epoch": agent.model.epoch,
                    "asked": agent.model.awaiting_snapshot})
            last = (sum(1 for i in want if states.get(i) == "ACTIVE"), len(want), sync,
                    c.programs.index(p), detail)
            if all(states.get(i) == "ACTIVE" for i in want) and all(sync):
                return time.monotonic() - t0
        else:
            last = [len(want - h) for h in held]
        await asyncio.sleep(0.2)
    raise AssertionError(f"not converged in {timeout}s: {last}")


async def _check_store(c: Cluster, accepted: list[dict[str, Any]]) -> None:
    p = c.alive()[0]
    _, body = await c.call(p, "GET", "/v2.0/ports")
    ports = body["ports"]
    assert {x["id"] for x in accepted} <= {x["id"] for x in ports}
    ips = [f["ip_address"] for x in ports for f in x["fixed_ips"]]
    macs = [x["mac_address"] for x in ports]
    assert len(ips) == len(set(ips)) and len(macs) == len(set(macs))
    revs: list[int] = []
    since = 0
    while True:
        _, page = await c.call(p, "GET", f"/v2.0/alcor/changes?since={since}&limit=1000")
        got = [ch["rev"] for ch in page["changes"]]
        if not got:
            break
        revs += got
        since = got[-1]
    assert revs == list(range(1, len(revs) + 1))  # gap-free, in order


@pytest.mark.parametrize("cluster", [3], indirect=True)
async def test_leader_killed_mid_burst_another_leads_and_all_converge(cluster: Cluster) -> None:
    c = cluster
    net, hosts = await _scene(c)
    accepted: list[dict[str, Any]] = []
    await _burst(c, net, hosts, 40, accepted)
    await _converged(c, accepted)
    old, epoch = await c.leader()
    status = await asyncio.to_thread(subprocess.run, [
        sys.executable, str(ROOT / "main.py"), "status", "--url", c.programs[1].url],
        capture_output=True, text=True, cwd=ROOT)
    assert status.returncode in (0, 3), status.stderr
    assert f"led by {(await c.southbound(old))['this_controller']}" in status.stdout
    assert sum(" standby " in line for line in status.stdout.splitlines()) == 2
    # Every controller agrees on who leads, and serves the whole API.
    for p in c.programs:
        sb = await c.southbound(p)
        assert sb["epoch"] == epoch and len([x for x in sb["controllers"] if x["alive"]]) == 3
        assert sb["role"] == ("leader" if p is old else "standby")
        status, _ = await c.call(p, "GET", f"/v2.0/networks/{net['id']}")
        assert status == 200

    async def kill_soon() -> None:
        await asyncio.sleep(0.3)
        old.proc.send_signal(signal.SIGKILL)
        # reaped before anyone asks which controllers are alive (poll() says "running" until then)
        await asyncio.to_thread(old.proc.wait)

    t_kill = time.monotonic()
    await asyncio.gather(kill_soon(), _burst(c, net, hosts, 120, accepted))
    survivors = c.alive()
    new = None
    while time.monotonic() - t_kill < 10:
        new, new_epoch = await c.leader(survivors)
        if new is not old and new_epoch > epoch:
            break
        await asyncio.sleep(0.1)
    takeover = time.monotonic() - t_kill - 0.3
    assert new is not old and new_epoch > epoch and takeover < 5, takeover
    # A port per host through the new leader: every agent hears from it (the burst may have been
    # dispatched whole by the old leader before it died, leaving some agents nothing new).
    for h in hosts:
        accepted.append(await c.create(new, "port", "/v2.0/ports", network_id=net["id"],
                                       **{"binding:host_id": h}))
    took = await _converged(c, accepted)
    await _check_store(c, accepted)
    assert {n: s.model.epoch for n, s in c.agents.items()} == dict.fromkeys(c.agents, new_epoch)
    print(f"takeover {takeover:.1f} s after SIGKILL; converged {took:.1f} s after the burst; "
          f"{len(accepted)} ports")


@pytest.mark.parametrize("cluster", [2], indirect=True)
async def test_a_stalled_leader_is_deposed_and_cannot_publish_or_commit(cluster: Cluster) -> None:
    c = cluster
    net, hosts = await _scene(c)
    accepted: list[dict[str, Any]] = []
    await _burst(c, net, hosts, 20, accepted)
    await _converged(c, accepted)
    old, epoch = await c.leader()
    other = next(p for p in c.programs if p is not old)
    old.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        # The standby takes over once PostgreSQL ends the stalled leader's quiet session.
        while True:
            new, new_epoch = await c.leader([other])
            if new is other:
                break
            assert time.monotonic() - t0 < 20, "no takeover"
            await asyncio.sleep(0.2)
        took = time.monotonic() - t0
        assert new_epoch > epoch
        # Changes meanwhile: the stalled leader has them to send when it wakes up.
        more: list[dict[str, Any]] = []
        for i in range(12):
            more.append(await c.create(other, "port", "/v2.0/ports", network_id=net["id"],
                                       **{"binding:host_id": hosts[i % len(hosts)]}))
        accepted += more
    finally:
        old.proc.send_signal(signal.SIGCONT)
    await _converged(c, accepted)
    # The resumed one stands by; the epoch is still the new leader's, and the last watermark
    # was written under it.
    for _ in range(150):
        sb = await c.southbound(old)
        if sb["role"] == "standby":
            break
        await asyncio.sleep(0.1)
    assert sb["role"] == "standby" and sb["epoch"] == new_epoch and sb["leader"] == (
        await c.southbound(other))["this_controller"]
    await asyncio.sleep(1.5)  # let anything the old leader still had in hand happen
    assert all(s.model.epoch == new_epoch for s in c.agents.values())
    log = (c.tmp / f"controller-{c.programs.index(old)}.log").read_text()
    assert "leader.deposed" in log
    conn = await asyncpg.connect(c.db)
    try:
        written = await conn.fetchval("SELECT value FROM sb_state WHERE key = 'epoch'")
    finally:
        await conn.close()
    assert int(written) == new_epoch
    await _check_store(c, accepted)
    print(f"takeover {took:.1f} s after SIGSTOP")


@pytest.mark.parametrize("cluster", [2], indirect=True)
async def test_database_lost_mid_burst_503s_then_everything_converges(cluster: Cluster) -> None:
    """Every session to the database cut and new ones refused for 2 s (what a PostgreSQL
    restart or failover looks like from the controllers), in the middle of a burst."""
    c = cluster
    net, hosts = await _scene(c)
    accepted: list[dict[str, Any]] = []
    await _burst(c, net, hosts, 20, accepted)
    _, epoch = await c.leader()
    name = c.db.rsplit("/", 1)[-1]
    admin = await asyncpg.connect(c.db.rsplit("/", 1)[0] + "/postgres")
    statuses: list[int] = []

    async def outage() -> None:
        await asyncio.sleep(0.3)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
        await asyncio.sleep(2.0)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    async def watch() -> None:
        # What a client sees meanwhile: 201s and 503s, never anything else.
        for _ in range(40):
            try:
                status, _ = await c.call(c.programs[0], "POST", "/v2.0/networks",
                                         {"network": {"name": "probe"}}, timeout=3)
                statuses.append(status)
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)

    try:
        await asyncio.gather(outage(), watch(), _burst(c, net, hosts, 80, accepted))
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    assert 503 in statuses and set(statuses) <= {201, 503}, statuses
    await _converged(c, accepted)
    await _check_store(c, accepted)
    _, after = await c.leader()
    assert after > epoch  # the leader's session went with the rest: a new election


async def test_postgresql_restarted_mid_burst_503s_then_nothing_lost_and_all_converge(
        tmp_path: Path) -> None:
    """A real restart of PostgreSQL (a server of the test's own: the shared one serves every
    other test), stopped `immediate` as in a crash, so WAL it had not flushed is gone: what a
    client was told succeeded must still be there (a write is answered after its flush)."""
    require(broker_up(), "the failover drills need RabbitMQ at 127.0.0.1:5672")
    async with private_server() as pg:
        c = Cluster(tmp_path, await pg.database(), 2)
        try:
            await c.start()
            net, hosts = await _scene(c)
            accepted: list[dict[str, Any]] = []
            await _burst(c, net, hosts, 20, accepted)
            _, epoch = await c.leader()
            statuses: list[int] = []
            probes: list[str] = []

            async def crash() -> None:
                await asyncio.sleep(0.3)
                await pg.restart("immediate", down=1.0)

            async def watch() -> None:
                # What a client sees meanwhile: 201s and 503s, never anything else.
                for _ in range(50):
                    try:
                        status, body = await c.call(c.programs[0], "POST", "/v2.0/networks",
                                                    {"network": {"name": "probe"}}, timeout=3)
                        statuses.append(status)
                        if status == 201:
                            probes.append(body["network"]["id"])
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(0.1)

            await asyncio.gather(crash(), watch(), _burst(c, net, hosts, 80, accepted))
            assert 503 in statuses and set(statuses) <= {201, 503}, statuses
            await _converged(c, accepted)
            await _check_store(c, accepted)  # every accepted port, a gap-free change log
            for p in c.programs:  # every acknowledged network, through either controller
                _, body = await c.call(p, "GET", "/v2.0/networks?fields=id")
                assert set(probes) <= {n["id"] for n in body["networks"]}
            _, after = await c.leader()
            assert after > epoch  # the leader's session went with the server: a new election
        finally:
            await c.close()
