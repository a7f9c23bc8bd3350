"""Configuration: typed sections, layered files and environment, one-line errors.

config/alcor.toml and the owners' dataclasses say the same thing: every section and key of one is
in the other, with the same default.
"""

from __future__ import annotations

import re
import tomllib
import typing

import pytest

from alcor import sections
from alcor.agent.config import AgentConfig, NodeConfig
from alcor.api.config import ApiConfig, Token
from alcor.config import SHIPPED, ConfigError, default_of, keys
from alcor.db.store import StoreConfig
from alcor.kernel import KernelConfig
from alcor.resources.networks import NetworkConfig
from alcor.southbound.dispatcher import Settings
from alcor_plugins.rabbitmq import RabbitConfig, RabbitTransport
from alcor_plugins.zeta import ZetaConfig


def _shipped_keys() -> dict[str, dict[str, object]]:
    """{section: {key: default}} of config/alcor.toml, commented-out keys included."""
    out: dict[str, dict[str, object]] = {}
    section = ""
    for line in SHIPPED.read_text().splitlines():
        head = re.match(r"^#? ?\[([a-z_]+)\]", line)
        table = re.match(r"^# \[([a-z_]+)\.([a-z_]+)\.<", line)  # # [api.tokens.<token>]
        if table:
            out[table[1]][table[2]] = {}
        elif head:
            section = head[1]
            out.setdefault(section, {})
        elif m := re.match(r"^#? ?([a-z_]+) = (.*?)(\s+#.*)?$", line):
            if section and not (line.startswith("#") and m[1] in ("project", "role")):
                out[section][m[1]] = tomllib.loads(f"v = {m[2]}")["v"]
    return out


def test_the_shipped_file_lists_every_key_with_its_default() -> None:
    shipped = _shipped_keys()
    declared = {
        cls.SECTION: {k: default_of(f) for k, f in keys(cls).items()}  # type: ignore[attr-defined]
        for cls in sections.SECTIONS
    }
    assert list(shipped) == list(declared)
    for name in declared:
        assert shipped[name] == declared[name], f"[{name}] in config/alcor.toml"


def test_defaults_file_and_env(tmp_path) -> None:
    f = tmp_path / "alcor.toml"
    f.write_text('[api]\nport = 9797\n[store]\npath = "/tmp/x.db"\n[southbound]\nlinger = 1\n')
    cfg = sections.load(f, env={"ALCOR_API__HOST": "0.0.0.0", "ALCOR_KERNEL__PLUGINS": "a, b"})
    assert cfg.get(ApiConfig).port == 9797 and cfg.get(ApiConfig).host == "0.0.0.0"
    assert cfg.get(StoreConfig).path == "/tmp/x.db" and cfg.get(KernelConfig).plugins == ["a", "b"]
    assert cfg.get(Settings).linger == 1.0 and isinstance(cfg.get(Settings).linger, float)
    assert cfg.get(AgentConfig) == AgentConfig() and cfg.get(ZetaConfig) == ZetaConfig()
    assert cfg.get(NetworkConfig).underlay_mtu == 1500
    jumbo = sections.load(env={"ALCOR_NETWORK__UNDERLAY_MTU": "9000"})
    assert jumbo.get(NetworkConfig).underlay_mtu == 9000


def test_layers_come_last_and_are_checked() -> None:
    cfg = sections.load(env={"ALCOR_API__PORT": "1"}, layers=[("--port", {"api": {"port": 2}})])
    assert cfg.get(ApiConfig).port == 2
    with pytest.raises(ConfigError, match=r"^--port: api.port: expected an integer, got 'x'$"):
        sections.load(env={}, layers=[("--port", {"api": {"port": "x"}})])


@pytest.mark.parametrize(
    "raw, value", [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)]
)
def test_env_booleans(raw: str, value: bool) -> None:
    cfg = sections.load(env={"ALCOR_RABBITMQ__PERSISTENT": raw, "ALCOR_NODE__REGISTER": raw})
    assert cfg.get(RabbitConfig).persistent is value and cfg.get(NodeConfig).register is value


def test_rabbitmq_persistent_false_from_the_environment_publishes_transient_messages() -> None:
    """Regression: the string "false" was truthy, so messages stayed persistent."""
    import aio_pika

    cfg = sections.load(env={"ALCOR_RABBITMQ__PERSISTENT": "false"})
    transport = RabbitTransport(cfg.get(RabbitConfig))
    assert transport.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT
    default = RabbitTransport(sections.load(env={}).get(RabbitConfig))
    assert default.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


@pytest.mark.parametrize(
    "text, env, message",
    [
        ('[api]\nport = "x"\n', {}, "api.port: expected an integer, got 'x'"),
        ("[api]\nprot = 1\n", {}, "api.prot: unknown key (did you mean port?)"),
        ("[nope]\na = 1\n", {}, "unknown section [nope]"),
        ("[api\n", {}, "is not valid TOML"),
        ("[api]\nport = 70000\n", {}, "api.port must be 0..65535"),
        ('[log]\nlevel = "loud"\n', {}, "log.level must be one of 'debug', 'info'"),
        ("[network]\nvni_min = 0\n", {}, "network.vni_min..vni_max must lie within"),
        ("[network]\nunderlay_mtu = 100\n", {}, "network.underlay_mtu must be 118..65535"),
        ("", {"ALCOR_NETWORK__UNDERLAY_MTU": "jumbo"}, "ALCOR_NETWORK__UNDERLAY_MTU: expected an"),
        ("[network]\nmtu = 1450\n", {}, "network.mtu: unknown key"),  # follows from underlay_mtu
        ('[api]\nauth = "token"\n', {}, "needs at least one [api.tokens.<token>]"),
        ('[api.tokens.t1]\nrole = "admin"\n', {}, "api.tokens.t1 needs project = …"),
        ('[api.tokens.t1]\nproject = "p"\nrole = "root"\n', {}, "api.tokens.t1.role must be"),
        ("[agent]\nmanage_bridge = 1\n", {}, "agent.manage_bridge: expected true or false"),
        ("[kernel]\nplugins = [1]\n", {}, "kernel.plugins: expected a list of strings"),
        ("[zeta]\nstandin = \"yes\"\n", {}, "zeta.standin: expected true or false"),
        ("", {"ALCOR_API__PORT": "many"}, "ALCOR_API__PORT: expected an integer, got 'many'"),
        ("", {"ALCOR_LOG__LEVEL": "loud"}, "log.level must be one of"),
        ("", {"ALCOR_RABBITMQ__PERSISTENT": "yes"}, "expected true, false, 1 or 0, got 'yes'"),
        ("", {"ALCOR_SOUTHBOUND__LINGER": "abc"}, "ALCOR_SOUTHBOUND__LINGER: expected a number"),
        ("", {"ALCOR_SOUTHBOUND__LINGER": "nan"}, "expected a finite number"),
        (
            "",
            {"ALCOR_SOUTHBOUND__MAX_CHANGE": "10"},
            "unknown key southbound.max_change (did you mean max_changes?)",
        ),
        ("", {"ALCOR_SOUTHBOUND__RETENTION": "5"}, "unknown key southbound.retention"),
        ("", {"ALCOR_METRICS__PORT": "1"}, "unknown section [metrics]"),
        ("", {"ALCOR_STORE__URL": "mysql://x"}, "store.url must be a postgresql:// URL"),
        ("", {"ALCOR_API__TOKENS": "x"}, "a table cannot be set from the environment"),
        ("[dhcp]\nrate = 0\n", {}, "dhcp.rate must be 1..1000000"),
        (
            "[southbound]\nmulticast_nodes = 8\nunicast_nodes = 8\n",
            {},
            "southbound.unicast_nodes must be 0 or more and below multicast_nodes",
        ),
        ("", {"ALCOR_RABBITMQ__QUEUE_VERSION": "3"}, "rabbitmq.queue_version must be 0, 1 or 2"),
        ('[southbound]\nvpc_channel = "topic"\n', {}, "southbound.vpc_channel must be one of"),
        ("[southbound]\nstream_max_bytes = 1000\n", {}, "southbound.stream_max_bytes must be"),
        ("[agent]\nstream_rewind = -1\n", {}, "agent.stream_rewind must be 0..3600 s"),
        ("[dhcp]\nlease_time = 5\n", {}, "dhcp.lease_time must be 10..4294967294"),
        ('[dhcp]\ndomain = "bad domain"\n', {}, "dhcp.domain must be a DNS domain name"),
        ('[dhcp]\ndns_servers = ["2001:db8::53"]\n', {}, "'2001:db8::53' is not an IPv4"),
        ("", {"ALCOR_DHCP__DNS_SERVERS": "192.0.2.53,nine"}, "'nine' is not an IPv4 address"),
        ("", {"ALCOR_DHCP__LEASE": "60"}, "unknown key dhcp.lease (did you mean lease_time?)"),
    ],
)
def test_every_error_is_one_line(tmp_path, text: str, env: dict[str, str], message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        sections.load(f, env=env)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tokens_are_typed(tmp_path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[api]\nauth = "token"\n[api.tokens.s3cret]\nproject = "p1"\n')
    assert sections.load(f, env={}).get(ApiConfig).tokens == {"s3cret": Token("p1", "member")}


def test_case_of_a_choice_does_not_matter() -> None:
    cfg = sections.load(env={"ALCOR_STORE__SYNCHRONOUS": "normal"})
    assert cfg.get(StoreConfig).synchronous == "NORMAL"


def test_the_dhcp_section_reaches_the_datapath(tmp_path) -> None:
    from alcor.agent.datapath import datapath_config

    f = tmp_path / "c.toml"
    f.write_text('[dhcp]\nlease_time = 600\ndomain = "cloud.example"\n')
    env = {"ALCOR_DHCP__DNS_SERVERS": "192.0.2.53, 192.0.2.54", "ALCOR_DHCP__RATE": "20"}
    d = datapath_config(sections.load(f, env=env)).dhcp
    assert (d.lease_time, d.domain, d.dns_servers) == (
        600, "cloud.example", ["192.0.2.53", "192.0.2.54"],
    )  # fmt: skip
    assert (d.rate, d.burst) == (20, 10)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        sections.load(tmp_path / "missing.toml", env={})


def test_settings_for_the_dispatcher_take_mq_and_retention_from_their_sections() -> None:
    cfg = sections.load(env={"ALCOR_MQ__VHOST": "/v", "ALCOR_STORE__RETENTION": "7"})
    s = Settings.from_config(cfg)
    assert (s.mq_vhost, s.retention, s.max_changes) == ("/v", 7, 2000)


def test_every_key_has_a_type_the_loader_knows() -> None:
    for cls in sections.SECTIONS:
        hints = typing.get_type_hints(cls)
        for key in keys(cls):
            origin = typing.get_origin(hints[key])
            assert hints[key] in (bool, int, float, str) or origin in (
                typing.Literal,
                list,
                dict,
            ), f"{cls.SECTION}.{key}"  # type: ignore[attr-defined]
    assert NetworkConfig().vni_min == 1000
