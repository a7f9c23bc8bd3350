"""The controller started as `python main.py`, driven by real Neutron clients: openstacksdk and the
`openstack` CLI (python-openstackclient)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openstack
import pytest

from tests.support.process import Program

pytestmark = pytest.mark.e2e


@pytest.fixture
def program(tmp_path):
    p = Program(["controller", "--db", str(tmp_path / "alcor.db")], log=tmp_path / "alcor.log").start()
    yield p
    assert p.stop() == 0, (tmp_path / "alcor.log").read_text()[-2000:]


def test_openstacksdk(program):
    conn = openstack.connection.Connection(auth_type="none", network_endpoint_override=program.url + "/")
    net = conn.network.create_network(name="sdk-net")
    assert net.provider_network_type == "vxlan" and net.provider_segmentation_id
    sub = conn.network.create_subnet(network_id=net.id, cidr="10.10.0.0/24", ip_version=4, name="sdk-sub")
    assert sub.gateway_ip == "10.10.0.1"
    port = conn.network.create_port(network_id=net.id, name="sdk-port")
    assert port.status == "DOWN" and port.fixed_ips[0]["ip_address"] == "10.10.0.2"
    router = conn.network.create_router(name="sdk-router")
    conn.network.add_interface_to_router(router, subnet=sub.id)
    sg = conn.network.create_security_group(name="sdk-sg")
    rule = conn.network.create_security_group_rule(
        security_group_id=sg.id, direction="ingress", protocol="tcp", port_range_min=22, port_range_max=22)
    assert rule.port_range_min == 22
    assert conn.network.find_network("sdk-net").id == net.id
    assert conn.network.find_port("sdk-port").id == port.id
    assert conn.network.find_router("sdk-router").id == router.id
    assert {p.name for p in conn.network.ports(network_id=net.id)} == {"sdk-port", ""}
    conn.network.remove_interface_from_router(router, subnet=sub.id)
    conn.network.delete_router(router)
    conn.network.delete_port(port)
    conn.network.delete_security_group_rule(rule)
    conn.network.delete_security_group(sg)
    conn.network.delete_network(net)
    assert conn.network.find_network("sdk-net") is None
    with pytest.raises(openstack.exceptions.ConflictException):
        n2 = conn.network.create_network(name="x", provider_segmentation_id=4242)
        conn.network.create_network(name="y", provider_segmentation_id=4242)
    conn.network.delete_network(n2)


def openstack_cli(program: Program, *args: str) -> object:
    exe = Path(sys.executable).parent / "openstack"
    env = {**os.environ, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": program.url + "/"}
    out = subprocess.run([str(exe), *args, "-f", "json"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def openstack_do(program: Program, *args: str) -> None:
    """A command that prints nothing (no -f json)."""
    exe = Path(sys.executable).parent / "openstack"
    env = {**os.environ, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": program.url + "/"}
    out = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_openstack_cli(program):
    net = openstack_cli(program, "network", "create", "cli-net")
    assert net["provider:network_type"] == "vxlan" or net.get("provider_network_type") == "vxlan"
    sub = openstack_cli(program, "subnet", "create", "--network", "cli-net", "--subnet-range",
                        "10.20.0.0/24", "cli-sub")
    assert sub["cidr"] == "10.20.0.0/24"
    port = openstack_cli(program, "port", "create", "--network", "cli-net", "cli-port")
    assert port["status"] == "DOWN"
    names = [p["Name"] for p in openstack_cli(program, "port", "list")]
    assert "cli-port" in names
    subprocess.run([str(Path(sys.executable).parent / "openstack"), "port", "delete", "cli-port"],
                   env={**os.environ, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": program.url + "/"},
                   check=True, timeout=60)
    assert [p["Name"] for p in openstack_cli(program, "port", "list")] == []


def test_config_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[api]\nport = 'many'\n")
    out = subprocess.run([sys.executable, "main.py", "controller", "--config", str(bad)],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "api.port" in out.stderr and "Traceback" not in out.stderr


def test_north_south_with_the_openstack_cli_and_openstacksdk(program):
    """An external flat network, a router's gateway and a floating IP, as an operator and a
    tenant make them with the `openstack` CLI; then the same with openstacksdk."""
    ext = openstack_cli(program, "network", "create", "public", "--external",
                        "--provider-network-type", "flat", "--provider-physical-network", "physnet1")
    assert ext["router:external"] is True or ext.get("is_router_external") is True
    openstack_cli(program, "subnet", "create", "public-v4", "--network", "public",
                  "--subnet-range", "203.0.113.0/24", "--no-dhcp")
    openstack_cli(program, "network", "create", "ns-net")
    openstack_cli(program, "subnet", "create", "ns-sub", "--network", "ns-net",
                  "--subnet-range", "10.30.0.0/24")
    openstack_cli(program, "router", "create", "ns-router")
    openstack_do(program, "router", "add", "subnet", "ns-router", "ns-sub")
    openstack_do(program, "router", "set", "--external-gateway", "public", "ns-router")
    port = openstack_cli(program, "port", "create", "--network", "ns-net", "ns-port")
    fip = openstack_cli(program, "floating", "ip", "create", "public")
    address = fip["floating_ip_address"]
    assert address.startswith("203.0.113.")
    openstack_do(program, "floating", "ip", "set", "--port", "ns-port", address)
    shown = openstack_cli(program, "floating", "ip", "show", address)
    assert shown["port_id"] == port["id"] and shown["fixed_ip_address"].startswith("10.30.0.")
    assert shown["router_id"]

    conn = openstack.connection.Connection(auth_type="none", network_endpoint_override=program.url + "/")
    net = conn.network.find_network("public")
    assert net.is_router_external and net.provider_network_type == "flat"
    assert net.provider_physical_network == "physnet1"
    router = conn.network.find_router("ns-router")
    assert router.external_gateway_info["network_id"] == net.id
    ip = conn.network.find_ip(address)
    assert ip.port_id == port["id"] and ip.router_id == router.id
    conn.network.update_ip(ip, port_id=None)
    assert conn.network.get_ip(ip.id).port_id is None
    second = conn.network.create_ip(floating_network_id=net.id, port_id=port["id"])
    assert second.fixed_ip_address == shown["fixed_ip_address"]
    assert list(conn.network.agents()) == []  # no node registered in the controller role
    conn.network.delete_ip(second)
    conn.network.delete_ip(ip)
