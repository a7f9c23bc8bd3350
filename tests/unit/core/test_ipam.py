"""IP and VNI allocation, pure: pools, gateways, next-fit, exhaustion, a /8 without a pool list."""

import ipaddress
import time

import pytest

from alcor.errors import BadRequest, Conflict
from alcor.resources import ipam


def net(cidr):
    return ipaddress.ip_network(cidr)


def ip(s):
    return int(ipaddress.ip_address(s))


def test_default_pools_leave_out_gateway_network_and_broadcast():
    n = net("10.0.0.0/24")
    assert ipam.default_gateway(n) == ip("10.0.0.1")
    assert ipam.default_pools(n, ip("10.0.0.1")) == [(ip("10.0.0.2"), ip("10.0.0.254"))]
    assert ipam.default_pools(n, ip("10.0.0.100")) == [(ip("10.0.0.1"), ip("10.0.0.99")),
                                                       (ip("10.0.0.101"), ip("10.0.0.254"))]
    assert ipam.default_pools(n, None) == [(ip("10.0.0.1"), ip("10.0.0.254"))]


def test_pool_validation():
    n = net("10.0.0.0/24")
    with pytest.raises(BadRequest):
        ipam.parse_pools(n, [{"start": "10.0.0.0", "end": "10.0.0.5"}])
    with pytest.raises(BadRequest):
        ipam.parse_pools(n, [{"start": "10.0.0.9", "end": "10.0.0.5"}])
    with pytest.raises(Conflict):
        ipam.parse_pools(n, [{"start": "10.0.0.2", "end": "10.0.0.9"}, {"start": "10.0.0.9", "end": "10.0.0.20"}])
    with pytest.raises(Conflict):
        ipam.check_gateway(n, ip("10.0.0.5"), [(ip("10.0.0.2"), ip("10.0.0.9"))])


def test_allocator_next_fit_release_and_exhaustion():
    n = net("10.0.0.0/29")
    a = ipam.SubnetAllocator("s", "n", n, ipam.default_pools(n, ip("10.0.0.1")), ip("10.0.0.1"))
    got = [a.allocate() for _ in range(5)]
    assert got == [ip(f"10.0.0.{i}") for i in range(2, 7)]
    with pytest.raises(ipam.IpExhausted):
        a.allocate()
    a.release(ip("10.0.0.3"))
    assert a.allocate() == ip("10.0.0.3")
    assert not a.take(ip("10.0.0.3"))


def test_a_slash_8_is_as_cheap_as_a_slash_24():
    n = net("10.0.0.0/8")
    t = time.perf_counter()
    a = ipam.SubnetAllocator("s", "n", n, ipam.default_pools(n, ip("10.0.0.1")), ip("10.0.0.1"))
    ips = {a.allocate() for _ in range(10000)}
    assert len(ips) == 10000 and a.free == 2**24 - 3 - 10000
    assert time.perf_counter() - t < 1.0


def test_vni_allocator_wraps_and_exhausts():
    v = ipam.VniAllocator(10, 12)
    assert [v.allocate(), v.allocate(), v.allocate()] == [10, 11, 12]
    assert v.allocate() is None
    v.used.discard(11)
    assert v.allocate() == 11


def test_random_mac_prefix():
    import random
    mac = ipam.random_mac(random.Random(1))
    assert mac.startswith("fa:16:3e:") and len(mac) == 17
