"""The agent's Zeta OAM and DHCP outcomes reach /metrics through the datapath's counters."""

from alcor.agent.datapath import Datapath, DatapathConfig
from alcor.ops.metrics import StateCollector


def test_oam_outcomes_are_exported():
    dp = Datapath(DatapathConfig("node-a"))
    dp.zeta.counters["injected"] = 3
    dp.zeta.counters["malformed"] = 2
    families = {m.name: m for m in StateCollector()._datapath(dp)}
    samples = {s.labels["outcome"]: s.value for s in families["alcor_agent_oam_messages"].samples}
    assert samples["injected"] == 3 and samples["malformed"] == 2 and samples["deleted"] == 0


def test_dhcp_outcomes_are_exported():
    dp = Datapath(DatapathConfig("node-a"))
    dp.dhcp.counters["ack"] = 5
    dp.counters["dhcp_packet_in"] = 9
    families = {m.name: m for m in StateCollector()._datapath(dp)}
    samples = {s.labels["outcome"]: s.value for s in families["alcor_agent_dhcp_messages"].samples}
    assert samples["ack"] == 5 and samples["nak"] == 0 and samples["dropped"] == 0
    assert families["alcor_agent_dhcp_packet_in"].samples[0].value == 9
