"""The controller started as `python main.py` with `[api] auth = "keystone"`, found and used by
the `openstack` CLI and openstacksdk through a real Keystone's catalog with password auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openstack
import pytest

from tests.support.keystone import PASSWORD
from tests.support.process import Program

pytestmark = pytest.mark.e2e


@pytest.fixture
def program(tmp_path, keystone):
    lines = ['[api]', 'auth = "keystone"', '[keystone_authtoken]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keystone.authtoken_section().items()]
    (tmp_path / "alcor.toml").write_text("\n".join(lines) + "\n")
    p = Program(["controller", "--config", str(tmp_path / "alcor.toml"), "--db",
                 str(tmp_path / "alcor.db")], log=tmp_path / "alcor.log").start()
    keystone.register_network(p.port)
    yield p
    assert p.stop() == 0, (tmp_path / "alcor.log").read_text()[-2000:]


def cli(keystone, user, project, *args):
    env = {**os.environ, "OS_AUTH_URL": keystone.url, "OS_USERNAME": user, "OS_PASSWORD": PASSWORD,
           "OS_PROJECT_NAME": project, "OS_USER_DOMAIN_NAME": "Default",
           "OS_PROJECT_DOMAIN_NAME": "Default", "OS_IDENTITY_API_VERSION": "3",
           "OS_REGION_NAME": "RegionOne", "OS_INTERFACE": "public"}
    for k in ("OS_AUTH_TYPE", "OS_ENDPOINT", "OS_TOKEN"):
        env.pop(k, None)
    exe = Path(sys.executable).parent / "openstack"
    return subprocess.run([str(exe), *args, "-f", "json"], env=env, capture_output=True, text=True,
                          timeout=120)


def test_openstack_cli_through_keystone(program, keystone):
    made = cli(keystone, "alice", "p1", "network", "create", "ks-net")
    assert made.returncode == 0, made.stderr
    net = json.loads(made.stdout)
    assert net["project_id"] == keystone.projects["p1"]
    sub = cli(keystone, "alice", "p1", "subnet", "create", "--network", "ks-net", "--subnet-range",
              "10.30.0.0/24", "ks-sub")
    assert sub.returncode == 0, sub.stderr
    mine = json.loads(cli(keystone, "alice", "p1", "network", "list").stdout)
    assert [n["Name"] for n in mine] == ["ks-net"]
    # Another project sees nothing of it; a reader of p1 sees it but cannot make one.
    assert json.loads(cli(keystone, "bob", "p2", "network", "list").stdout) == []
    assert [n["Name"] for n in json.loads(cli(keystone, "rita", "p1", "network", "list").stdout)] == ["ks-net"]
    denied = cli(keystone, "rita", "p1", "network", "create", "nope")
    assert denied.returncode != 0 and ("403" in denied.stderr or "disallowed" in denied.stderr), denied.stderr


def test_openstacksdk_through_keystone(program, keystone):
    conn = openstack.connection.Connection(
        auth_url=keystone.url, username="bob", password=PASSWORD, project_name="p2",
        user_domain_name="Default", project_domain_name="Default", region_name="RegionOne")
    net = conn.network.create_network(name="sdk-ks")
    port = conn.network.create_port(network_id=net.id)
    assert port.project_id == keystone.projects["p2"]
    assert port.binding_host_id is None  # binding:* is for admins and services
    nova = openstack.connection.Connection(
        auth_url=keystone.url, username="nova", password=PASSWORD, project_name="service",
        user_domain_name="Default", project_domain_name="Default", region_name="RegionOne")
    seen = nova.network.get_port(port.id)
    assert seen.binding_vif_type == "unbound"
    conn.network.delete_port(port)
    conn.network.delete_network(net)
