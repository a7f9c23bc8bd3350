"""Listen addresses and the controller target OVS is pointed at."""

import pytest

from alcor.agent.datapath import DatapathConfig
from alcor.agent.openflow import parse_listen


def test_listen_addresses() -> None:
    assert parse_listen("tcp:127.0.0.1:6653") == ("tcp", "127.0.0.1", 6653)
    assert parse_listen("tcp:[::1]:6633") == ("tcp", "::1", 6633)
    assert parse_listen("unix:/run/alcor/of.sock") == ("unix", "/run/alcor/of.sock", 0)
    with pytest.raises(ValueError):
        parse_listen("ssl:1.2.3.4:6653")


def test_controller_target_follows_listen() -> None:
    assert DatapathConfig("n").controller_target() == "tcp:127.0.0.1:6653"
    assert (
        DatapathConfig("n", listen="tcp:0.0.0.0:6700").controller_target() == "tcp:127.0.0.1:6700"
    )
    assert (
        DatapathConfig("n", listen="unix:/tmp/of.sock").controller_target() == "unix:/tmp/of.sock"
    )
    assert (
        DatapathConfig("n", controller="tcp:10.0.0.1:6653").controller_target()
        == "tcp:10.0.0.1:6653"
    )


def test_datapath_module_reads_the_agent_section() -> None:
    from alcor.agent.datapath import DatapathModule, datapath_config
    from alcor.config import Config
    from alcor.sections import load

    cfg = datapath_config(
        load(
            env={},
            layers=[(
                "test",
                {"agent": {"bridge": "br-x", "openflow_listen": "unix:/run/of.sock",
                           "manage_bridge": False, "datapath_type": "system", "prefetch": 64},
                 "node": {"id": "n1"}},
            )],
        )
    )  # fmt: skip
    assert (cfg.node_id, cfg.bridge, cfg.listen, cfg.datapath_type) == (
        "n1",
        "br-x",
        "unix:/run/of.sock",
        "system",
    )
    assert cfg.manage_bridge is False and cfg.controller_target() == "unix:/run/of.sock"
    module = DatapathModule(Config())
    assert module.name == "datapath" and module.datapath.config.listen == "tcp:127.0.0.1:6653"
