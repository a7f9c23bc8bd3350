"""The controller's modules: the store, the resource managers and the HTTP API.

`controller_modules(config)` is what `main.py controller` (and the dev run) hands the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alcor.api.app import HttpModule
from alcor.config import Config
from alcor.db.backends import StoreModule
from alcor.ops import OpsModule
from alcor.resources.floatingips import FloatingIps
from alcor.resources.networks import NetworkConfig, Networks
from alcor.resources.nodes import Nodes
from alcor.resources.port_bindings import PortBindings
from alcor.resources.ports import Ports
from alcor.resources.quotas import QuotaConfig, Quotas
from alcor.resources.routers import Routers
from alcor.resources.security_groups import SecurityGroupRules, SecurityGroups
from alcor.resources.subnetpools import SubnetPools
from alcor.resources.subnets import Subnets
from alcor.transport import MqConfig

if TYPE_CHECKING:
    from alcor.kernel import Module

# URL of each collection (Neutron's paths; Alcor's own under /v2.0/alcor).
PATHS = {
    "networks": "/v2.0/networks",
    "subnets": "/v2.0/subnets",
    "subnetpools": "/v2.0/subnetpools",
    "ports": "/v2.0/ports",
    "routers": "/v2.0/routers",
    "security_groups": "/v2.0/security-groups",
    "security_group_rules": "/v2.0/security-group-rules",
    "nodes": "/v2.0/alcor/nodes",
    "floatingips": "/v2.0/floatingips",
}


def controller_modules(config: Config) -> list[Module]:
    managers: list[Any] = [
        Networks(config.get(NetworkConfig)),
        SubnetPools(),
        Subnets(),
        SecurityGroups(),
        SecurityGroupRules(),
        Nodes(config.get(MqConfig)),
        Ports(),
        Routers(),
        FloatingIps(),
    ]
    quotas = Quotas(config.get(QuotaConfig))
    ops = OpsModule(config, "controller", PATHS)
    http = HttpModule(config, [m.name for m in managers], PATHS, observe=ops.observe_request)
    return [StoreModule(config), quotas, *managers, PortBindings(), ops, http]
