"""The NAT gateway type's pure parts: which floating IPs a gateway node NATs, and why not."""

import ipaddress

from alcor.agent.gateway import External, floating_ip_problem, floating_ips
from alcor.agent.pipeline import Subnet

TENANT = Subnet("s1", 7, ipaddress.IPv4Network("10.0.0.0/24"), "10.0.0.1", "fa:16:3e:00:00:01")
CARRIED = External(3, ipaddress.IPv4Network("203.0.113.0/24"), "203.0.113.1", None, "")


def test_a_routers_floating_ips_are_its_associated_ipv4_ones_by_id():
    goal = {"floating_ip": {
        "f2": {"router_id": "r1", "floating_ip_address": "203.0.113.20", "fixed_ip_address": "10.0.0.6"},
        "f1": {"router_id": "r1", "floating_ip_address": "203.0.113.10", "fixed_ip_address": "10.0.0.5"},
        "f3": {"router_id": "r2", "floating_ip_address": "203.0.113.30", "fixed_ip_address": "10.0.0.7"},
        "f4": {"router_id": "r1", "floating_ip_address": "bogus", "fixed_ip_address": "10.0.0.8"},
    }}
    assert floating_ips(goal, "r1") == [("f1", "203.0.113.10", "10.0.0.5"),
                                        ("f2", "203.0.113.20", "10.0.0.6")]


def test_a_floating_ip_is_natted_when_the_gateway_is_carried_and_its_subnet_joined():
    assert floating_ip_problem("10.0.0.5", [TENANT], CARRIED) == ""


def test_why_a_floating_ip_is_not_natted_is_its_status_reason():
    unmapped = External(None, None, None, None, "physical network physnet1 not mapped here")
    assert floating_ip_problem("10.0.0.5", [TENANT], unmapped) == (
        "physical network physnet1 not mapped here")
    assert floating_ip_problem("10.9.0.5", [TENANT], CARRIED) == (
        "no subnet of the router here holds 10.9.0.5")
    assert floating_ip_problem("10.0.0.5", [], CARRIED) != ""
