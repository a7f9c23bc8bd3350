"""[node] and [agent]: this host as a node, and its agent (the stream and the datapath)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


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
    # connections a batch of thousands of flow-mods is spread over (the bridge's management
    # socket next to ovsdb's; 1: the controller connection alone)
    flow_mod_connections: int = 4
    http: str = "127.0.0.1:9697"  # /healthz /readyz /metrics listener ("" turns it off)
    prefetch: int = 64  # messages in flight from the node's queue
    resync_interval: float = 5.0  # seconds between hello/resync while a snapshot is owed
    # a report that carries no port state waits up to this long to be coalesced
    status_quiet: float = 1.0
