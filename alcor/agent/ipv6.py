"""IPv6 in the pipeline: neighbour discovery answered by the datapath, and gateways that ping.

The IPv6 counterpart of the ARP responder, built the same way (flows rewrite the request into
its answer and send it back out of IN_PORT; nothing reaches the agent). A neighbour
solicitation for a known address of the VPC, a VM's or a gateway's, becomes the neighbour
advertisement that answers it, in two steps because OVS checks each field against the packet's
type as the flow finds it:

    RESPOND   icmpv6_type=135, nd_target=T (in the VPC)
              -> eth_dst=eth_src, eth_src=MAC, ipv6_dst=ipv6_src, ipv6_src=T,
                 icmpv6_type=136, nd_reserved=flags, nd_options_type=2 (target link-layer)
              -> goto ND_REPLY
    ND_REPLY  icmpv6_type=136, icmpv6_code=0 (in the VPC)
              -> nd_tll=eth_src (the answering MAC), output IN_PORT

Flags: solicited and override, plus router for a gateway. OVS recomputes the ICMPv6 checksum
(OVS 2.11+ `nd_reserved`/`nd_options_type`; the userspace path carries them out). Solicitations
that must not be answered fall through to normal flooding: duplicate address detection (source
`::`), which a real owner answers, and solicitations without a source link-layer option, whose
answer would need a longer packet than the request. A gateway also answers on its link-local
address (fe80:: + the EUI-64 of its MAC), which router advertisements name as the next hop.

Everything here is a pure function of plain data, used by alcor/agent/pipeline.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from alcor.agent.ir import (
    ETH_IPV6,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_NA,
    ICMPV6_NS,
    IPPROTO_ICMPV6,
    OFPP_IN_PORT,
    P_HOST,
    P_ND_NO_ANSWER,
    P_OWN_IP,
    T_L2,
    T_ND_REPLY,
    T_RESPOND,
    Action,
    Flow,
    Match,
    Move,
    Output,
    SetField,
    match,
)

# NA flags in the first 32 bits after the checksum (RFC 4861 4.4): Router, Solicited, Override.
NA_SOLICITED_OVERRIDE = 0x60000000
NA_ROUTER_SOLICITED_OVERRIDE = 0xE0000000
ND_OPT_TARGET_LL = 2
UNSPECIFIED = "::"
NO_MAC = "00:00:00:00:00:00"

_MOVE_ETH = Move("eth_src", "eth_dst", 48)
_MOVE_IPV6 = Move("ipv6_src", "ipv6_dst", 128)
_NA = SetField("icmpv6_type", ICMPV6_NA)
_TLL_OPTION = SetField("nd_options_type", ND_OPT_TARGET_LL)
_FLAGS = {
    False: SetField("nd_reserved", NA_SOLICITED_OVERRIDE),
    True: SetField("nd_reserved", NA_ROUTER_SOLICITED_OVERRIDE),
}
_TO_IN_PORT = Output(OFPP_IN_PORT)


def link_local(mac: str) -> str:
    """fe80::/64 with the modified EUI-64 of `mac` (RFC 4291): what a router's interface holds."""
    b = bytes.fromhex(mac.replace(":", ""))
    iid = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


def na_actions(mac: str, ip: str, *, router: bool = False) -> tuple[Action, ...]:
    """The first step of turning an NS for `ip` into the NA (ip is-at mac); ND_REPLY finishes."""
    return (
        _MOVE_ETH,
        SetField("eth_src", mac),
        _MOVE_IPV6,
        SetField("ipv6_src", ip),
        _NA,
        _FLAGS[router],
        _TLL_OPTION,
    )


def echo_reply_actions(mac: str, ip: str) -> tuple[Action, ...]:
    """Turn an ICMPv6 echo request to a gateway address into its reply."""
    return (
        _MOVE_ETH,
        SetField("eth_src", mac),
        _MOVE_IPV6,
        SetField("ipv6_src", ip),
        SetField("icmpv6_type", ICMPV6_ECHO_REPLY),
        _TO_IN_PORT,
    )


def _nd(vni: int, **fields: int | str) -> Match:
    return match(metadata=vni, eth_type=ETH_IPV6, ip_proto=IPPROTO_ICMPV6, **fields)


def ns_responder(vni: int, mac: str, ip: str, cookie: int, *, router: bool = False) -> Flow:
    """Answer a solicitation for `ip` within the VPC with `mac`."""
    return Flow(
        T_RESPOND,
        P_HOST,
        _nd(vni, icmpv6_type=ICMPV6_NS, ipv6_nd_target=ip),
        na_actions(mac, ip, router=router),
        goto_table=T_ND_REPLY,
        cookie=cookie,
    )


def own_address(vni: int, ofport: int, ip: str, cookie: int) -> Flow:
    """A port asking for its own address is not answered (its solicitation is flooded)."""
    return Flow(
        T_RESPOND,
        P_OWN_IP,
        match(
            in_port=ofport,
            metadata=vni,
            eth_type=ETH_IPV6,
            ip_proto=IPPROTO_ICMPV6,
            icmpv6_type=ICMPV6_NS,
            ipv6_nd_target=ip,
        ),
        goto_table=T_L2,
        cookie=cookie,
    )


def gateway_flows(vni: int, mac: str, addresses: Sequence[str], cookie: int) -> list[Flow]:
    """A gateway's addresses (global and link-local) answer NS as a router, and ping."""
    flows: list[Flow] = []
    for ip in addresses:
        flows.append(ns_responder(vni, mac, ip, cookie, router=True))
        flows.append(
            Flow(
                T_RESPOND,
                P_HOST,
                _nd(vni, icmpv6_type=ICMPV6_ECHO_REQUEST, ipv6_dst=ip),
                echo_reply_actions(mac, ip),
                cookie=cookie,
            )
        )
    return flows


def vpc_nd_flows(vni: int, cookie: int) -> list[Flow]:
    """What every VPC needs once: the NA's last step, and the solicitations left unanswered."""
    return [
        Flow(
            T_ND_REPLY,
            P_HOST,
            _nd(vni, icmpv6_type=ICMPV6_NA, icmpv6_code=0),
            (Move("eth_src", "nd_tll", 48), _TO_IN_PORT),
            cookie=cookie,
        ),
        Flow(
            T_RESPOND,
            P_ND_NO_ANSWER,
            _nd(vni, icmpv6_type=ICMPV6_NS, ipv6_src=UNSPECIFIED),
            goto_table=T_L2,
            cookie=cookie,
        ),
        Flow(
            T_RESPOND,
            P_ND_NO_ANSWER - 1,  # DAD has no source link-layer option either: one flow decides
            _nd(vni, icmpv6_type=ICMPV6_NS, ipv6_nd_sll=NO_MAC),
            goto_table=T_L2,
            cookie=cookie,
        ),
    ]
