"""Inputs schemathesis (tests/e2e/test_ops_openapi.py) found answered with a 500; now Neutron 4xx."""

from __future__ import annotations

from pathlib import Path

from tests.support.controller import running_controller


async def test_integer_filters_beyond_64_bits_are_a_400(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as (_, c):
        r = await c.get("/v2.0/networks?revision_number=9174894417623964975104")
        assert r.status == 400, r.body
        assert "out of range" in r.error["message"]
        r = await c.get("/v2.0/subnets?ip_version=-92233720368547758080")
        assert r.status == 400, r.body
        assert (await c.get("/v2.0/networks?revision_number=1")).status == 200


async def test_changes_since_beyond_64_bits_is_a_400(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as (_, c):
        r = await c.get(f"/v2.0/alcor/changes?since={2**64}")
        assert r.status == 400, r.body
