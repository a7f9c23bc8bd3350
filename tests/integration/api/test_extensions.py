"""`GET /v2.0/extensions` lists an alias only when it is honoured end to end, datapath included.

The list is pinned here, and each alias names the tests that show it honoured: adding an alias
means adding its evidence, and a test renamed or removed fails this one. Clients (Horizon,
Tempest, openstacksdk's capability checks) decide what to offer from this list, so an alias that
is listed but not honoured is a promise the cloud breaks.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

API = "tests/integration/api"
TWO_HOSTS = "tests/integration/agent/test_two_hosts.py"
L3 = "tests/integration/agent/test_l3_two_hosts.py"
PORTSEC = "tests/integration/agent/test_port_security.py"
SG = "tests/integration/agent/test_security_groups.py"
NS = "tests/integration/agent/test_north_south.py"

# alias -> tests that show it honoured (API behaviour, and packets where it reaches the datapath)
EVIDENCE: dict[str, tuple[str, ...]] = {
    "binding": (
        f"{API}/test_ports.py::test_binding_to_node_and_unknown_host",
        f"{API}/test_ports.py::test_only_normal_vnic_ports_bind",
        f"{API}/test_ports.py::test_port_bound_before_its_node_exists_binds_when_it_registers",
        "tests/integration/drills/test_e2e_drills.py::test_vif_plugged_after_binding_turns_active",
    ),
    "binding-extended": (
        f"{API}/test_port_bindings.py::test_live_migration_of_a_port_between_two_hosts",
        f"{API}/test_port_bindings.py::test_an_unbound_ports_first_binding_is_active_and_members_may_not",
        "tests/unit/southbound/test_placement.py::test_rebind_moves_port_and_leaving_node_gets_deletes",
    ),
    "extra_dhcp_opt": (
        f"{API}/test_ports.py::test_extra_dhcp_opts_validated_stored_and_merged",
        "tests/unit/southbound/test_placement.py::test_a_ports_dhcp_options_reach_its_host_only",
        "tests/unit/agent/test_dhcp.py::test_a_ports_extra_dhcp_opts_are_sent_and_replace_the_subnets",
        "tests/integration/agent/test_dhcp.py::test_udhcpc_gets_the_ports_extra_dhcp_opts",
    ),
    "extraroute": (
        f"{API}/test_routers.py::test_routes_need_a_connected_nexthop",
        f"{L3}::test_extra_route_through_a_vm_on_another_host",
        "tests/unit/agent/test_ipv6.py::test_ipv6_extra_route_via_a_next_hop_port",
    ),
    "filter-validation": (f"{API}/test_conventions.py::test_filters_and_or_and_unknown",),
    "net-mtu": (
        f"{API}/test_networks.py::test_mtu_defaults_to_the_overlay_maximum",
        f"{API}/test_networks.py::test_mtu_above_the_overlay_maximum_is_neutrons_400",
        f"{L3}::test_full_size_frames_of_the_network_mtu_cross_hosts",
    ),
    "net-mtu-writable": (f"{API}/test_networks.py::test_mtu_is_writable_within_the_maximum",),
    "pagination": (f"{API}/test_conventions.py::test_pagination_and_sorting",),
    "project-id": (
        f"{API}/test_networks.py::test_create_shows_neutron_shape_and_unique_vni",
        f"{API}/test_conventions.py::test_token_mode",
    ),
    "provider": (
        f"{API}/test_networks.py::test_explicit_vni_in_use_is_409",
        f"{API}/test_networks.py::test_tenant_cannot_set_provider_or_shared",
        f"{API}/test_networks.py::test_what_no_host_could_carry_out_is_refused",
        f"{TWO_HOSTS}::test_vpcs_with_the_same_cidr_are_isolated",
    ),
    "revision-if-match": (f"{API}/test_networks.py::test_update_bumps_revision_and_if_match",),
    "router": (
        f"{API}/test_routers.py::test_interface_by_subnet_and_port",
        f"{API}/test_routers.py::test_external_gateway_only_on_an_external_network",
        f"{API}/test_floatingips.py::test_floating_ip_errors",
        f"{NS}::test_vms_reach_the_outside_from_their_routers_gateway_ip",
        f"{TWO_HOSTS}::test_cross_subnet_ping_through_the_distributed_router",
        f"{L3}::test_ping6_to_the_gateway_from_either_host",
        f"{L3}::test_ping6_between_subnets_across_hosts_decrements_the_hop_limit",
        f"{L3}::test_a_router_set_down_routes_nothing",
    ),
    "sorting": (f"{API}/test_conventions.py::test_pagination_and_sorting",),
    "standard-attr-description": (
        f"{API}/test_conventions.py::test_description_on_every_standard_resource",
    ),
    "standard-attr-revisions": (f"{API}/test_networks.py::test_update_bumps_revision_and_if_match",),
    "standard-attr-timestamp": (
        f"{API}/test_networks.py::test_create_shows_neutron_shape_and_unique_vni",
        f"{API}/test_conventions.py::test_changed_since",
    ),
    "port-security": (
        f"{API}/test_ports.py::test_port_security_and_security_groups_go_together",
        f"{PORTSEC}::test_spoofed_source_mac_and_ip_reach_nobody_on_the_host_or_across_hosts",
        f"{PORTSEC}::test_spoofed_arp_poisons_no_neighbour",
        f"{PORTSEC}::test_spoofed_neighbour_advertisement_poisons_no_neighbour",
        f"{PORTSEC}::test_dhcp_server_replies_and_router_advertisements_from_a_vm_reach_nobody",
        f"{PORTSEC}::test_port_security_off_lets_everything_through",
    ),
    "allowed-address-pairs": (
        f"{API}/test_ports.py::test_security_groups_and_port_security",
        f"{PORTSEC}::test_allowed_address_pairs_let_exactly_their_addresses_through",
    ),
    "security-group": (
        f"{API}/test_security_groups.py::test_default_group_per_project",
        f"{API}/test_security_groups.py::test_rules_validation_and_duplicates",
        f"{SG}::test_default_group_members_reach_each_other_others_do_not",
        f"{SG}::test_tcp_22_only",
        f"{SG}::test_remote_group_membership_follows_ports_across_hosts",
        f"{SG}::test_a_rule_added_and_removed_while_a_connection_runs",
        f"{SG}::test_replies_of_the_vms_own_tcp_and_udp_pass_nothing_else_does",
        f"{SG}::test_an_established_connection_survives_an_agent_restart",
        "tests/integration/agent/test_security_full_stack.py::"
        "test_groups_and_membership_from_the_api_to_the_packets",
    ),
    "stateful-security-group": (
        f"{API}/test_ports.py::test_a_port_is_not_in_stateful_and_stateless_groups_at_once",
        f"{SG}::test_stateless_groups_track_nothing_and_replies_need_rules",
        f"{SG}::test_replies_of_the_vms_own_tcp_and_udp_pass_nothing_else_does",
    ),
    "external-net": (
        f"{API}/test_north_south.py::test_external_networks_are_visible_to_every_project_read_only",
        f"{NS}::test_vms_reach_the_outside_from_their_routers_gateway_ip",
        f"{NS}::test_the_outside_reaches_a_vm_through_its_floating_ip_and_only_then",
    ),
    "ext-gw-mode": (
        f"{API}/test_north_south.py::test_router_gateway_port_on_the_external_network",
        f"{NS}::test_without_snat_nothing_leaves",
    ),
    "fip-port-details": (
        f"{API}/test_floatingips.py::test_floating_ip_lifecycle_as_neutron_shows_it",
        f"{NS}::test_the_outside_reaches_a_vm_through_its_floating_ip_and_only_then",
    ),
    "agent": (
        f"{API}/test_north_south.py::test_agents_from_the_node_records",
        f"{API}/test_agents.py::test_an_admin_sets_descriptions_and_turns_an_l3_agent_off",
        f"{API}/test_agents.py::test_deleting_agents",
        f"{API}/test_agents.py::test_only_admins_see_or_change_agents",
        "tests/integration/southbound/test_gateways.py::"
        "test_gateway_port_is_placed_on_a_gateway_node_and_moves_when_its_agent_goes_silent",
        "tests/integration/southbound/test_gateways.py::"
        "test_an_l3_agent_turned_off_gives_its_gateways_to_another_gateway_node",
    ),
    "subnet_allocation": (
        f"{API}/test_subnetpools.py::test_subnets_are_allocated_from_the_pool_without_overlap",
        f"{API}/test_subnetpools.py::test_bounds_versions_and_bad_requests",
        f"{API}/test_subnetpools.py::test_sharing_visibility_and_the_per_project_quota",
    ),
    "standard-attr-tag": (
        f"{API}/test_tags.py::test_tag_api_on_every_resource",
        f"{API}/test_tags.py::test_tag_filters",
        f"{API}/test_tags.py::test_a_tag_change_is_in_the_change_log",
    ),
    "ip-substring-filtering": (f"{API}/test_conventions.py::test_ports_by_a_part_of_their_address",),
    "quotas": (
        f"{API}/test_quotas.py::test_a_project_over_its_network_quota_gets_409_and_nothing_is_written",
        f"{API}/test_quotas.py::test_quota_api_rules_and_bad_input",
        f"{API}/test_quotas.py::test_defaults_from_config_and_limits_survive_a_restart",
    ),
    "quota_details": (
        f"{API}/test_quotas.py::test_a_project_over_its_network_quota_gets_409_and_nothing_is_written",
    ),
    "alcor-nodes": (f"{API}/test_nodes_and_changes.py::test_node_crud_and_mq_defaults",),
    "alcor-changes": (f"{API}/test_nodes_and_changes.py::test_change_log_is_gap_free_and_paged",),
}


# Never listed until built: what Neutron clients probe for and this cloud does not do.
NOT_HONOURED = {
    "l3-ha",
    "dvr",
    "floatingip",
    "dhcp_agent_scheduler",
    "dns-integration",
    "qos",
    "trunk",
}


async def test_the_list_is_exactly_what_is_honoured(ctl):
    r = await ctl.get("/v2.0/extensions")
    assert r.status == 200
    listed = [e["alias"] for e in r.body["extensions"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(EVIDENCE)
    assert not set(listed) & NOT_HONOURED
    for e in r.body["extensions"]:
        assert set(e) >= {"alias", "name", "description", "updated", "links"}
        assert e["name"] and e["description"]
        one = await ctl.get(f"/v2.0/extensions/{e['alias']}")
        assert one.status == 200 and one.body["extension"] == e
    for alias in NOT_HONOURED:
        r = await ctl.get(f"/v2.0/extensions/{alias}")
        assert r.status == 404 and "NeutronError" in r.body


def test_every_alias_names_tests_that_exist():
    for alias, tests in EVIDENCE.items():
        assert tests, alias
        for node in tests:
            path, _, name = node.partition("::")
            assert name in _test_functions(path), f"{alias}: {node} does not exist"


@cache
def _test_functions(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text())
    return frozenset(
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
    )
