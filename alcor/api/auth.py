"""Who is asking: a request's project and whether it is admin.

noauth (the dev run): the token is ignored; the project is X-Project-Id (a member) or, without it,
the configured admin project (admin). token: X-Auth-Token must be a configured static token, each
mapped to a project and a role.
"""

from __future__ import annotations

from typing import Any

from alcor.api.config import ApiConfig
from alcor.context import Context
from alcor.errors import Unauthorized


def _project(raw: str) -> str:
    # Keystone project ids are hex UUIDs without dashes; be lenient, but keep it a plain token.
    return raw.strip()


def authenticate(headers: Any, api_cfg: ApiConfig) -> Context:
    if api_cfg.auth == "noauth":
        project = headers.get("X-Project-Id") or headers.get("X-Tenant-Id")
        if project:
            role = headers.get("X-Roles", "")
            return Context(_project(project), "admin" in [r.strip() for r in role.split(",")])
        return Context(api_cfg.admin_project, True)
    token = headers.get("X-Auth-Token")
    entry = api_cfg.tokens.get(token) if token else None
    if entry is None:
        raise Unauthorized("Authentication required")
    return Context(entry.project, entry.role == "admin")
