"""Who is asking: the request context every layer (API, resources, store callers) passes along.

Made by the API from a request's credentials (alcor/api/auth.py), or by the program itself for
its own writes (the dev run registering its host as a node).

    >>> Context("p1", is_admin=False).can_see("p2")
    False
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Context:
    project_id: str
    is_admin: bool

    def can_see(self, project_id: str | None) -> bool:
        return self.is_admin or project_id == self.project_id
