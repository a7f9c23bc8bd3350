"""The agent's Zeta OAM outcomes reach /metrics through the datapath's counters."""

from alcor.agent.datapath import Datapath, DatapathConfig
from alcor.ops.metrics import StateCollector


def test_oam_outcomes_are_exported():
    dp = Datapath(DatapathConfig("node-a"))
    dp.zeta.counters["injected"] = 3
    dp.zeta.counters["malformed"] = 2
    families = {m.name: m for m in StateCollector()._datapath(dp)}
    samples = {s.labels["outcome"]: s.value for s in families["alcor_agent_oam_messages"].samples}
    assert samples["injected"] == 3 and samples["malformed"] == 2 and samples["deleted"] == 0
