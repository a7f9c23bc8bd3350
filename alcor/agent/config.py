"""[node], [agent] and [dhcp]: this host as a node, its agent (the stream and the datapath), and
the agent's DHCP server."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from alcor.config import ConfigError


@dataclass(frozen=True)
class NodeConfig:
    """[node]: the dev run registers this host under `name` (default: the host name) with
    `local_ip` as its tunnel endpoint, unless a node of that name exists. The agent role needs
    `id` (the node_id from /v2.0/alcor/nodes); "" MQ settings mean [mq]'s (and alcor.node.<id>)."""

    SECTION: ClassVar[str] = "node"
    id: str = ""
    name: str = ""
    local_ip: str = "127.0.0.1"
    register: bool = True  # dev run: register this host as a node at start
    mq_url: str = ""
    mq_vhost: str = ""
    mq_exchange: str = ""
    mq_queue: str = ""


@dataclass(frozen=True)
class AgentConfig:
    """[agent]"""

    SECTION: ClassVar[str] = "agent"
    # the host's integration bridge and the OpenFlow listener ovs-vswitchd connects to
    bridge: str = "br-int"
    openflow_listen: str = "tcp:127.0.0.1:6653"
    controller: str = ""  # the bridge's controller target, when not derived from openflow_listen
    tunnel_port: str = "vxlan0"
    datapath_type: Literal["netdev", "system"] = "netdev"  # "system": the kernel datapath
    # false: the operator creates the bridge, its controller and the VXLAN port alone
    manage_bridge: bool = True
    ovs_db: str = ""  # ovsdb-server's socket, when not the default (ovs-vsctl --db)
    # seconds between full reconciles of the switch's flows (0: only on reconnect and change)
    flow_resync_interval: float = 0.0
    # connections a batch of more than a hundred flow-mods is spread over (the extra ones to the
    # bridge's management socket next to ovsdb's, kept open; 1: the controller connection alone)
    flow_mod_connections: int = 16
    http: str = "127.0.0.1:9697"  # /healthz /readyz /metrics listener ("" turns it off)
    prefetch: int = 64  # messages in flight from the node's queue
    resync_interval: float = 5.0  # seconds between hello/resync while a snapshot is owed
    # a report that carries no port state waits up to this long to be coalesced
    status_quiet: float = 1.0
    # seconds between status reports when nothing changed: the controller's liveness check
    # ([gateway] agent_down_time) counts on them (Neutron's report_interval)
    report_interval: float = 5.0
    # With the VPC chains on streams: seconds a stream is read from before the point its join
    # names (the controller's clock against the broker's; what is re-read is dropped)
    stream_rewind: float = 5.0
    # physical networks this host reaches, "physnet:bridge" (Neutron's bridge_mappings)
    bridge_mappings: list[str] = field(default_factory=list)

    def check(self) -> None:
        if not 0.1 <= self.report_interval <= 3600:
            raise ConfigError(f"agent.report_interval must be 0.1..3600 s, got {self.report_interval}")
        if not 0 <= self.stream_rewind <= 3600:
            raise ConfigError(f"agent.stream_rewind must be 0..3600 s, got {self.stream_rewind}")
        seen: set[str] = set()
        for item in self.bridge_mappings:
            physnet, sep, bridge = item.partition(":")
            if not (sep and physnet and bridge and len(bridge) <= 15) or physnet in seen:
                raise ConfigError(f"agent.bridge_mappings: {item!r} is not physnet:bridge "
                                  "(each physical network once, bridge names of 15 characters)")
            seen.add(physnet)

    def mappings(self) -> dict[str, str]:
        return dict(item.split(":", 1) for item in self.bridge_mappings)


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class DhcpConfig:
    """[dhcp]: what the agent's DHCP server tells the VMs of its host (alcor/agent/leases.py),
    and how much one port may send it (the band of the port's meter)."""

    SECTION: ClassVar[str] = "dhcp"
    lease_time: int = 86400  # seconds (Neutron's dhcp_lease_duration); renew at 1/2, rebind at 7/8
    domain: str = "openstacklocal"  # option 15 (Neutron's dns_domain); "" sends none
    dns_servers: list[str] = field(default_factory=list)  # option 6 without dns_nameservers
    rate: int = 5  # requests per second one port may send the agent
    burst: int = 10  # ... and in one burst

    def check(self) -> None:
        if not 10 <= self.lease_time <= 2**32 - 2:
            raise ConfigError(
                f"dhcp.lease_time must be 10..4294967294 seconds, got {self.lease_time}"
            )
        for key in ("rate", "burst"):
            if not 1 <= getattr(self, key) <= 1_000_000:
                raise ConfigError(f"dhcp.{key} must be 1..1000000, got {getattr(self, key)}")
        domain = self.domain.rstrip(".")
        if domain and (len(domain) > 253 or not all(map(_DNS_LABEL.match, domain.split(".")))):
            raise ConfigError(f'dhcp.domain must be a DNS domain name or "", got {self.domain!r}')
        for addr in self.dns_servers:
            try:
                ok = ipaddress.ip_address(addr).version == 4
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"dhcp.dns_servers: {addr!r} is not an IPv4 address")
