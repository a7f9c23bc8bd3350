"""DHCPv4: a port's lease from the goal state (leases.py), the answer to each client frame (dhcp.py)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.lib.packet import ipv4, packet, packet_utils, udp

from alcor.agent import dhcp, leases
from alcor.agent.config import DhcpConfig
from alcor.agent.dhcp import (
    ACK,
    DECLINE,
    DISCOVER,
    INFORM,
    NAK,
    OFFER,
    RELEASE,
    REQUEST,
    client_frame,
    parse_reply,
    respond,
)
from alcor.agent.leases import lease_for
from tests.support.goals import GoalBuilder

A, B = "node-a", "node-b"
P1, P2, REMOTE = "p1000000-0000", "p2000000-0000", "p3000000-0000"
MAC1, MAC2 = "fa:16:3e:00:01:05", "fa:16:3e:00:02:05"
GW_MAC = "fa:16:3e:00:00:01"
SETTINGS = DhcpConfig(lease_time=3600, domain="example.org", dns_servers=["192.0.2.53"])


def goal(**subnet: Any) -> dict[str, Any]:
    g = GoalBuilder(A).node(A, "172.31.255.1").node(B, "172.31.255.2").vpc("vpc1", 100)
    g.subnet("s1", "vpc1", "10.0.0.0/24", "10.0.0.1", GW_MAC)
    g.subnet("s6", "vpc1", "fd00::/64", "fd00::1")
    g.port(P1, "vpc1", "s1", "10.0.0.5", MAC1, node=A)
    g.port(P2, "vpc1", "s1", "10.0.0.6", MAC2, node=A)
    g.port(REMOTE, "vpc1", "s1", "10.0.0.7", "fa:16:3e:00:03:05", node=B)
    out: dict[str, Any] = dict(g.goal())
    out["subnet"]["s1"].update(
        {"enable_dhcp": True, "dns_nameservers": ["10.0.0.2", "10.0.0.3"], "host_routes": []}
    )
    out["subnet"]["s1"].update(subnet)
    out["subnet"]["s6"]["ip_version"] = 6
    out["subnet"]["s6"]["enable_dhcp"] = True
    out["vpc"]["vpc1"]["mtu"] = 1400
    return out


def lease1(**subnet: Any) -> leases.Lease:
    lease = lease_for(goal(**subnet), P1, SETTINGS)
    assert lease is not None
    return lease


# --- the lease ------------------------------------------------------------------------------------


def test_lease_carries_the_ports_address_and_its_subnets_options() -> None:
    lease = lease1()
    assert (lease.mac, lease.ip, lease.netmask, lease.broadcast) == (
        MAC1,
        "10.0.0.5",
        "255.255.255.0",
        "10.0.0.255",
    )
    assert lease.router == "10.0.0.1"
    assert lease.dns == ("10.0.0.2", "10.0.0.3")
    assert lease.mtu == 1400  # the network's
    assert (lease.lease_time, lease.domain) == (3600, "example.org")
    assert (lease.server_ip, lease.server_mac) == ("10.0.0.1", GW_MAC)
    assert lease.routes == ()  # no host routes: no option 121


def test_dns_falls_back_to_config_and_host_routes_get_the_default_route() -> None:
    routes = [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}]
    lease = lease1(dns_nameservers=[], host_routes=routes)
    assert lease.dns == ("192.0.2.53",)
    assert lease.routes == (
        (ipaddress.IPv4Network("192.168.0.0/16"), "10.0.0.254"),
        (ipaddress.IPv4Network("0.0.0.0/0"), "10.0.0.1"),  # RFC 3442: option 3 is then ignored
    )
    own_default = [{"destination": "0.0.0.0/0", "nexthop": "10.0.0.9"}]
    assert lease1(host_routes=own_default).routes == (
        (ipaddress.IPv4Network("0.0.0.0/0"), "10.0.0.9"),
    )


def test_a_subnet_without_gateway_or_router_still_has_a_stable_server() -> None:
    lease = lease1(gateway_ip=None, gateway_mac=None)
    assert lease.router is None
    assert lease.server_ip == leases.SERVER_IP_WITHOUT_GATEWAY
    assert lease.server_mac == leases.server_mac("s1") == lease1(gateway_mac=None).server_mac
    assert int(lease.server_mac.split(":")[0], 16) & 0x03 == 0x02  # unicast, locally administered
    assert leases.server_mac("s1") != leases.server_mac("s2")


@pytest.mark.parametrize(
    "change",
    [
        {"enable_dhcp": False},
        {"enable_dhcp": None},  # a body without the field is not served
    ],
)
def test_no_lease_where_dhcp_is_off(change: dict[str, Any]) -> None:
    assert lease_for(goal(**change), P1, SETTINGS) is None


def test_no_lease_for_remote_down_router_or_ipv6_only_ports() -> None:
    g = goal()
    assert lease_for(g, REMOTE, SETTINGS) is None
    assert lease_for(g, "missing", SETTINGS) is None
    g["port"][P2]["admin_state_up"] = False
    assert lease_for(g, P2, SETTINGS) is None
    g["port"][P2]["admin_state_up"] = True
    g["port"][P2]["device_owner"] = "network:router_interface"
    assert lease_for(g, P2, SETTINGS) is None
    g["port"][P2]["device_owner"] = "compute:nova"
    g["port"][P2]["fixed_ips"] = [{"subnet_id": "s6", "ip_address": "fd00::6"}]
    assert lease_for(g, P2, SETTINGS) is None


def test_the_first_ipv4_address_on_a_dhcp_subnet_is_offered() -> None:
    g = goal()
    g["subnet"]["s2"] = {
        "id": "s2", "network_id": "vpc1", "cidr": "10.0.1.0/24", "ip_version": 4,
        "gateway_ip": "10.0.1.1", "gateway_mac": None, "enable_dhcp": False,
    }  # fmt: skip
    g["port"][P1]["fixed_ips"] = [
        {"subnet_id": "s6", "ip_address": "fd00::5"},
        {"subnet_id": "s2", "ip_address": "10.0.1.5"},
        {"subnet_id": "s1", "ip_address": "10.0.0.5"},
    ]
    lease = lease_for(g, P1, SETTINGS)
    assert lease is not None and lease.ip == "10.0.0.5"


# --- the answers ----------------------------------------------------------------------------------


def test_discover_gets_an_offer_with_every_option() -> None:
    routes = [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}]
    lease = lease1(host_routes=routes)
    answer = respond(client_frame(DISCOVER, MAC1, xid=0xABCD), lease)
    assert answer.kind == "offer" and answer.frame is not None
    r = parse_reply(answer.frame)
    assert (r.message_type, r.xid, r.yiaddr) == (OFFER, 0xABCD, "10.0.0.5")
    assert (r.eth_src, r.eth_dst, r.ip_src, r.ip_dst) == (GW_MAC, MAC1, "10.0.0.1", "10.0.0.5")
    o = r.options
    assert o[dhcp.OPT_SERVER_ID] == bytes([10, 0, 0, 1])
    assert o[dhcp.OPT_SUBNET_MASK] == bytes([255, 255, 255, 0])
    assert o[dhcp.OPT_BROADCAST] == bytes([10, 0, 0, 255])
    assert o[dhcp.OPT_ROUTER] == bytes([10, 0, 0, 1])
    assert o[dhcp.OPT_DNS] == bytes([10, 0, 0, 2, 10, 0, 0, 3])
    assert o[dhcp.OPT_DOMAIN] == b"example.org"
    assert struct.unpack("!H", o[dhcp.OPT_MTU]) == (1400,)
    assert struct.unpack("!I", o[dhcp.OPT_LEASE_TIME]) == (3600,)
    assert struct.unpack("!I", o[dhcp.OPT_RENEWAL_TIME]) == (1800,)
    assert struct.unpack("!I", o[dhcp.OPT_REBINDING_TIME]) == (3150,)
    # RFC 3442's encoding: 16 192.168 10.0.0.254, then 0 10.0.0.1
    assert o[dhcp.OPT_CLASSLESS_ROUTES] == bytes([16, 192, 168, 10, 0, 0, 254, 0, 10, 0, 0, 1])


PXE = [{"opt_name": "tftp-server", "opt_value": "10.0.0.9"},
       {"opt_name": "bootfile-name", "opt_value": "pxelinux.0"},
       {"opt_name": "server-ip-address", "opt_value": "10.0.0.9"},
       {"opt_name": "dns-server", "opt_value": "192.0.2.1"},
       {"opt_name": "150", "opt_value": "10.0.0.9,10.0.0.10"},
       {"opt_name": "ntp-server", "opt_value": "2001:db8::1"}]  # IPv6: for DHCPv6, not sent


def pxe_lease() -> leases.Lease:
    g = goal()
    g["port"][P1]["extra_dhcp_opts"] = PXE
    lease = lease_for(g, P1, SETTINGS)
    assert lease is not None
    return lease


def test_a_ports_extra_dhcp_opts_are_sent_and_replace_the_subnets() -> None:
    for kind in (DISCOVER, REQUEST):
        frame = respond(client_frame(kind, MAC1, requested_ip="10.0.0.5", server_id="10.0.0.1"),
                        pxe_lease()).frame
        assert frame is not None
        r = parse_reply(frame)
        o = r.options
        assert o[66] == b"10.0.0.9" and o[67] == b"pxelinux.0"
        assert o[150] == bytes([10, 0, 0, 9, 10, 0, 0, 10])
        assert o[dhcp.OPT_DNS] == bytes([192, 0, 2, 1])  # the port's, not the subnet's
        assert 42 not in o
        assert r.siaddr == "10.0.0.9"
        assert o[dhcp.OPT_ROUTER] == bytes([10, 0, 0, 1])  # the rest of the lease as before
    assert parse_reply(respond(client_frame(DISCOVER, MAC1), lease1()).frame or b"").siaddr == "0.0.0.0"


def test_the_reply_is_well_formed_on_the_wire() -> None:
    frame = respond(client_frame(DISCOVER, MAC1), lease1()).frame
    assert frame is not None
    pkt = packet.Packet(frame)
    ip, u = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(udp.udp)
    assert packet_utils.checksum(frame[14:34]) == 0  # IPv4 header checksum
    assert (u.src_port, u.dst_port) == (67, 68)
    assert packet_utils.checksum_ip(ip, u.total_length, frame[34 : 34 + u.total_length]) == 0
    assert u.total_length - 8 >= 300  # BOOTP's minimum message size
    assert frame[34 + 8 + 236 : 34 + 8 + 240] == bytes([99, 130, 83, 99])


def test_request_after_offer_is_acked() -> None:
    lease = lease1()
    req = client_frame(REQUEST, MAC1, requested_ip="10.0.0.5", server_id="10.0.0.1")
    answer = respond(req, lease)
    assert answer.kind == "ack"
    assert answer.frame is not None
    r = parse_reply(answer.frame)
    assert (r.message_type, r.yiaddr) == (ACK, "10.0.0.5")
    assert struct.unpack("!I", r.options[dhcp.OPT_LEASE_TIME]) == (3600,)


def test_request_for_another_server_is_not_answered() -> None:
    req = client_frame(REQUEST, MAC1, requested_ip="10.0.0.5", server_id="10.0.0.200")
    assert respond(req, lease1()).kind == "ignored"


def test_request_for_another_address_gets_a_broadcast_nak() -> None:
    for req in (
        client_frame(REQUEST, MAC1, requested_ip="10.0.0.99", server_id="10.0.0.1"),  # selecting
        client_frame(REQUEST, MAC1, requested_ip="192.168.7.7"),  # init-reboot, another network
        client_frame(REQUEST, MAC1, ciaddr="10.0.0.99", server_id="10.0.0.1"),  # renewing
    ):
        answer = respond(req, lease1())
        assert answer.kind == "nak" and answer.frame is not None
        r = parse_reply(answer.frame)
        assert (r.message_type, r.yiaddr) == (NAK, "0.0.0.0")
        assert (r.eth_dst, r.ip_dst) == ("ff:ff:ff:ff:ff:ff", "255.255.255.255")
        assert dhcp.OPT_LEASE_TIME not in r.options


def test_init_reboot_and_renewal_of_the_right_address_are_acked() -> None:
    reboot = respond(client_frame(REQUEST, MAC1, requested_ip="10.0.0.5"), lease1())
    assert reboot.kind == "ack"
    renew = respond(client_frame(REQUEST, MAC1, ciaddr="10.0.0.5", server_id="10.0.0.1"), lease1())
    assert renew.kind == "ack" and renew.frame is not None
    r = parse_reply(renew.frame)
    assert (r.ip_dst, r.eth_dst, r.ciaddr, r.yiaddr) == ("10.0.0.5", MAC1, "10.0.0.5", "10.0.0.5")
    rebind = respond(client_frame(REQUEST, MAC1, ciaddr="10.0.0.5"), lease1())
    assert rebind.kind == "ack"


def test_broadcast_flag_gets_a_broadcast_reply() -> None:
    answer = respond(client_frame(DISCOVER, MAC1, broadcast=True), lease1())
    assert answer.frame is not None
    r = parse_reply(answer.frame)
    assert (r.eth_dst, r.ip_dst) == ("ff:ff:ff:ff:ff:ff", "255.255.255.255")


def test_inform_gets_options_without_a_lease() -> None:
    answer = respond(client_frame(INFORM, MAC1, ciaddr="10.0.0.5"), lease1())
    assert answer.kind == "inform" and answer.frame is not None
    r = parse_reply(answer.frame)
    assert (r.message_type, r.yiaddr, r.ip_dst) == (ACK, "0.0.0.0", "10.0.0.5")
    assert dhcp.OPT_LEASE_TIME not in r.options and dhcp.OPT_RENEWAL_TIME not in r.options
    assert r.options[dhcp.OPT_DNS] == bytes([10, 0, 0, 2, 10, 0, 0, 3])


def test_release_and_decline_are_taken_without_a_reply() -> None:
    rel = respond(client_frame(RELEASE, MAC1, ciaddr="10.0.0.5", server_id="10.0.0.1"), lease1())
    assert (rel.kind, rel.frame) == ("release", None)
    dec = respond(client_frame(DECLINE, MAC1, requested_ip="10.0.0.5"), lease1())
    assert (dec.kind, dec.frame) == ("decline", None)
    assert "10.0.0.5" in dec.reason


def test_a_request_for_another_mac_is_ignored() -> None:
    answer = respond(client_frame(DISCOVER, MAC1, chaddr=MAC2), lease1())
    assert (answer.kind, answer.frame) == ("ignored", None)


def test_no_gateway_means_no_router_option() -> None:
    answer = respond(client_frame(DISCOVER, MAC1), lease1(gateway_ip=None, gateway_mac=None))
    assert answer.frame is not None
    r = parse_reply(answer.frame)
    assert dhcp.OPT_ROUTER not in r.options and dhcp.OPT_CLASSLESS_ROUTES not in r.options
    assert r.ip_src == leases.SERVER_IP_WITHOUT_GATEWAY


def test_server_replies_and_other_traffic_are_not_requests() -> None:
    offer = respond(client_frame(DISCOVER, MAC1), lease1()).frame
    assert offer is not None
    assert respond(offer, lease1()).kind == "ignored"  # a server's reply (67 -> 68)
    assert "not UDP" in str(dhcp.parse_request(b"\xff" * 12 + b"\x08\x06" + b"\0" * 300))
    assert "too short" in str(dhcp.parse_request(b"\xff" * 12 + b"\x08\x00" + b"\0" * 28))
    fragment = bytearray(client_frame(DISCOVER, MAC1))
    fragment[20] = 0x20  # more fragments
    assert "fragment" in str(dhcp.parse_request(bytes(fragment)))


def test_options_with_pads_and_split_long_options_are_read() -> None:
    raw = bytes([0, 53, 1, 3, 0, 0, 50, 4, 10, 0, 0, 5, 15, 2]) + b"ab" + bytes([15, 1]) + b"c"
    assert dhcp.parse_options(raw + b"\xff") == {53: b"\x03", 50: bytes([10, 0, 0, 5]), 15: b"abc"}
    with pytest.raises(ValueError):
        dhcp.parse_options(bytes([53, 4, 1]))


def test_a_long_option_is_split_into_instances() -> None:
    dns = tuple(f"10.0.{i}.1" for i in range(70))  # 280 bytes
    lease = leases.Lease(**{**_fields(lease1()), "dns": dns})
    frame = respond(client_frame(DISCOVER, MAC1), lease).frame
    assert frame is not None
    assert parse_reply(frame).options[dhcp.OPT_DNS] == b"".join(
        ipaddress.IPv4Address(a).packed for a in dns
    )


def _fields(lease: leases.Lease) -> dict[str, Any]:
    return {f: getattr(lease, f) for f in lease.__slots__}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "dest,hop,wire",
    [  # RFC 3442 §1's examples of the destination encoding
        ("0.0.0.0/0", "10.0.0.1", [0, 10, 0, 0, 1]),
        ("10.0.0.0/8", "10.0.0.1", [8, 10, 10, 0, 0, 1]),
        ("10.0.0.0/24", "10.0.0.1", [24, 10, 0, 0, 10, 0, 0, 1]),
        ("10.17.0.0/16", "10.0.0.1", [16, 10, 17, 10, 0, 0, 1]),
        ("10.27.129.0/24", "10.0.0.1", [24, 10, 27, 129, 10, 0, 0, 1]),
        ("10.229.0.128/25", "10.0.0.1", [25, 10, 229, 0, 128, 10, 0, 0, 1]),
        ("10.198.122.47/32", "0.0.0.0", [32, 10, 198, 122, 47, 0, 0, 0, 0]),
    ],
)
def test_classless_route_encoding(dest: str, hop: str, wire: list[int]) -> None:
    net = ipaddress.IPv4Network(dest)
    assert dhcp.encode_route(net, hop) == bytes(wire)
    assert dhcp.decode_routes(bytes(wire)) == [(net, hop)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_get_an_answer_and_never_an_exception(data: bytes) -> None:
    assert respond(data, lease1()).kind in (
        "ignored",
        "offer",
        "ack",
        "nak",
        "inform",
        "release",
        "decline",
    )


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=282, max_value=400), st.binary(min_size=1, max_size=40))
def test_a_damaged_request_is_never_an_exception(cut: int, junk: bytes) -> None:
    frame = client_frame(REQUEST, MAC1, requested_ip="10.0.0.5")
    assert respond(frame[:cut] + junk, lease1()).kind in ("ignored", "ack", "nak")


requests = st.builds(
    dhcp.Request,
    message_type=st.sampled_from([DISCOVER, REQUEST, INFORM]),
    xid=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 2**16 - 1),
    ciaddr=st.sampled_from(["0.0.0.0", "10.0.0.5", "10.0.0.99"]),
    giaddr=st.sampled_from(["0.0.0.0", "10.9.9.9"]),
    chaddr=st.just(MAC1),
    eth_src=st.sampled_from([MAC1, "fa:16:3e:99:99:99"]),
    requested_ip=st.none(),
    server_id=st.none(),
)


@settings(max_examples=400, deadline=None)
@given(requests, st.sampled_from([(OFFER, False), (ACK, False), (ACK, True), (NAK, False)]))
def test_the_fast_reply_is_os_kens_byte_for_byte(req: dhcp.Request, kind: tuple[int, bool]) -> None:
    mtype, inform = kind
    lease = lease1(host_routes=[{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}])
    assert dhcp._reply(req, lease, mtype, inform=inform) == dhcp.build_reply(
        req, lease, mtype, inform=inform
    )
    pxe = pxe_lease()
    assert dhcp._reply(req, pxe, mtype, inform=inform) == dhcp.build_reply(req, pxe, mtype, inform=inform)


@settings(max_examples=200, deadline=None)
@given(requests)
def test_requests_parse_back_as_built(req: dhcp.Request) -> None:
    frame = client_frame(
        req.message_type, req.eth_src, xid=req.xid, ciaddr=req.ciaddr,
        broadcast=bool(req.flags & dhcp.BROADCAST_FLAG), chaddr=req.chaddr,
    )  # fmt: skip
    got = dhcp.parse_request(frame)
    assert isinstance(got, dhcp.Request)
    assert (got.message_type, got.xid, got.ciaddr, got.chaddr, got.eth_src) == (
        req.message_type, req.xid, req.ciaddr, req.chaddr, req.eth_src,
    )  # fmt: skip
    assert got.flags & dhcp.BROADCAST_FLAG == req.flags & dhcp.BROADCAST_FLAG
