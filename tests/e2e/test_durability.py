"""What was acknowledged survives a crash: SIGKILL the controller mid-stream, restart, count."""

import json
import signal
import urllib.request

import pytest

from tests.support.process import Program

pytestmark = pytest.mark.e2e


def call(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_acknowledged_writes_survive_sigkill(tmp_path):
    db = str(tmp_path / "alcor.db")
    p = Program(["controller", "--db", db], log=tmp_path / "log").start()
    net = call(p.url + "/v2.0/networks", "POST", {"network": {"name": "d"}})["network"]
    call(p.url + "/v2.0/subnets", "POST", {"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/24",
                                                      "ip_version": 4}})
    acked = [call(p.url + "/v2.0/ports", "POST", {"port": {"network_id": net["id"]}})["port"]
             for _ in range(50)]
    rev = call(p.url + "/v2.0/alcor/changes?since=0&limit=1")["last_rev"]
    p.stop(signal.SIGKILL)
    p2 = Program(["controller", "--db", db], port=p.port, log=tmp_path / "log").start()
    try:
        ports = call(p2.url + "/v2.0/ports")["ports"]
        assert {x["id"] for x in acked} <= {x["id"] for x in ports}
        assert call(p2.url + "/v2.0/alcor/changes?since=0&limit=1")["last_rev"] == rev
        nxt = call(p2.url + "/v2.0/ports", "POST", {"port": {"network_id": net["id"]}})["port"]
        assert nxt["fixed_ips"][0]["ip_address"] not in {x["fixed_ips"][0]["ip_address"] for x in acked}
        assert call(p2.url + "/v2.0/alcor/changes?since=0&limit=1")["last_rev"] == rev + 1
    finally:
        assert p2.stop() == 0


def test_sigterm_drains_in_flight_requests(tmp_path):
    import threading
    import time

    p = Program(["controller", "--db", str(tmp_path / "a.db")], log=tmp_path / "log").start()
    result = {}

    def long_poll():
        # A long-poll on the change log is in flight when SIGTERM arrives: it must still be answered.
        result["body"] = call(p.url + "/v2.0/alcor/changes?since=1000&wait=2")

    t = threading.Thread(target=long_poll)
    t.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert p.stop() == 0
    t.join(10)
    assert result["body"]["changes"] == [] and time.monotonic() - started >= 1.0
