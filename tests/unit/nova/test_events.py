"""Which port changes become which Nova events, and how Nova's answers are read (pure)."""

from alcor.db.changelog import Change
from alcor_plugins.nova import DELETED, PLUGGED, UNPLUGGED, Known, events_for, outcome

VM = "9c1f2b3a-4d5e-4f60-8a7b-0c1d2e3f4a5b"


def port(status, owner="compute:nova", device=VM, op="update", rev=1):
    return Change(rev, 0.0, "port", "p1", op, "proj", "net", rev,
                  None if op == "delete" else {"device_owner": owner, "device_id": device,
                                               "status": status})


def names(change, known):
    evs, after = events_for(change, known)
    return [(e["name"], e["status"]) for e in evs], after


def test_plugged_unplugged_failed():
    assert names(port("ACTIVE"), Known(VM, "DOWN")) == ([(PLUGGED, "completed")], Known(VM, "ACTIVE"))
    assert names(port("ERROR"), Known(VM, "DOWN")) == ([(PLUGGED, "failed")], Known(VM, "ERROR"))
    assert names(port("DOWN"), Known(VM, "ACTIVE")) == ([(UNPLUGGED, "completed")], Known(VM, "DOWN"))
    # A port Nova has just bound (first seen, DOWN) says nothing yet; first seen ACTIVE is plugged.
    assert names(port("DOWN"), None) == ([], Known(VM, "DOWN"))
    assert names(port("ACTIVE"), None)[0] == [(PLUGGED, "completed")]


def test_no_event_without_a_transition_nova_waits_for():
    assert names(port("ACTIVE"), Known(VM, "ACTIVE"))[0] == []   # a rename of an ACTIVE port
    assert names(port("ERROR"), Known(VM, "ACTIVE"))[0] == []    # Neutron sends none either
    assert names(port("DOWN"), Known(VM, "ERROR"))[0] == []


def test_only_vm_ports():
    assert names(port("ACTIVE", owner="network:router_interface"), None) == ([], None)
    assert names(port("ACTIVE", owner=""), Known(VM, "DOWN")) == ([], None)   # detached: forgotten
    assert names(port("ACTIVE", device=""), None) == ([], None)


def test_deleted_and_moved_to_another_vm():
    evs, after = events_for(port(None, op="delete"), Known(VM, "ACTIVE"))
    assert [(e["name"], e["server_uuid"], e["tag"]) for e in evs] == [(DELETED, VM, "p1")] and after is None
    assert events_for(port(None, op="delete"), None) == ([], None)
    other = "0a1b2c3d-0000-4000-8000-000000000000"
    evs, _ = events_for(port("ACTIVE", device=other), Known(VM, "ACTIVE"))
    assert [(e["name"], e["server_uuid"]) for e in evs] == [(PLUGGED, other)]


def test_reading_novas_answers():
    sent = [{"name": PLUGGED}] * 3
    assert outcome(200, {"events": [{"code": 200}] * 3}, sent) == ([0, 1, 2], [])
    assert outcome(207, {"events": [{"code": 200}, {"code": 404}, {"code": 500}]}, sent) == ([0, 1], [2])
    assert outcome(404, {"itemNotFound": {}}, sent) == ([0, 1, 2], [])        # no such instance: final
    for transient in (0, 401, 403, 500, 502, 503):
        assert outcome(transient, None, sent) == ([], [0, 1, 2])
