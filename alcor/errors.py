"""Neutron's errors: `{"NeutronError": {"type", "message", "detail"}}` with Neutron's status codes.

Raise a `NeutronError` (or one of the helpers below) anywhere in a request: in the API, a resource
manager or the store (a module of its own so that all of them can, none importing the others). The
API's error middleware renders it. Anything else that escapes is a bug: logged with its traceback, answered 500 in the
same body shape.
"""

from __future__ import annotations


class NeutronError(Exception):
    status = 500
    type = "NeutronError"

    def __init__(self, message: str, *, type: str | None = None, status: int | None = None,
                 detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        if type is not None:
            self.type = type
        if status is not None:
            self.status = status
        self.detail = detail

    def body(self) -> dict[str, dict[str, str]]:
        return {"NeutronError": {"type": self.type, "message": self.message, "detail": self.detail}}


class BadRequest(NeutronError):
    status = 400
    type = "HTTPBadRequest"


class Unauthorized(NeutronError):
    status = 401
    type = "HTTPUnauthorized"

    def __init__(self, message: str, *, www_authenticate: str = "") -> None:
        super().__init__(message)
        # Where to get a token (Keystone's "Keystone uri=…"), sent back as WWW-Authenticate.
        self.headers = {"WWW-Authenticate": www_authenticate} if www_authenticate else {}


class Forbidden(NeutronError):
    status = 403
    type = "PolicyNotAuthorized"


class NotFound(NeutronError):
    status = 404
    type = "HTTPNotFound"


class Conflict(NeutronError):
    status = 409
    type = "Conflict"


class PreconditionFailed(NeutronError):
    status = 412
    type = "RevisionNumberConstraintFailed"


class ServiceUnavailable(NeutronError):
    status = 503
    type = "ServiceUnavailable"


def invalid_input(message: str) -> BadRequest:
    return BadRequest(f"Invalid input for operation: {message}.", type="InvalidInput")


def invalid_attr(attr: str, reason: str) -> BadRequest:
    return BadRequest(f"Invalid input for {attr}. Reason: {reason}.")


def not_found(kind: str, id: str) -> NotFound:
    """`kind` is Neutron's CamelCase name: Network, Subnet, Port, Router, SecurityGroup, …"""
    label = {"SecurityGroup": "Security group", "SecurityGroupRule": "Security group rule"}.get(kind, kind)
    return NotFound(f"{label} {id} could not be found.", type=f"{kind}NotFound")


def policy(action: str) -> Forbidden:
    return Forbidden(f"(rule:{action}) is disallowed by policy")
