"""The `alcor` operator commands against `python main.py`, as an operator types them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from tests.support.process import ROOT, Program, free_port

pytestmark = pytest.mark.e2e


def alcor(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def post(url: str, body: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return dict(json.load(r))


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Program:
    tmp = tmp_path_factory.mktemp("cli")
    prog = Program(["--db", str(tmp / "alcor.db")], log=tmp / "alcor.log",
                   env={"ALCOR_STORE__SYNCHRONOUS": "NORMAL"}).start()
    api = prog.url + "/v2.0"
    post(api + "/alcor/nodes", {"node": {"node_name": "compute-1", "local_ip": "172.16.0.11"}})
    net = post(api + "/networks", {"network": {"name": "demo"}})["network"]
    post(api + "/subnets", {"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/24", "ip_version": 4}})
    post(api + "/ports", {"port": {"network_id": net["id"], "name": "vm1",
                                   "binding:host_id": "compute-1"}})
    yield prog
    prog.stop()


def test_status_prints_the_controller_and_its_nodes(program: Program) -> None:
    r = alcor("status", "--url", program.url)
    assert r.returncode in (0, 3), r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"controller  {program.url}  ready")
    assert "VPCs 1  subnets 1  ports 1" in r.stdout
    header = next(line for line in lines if line.startswith("NODE"))
    assert header.split() == ["NODE", "TUNNEL", "IP", "PORTS", "UP", "APPLIED/GOAL", "STATE"]
    row = next(line for line in lines if line.startswith("compute-1"))
    assert "172.16.0.11" in row and "0/1" in row
    # The controllers, and which one dispatches (here the only one).
    led = next(line for line in lines if line.startswith("dispatcher  led by"))
    assert "epoch" in led
    header = next(line for line in lines if line.startswith("CONTROLLER"))
    assert header.split() == ["CONTROLLER", "HOST", "URL", "ROLE", "LAST", "SEEN"]
    me = lines[lines.index(header) + 1].split()
    assert me[2] == program.url and me[3] == "leader"


def test_changes_prints_recent_changes_in_rev_order(program: Program) -> None:
    r = alcor("changes", "--url", program.url, "--since", "0")
    assert r.returncode == 0, r.stderr
    revs = [int(line.split()[1]) for line in r.stdout.splitlines()]
    assert revs == sorted(revs) and revs[0] == 1
    assert "node" in r.stdout and "name=compute-1" in r.stdout and "name=vm1" in r.stdout
    r = alcor("changes", "--url", program.url, "--last", "1", "--json")
    (only,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert only["rev"] == revs[-1]


def test_changes_follow_prints_a_new_change_as_it_commits(program: Program) -> None:
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "changes", "--follow", "--last",
                             "1", "--url", program.url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # The newest change, printed first, says the follower is connected: a change made after
        # it is one it must follow (a fixed sleep lost that race on a busy machine, and the
        # readline below then waited forever).
        assert proc.stdout.readline()  # type: ignore[union-attr]
        post(program.url + "/v2.0/networks", {"network": {"name": "followed"}})
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "network" in line and "create" in line and "name=followed" in line
    finally:
        proc.terminate()
        proc.wait(10)


def test_node_show(program: Program) -> None:
    r = alcor("node", "show", "compute-1", "--url", program.url)
    assert r.returncode in (0, 3), r.stderr
    assert r.stdout.startswith("node        compute-1")
    assert "tunnel      172.16.0.11" in r.stdout
    assert "vm1" in r.stdout and "10.0.0." in r.stdout
    r = alcor("node", "show", "nowhere", "--url", program.url)
    assert r.returncode == 1 and r.stderr.strip() == "alcor: no node named 'nowhere'"


def test_unreachable_controller_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["changes"], ["node", "show", "x"]):
        r = alcor(*args, "--url", url)
        assert r.returncode == 1
        assert r.stderr.strip() == f"alcor: cannot reach the controller at {url}: connection refused (is it running?)"
        assert r.stdout == ""
    r = alcor("agent", "flows", "--agent-url", url)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot reach the agent" in r.stderr
