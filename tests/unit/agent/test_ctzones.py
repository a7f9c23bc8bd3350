"""Conntrack zones per local port (alcor/agent/ctzones.py): stable, never shared, never reused
before the agent flushed them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alcor.agent.ctzones import allocate, parse_external_ids


def test_held_zones_stay_new_ports_get_the_lowest_free() -> None:
    assert allocate({}, ["b", "a"]) == {"a": 1, "b": 2}
    assert allocate({"b": 2}, ["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
    # a zone given back but not flushed yet goes to nobody
    assert allocate({"a": 1}, ["a", "n"], reserved=[2]) == {"a": 1, "n": 3}


def test_a_zone_claimed_twice_stays_with_the_first_port() -> None:
    assert allocate({"a": 5, "b": 5}, ["a", "b"]) == {"a": 5, "b": 1}
    assert allocate({"a": 0, "b": 70000}, ["a", "b"]) == {"a": 1, "b": 2}  # out of range


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 12), max_size=8),
    st.sets(st.sampled_from("abcdefgh")),
    st.sets(st.integers(1, 12), max_size=4),
)
def test_zones_are_unique_kept_and_avoid_reserved(
    held: dict[str, int], ports: set[str], reserved: set[int]
) -> None:
    out = allocate(held, ports, reserved)
    assert set(out) == ports
    assert len(set(out.values())) == len(out)
    assert not set(out.values()) & reserved
    claimed: set[int] = set(reserved)
    for p in sorted(ports):  # a port keeps its zone unless an earlier port or a reserved one has it
        z = held.get(p)
        if z is not None and z not in claimed:
            assert out[p] == z
            claimed.add(z)
    assert allocate(out, ports, reserved) == out  # the same inputs, the same zones


def test_parse_external_ids() -> None:
    text = '{alcor-ct-zone-p1="3", "alcor-ct-zone-a b"="7", other=x, alcor-ct-zone-bad=z}'
    assert parse_external_ids(text) == {"p1": 3, "a b": 7}
    assert parse_external_ids("{}") == {}
