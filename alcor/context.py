"""Who is asking: the request context every layer (API, resources, store callers) passes along.

Made by the API from a request's credentials (alcor/api/auth.py), or by the program itself for
its own writes (the dev run registering its host as a node).

    >>> Context("p1", is_admin=False).can_see("p2")
    False
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# Roles imply the lesser ones, as Keystone's bootstrap sets them up: admin ⇒ member ⇒ reader.
IMPLIED = {"admin": ("member", "reader"), "member": ("reader",), "manager": ("member", "reader")}


def roles_with_implied(roles: Iterable[str]) -> frozenset[str]:
    """The roles and those they imply (IMPLIED: admin and manager imply member and reader).

    >>> sorted(roles_with_implied(["admin"]))
    ['admin', 'member', 'reader']
    """
    out = set(roles)
    for r in list(out):
        out.update(IMPLIED.get(r, ()))
    return frozenset(out)


class PolicyCheck(Protocol):
    """What a context asks of the policy (alcor/api/policy.py)."""

    def check(self, action: str, target: Mapping[str, Any], ctx: Context) -> bool: ...

    def is_admin(self, ctx: Context) -> bool: ...

    def has(self, action: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Context:
    """The caller: its project, user and roles (and its service token's roles). `is_admin` is
    what the policy's `context_is_admin` rule says of its roles; the program's own writes build
    `Context(project, True)` and skip the policy altogether."""

    project_id: str
    is_admin: bool
    user_id: str = ""
    roles: frozenset[str] = frozenset()
    service_roles: frozenset[str] = frozenset()
    policy: PolicyCheck | None = field(default=None, compare=False, repr=False)

    def can_see(self, project_id: str | None) -> bool:
        return self.is_admin or project_id == self.project_id

    def with_policy(self, policy: PolicyCheck) -> Context:
        return Context(self.project_id, policy.is_admin(self), self.user_id, self.roles,
                       self.service_roles, policy)

    def allowed(self, action: str, target: Mapping[str, Any] | None = None) -> bool:
        """Whether the policy lets this caller do `action` on `target` (the program itself may)."""
        if self.policy is None:
            return self.is_admin
        return self.policy.check(action, target or {}, self)
