"""Two controllers on one PostgreSQL database, in this process: each serves the whole API, sees the
other's writes, and their allocations never collide."""

from __future__ import annotations

import asyncio
import itertools

from alcor.db.backends import StoreModule
from tests.support.controller import running_controller
from tests.support.stores import store_settings


async def test_two_controllers_share_one_database(tmp_path):
    async with store_settings("postgresql", tmp_path) as store:
        async with running_controller(tmp_path, store=store) as (ka, a), \
                running_controller(tmp_path, store=store) as (kb, b):
            net = await a.create("network", "/v2.0/networks", name="shared")
            # B serves A's network at once (reads go to the database; B's indexes followed it).
            assert (await b.get(f"/v2.0/networks/{net['id']}")).status == 200
            await b.create("subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.9.0.0/26",
                           ip_version=4)
            # 61 addresses in the pool; 60 creates split over both controllers, interleaved.
            clients = itertools.cycle([a, b])
            replies = await asyncio.gather(*(
                next(clients).post("/v2.0/ports", {"port": {"network_id": net["id"]}})
                for _ in range(60)))
            assert [r.status for r in replies] == [201] * 60
            ports = [r.body["port"] for r in replies]
            ips = [p["fixed_ips"][0]["ip_address"] for p in ports]
            macs = [p["mac_address"] for p in ports]
            assert len(set(ips)) == 60 and len(set(macs)) == 60
            # A MAC taken on one controller is refused on the other, by its own index.
            r = await b.post("/v2.0/ports", {"port": {"network_id": net["id"],
                                                       "mac_address": macs[0]}})
            assert r.status == 409 and r.error["type"] == "MacAddressInUse"
            last = await b.post("/v2.0/ports", {"port": {"network_id": net["id"]}})
            assert last.status == 201
            r = await a.post("/v2.0/ports", {"port": {"network_id": net["id"]}})
            assert r.status == 409 and r.error["type"] == "IpAddressGenerationFailure"
            # Freed on A, reusable on B.
            assert (await a.delete(f"/v2.0/ports/{ports[1]['id']}")).status == 204
            again = await b.create("port", "/v2.0/ports", network_id=net["id"],
                                   fixed_ips=[{"ip_address": ips[1]}])
            assert again["fixed_ips"][0]["ip_address"] == ips[1]
            # If-Match: B updates, A's stale revision is refused.
            p = ports[2]
            r = await b.put(f"/v2.0/ports/{p['id']}", {"port": {"name": "x"}})
            assert r.status == 200
            r = await a.put(f"/v2.0/ports/{p['id']}", {"port": {"name": "y"}},
                            headers={"If-Match": f"revision_number={p['revision_number']}"})
            assert r.status == 412
            # One change log, gap-free, the same on both.
            sa, sb = ka.get(StoreModule).store, kb.get(StoreModule).store
            # Each hands the other's rows to its readers once their flush is announced.
            last = max(sa.changes.last_rev, sb.changes.last_rev)
            await sa.changes.wait(last - 1, timeout=5)
            await sb.changes.wait(last - 1, timeout=5)
            revs_a = [c.rev for c in await sa.changes.read(0, 10_000)]
            revs_b = [c.rev for c in await sb.changes.read(0, 10_000)]
            assert revs_a == revs_b == list(range(1, len(revs_a) + 1))
            # The network cannot be deleted through either while ports remain.
            r = await b.delete(f"/v2.0/networks/{net['id']}")
            assert r.status == 409 and r.error["type"] == "NetworkInUse"


async def test_a_resource_created_on_one_controller_is_found_at_once_by_the_other(tmp_path):
    # Read-your-writes: a client creates a network on A, then a subnet and a port naming it on
    # B. B's indexes follow A's commits on a NOTIFY; here B's follower is stopped, so B has not
    # heard of the network when the requests arrive, and must catch up rather than answer 404.
    async with store_settings("postgresql", tmp_path) as store:
        async with running_controller(tmp_path, store=store) as (_, a), \
                running_controller(tmp_path, store=store) as (kb, b):
            follower = kb.get(StoreModule).store._follower  # type: ignore[attr-defined]
            follower.cancel()
            await asyncio.wait({follower})
            net = await a.create("network", "/v2.0/networks", name="made-on-a")
            sub = await b.create("subnet", "/v2.0/subnets", network_id=net["id"],
                                 cidr="10.8.0.0/24", ip_version=4)
            net2 = await a.create("network", "/v2.0/networks", name="made-on-a-too")
            port = await b.create("port", "/v2.0/ports", network_id=net2["id"])
            assert sub["network_id"] == net["id"] and port["network_id"] == net2["id"]
            # A network that exists nowhere is still a 404 (after the catch-up found nothing).
            r = await b.post("/v2.0/ports", {"port": {"network_id": sub["id"]}})
            assert r.status == 404 and r.error["type"] == "NetworkNotFound"
