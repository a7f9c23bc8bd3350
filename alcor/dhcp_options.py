"""A port's `extra_dhcp_opts` (Neutron's extra_dhcp_opt) as DHCPv4 option bytes: one table of the
option names Neutron's users give (dnsmasq's names, or the option's number), shared by the API,
which refuses what cannot be encoded, and the agent, which sends it.

    >>> encode("tftp-server", "10.0.0.9")
    (66, b'10.0.0.9')
    >>> encode("ntp-server", "10.0.0.1,10.0.0.2")
    (42, b'\\n\\x00\\x00\\x01\\n\\x00\\x00\\x02')
    >>> encode("150", "10.0.0.7")   # a number: typed by the table when it knows it, else guessed
    (150, b'\\n\\x00\\x00\\x07')

`server-ip-address` is not an option but the reply's `siaddr` (the next server, for PXE); it is
given as `(SIADDR, 4 bytes)`. An option for DHCPv6 (`ip_version` 6), or an address option whose
value is an IPv6 address (Neutron takes both and leaves them to a DHCPv6 server), is checked
(`check`) but not sent by DHCPv4 (`encode` returns None).
"""

from __future__ import annotations

import ipaddress
import struct

SIADDR = 0  # not an option code: the BOOTP header's next-server address

# name → (code, kind). Kinds: ips (one or more IPv4 addresses), ip, text, u8, u16, u32, bool,
# domains (RFC 1035 names, for option 119).
OPTIONS: dict[str, tuple[int, str]] = {
    "server-ip-address": (SIADDR, "ip"),
    "router": (3, "ips"),
    "time-server": (4, "ips"),
    "dns-server": (6, "ips"),
    "log-server": (7, "ips"),
    "lpr-server": (9, "ips"),
    "hostname": (12, "text"),
    "boot-file-size": (13, "u16"),
    "domain-name": (15, "text"),
    "swap-server": (16, "ip"),
    "root-path": (17, "text"),
    "extension-path": (18, "text"),
    "ip-forward-enable": (19, "bool"),
    "default-ttl": (23, "u8"),
    "mtu": (26, "u16"),
    "nis-domain": (40, "text"),
    "nis-server": (41, "ips"),
    "ntp-server": (42, "ips"),
    "netbios-ns": (44, "ips"),
    "netbios-dd": (45, "ips"),
    "netbios-nodetype": (46, "u8"),
    "netbios-scope": (47, "text"),
    "tftp-server": (66, "text"),
    "bootfile-name": (67, "text"),
    "smtp-server": (69, "ips"),
    "pop3-server": (70, "ips"),
    "domain-search": (119, "domains"),
    "tftp-server-address": (150, "ips"),
}

# What the agent's server sets from the lease itself and a port may not replace: the message
# type, server identifier and lease times (they are the protocol), the mask and broadcast (they
# are the subnet's), and option 121 (the subnet's host_routes).
RESERVED = frozenset({1, 28, 50, 51, 53, 54, 55, 58, 59, 61, 121})
_BY_CODE = {code: kind for code, kind in OPTIONS.values() if code != SIADDR}
MAX_VALUE = 255 * 4  # an option longer than 255 octets is split (RFC 3396); keep answers small


class BadOption(ValueError):
    """The option cannot be sent: the message says why."""


def code_of(name: str) -> tuple[int, str]:
    """The option's code and kind, by dnsmasq's name or by number (1-254)."""
    if name in OPTIONS:
        return OPTIONS[name]
    if name.isdigit() and 1 <= int(name) <= 254:
        code = int(name)
        return code, _BY_CODE.get(code, "")
    raise BadOption(f"'{name}' is not a DHCP option this cloud knows: use one of "
                    f"{', '.join(sorted(OPTIONS))} or an option number 1-254")


def check(name: str, value: str, ip_version: int) -> None:
    """Raise BadOption unless the option can be stored: sent by DHCPv4, or left to DHCPv6."""
    if ip_version == 6:
        code_of(name)
        if not value or len(value) > 255:
            raise BadOption(f"the value of DHCP option {name} must be 1 to 255 characters")
        return
    encode(name, value)


def encode(name: str, value: str) -> tuple[int, bytes] | None:
    """The option's code and its value as DHCPv4 sends it (None: an address option given IPv6
    addresses, which DHCPv4 cannot carry); raises BadOption."""
    code, kind = code_of(name)
    if kind in ("ip", "ips") and all(_is_ipv6(v) for v in value.split(",")):
        return None
    if code in RESERVED:
        raise BadOption(f"DHCP option {name} is set by the server from the port's subnet and lease")
    if not kind:
        # An option the table does not type: addresses when the value is only addresses, else text.
        kind = "ips" if all(_is_ipv4(v) for v in value.split(",")) else "text"
    raw = _encode(kind, value.strip(), name)
    if not raw or len(raw) > MAX_VALUE:
        raise BadOption(f"the value of DHCP option {name} must be 1 to {MAX_VALUE} octets")
    return code, raw


def _encode(kind: str, value: str, name: str) -> bytes:
    try:
        if kind in ("ip", "ips"):
            parts = [p.strip() for p in value.split(",")]
            if kind == "ip" and len(parts) != 1:
                raise ValueError
            return b"".join(ipaddress.IPv4Address(p).packed for p in parts)
        if kind == "text":
            return value.encode("ascii")
        if kind == "bool":
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError
            return bytes([value.lower() in ("1", "true")])
        if kind in ("u8", "u16", "u32"):
            return struct.pack({"u8": "!B", "u16": "!H", "u32": "!I"}[kind], int(value))
        if kind == "domains":
            return b"".join(_domain(d.strip()) for d in value.split(","))
    except (ValueError, UnicodeEncodeError, struct.error):
        pass
    raise BadOption(f"'{value}' is not a valid value for DHCP option {name} ({_KIND_TEXT[kind]})")


_KIND_TEXT = {"ip": "an IPv4 address", "ips": "IPv4 addresses, comma-separated",
              "text": "ASCII text", "bool": "true or false", "u8": "an integer 0-255",
              "u16": "an integer 0-65535", "u32": "an integer 0-4294967295",
              "domains": "domain names, comma-separated"}


def _domain(name: str) -> bytes:
    labels = [x for x in name.rstrip(".").split(".")]
    if not name or any(not 1 <= len(x) <= 63 for x in labels):
        raise ValueError(name)
    return b"".join(bytes([len(x)]) + x.encode("ascii") for x in labels) + b"\x00"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.strip())
    except ValueError:
        return False
    return True


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text.strip())
    except ValueError:
        return False
    return True
