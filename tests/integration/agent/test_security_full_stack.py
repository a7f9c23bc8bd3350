"""Security groups from the API to the packets, through every part as the dev run wires them:
API -> change log -> southbound (groups and remote-group membership on the wire) -> the agent's
stream -> flows on a real Open vSwitch -> pings and TCP between VM namespaces.

Ports made the way a tenant makes them: no group named gets the project's default group
(ingress from its members only); a group of the tenant's own lets tcp/80 in from members of the
default group. Membership and rules change through the API while the checks watch the packets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alcor import roles
from alcor.api.app import HttpModule
from alcor.controller import controller_modules
from alcor.kernel import Kernel
from alcor.resources.nodes import Nodes
from tests.conftest import require
from tests.support.controller import Client, config_for_test
from tests.support.ovs import OvsSandbox, have_ovs, is_root
from tests.support.topology import Host, Vm
from tests.support.wait import eventually

pytestmark = pytest.mark.ovs

HOST = "sg-host"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Client, Host, Kernel]]:
    require(is_root(), "needs root (network namespaces, Open vSwitch)")
    require(have_ovs(), "needs openvswitch-switch installed")
    with OvsSandbox.started(tmp_path / "ovs") as ovs:
        cfg = config_for_test(
            tmp_path,
            node={"name": HOST, "local_ip": "127.0.0.79"},
            agent={"openflow_listen": f"unix:{ovs.dir}/alcor-of.sock", "ovs_db": ovs.db},
        )
        kernel = Kernel(cfg, [*controller_modules(cfg), *roles.modules("dev", cfg)])
        await kernel.start()
        host = Host(HOST, ovs, "127.0.0.79", 0)
        try:
            async with aiohttp.ClientSession() as http:
                yield Client(http, f"http://127.0.0.1:{kernel.get(HttpModule).port}"), host, kernel
        finally:
            for vm in host.vms.values():
                vm.netns.delete()
            await kernel.stop()


async def test_groups_and_membership_from_the_api_to_the_packets(
    stack: tuple[Client, Host, Kernel],
) -> None:
    api, host, kernel = stack
    net = await api.create("network", "/v2.0/networks", name="sg")
    await api.create(
        "subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.7.0.0/24", ip_version=4
    )

    async def registered() -> Any:
        return kernel.get(Nodes).by_name(HOST)

    await eventually(registered, 5, "the local node never registered", interval=0.1)
    web = await api.create("security_group", "/v2.0/security-groups", name="web")
    await api.create(
        "security_group_rule", "/v2.0/security-group-rules", security_group_id=web["id"],
        direction="ingress", protocol="tcp", port_range_min=80, port_range_max=80,
        remote_group_id=(await default_group(api))["id"],
    )  # fmt: skip
    bind = {"binding:host_id": HOST}
    p1 = await api.create("port", "/v2.0/ports", network_id=net["id"], **bind)  # default group
    p2 = await api.create("port", "/v2.0/ports", network_id=net["id"], **bind)  # default group
    p3 = await api.create(
        "port", "/v2.0/ports", network_id=net["id"], security_groups=[web["id"]], **bind
    )
    vms: dict[str, Vm] = {}
    for p in (p1, p2, p3):
        ip = p["fixed_ips"][0]["ip_address"]
        vms[p["id"]] = await asyncio.to_thread(host.add_vm, p["id"], f"{ip}/24", p["mac_address"])
    for p in (p1, p2, p3):
        await eventually(lambda p=p: status_is(api, p["id"], "ACTIVE"), 15, f"port {p['id']} not ACTIVE", interval=0.1)
    v1, v2, v3 = (vms[p["id"]] for p in (p1, p2, p3))
    ip1, ip2, ip3 = (p["fixed_ips"][0]["ip_address"] for p in (p1, p2, p3))
    with v3.server("tcp", 80), v3.server("tcp", 22):
        assert await asyncio.to_thread(v1.ping, ip2, 1)  # default group members
        assert not await asyncio.to_thread(v3.ping, ip1, 1, 0.2, 1)  # p3 is no member
        assert await asyncio.to_thread(v1.tcp_ok, ip3, 80)  # "web": tcp/80 from default members
        assert not await asyncio.to_thread(v1.tcp_ok, ip3, 22)
        # p2 leaves the default group: from then on it is a stranger to p1 and to "web"
        r = await api.put(f"/v2.0/ports/{p2['id']}", {"port": {"security_groups": [web["id"]]}})
        assert r.status == 200
        await eventually(lambda: gone(lambda: v2.tcp_ok(ip3, 80)), 10, "p2 still reaches tcp/80", interval=0.1)
        assert await asyncio.to_thread(v1.tcp_ok, ip3, 80)
        assert not await asyncio.to_thread(v2.ping, ip1, 1, 0.2, 1)
        # a rule through the API: ICMP from anywhere into "web"; its removal stops it again
        icmp = await api.create(
            "security_group_rule", "/v2.0/security-group-rules", security_group_id=web["id"],
            direction="ingress", protocol="icmp",
        )  # fmt: skip
        await eventually(lambda: there(lambda: v1.ping(ip3, 1)), 10, "the ICMP rule never arrived", interval=0.1)
        assert (await api.delete(f"/v2.0/security-group-rules/{icmp['id']}")).status == 204
        await eventually(lambda: gone(lambda: v1.ping(ip3, 1, 0.2, 1)), 10, "ICMP still allowed", interval=0.1)
    extensions = {e["alias"] for e in (await api.get("/v2.0/extensions")).body["extensions"]}
    assert {
        "security-group",
        "stateful-security-group",
        "port-security",
        "allowed-address-pairs",
    } <= extensions


async def default_group(api: Client) -> dict[str, Any]:
    groups = (await api.get("/v2.0/security-groups?name=default")).body["security_groups"]
    return dict(groups[0])


async def status_is(api: Client, port_id: str, status: str) -> bool:
    return bool((await api.get(f"/v2.0/ports/{port_id}")).body["port"]["status"] == status)


async def there(check: Callable[[], bool]) -> bool:
    return await asyncio.to_thread(check)


async def gone(check: Callable[[], bool]) -> bool:
    return not await asyncio.to_thread(check)
