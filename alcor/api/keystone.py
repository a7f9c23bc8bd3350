"""Keystone tokens, validated by keystonemiddleware's `auth_token` (as every OpenStack service does).

`[keystone_authtoken]` takes keystonemiddleware's own options (an operator copies neutron.conf's
section): `www_authenticate_uri`, `auth_url`, `auth_type = "password"`, `username`, `password`,
`project_name`, `user_domain_name`, `project_domain_name`, `service_token_roles`,
`memcached_servers`, `token_cache_time`, … The middleware is WSGI and blocking (it calls Keystone
with `requests`), so it runs on a small thread pool of its own, never on the event loop; what it
says about a token (project, user, roles; and the service token's roles) is kept here for
`token_cache_time` seconds (or until the token expires), so a token seen before costs a dict lookup.

A request without a valid token gets 401 with keystonemiddleware's `WWW-Authenticate` header
(`Keystone uri="…"`), in Neutron's error body; Keystone unreachable is a 503.

    auth = KeystoneAuth(KeystoneAuthtokenConfig(
        www_authenticate_uri="http://ks:5000/v3", auth_url="http://ks:5000/v3", username="neutron",
        password="…", project_name="service", user_domain_name="Default",
        project_domain_name="Default"))
    ctx = await auth.authenticate({"X-Auth-Token": token})   # Context(project_id, roles, …)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

import structlog

from alcor.config import ConfigError
from alcor.context import Context, roles_with_implied
from alcor.errors import NeutronError, ServiceUnavailable, Unauthorized

log = structlog.get_logger("alcor.api.keystone")

CACHE_MAX = 10_000  # tokens kept; the least recently used goes first
DEFAULT_CACHE_TIME = 300.0  # keystonemiddleware's token_cache_time default


@dataclass(frozen=True)
class ServiceCredentials:
    """How a service logs in to Keystone itself: keystoneauth's `password` plugin options, under the
    names neutron.conf uses in [keystone_authtoken] and [nova] alike (both sections extend this)."""

    auth_url: str = ""  # Keystone for this service's own login
    auth_type: str = "password"
    username: str = ""
    password: str = ""
    project_name: str = ""
    user_domain_name: str = ""
    project_domain_name: str = ""
    user_domain_id: str = ""
    project_domain_id: str = ""
    region_name: str = ""
    insecure: bool = False
    cafile: str = ""

    def auth_options(self, wanted: set[str]) -> dict[str, str]:
        """The set login options among `wanted` (the auth plugin's own), as its loader takes them."""
        names = ("auth_url", "username", "password", "project_name", "user_domain_name",
                 "project_domain_name", "user_domain_id", "project_domain_id")
        return {k: getattr(self, k) for k in names if getattr(self, k) and k in wanted}


@dataclass(frozen=True)
class KeystoneAuthtokenConfig(ServiceCredentials):
    """[keystone_authtoken] (with [api] auth = "keystone"): keystonemiddleware's own option names
    and defaults, as in neutron.conf; the auth plugin's options are those of `password`."""

    SECTION: ClassVar[str] = "keystone_authtoken"
    www_authenticate_uri: str = ""  # where clients get tokens (sent in WWW-Authenticate)
    interface: str = "internal"  # the catalog interface to reach Keystone on
    memcached_servers: list[str] = field(default_factory=list)  # empty: an in-process cache
    memcache_security_strategy: str = ""  # "MAC" or "ENCRYPT" (then memcache_secret_key)
    memcache_secret_key: str = ""
    token_cache_time: int = 300  # seconds a validated token is trusted without asking again
    service_token_roles: list[str] = field(default_factory=lambda: ["service"])
    service_token_roles_required: bool = False
    delay_auth_decision: bool = False
    http_connect_timeout: int = 0  # 0: keystoneauth's default
    http_request_max_retries: int = 3
    validation_threads: int = 8  # Alcor's: threads that run keystonemiddleware off the event loop


def middleware_conf(cfg: KeystoneAuthtokenConfig) -> dict[str, str]:
    """The section as keystonemiddleware takes it from a paste file: strings, set keys only.
    Raises ConfigError for what it would refuse later."""
    conf: dict[str, str] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "validation_threads" or value in ("", [], None) or \
                (f.name == "http_connect_timeout" and not value):
            continue
        if isinstance(value, bool):
            conf[f.name] = "true" if value else "false"
        elif isinstance(value, list):
            conf[f.name] = ",".join(value)
        else:
            conf[f.name] = str(value)
    for required in ("www_authenticate_uri", "auth_url"):
        if not conf.get(required):
            raise ConfigError(f"api.auth = \"keystone\" needs keystone_authtoken.{required}")
    from keystoneauth1 import loading

    try:
        loading.get_plugin_loader(cfg.auth_type)
    except Exception:  # keystoneauth1's NoMatchingPlugin
        raise ConfigError(f"keystone_authtoken.auth_type: unknown auth plugin {cfg.auth_type!r}") from None
    return conf


def _captured(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The application behind the middleware: it only notes that the request got through."""
    environ["alcor.passed"] = True
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b""]


class KeystoneAuth:
    """Validates X-Auth-Token (and X-Service-Token) through keystonemiddleware, off the loop, cached."""

    def __init__(self, cfg: KeystoneAuthtokenConfig) -> None:
        conf = middleware_conf(cfg)
        threads = max(1, cfg.validation_threads)
        from keystonemiddleware import auth_token

        try:
            self._mw = auth_token.AuthProtocol(_captured, dict(conf))
        except Exception as e:  # keystonemiddleware's ConfigurationError and oslo.config's errors
            raise ConfigError(f"keystone_authtoken: {e}") from None
        self.www_authenticate_uri = conf["www_authenticate_uri"]
        self.cache_time = float(conf.get("token_cache_time", DEFAULT_CACHE_TIME))
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, "keystone-auth")
        self._cache: OrderedDict[str, tuple[float, Context]] = OrderedDict()
        self.validations = 0  # tokens sent to keystonemiddleware (cache misses)

    async def authenticate(self, headers: Mapping[str, str]) -> Context:
        user = headers.get("X-Auth-Token") or headers.get("X-Storage-Token")
        if not user:
            raise self._unauthorized()
        service = headers.get("X-Service-Token") or ""
        key = hashlib.sha256(f"{user}\0{service}".encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > time.time():
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        self.validations += 1
        loop = asyncio.get_running_loop()
        expires, ctx = await loop.run_in_executor(self._pool, self._validate, user, service)
        self._cache[key] = (min(expires, time.time() + self.cache_time), ctx)
        if len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)
        return ctx

    def _unauthorized(self) -> Unauthorized:
        return Unauthorized("Authentication required",
                            www_authenticate=f'Keystone uri="{self.www_authenticate_uri}"')

    def _validate(self, user_token: str, service_token: str) -> tuple[float, Context]:
        """On a pool thread: run the middleware over a request that carries only the tokens."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/v2.0", "QUERY_STRING": "",
            "SERVER_NAME": "alcor", "SERVER_PORT": "9696", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
            "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "HTTP_X_AUTH_TOKEN": user_token,
        }
        if service_token:
            environ["HTTP_X_SERVICE_TOKEN"] = service_token
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answer["status"], answer["headers"] = int(status.split()[0]), headers

        body = self._mw(environ, start_response)
        if hasattr(body, "close"):
            body.close()
        status = answer.get("status", 500)
        if not environ.get("alcor.passed"):
            if status == 401:
                where = [v for k, v in answer.get("headers", []) if k.lower() == "www-authenticate"]
                raise Unauthorized("Authentication required",
                                   www_authenticate=where[0] if where else
                                   f'Keystone uri="{self.www_authenticate_uri}"')
            if status == 503:
                raise ServiceUnavailable("The Keystone service is temporarily unavailable.")
            raise NeutronError(f"Token validation failed ({status}).", type="HTTPUnauthorized",
                               status=status if 400 <= status < 600 else 500)
        # delay_auth_decision = true lets invalid tokens through, marked; this API has no anonymous
        # access, so they are refused here.
        if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed" or \
                environ.get("HTTP_X_SERVICE_IDENTITY_STATUS", "Confirmed") != "Confirmed":
            raise self._unauthorized()
        ctx = Context(
            environ.get("HTTP_X_PROJECT_ID", ""), False,
            user_id=environ.get("HTTP_X_USER_ID", ""),
            roles=roles_with_implied(_split(environ.get("HTTP_X_ROLES", ""))),
            service_roles=roles_with_implied(_split(environ.get("HTTP_X_SERVICE_ROLES", ""))),
        )
        return _expiry(environ), ctx

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _split(roles: str) -> frozenset[str]:
    return frozenset(r.strip().lower() for r in roles.split(",") if r.strip())


def _expiry(environ: dict[str, Any]) -> float:
    """When the earlier of the two tokens expires (keystonemiddleware's `keystone.token_auth`)."""
    ends = [time.time() + 3600.0]
    auth = environ.get("keystone.token_auth")
    for ref in (getattr(auth, "user", None), getattr(auth, "service", None)):
        expires = getattr(ref, "expires", None)
        if isinstance(expires, datetime):
            ends.append(expires.replace(tzinfo=expires.tzinfo or UTC).timestamp())
    return min(ends)
