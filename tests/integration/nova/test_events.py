"""Nova's port events, end to end through a real Keystone to a Nova stand-in.

The stand-in (tests/support/nova.py) is a peer that plays Nova's os-server-external-events API —
Keystone-authenticated, with Nova's policy and answers — not a mock of any code of this project.
Ports turn ACTIVE the way they do in the running program: the controller's agent-feedback entry
(`Ports.set_statuses`, what a node's status report calls).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from alcor import sections
from alcor.resources.ports import Ports
from alcor_plugins.nova import DELETED, PLUGGED, UNPLUGGED, NovaNotifier
from tests.support.controller import running_controller
from tests.support.nova import NovaStandin
from tests.support.process import free_port

VM1 = "9c1f2b3a-4d5e-4f60-8a7b-0c1d2e3f4a5b"
VM2 = "2b7e1c9d-1a2b-4c3d-8e4f-5a6b7c8d9e0f"


def nova_section(keystone, **extra):
    """[nova] as Neutron's: the service user Neutron calls Nova with, from Keystone's catalog."""
    return {"auth_url": keystone.url, "auth_type": "password", "username": "neutron",
            "password": "secret", "project_name": "service", "user_domain_name": "Default",
            "project_domain_name": "Default", "region_name": "RegionOne",
            "endpoint_type": "public", **extra}


@pytest.fixture(scope="session")
def nova_port(keystone):
    """Nova's endpoint in Keystone's catalog, once per session (each test serves it anew)."""
    port = free_port()
    keystone.register("compute", "nova", f"http://127.0.0.1:{port}/v2.1")
    return port


@pytest.fixture
async def nova(keystone, nova_port):
    standin = await NovaStandin(keystone, servers={VM1, VM2}, port=nova_port).start()
    yield standin
    await standin.down()


async def start(tmp_path, keystone):
    cfg = {"kernel__plugins": ["nova"], "nova": nova_section(keystone)}
    return running_controller(tmp_path, **cfg)


async def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return False


async def boot(ctl, node, vm):
    """What Nova does: a port on the tenant's network, bound to the host, owned by the VM."""
    net = await ctl.create("network", "/v2.0/networks", name=f"net-{vm[:4]}")
    await ctl.create("subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4)
    return await ctl.create("port", "/v2.0/ports", network_id=net["id"], device_id=vm,
                            device_owner="compute:nova", **{"binding:host_id": node})


async def test_plugged_within_a_second_of_active_then_unplugged_and_deleted(tmp_path, keystone, nova):
    async with await start(tmp_path, keystone) as (kernel, ctl):
        assert any(isinstance(m, NovaNotifier) for m in kernel.modules)
        await kernel.get(NovaNotifier).ready()
        await ctl.create("node", "/v2.0/alcor/nodes", node_name="cmp1", local_ip="172.16.0.3")
        p = await boot(ctl, "cmp1", VM1)
        await asyncio.sleep(0.3)
        assert nova.received == []  # bound but not yet programmed: Nova keeps waiting
        ports = kernel.get(Ports)
        await ports.set_statuses({p["id"]: ("ACTIVE", "cmp1")})
        active_at = time.monotonic()
        assert await wait_for(lambda: nova.got(PLUGGED, p["id"])), (kernel.get(NovaNotifier).counters,
                                                                    kernel.get(NovaNotifier).last_error,
                                                                    nova.calls, [(t.get_name(), t.done() and t.exception()) for t in kernel.get(NovaNotifier)._tasks])
        first = nova.received[0]
        assert first.at - active_at < 1.0, first.at - active_at
        assert first.event == {"name": PLUGGED, "server_uuid": VM1, "tag": p["id"], "status": "completed"}
        assert first.user == "neutron"
        # A change that is no transition tells Nova nothing.
        await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"name": "renamed"}})
        await ports.set_statuses({p["id"]: ("DOWN", "cmp1")})
        assert await wait_for(lambda: nova.got(UNPLUGGED, p["id"]))
        assert (await ctl.delete(f"/v2.0/ports/{p['id']}")).status == 204
        assert await wait_for(lambda: nova.got(DELETED, p["id"]))
        assert [r.event["name"] for r in nova.received] == [PLUGGED, UNPLUGGED, DELETED]
        shown = (await ctl.get("/v2.0/alcor/nova")).body["nova"]
        assert shown["pending"] == 0 and shown["counters"]["delivered"] == 3


async def test_a_failed_port_is_plugged_failed_and_other_ports_say_nothing(tmp_path, keystone, nova):
    async with await start(tmp_path, keystone) as (kernel, ctl):
        await ctl.create("node", "/v2.0/alcor/nodes", node_name="cmp1", local_ip="172.16.0.3")
        p = await boot(ctl, "cmp1", VM1)
        plain = await ctl.create("port", "/v2.0/ports", network_id=p["network_id"],
                                 **{"binding:host_id": "cmp1"})
        await kernel.get(Ports).set_statuses({p["id"]: ("ERROR", "cmp1"),
                                                plain["id"]: ("ACTIVE", "cmp1")})
        assert await wait_for(lambda: nova.got(PLUGGED))
        await asyncio.sleep(0.3)
        assert [(e["tag"], e["status"]) for e in nova.got()] == [(p["id"], "failed")]


async def test_nova_away_then_back_gets_every_event(tmp_path, keystone, nova):
    async with await start(tmp_path, keystone) as (kernel, ctl):
        await ctl.create("node", "/v2.0/alcor/nodes", node_name="cmp1", local_ip="172.16.0.3")
        a, b = await boot(ctl, "cmp1", VM1), await boot(ctl, "cmp1", VM2)
        await nova.down()
        started = time.monotonic()
        await kernel.get(Ports).set_statuses({a["id"]: ("ACTIVE", "cmp1"), b["id"]: ("ACTIVE", "cmp1")})
        # The API is not held up by Nova's absence.
        r = await ctl.put(f"/v2.0/ports/{a['id']}", {"port": {"name": "a"}})
        assert r.status == 200 and time.monotonic() - started < 1.0
        assert await wait_for(lambda: kernel.get(NovaNotifier).counters["retried_batches"] >= 2)
        await nova.up()
        assert await wait_for(lambda: len(nova.got(PLUGGED)) == 2, timeout=15)
        assert {e["server_uuid"] for e in nova.got(PLUGGED)} == {VM1, VM2}


async def test_an_event_survives_a_controller_restart(tmp_path, keystone, nova):
    """Derived while Nova is away, then the controller stops: the next one delivers it."""
    async with await start(tmp_path, keystone) as (kernel, ctl):
        await ctl.create("node", "/v2.0/alcor/nodes", node_name="cmp1", local_ip="172.16.0.3")
        p = await boot(ctl, "cmp1", VM1)
        await nova.down()
        await kernel.get(Ports).set_statuses({p["id"]: ("ACTIVE", "cmp1")})
        assert await wait_for(lambda: kernel.get(NovaNotifier).counters["derived"] == 1)
    await nova.up()
    async with await start(tmp_path, keystone) as (kernel, ctl):
        assert await wait_for(lambda: nova.got(PLUGGED, p["id"]), timeout=15)
        await asyncio.sleep(0.3)
        assert len(nova.got()) == 1  # once, not re-derived


async def test_unknown_instance_is_final_not_retried(tmp_path, keystone, nova):
    async with await start(tmp_path, keystone) as (kernel, ctl):
        await ctl.create("node", "/v2.0/alcor/nodes", node_name="cmp1", local_ip="172.16.0.3")
        ghost = await boot(ctl, "cmp1", "5f5f5f5f-0000-4000-8000-000000000000")
        real = await boot(ctl, "cmp1", VM1)
        await kernel.get(Ports).set_statuses({ghost["id"]: ("ACTIVE", "cmp1"),
                                                real["id"]: ("ACTIVE", "cmp1")})
        assert await wait_for(lambda: nova.got(PLUGGED, real["id"]))
        notifier = kernel.get(NovaNotifier)
        assert await wait_for(lambda: notifier.counters["refused"] == 1)
        await asyncio.sleep(0.5)
        assert notifier.counters["retried_batches"] == 0
        assert (await ctl.get("/v2.0/alcor/nova")).body["nova"]["pending"] == 0


async def test_bad_nova_config_stops_the_program(keystone):
    from alcor.config import ConfigError

    for section, text in (({**nova_section(keystone), "pasword": "x"}, "nova.pasword"),
                          ({**nova_section(keystone), "endpoint_type": "private"}, "endpoint_type"),
                          ({k: v for k, v in nova_section(keystone).items() if k != "auth_url"},
                           "auth_url")):
        with pytest.raises(ConfigError, match=text):
            NovaNotifier(sections.load(env={}, layers=[("test", {"nova": section})]))
