"""[api]: where the Neutron API listens and how it authenticates (alcor/api/auth.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from alcor.config import ConfigError


@dataclass(frozen=True)
class Token:
    """[api.tokens.<token>]: a static token's project and role."""

    project: str
    role: Literal["admin", "member", "reader", "service"] = "member"


@dataclass(frozen=True)
class ApiConfig:
    """[api]"""

    SECTION: ClassVar[str] = "api"
    host: str = "127.0.0.1"
    port: int = 9696  # 0: any free port (the log's api.listening says which)
    max_body_bytes: int = 1048576
    # "noauth": the token is ignored; the project comes from X-Project-Id, else admin_project
    # (admin). "token": X-Auth-Token must be one of `tokens`. "keystone": Keystone tokens,
    # validated by keystonemiddleware with [keystone_authtoken].
    auth: Literal["noauth", "token", "keystone"] = "noauth"
    admin_project: str = "admin"
    drain_seconds: int = 10  # time to let in-flight requests finish on SIGTERM
    # oslo.policy YAML/JSON overriding rules of the default policy (alcor/policy.py) by name
    policy_file: str = ""
    tokens: dict[str, Token] = field(default_factory=dict)

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"api.port must be 0..65535 (0: any free port), got {self.port}")
        if self.auth == "token" and not self.tokens:
            raise ConfigError('api.auth = "token" needs at least one [api.tokens.<token>]')
