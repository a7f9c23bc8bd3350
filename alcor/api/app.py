"""The Neutron v2.0 HTTP API: routes, the request path (auth → parse → manager → JSON), errors.

A request's path is short on purpose: a handler authenticates, parses the body against the resource's
schema, calls its manager (which does everything in one transaction) and renders Neutron's envelope.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from alcor.api import agents
from alcor.api.auth import AUTH, POLICY, Authenticator, authenticator, context
from alcor.api.config import ApiConfig
from alcor.config import Config
from alcor.context import Context
from alcor.db.backends import StoreModule
from alcor.db.store import StoreError
from alcor.errors import BadRequest, NeutronError, ServiceUnavailable
from alcor.policy import Policy, enforce
from alcor.resources import query as q
from alcor.resources.base import Manager, parse_if_match, tag, tags_body
from alcor.resources.nodes import Nodes
from alcor.resources.port_bindings import PortBindings
from alcor.resources.quotas import Quotas, quota_body

if TYPE_CHECKING:
    from alcor.kernel import Kernel

log = structlog.get_logger("alcor.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Where the ops module puts its request observer: (method, route, status, seconds) -> None.
METRICS: web.AppKey[Callable[[str, str, int, float], None]] = web.AppKey("metrics")

# The extensions whose attributes and semantics are honoured end to end, datapath included, and no
# others: tests/integration/api/test_extensions.py pins this list and names the tests that show
# each alias honoured.
EXTENSIONS = [
    ("agent", "agent", "The agent management extension: one agent per node, an L3 agent per gateway "
     "node, alive from their reports; an L3 agent turned off hosts no router gateway."),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode",
     "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway"),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("binding-extended", "Port Bindings Extended", "Expose port bindings of a virtual port to external application"),
    ("extra_dhcp_opt", "Neutron Extra DHCP options",
     "Extra options configuration for DHCP. For example PXE boot options to DHCP clients can be specified (e.g. tftp-server, server-ip-address, bootfile-name)"),
    ("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    ("filter-validation", "Filter parameters validation", "Provides validation on filter parameters."),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("net-mtu-writable", "Network MTU (writable)", "Provides a writable MTU attribute for a network resource."),
    ("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    ("port-security", "Port Security", "Provides port security"),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    ("revision-if-match", "If-Match constraints based on revision_number",
     "Extension indicating that If-Match based on revision_number is supported."),
    # Routing between the subnets a router joins, distributed on every host; a router's gateway,
    # SNAT and floating IPs on a gateway node.
    ("router", "Neutron L3 Router", "Router abstraction for L3 forwarding between the subnets a router joins, IPv4 and IPv6 (distributed on every host), and an external gateway with SNAT and floating IPs (IPv4, 1:1 NAT) on a gateway node."),
    ("fip-port-details", "Floating IP Port Details Extension", "Add port_details attribute to Floating IP resource"),
    ("security-group", "security-group", "The security groups extension."),
    ("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("subnet_allocation", "Subnet Allocation", "Enables allocation of subnets from a subnet pool"),
    ("standard-attr-tag", "Tag support for resources with standard attribute: network, subnet, subnetpool, port, router, security_group",
     "Enables to set tag on resources with standard attribute."),
    ("ip-substring-filtering", "IP address substring filtering",
     "Provides IP address substring filtering when listing ports"),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ("quota_details", "Quota details management support",
     "Expose functions for quotas usage statistics per project"),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display the revision number of neutron resources."),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
    ("stateful-security-group", "Stateful security group", "Indicates if the security group is stateful or not"),
    ("alcor-nodes", "Alcor nodes", "Compute hosts and their tunnel endpoints, at /v2.0/alcor/nodes."),
    ("alcor-changes", "Alcor change log", "The revision-ordered change log, at /v2.0/alcor/changes."),
]


def json_response(body: Any, status: int = 200) -> web.Response:
    text = body if isinstance(body, str) else q.dumps(body)
    return web.Response(text=text, status=status, content_type="application/json")


def error_response(e: NeutronError) -> web.Response:
    response = json_response(e.body(), e.status)
    response.headers.update(getattr(e, "headers", None) or {})  # e.g. 401's WWW-Authenticate
    return response


_HTTP_TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden",
               404: "HTTPNotFound", 405: "HTTPMethodNotAllowed", 413: "HTTPRequestEntityTooLarge",
               415: "HTTPUnsupportedMediaType"}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as Neutron's error body; a bug is a logged 500, never a traceback."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except NeutronError as e:
        response = error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = {404: "The resource could not be found.",
                   405: f"The method {request.method} is not allowed for this resource.",
                   413: "Request body too large."}.get(e.status, e.reason)
        response = error_response(NeutronError(message, type=_HTTP_TYPES.get(e.status, "HTTPError"),
                                               status=e.status))
    except StoreError as e:
        log.error("api.store_unavailable", error=str(e))
        response = error_response(ServiceUnavailable("The database is not available; retry later."))
    except Exception:
        log.exception("api.unhandled", method=request.method, path=request.path)
        response = error_response(NeutronError("Request Failed: internal server error while "
                                               "processing your request.", type="HTTPInternalServerError"))
    metrics = request.app.get(METRICS)
    if metrics is not None:
        route = request.match_info.route.resource
        metrics(request.method, route.canonical if route is not None else "unmatched",
                response.status, time.perf_counter() - started)
    return response


class Api:
    """Routes for every resource manager, bound to the kernel's modules."""

    def __init__(self, kernel: Kernel, managers: list[Manager], prefixes: dict[str, str]) -> None:
        self.kernel = kernel
        self.cfg = kernel.config.get(ApiConfig)
        self.managers = {m.res.collection: m for m in managers}
        self.prefixes = prefixes  # collection → URL path

    async def ctx(self, request: web.Request) -> Context:
        return await context(request)

    async def body(self, request: web.Request) -> Any:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise NeutronError(f"Request body is larger than {self.cfg.max_body_bytes} bytes.",
                               type="RequestEntityTooLarge", status=413) from None
        if not raw:
            raise BadRequest("Resource body required")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("Malformed request body", type="MalformedRequestBody") from None

    def routes(self) -> list[web.RouteDef]:
        r = [web.get("/", self.versions), web.get("/v2.0", self.index), web.get("/v2.0/", self.index),
             web.get("/v2.0/extensions", self.extensions),
             web.get("/v2.0/extensions/{alias}", self.extension)]
        for collection, path in self.prefixes.items():
            m = self.managers[collection]
            r += [
                web.get(path, self._list(m)), web.post(path, self._create(m)),
                web.get(path + "/{id}", self._show(m)), web.put(path + "/{id}", self._update(m)),
                web.delete(path + "/{id}", self._delete(m)),
            ]
            if m.taggable:
                r += self._tag_routes(m, path + "/{id}/tags")
        nodes = self.managers.get("nodes")
        if isinstance(nodes, Nodes):
            r += agents.routes(nodes, self.body)
        routers = self.managers.get("routers")
        if routers is not None:
            r += [web.put("/v2.0/routers/{id}/add_router_interface", self._interface(routers, True)),
                  web.put("/v2.0/routers/{id}/remove_router_interface", self._interface(routers, False))]
        return r

    # Discovery -----------------------------------------------------------------------------------

    def base_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def versions(self, request: web.Request) -> web.Response:
        href = f"{self.base_url(request)}/v2.0/"
        return json_response({"versions": [{"id": "v2.0", "status": "CURRENT",
                                             "links": [{"rel": "self", "href": href}]}]})

    async def index(self, request: web.Request) -> web.Response:
        base = self.base_url(request)
        return json_response({"resources": [
            {"name": m.res.name, "collection": c,
             "links": [{"rel": "self", "href": f"{base}{self.prefixes[c]}"}]}
            for c, m in self.managers.items() if c in self.prefixes]})

    async def extensions(self, request: web.Request) -> web.Response:
        await self.ctx(request)
        return json_response({"extensions": [_ext(*e) for e in EXTENSIONS]})

    async def extension(self, request: web.Request) -> web.Response:
        await self.ctx(request)
        alias = request.match_info["alias"]
        for e in EXTENSIONS:
            if e[0] == alias:
                return json_response({"extension": _ext(*e)})
        raise NeutronError(f"Extension with alias {alias} does not exist", type="HTTPNotFound", status=404)

    # Generic resource handlers ------------------------------------------------------------------

    def _list(self, m: Manager) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            lq = q.parse(m.res, request.query, m.extra_filters)
            bodies, _ = await m.list_raw(ctx, lq)
            coll = m.res.collection
            if not m.sees_all_fields(ctx):
                items = q.dumps([_visible(m, ctx, json.loads(b), lq.fields) for b in bodies])
            elif lq.fields:
                items = q.dumps([q.project(json.loads(b), lq.fields) for b in bodies])
            else:
                items = "[" + ",".join(bodies) + "]"
            text = f'{{"{coll}":{items}'
            links = self._links(request, m, lq, bodies)
            if links:
                text += f',"{coll}_links":{q.dumps(links)}'
            return json_response(text + "}")
        return handler

    def _links(self, request: web.Request, m: Manager, lq: q.ListQuery,
               bodies: list[str]) -> list[dict[str, str]]:
        """Neutron's rule, exactly: a page has a `next` link unless it is short and was walked
        forwards, and a `previous` link unless it is short and was walked backwards (so the first
        forward page has one too, and an empty page past the end has only `previous`)."""
        if not lq.limit:
            return []
        idf = m.res.id_field
        base = f"{self.base_url(request)}{request.path}"
        params = [(k, v) for k, v in request.query.items() if k not in ("marker", "page_reverse")]
        short = len(bodies) < lq.limit
        links = []
        if not (short and not lq.page_reverse):
            marker = [("marker", json.loads(bodies[-1])[idf])] if bodies else []
            links.append({"rel": "next", "href": f"{base}?{urlencode(params + marker)}"})
        if not (short and lq.page_reverse):
            marker = [("marker", json.loads(bodies[0])[idf])] if bodies else []
            links.append({"rel": "previous",
                          "href": f"{base}?{urlencode(params + marker + [('page_reverse', 'True')])}"})
        return links

    def _show(self, m: Manager) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            body = await m.get(ctx, request.match_info["id"])
            fields = [f for f in request.query.getall("fields", []) if f]
            body = _visible(m, ctx, body, fields)
            extra = getattr(m, "show_extra", None)
            if extra is not None and not fields:
                body = {**body, **extra(body)}
            return json_response({m.res.name: body})
        return handler

    def _create(self, m: Manager) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            data = await self.body(request)
            single, plural = m.res.name, m.res.collection
            if not isinstance(data, dict) or len(data) != 1 or not (single in data or plural in data):
                raise BadRequest(f"Unable to find '{single}' in request body")
            if plural in data:
                items = data[plural]
                if not isinstance(items, list) or not items:
                    raise BadRequest(f"Invalid input: '{plural}' must be a non-empty list")
                # Neutron takes each item bare or wrapped as {"<resource>": {...}}.
                items = [i[single] if isinstance(i, dict) and set(i) == {single} else i
                         for i in items]
                created = await m.create_many(ctx, items)
                log.info(f"{single}.created", count=len(created), project=ctx.project_id)
                return json_response({plural: [_visible(m, ctx, c, []) for c in created]}, 201)
            created = await m.create_many(ctx, [data[single]])
            log.info(f"{single}.created", id=created[0][m.res.id_field], project=ctx.project_id)
            return json_response({single: _visible(m, ctx, created[0], [])}, 201)
        return handler

    def _update(self, m: Manager) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            if_match = parse_if_match(request.headers.get("If-Match"))
            data = await self.body(request)
            if not isinstance(data, dict) or m.res.name not in data or len(data) != 1:
                raise BadRequest(f"Unable to find '{m.res.name}' in request body")
            body = await m.update_one(ctx, request.match_info["id"], data[m.res.name], if_match)
            log.info(f"{m.res.name}.updated", id=request.match_info["id"],
                     revision_number=body.get("revision_number"))
            return json_response({m.res.name: _visible(m, ctx, body, [])})
        return handler

    def _delete(self, m: Manager) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            if_match = parse_if_match(request.headers.get("If-Match"))
            await m.delete_one(ctx, request.match_info["id"], if_match)
            log.info(f"{m.res.name}.deleted", id=request.match_info["id"])
            return web.Response(status=204)
        return handler

    def _tag_routes(self, m: Manager, path: str) -> list[web.RouteDef]:
        """Neutron's tag API on one collection: the list of a resource's tags, and each tag."""
        async def index(request: web.Request) -> web.Response:
            tags = await m.get_tags(await self.ctx(request), request.match_info["id"])
            return json_response({"tags": tags})

        async def replace(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            tags = tags_body(await self.body(request))
            tags = await m.change_tags(ctx, request.match_info["id"], "update", tags=tags)
            return json_response({"tags": tags})

        async def clear(request: web.Request) -> web.Response:
            await m.change_tags(await self.ctx(request), request.match_info["id"], "delete")
            return web.Response(status=204)

        async def show(request: web.Request) -> web.Response:
            await m.has_tag(await self.ctx(request), request.match_info["id"], request.match_info["tag"])
            return web.Response(status=204)

        async def add(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            await m.change_tags(ctx, request.match_info["id"], "create", add=tag(request.match_info["tag"]))
            return web.Response(status=201)

        async def drop(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            await m.change_tags(ctx, request.match_info["id"], "delete", drop=request.match_info["tag"])
            return web.Response(status=204)

        one = path + "/{tag}"
        return [web.get(path, index), web.put(path, replace), web.delete(path, clear),
                web.get(one, show), web.put(one, add), web.delete(one, drop)]

    def binding_routes(self, bindings: PortBindings) -> list[web.RouteDef]:
        """Neutron's binding-extended: a port's bindings, one per host, one of them active."""
        async def listed(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            return json_response({"bindings": await bindings.list(ctx, request.match_info["id"])})

        async def create(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            b = await bindings.create(ctx, request.match_info["id"], await self.body(request))
            log.info("port.binding_created", id=request.match_info["id"], host=b["host"],
                     status=b["status"])
            return json_response({"binding": b}, 201)

        async def show(request: web.Request) -> web.Response:
            ctx, m = await self.ctx(request), request.match_info
            return json_response({"binding": await bindings.show(ctx, m["id"], m["host"])})

        async def update(request: web.Request) -> web.Response:
            ctx, m = await self.ctx(request), request.match_info
            b = await bindings.update(ctx, m["id"], m["host"], await self.body(request))
            return json_response({"binding": b})

        async def activate(request: web.Request) -> web.Response:
            ctx, m = await self.ctx(request), request.match_info
            b = await bindings.activate(ctx, m["id"], m["host"])
            log.info("port.binding_activated", id=m["id"], host=m["host"])
            return json_response({"binding": b})

        async def delete(request: web.Request) -> web.Response:
            ctx, m = await self.ctx(request), request.match_info
            await bindings.delete(ctx, m["id"], m["host"])
            return web.Response(status=204)

        path = "/v2.0/ports/{id}/bindings"
        one = path + "/{host}"
        return [web.get(path, listed), web.post(path, create), web.get(one, show),
                web.put(one, update), web.delete(one, delete), web.put(one + "/activate", activate)]

    def quota_routes(self, quotas: Quotas) -> list[web.RouteDef]:
        """Neutron's quotas API: a project's limits (and their defaults, and what it uses)."""
        async def caller(request: web.Request, action: str) -> str:
            project = request.match_info["project_id"]
            enforce(await self.ctx(request), action, {"project_id": project, "tenant_id": project})
            return project

        async def listed(request: web.Request) -> web.Response:
            # Every project an admin set limits for (Neutron's list, admin only).
            enforce(await self.ctx(request), "get_quotas")
            return json_response({"quotas": [{**quotas.limits(p), "project_id": p, "tenant_id": p}
                                             for p in sorted(quotas.projects)]})

        async def show(request: web.Request) -> web.Response:
            return json_response({"quota": quotas.limits(await caller(request, "get_quota"))})

        async def default(request: web.Request) -> web.Response:
            project = await caller(request, "get_quota")
            return json_response({"quota": {**quotas.defaults, "project_id": project,
                                            "tenant_id": project}})

        async def details(request: web.Request) -> web.Response:
            project = await caller(request, "get_quota")
            used = await quotas.used(project)
            return json_response({"quota": {
                r: {"limit": limit, "used": used.get(r, 0), "reserved": 0}
                for r, limit in quotas.limits(project).items()}})

        async def update(request: web.Request) -> web.Response:
            project = await caller(request, "update_quota")
            given, check_limit = quota_body(await self.body(request), quotas.defaults)
            return json_response({"quota": await quotas.set(project, given, check_limit)})

        async def reset(request: web.Request) -> web.Response:
            await quotas.set(await caller(request, "delete_quota"), None)
            return web.Response(status=204)

        one = "/v2.0/quotas/{project_id}"
        return [web.get("/v2.0/quotas", listed), web.get(one, show), web.put(one, update),
                web.delete(one, reset), web.get(one + "/default", default),
                web.get(one + "/details", details)]

    def _interface(self, routers: Any, add: bool) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            ctx = await self.ctx(request)
            data = await self.body(request)
            rid = request.match_info["id"]
            if add:
                info = await routers.add_interface(ctx, rid, data)
            else:
                info = await routers.remove_interface(ctx, rid, data)
            log.info("router.interface_" + ("added" if add else "removed"), id=rid, port=info["port_id"])
            return json_response(info)
        return handler


def _visible(m: Manager, ctx: Context, body: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """The body as this caller may read it: without the attributes its policy hides (Neutron's
    get_<resource>:<attr> rules), then only the `fields` asked for."""
    hidden = m.hidden_fields(ctx, body)
    if hidden:
        body = {k: v for k, v in body.items() if k not in hidden}
    return q.project(body, fields) if fields else body


def _ext(alias: str, name: str, description: str) -> dict[str, Any]:
    return {"alias": alias, "name": name, "description": description, "links": [],
            "updated": "2026-11-01T00:00:00-00:00"}


def make_app(api: Api, extra_routes: list[web.RouteDef], max_body: int) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=max_body)
    app.add_routes(api.routes())
    app.add_routes(extra_routes)
    return app


def changes_routes(kernel: Kernel, api: Api) -> list[web.RouteDef]:
    """`GET /v2.0/alcor/changes?since=N&limit=M[&wait=S]`: the change log, for operators (admin)."""
    changes = kernel.get(StoreModule).store.changes

    async def handler(request: web.Request) -> web.Response:
        enforce(await api.ctx(request), "get_changes")
        try:
            since = int(request.query.get("since", "0"))
            limit = min(int(request.query.get("limit", "1000")), 10000)
            wait = min(float(request.query.get("wait", "0")), 60.0)
        except ValueError:
            raise BadRequest("since and limit must be integers, wait a number of seconds") from None
        if not 0 <= since <= q.SQL_INT_MAX or limit <= 0:
            raise BadRequest("since must be >= 0 and limit > 0")
        if wait > 0:
            await changes.wait(since, wait)
        rows = await changes.read(since, limit)
        out: dict[str, Any] = {"changes": [c.as_dict() for c in rows], "last_rev": changes.last_rev,
                               "horizon": changes.horizon}
        if len(rows) == limit:
            nxt = urlencode({"since": rows[-1].rev, "limit": limit})
            out["changes_links"] = [{"rel": "next", "href": f"{api.base_url(request)}{request.path}?{nxt}"}]
        return json_response(out)

    return [web.get("/v2.0/alcor/changes", handler)]


class HttpModule:
    """Serves the API; on stop, stops accepting and lets in-flight requests finish (drain)."""

    name = "api"

    def __init__(
        self,
        config: Config,
        managers: list[str],
        paths: dict[str, str] | None = None,
        observe: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.cfg = config.get(ApiConfig)
        # Built here, not at start: a bad [keystone_authtoken] or policy file stops the program
        # with one line before anything listens.
        self.auth: Authenticator = authenticator(config)
        self.policy = Policy(self.cfg.policy_file or None)
        self.requires = ("store", *managers)
        self.managers = managers
        self.paths = paths or {}  # collection -> URL path (alcor/controller.py PATHS)
        self.observe = observe  # request latency for /metrics (the ops module's)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app: web.Application | None = None

    async def start(self, kernel: Kernel) -> None:
        managers: list[Manager] = [kernel.named(n) for n in self.managers]
        api = Api(kernel, managers, {c: p for c, p in self.paths.items() if c in self.managers})
        extra = changes_routes(kernel, api)
        if kernel.has(Quotas):
            extra += api.quota_routes(kernel.get(Quotas))
        if kernel.has(PortBindings):
            extra += api.binding_routes(kernel.get(PortBindings))
        for m in kernel.modules:
            routes = getattr(m, "routes", None)
            if routes is not None and m is not self:
                extra += routes()
        self.app = make_app(api, extra, self.cfg.max_body_bytes)
        self.app[AUTH] = self.auth
        self.app[POLICY] = self.policy
        if self.observe is not None:
            # Request latency for /metrics; the error middleware calls it for every request.
            self.app[METRICS] = self.observe
        self.runner = web.AppRunner(self.app, access_log=None,
                                    shutdown_timeout=float(self.cfg.drain_seconds))
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        sockets = [s for s in (self.runner.addresses or [])]
        self.port = sockets[0][1] if sockets else self.cfg.port
        log.info("api.listening", host=self.cfg.host, port=self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.auth.close()
