"""DHCPv4 packets, as pure functions: the answer to one client frame (RFC 2131) from the asking
port's lease (alcor/agent/leases.py), parsed and built with os-ken's packet library
(`os_ken.lib.packet`). No I/O, no clock: alcor/agent/dhcp_server.py does the sending.

    >>> lease = Lease(port_id="p1", mac="fa:16:3e:00:00:05", ip="10.0.0.5", prefixlen=24,
    ...               router="10.0.0.1", dns=("10.0.0.2",), mtu=1450, routes=(),
    ...               lease_time=86400, domain="openstacklocal",
    ...               server_ip="10.0.0.1", server_mac="fa:16:3e:00:00:01")
    >>> frame = client_frame(DISCOVER, "fa:16:3e:00:00:05", xid=7)
    >>> answer = respond(frame, lease)
    >>> answer.kind, parse_reply(answer.frame).yiaddr
    ('offer', '10.0.0.5')
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, packet_utils, udp

from alcor.agent.leases import Lease, Route

# --- protocol numbers (RFC 2131, RFC 2132, RFC 3442) ---------------------------------------------

SERVER_PORT, CLIENT_PORT = 67, 68
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_TYPES = {
    DISCOVER: "discover",
    OFFER: "offer",
    REQUEST: "request",
    DECLINE: "decline",
    ACK: "ack",
    NAK: "nak",
    RELEASE: "release",
    INFORM: "inform",
}

OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_DOMAIN = 15
OPT_MTU = 26
OPT_BROADCAST = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_MESSAGE = 56
OPT_RENEWAL_TIME = 58
OPT_REBINDING_TIME = 59
OPT_CLASSLESS_ROUTES = 121

BROADCAST_FLAG = 0x8000
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
ZERO_IP = "0.0.0.0"
BROADCAST_IP = "255.255.255.255"


_MAGIC_COOKIE = "99.130.83.99"
_FIXED_LEN = 240  # BOOTP header (236 bytes) and the magic cookie
_MIN_BOOTP = 300  # RFC 1542 §2.1: some clients drop shorter BOOTP messages


# --- one request in, at most one reply out --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """The parts of a client's frame the answer depends on."""

    message_type: int
    xid: int
    flags: int
    ciaddr: str
    giaddr: str
    chaddr: str
    eth_src: str
    requested_ip: str | None  # option 50
    server_id: str | None  # option 54


@dataclass(frozen=True, slots=True)
class Answer:
    """What to do with one frame: `kind` names the outcome (offer, ack, nak, inform, release,
    decline, or ignored), `frame` is the reply to send to the port (None: send nothing)."""

    kind: str
    frame: bytes | None = None
    reason: str = ""


_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s")  # up to chaddr; sname and file follow
_MAGIC = bytes([99, 130, 83, 99])


def parse_request(frame: bytes) -> Request | str:
    """A client's DHCP request from an Ethernet frame, or why it is not one (never raises: the
    frame comes from a tenant). Fixed headers are read with struct: this runs for every punted
    request, and os-ken's parsers convert every address through netaddr (~100 µs a frame)."""
    frame = bytes(frame)
    if len(frame) < 14 + 20 + 8 + _FIXED_LEN:
        return "not a DHCP frame: too short"
    dst, src, ethertype = _ETH.unpack_from(frame)
    if ethertype != 0x0800:
        return f"not UDP over IPv4: ethertype {ethertype:#06x}"
    vihl, _, total, _, frag, _, proto, _, _, _ = _IPV4.unpack_from(frame, 14)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or proto != 17 or frag & 0x3FFF:
        return "not UDP over IPv4 (or a fragment)"
    sport, dport, ulen, _ = _UDP.unpack_from(frame, 14 + ihl)
    if (sport, dport) != (CLIENT_PORT, SERVER_PORT):
        return f"UDP {sport}->{dport} is not client to server"
    start = 14 + ihl + 8
    end = 14 + ihl + ulen
    if ulen < 8 + _FIXED_LEN or end > len(frame) or total < ihl + ulen:
        return "malformed: UDP length"
    op, htype, hlen, _, xid, _, flags, ciaddr, _, _, giaddr, chaddr = _BOOTP.unpack_from(
        frame, start
    )
    if op != dhcp.DHCP_BOOT_REQUEST or htype != 1 or hlen != 6:
        return "not an Ethernet BOOTREQUEST"
    if frame[start + 236 : start + 240] != _MAGIC:
        return "malformed: no DHCP magic cookie"
    try:
        opts = parse_options(frame[start + _FIXED_LEN : end])
    except ValueError as exc:
        return f"malformed: {exc}"
    mtype = opts.get(OPT_MESSAGE_TYPE, b"")
    if len(mtype) != 1:
        return "malformed: no message type"
    return Request(
        message_type=mtype[0],
        xid=xid,
        flags=flags,
        ciaddr=str(ipaddress.IPv4Address(ciaddr)),
        giaddr=str(ipaddress.IPv4Address(giaddr)),
        chaddr=_mac_text(chaddr[:6]),
        eth_src=_mac_text(src),
        requested_ip=_addr(opts.get(OPT_REQUESTED_IP)),
        server_id=_addr(opts.get(OPT_SERVER_ID)),
    )


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_options(raw: bytes) -> dict[int, bytes]:
    """Options by tag from the bytes after the magic cookie; an option given several times is
    concatenated (RFC 3396). PAD is skipped, END or the end of the bytes stops."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(raw):
        tag = raw[pos]
        if tag == 0:
            pos += 1
            continue
        if tag == 255:
            break
        if pos + 2 > len(raw) or pos + 2 + raw[pos + 1] > len(raw):
            raise ValueError(f"option {tag} runs past the end")
        n = raw[pos + 1]
        out[tag] = out.get(tag, b"") + raw[pos + 2 : pos + 2 + n]
        pos += 2 + n
    return out


def _addr(raw: bytes | None) -> str | None:
    return str(ipaddress.IPv4Address(raw)) if raw is not None and len(raw) == 4 else None


def respond(frame: bytes, lease: Lease) -> Answer:
    """The answer to one frame from `lease`'s port (RFC 2131 §4.3)."""
    req = parse_request(frame)
    if isinstance(req, str):
        return Answer("ignored", reason=req)
    if req.chaddr != lease.mac:
        # a VM asking for another MAC's address gets nothing, whatever it puts in its frame
        return Answer("ignored", reason=f"chaddr {req.chaddr} is not the port's MAC")
    t = req.message_type
    if t == DISCOVER:
        return Answer("offer", _reply(req, lease, OFFER))
    if t == REQUEST:
        return _request(req, lease)
    if t == INFORM:
        return Answer("inform", _reply(req, lease, ACK, inform=True))
    if t == RELEASE:
        return Answer("release", reason="the address stays the port's")
    if t == DECLINE:
        return Answer("decline", reason=f"client says {req.requested_ip} is in use")
    return Answer("ignored", reason=f"message type {MESSAGE_TYPES.get(t, t)} from a client")


def _request(req: Request, lease: Lease) -> Answer:
    if req.server_id is not None and req.server_id != lease.server_ip:
        # SELECTING another server's offer (RFC 2131 §4.3.2): stay silent
        return Answer("ignored", reason=f"request for server {req.server_id}")
    # SELECTING and INIT-REBOOT name the address in option 50; RENEWING and REBINDING in ciaddr
    asked = req.requested_ip or (req.ciaddr if req.ciaddr != ZERO_IP else None)
    if asked != lease.ip:
        return Answer("nak", _reply(req, lease, NAK), reason=f"asked for {asked}")
    return Answer("ack", _reply(req, lease, ACK))


def _destination(req: Request, lease: Lease, mtype: int, inform: bool) -> tuple[str, str]:
    """(IP, MAC) a reply goes to, RFC 2131 §4.1: a NAK is broadcast; a client with an address
    (renewing, rebinding, informing) gets it unicast there; otherwise broadcast if it asked,
    else to the address being offered."""
    if mtype == NAK or (req.ciaddr == ZERO_IP and req.flags & BROADCAST_FLAG):
        return BROADCAST_IP, BROADCAST_MAC
    if req.ciaddr != ZERO_IP:
        return req.ciaddr, req.eth_src
    return (ZERO_IP if inform else lease.ip), req.eth_src


def build_reply(req: Request, lease: Lease, mtype: int, *, inform: bool = False) -> bytes:
    """The reply frame, built with os-ken's packet library (the reference `_reply` follows)."""
    if mtype == NAK:
        opts = [_opt(OPT_MESSAGE_TYPE, bytes([NAK])), _opt(OPT_SERVER_ID, _ip(lease.server_ip))]
        opts.append(_opt(OPT_MESSAGE, f"address is {lease.ip}".encode()))
        yiaddr = ZERO_IP
    else:
        opts = lease_options(lease, mtype, inform=inform)
        yiaddr = ZERO_IP if inform else lease.ip
    ip_dst, eth_dst = _destination(req, lease, mtype, inform)
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=eth_dst, src=lease.server_mac, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src=lease.server_ip, dst=ip_dst, proto=17, ttl=64))
    pkt.add_protocol(udp.udp(src_port=SERVER_PORT, dst_port=CLIENT_PORT))
    pkt.add_protocol(
        dhcp.dhcp(
            op=dhcp.DHCP_BOOT_REPLY,
            chaddr=req.chaddr,
            xid=req.xid,
            flags=req.flags & BROADCAST_FLAG,
            ciaddr=req.ciaddr if mtype != NAK else ZERO_IP,
            yiaddr=yiaddr,
            siaddr=lease.next_server or ZERO_IP,
            giaddr=req.giaddr,
            options=dhcp.options(_terminated(opts)),
        )
    )
    pkt.serialize()
    return bytes(pkt.data)


# The fast path. Building a reply with os-ken costs ~0.3 ms (every address goes through
# netaddr), and a thousand VMs booting at once want two replies each. What differs between
# two replies of one kind to one port is only the transaction's fields (destination, xid,
# flags, ciaddr, giaddr) and the checksums, so os-ken builds each (lease, kind) once and the
# rest is patched in; tests/unit/agent/test_dhcp.py checks the result is build_reply's, byte for
# byte. Offsets are those of os-ken's frame: Ethernet, a 20-byte IPv4 header, UDP, BOOTP.
_IP_CSUM, _IP_DST, _UDP_CSUM = 24, 30, 40
_XID, _FLAGS, _CIADDR, _GIADDR = 46, 52, 54, 66


@functools.lru_cache(maxsize=8192)
def _template(lease: Lease, mtype: int, inform: bool) -> bytes:
    blank = Request(mtype, 0, 0, ZERO_IP, ZERO_IP, lease.mac, lease.mac, None, None)
    return build_reply(blank, lease, mtype, inform=inform)


def prepare(lease: Lease) -> None:
    """Build the port's OFFER and ACK once, ahead of its first request (the rest is patching)."""
    _template(lease, OFFER, False)
    _template(lease, ACK, False)


def _reply(req: Request, lease: Lease, mtype: int, *, inform: bool = False) -> bytes:
    f = bytearray(_template(lease, mtype, inform))
    ip_dst, eth_dst = _destination(req, lease, mtype, inform)
    f[0:6] = bytes.fromhex(eth_dst.replace(":", ""))
    f[_IP_DST : _IP_DST + 4] = _ip(ip_dst)
    struct.pack_into("!IxxH", f, _XID, req.xid, req.flags & BROADCAST_FLAG)
    f[_CIADDR : _CIADDR + 4] = _ip(req.ciaddr if mtype != NAK else ZERO_IP)
    f[_GIADDR : _GIADDR + 4] = _ip(req.giaddr)
    struct.pack_into("!H", f, _IP_CSUM, 0)
    struct.pack_into("!H", f, _IP_CSUM, packet_utils.checksum(f[14:34]))
    struct.pack_into("!H", f, _UDP_CSUM, 0)
    pseudo = f[26:34] + struct.pack("!BBH", 0, 17, len(f) - 34)
    # as os-ken leaves it, a sum of 0 is sent as 0 ("no checksum", which IPv4 allows)
    struct.pack_into("!H", f, _UDP_CSUM, packet_utils.checksum(pseudo + f[34:]))
    return bytes(f)


def lease_options(lease: Lease, mtype: int, *, inform: bool = False) -> list[dhcp.option]:
    """The options of an OFFER or ACK. An answer to INFORM carries no lease times (§3.4)."""
    opts = [_opt(OPT_MESSAGE_TYPE, bytes([mtype])), _opt(OPT_SERVER_ID, _ip(lease.server_ip))]
    if not inform:
        t = lease.lease_time
        opts.append(_opt(OPT_LEASE_TIME, struct.pack("!I", t)))
        opts.append(_opt(OPT_RENEWAL_TIME, struct.pack("!I", t // 2)))
        opts.append(_opt(OPT_REBINDING_TIME, struct.pack("!I", t * 7 // 8)))
    opts.append(_opt(OPT_SUBNET_MASK, _ip(lease.netmask)))
    opts.append(_opt(OPT_BROADCAST, _ip(lease.broadcast)))
    if lease.router:
        opts.append(_opt(OPT_ROUTER, _ip(lease.router)))
    if lease.dns:
        opts.extend(_long(OPT_DNS, b"".join(_ip(a) for a in lease.dns)))
    if lease.domain:
        opts.extend(_long(OPT_DOMAIN, lease.domain.encode("ascii", "replace")))
    if lease.mtu:
        opts.append(_opt(OPT_MTU, struct.pack("!H", min(lease.mtu, 0xFFFF))))
    if lease.routes:
        opts.extend(_long(OPT_CLASSLESS_ROUTES, b"".join(encode_route(*r) for r in lease.routes)))
    if lease.extra:
        # The port's own options (extra_dhcp_opts) replace the lease's of the same code.
        mine = {code for code, _ in lease.extra}
        opts = [o for o in opts if o.tag not in mine]
        for code, value in lease.extra:
            opts.extend(_long(code, value))
    return opts


def encode_route(dest: ipaddress.IPv4Network, hop: str) -> bytes:
    """One RFC 3442 route: prefix length, the significant octets of the destination, router."""
    significant = (dest.prefixlen + 7) // 8
    return bytes([dest.prefixlen]) + dest.network_address.packed[:significant] + _ip(hop)


def decode_routes(raw: bytes) -> list[Route]:
    """RFC 3442 routes back from option 121's value (for tests and for reading a reply)."""
    out: list[Route] = []
    pos = 0
    while pos < len(raw):
        plen = raw[pos]
        n = (plen + 7) // 8
        dest = raw[pos + 1 : pos + 1 + n] + b"\0" * (4 - n)
        hop = raw[pos + 1 + n : pos + 5 + n]
        if plen > 32 or len(hop) != 4:
            raise ValueError(f"bad classless route at byte {pos}")
        out.append(
            (
                ipaddress.IPv4Network(f"{ipaddress.IPv4Address(dest)}/{plen}"),
                str(ipaddress.IPv4Address(hop)),
            )
        )
        pos += 5 + n
    return out


def _terminated(opts: list[dhcp.option]) -> list[Any]:
    """The options, END, and PAD up to the smallest BOOTP message older clients accept."""
    size = _FIXED_LEN + sum(2 + len(o.value) for o in opts) + 1
    return [*opts, b"\xff" + b"\0" * max(0, _MIN_BOOTP - size)]


def _opt(tag: int, value: bytes) -> dhcp.option:
    return dhcp.option(tag, value)


def _long(tag: int, value: bytes) -> list[dhcp.option]:
    """An option longer than 255 bytes as consecutive instances (RFC 3396)."""
    return [_opt(tag, value[i : i + 255]) for i in range(0, max(len(value), 1), 255)]


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


# --- a client's side, for tests and benchmarks ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A server's reply as a client reads it."""

    message_type: int
    xid: int
    yiaddr: str
    ciaddr: str
    eth_src: str
    eth_dst: str
    ip_src: str
    ip_dst: str
    options: Mapping[int, bytes]
    siaddr: str = ZERO_IP  # the next server (a port's server-ip-address)


def parse_reply(frame: bytes) -> Reply:
    pkt = packet.Packet(bytes(frame))
    eth = pkt.get_protocol(ethernet.ethernet)
    ip = pkt.get_protocol(ipv4.ipv4)
    d = pkt.get_protocol(dhcp.dhcp)
    if eth is None or ip is None or d is None or d.op != dhcp.DHCP_BOOT_REPLY:
        raise ValueError("not a DHCP reply")
    start = 14 + ip.header_length * 4 + 8 + _FIXED_LEN
    opts = parse_options(bytes(frame[start:]))
    return Reply(
        message_type=opts[OPT_MESSAGE_TYPE][0],
        xid=d.xid,
        yiaddr=d.yiaddr,
        ciaddr=d.ciaddr,
        eth_src=str(eth.src).lower(),
        eth_dst=str(eth.dst).lower(),
        ip_src=ip.src,
        ip_dst=ip.dst,
        options=opts,
        siaddr=d.siaddr,
    )


def client_frame(
    message_type: int,
    mac: str,
    *,
    xid: int = 1,
    ciaddr: str = ZERO_IP,
    requested_ip: str | None = None,
    server_id: str | None = None,
    broadcast: bool = False,
    chaddr: str | None = None,
) -> bytes:
    """A client's request as a VM would send it (a test's and the benchmark's client)."""
    opts = [_opt(OPT_MESSAGE_TYPE, bytes([message_type]))]
    if requested_ip:
        opts.append(_opt(OPT_REQUESTED_IP, _ip(requested_ip)))
    if server_id:
        opts.append(_opt(OPT_SERVER_ID, _ip(server_id)))
    opts.append(_opt(55, bytes([1, 3, 6, 15, 26, 28, 51, 54, 121])))
    src = ciaddr if ciaddr != ZERO_IP else ZERO_IP
    dst = server_id if ciaddr != ZERO_IP and server_id else BROADCAST_IP
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=BROADCAST_MAC, src=mac, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src=src, dst=dst, proto=17, ttl=64))
    pkt.add_protocol(udp.udp(src_port=CLIENT_PORT, dst_port=SERVER_PORT))
    pkt.add_protocol(
        dhcp.dhcp(
            op=dhcp.DHCP_BOOT_REQUEST,
            chaddr=chaddr or mac,
            xid=xid,
            flags=BROADCAST_FLAG if broadcast else 0,
            ciaddr=ciaddr,
            options=dhcp.options(opts),
        )
    )
    pkt.serialize()
    return bytes(pkt.data)
