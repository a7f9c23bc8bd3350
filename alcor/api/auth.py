"""Who is asking: a request's project, user and roles (and whether policy makes it an admin).

Three ways in, by `[api] auth`:
- noauth (the dev run): the token is ignored; the project is X-Project-Id (roles from X-Roles,
  member by default) or, without it, the configured admin project as admin;
- token: X-Auth-Token must be a configured static token, each mapped to a project and a role;
- keystone: Keystone tokens, validated by keystonemiddleware (alcor/api/keystone.py).

Roles imply the lesser ones, as Keystone's bootstrap sets them up: admin ⇒ member ⇒ reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from alcor.api.config import ApiConfig, Token
from alcor.config import Config
from alcor.context import Context, roles_with_implied
from alcor.errors import Unauthorized

if TYPE_CHECKING:
    from alcor.policy import Policy

class Authenticator(Protocol):
    async def authenticate(self, headers: Mapping[str, str]) -> Context: ...

    async def close(self) -> None: ...


def _project(raw: str) -> str:
    # Keystone project ids are hex UUIDs without dashes; be lenient, but keep it a plain token.
    return raw.strip()


class NoAuth:
    """The dev run: trust the headers a caller sends (never expose it beyond loopback)."""

    def __init__(self, admin_project: str) -> None:
        self.admin_project = admin_project

    async def authenticate(self, headers: Mapping[str, str]) -> Context:
        project = headers.get("X-Project-Id") or headers.get("X-Tenant-Id")
        if project:
            roles = [r.strip().lower() for r in headers.get("X-Roles", "").split(",") if r.strip()]
            return Context(_project(project), False, user_id=headers.get("X-User-Id", ""),
                           roles=roles_with_implied(roles or ["member"]))
        return Context(self.admin_project, False, roles=roles_with_implied(["admin"]))

    async def close(self) -> None:
        pass


class StaticTokens:
    """`[api.tokens.<token>]` project = "…", role = "admin" | "member" | "reader" | "service"."""

    def __init__(self, tokens: Mapping[str, Token]) -> None:
        self.tokens = {t: Context(e.project, False, roles=roles_with_implied([e.role]))
                       for t, e in tokens.items()}

    async def authenticate(self, headers: Mapping[str, str]) -> Context:
        token = headers.get("X-Auth-Token")
        ctx = self.tokens.get(token) if token else None
        if ctx is None:
            raise Unauthorized("Authentication required")
        return ctx

    async def close(self) -> None:
        pass


def authenticator(config: Config) -> Authenticator:
    """The authenticator `[api] auth` names. Raises ConfigError."""
    api = config.get(ApiConfig)
    if api.auth == "keystone":
        from alcor.api.keystone import KeystoneAuth, KeystoneAuthtokenConfig

        return KeystoneAuth(config.get(KeystoneAuthtokenConfig))
    if api.auth == "token":
        return StaticTokens(api.tokens)
    return NoAuth(api.admin_project)


# Where the HTTP module puts the authenticator and the policy, for every route of the app.
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
POLICY: web.AppKey[Policy] = web.AppKey("policy")
CONTEXT: web.RequestKey[Context] = web.RequestKey("context")


async def context(request: web.Request) -> Context:
    """The caller of this request (authenticated once per request), with the policy attached."""
    ctx: Context | None = request.get(CONTEXT)
    if ctx is None:
        ctx = await request.app[AUTH].authenticate(request.headers)
        policy = request.app.get(POLICY)
        if policy is not None:
            ctx = ctx.with_policy(policy)
        request[CONTEXT] = ctx
    return ctx
