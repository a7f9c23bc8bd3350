"""The operator's commands of `alcor`: look at a running controller or agent from a terminal.

    alcor status                      # controller readiness, change log, every node's sync state
    alcor changes --follow            # tail the change log
    alcor node show compute-1         # one node: sync, goal-state summary, its ports
    alcor agent flows                 # the local agent's flows, diffed against the switch

They speak HTTP to the controller (`--url`, ALCOR_URL, else api.host/api.port from the config) or,
for `agent flows`, to the agent's listener (`--agent-url`, ALCOR_AGENT_URL, else [agent] http).
Exit codes: 0 all well, 1 an error (one line on stderr, e.g. the controller is unreachable),
3 reachable but degraded (not ready, a node not in sync, flows differing from the goal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from alcor import sections
from alcor.agent.config import AgentConfig
from alcor.api.config import ApiConfig
from alcor.config import ConfigError
from alcor.ops.topology import host_state

COMMANDS = ("status", "changes", "node")
OPTIONS_WITH_VALUE = {"--config", "-c", "--port", "--db", "--url", "--agent-url", "--token"}
DEGRADED = 3
TIMEOUT = 10.0


class CliError(Exception):
    """One line for the operator; exit code 1."""


def wants(argv: Sequence[str]) -> bool:
    """Is this command line one of ours (rather than a role to run)? `agent` alone is the role."""
    words = _positionals(argv)
    if not words:
        return False
    return words[0] in COMMANDS or (words[0] == "agent" and len(words) > 1 and words[1] == "flows")


def _positionals(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in OPTIONS_WITH_VALUE:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


# HTTP ------------------------------------------------------------------------------------------

class Http:
    """GET JSON from the controller or an agent, with one-line errors."""

    def __init__(self, base: str, token: str | None, what: str = "the controller") -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.what = what

    def get(self, path: str, params: Iterable[tuple[str, Any]] = (), timeout: float = TIMEOUT,
            ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        query = urllib.parse.urlencode(list(params))
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.token:
            req.add_header("X-Auth-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = _json_or_none(e.read())
            if e.code in ok:
                return e.code, body
            err = (body or {}).get("NeutronError") if isinstance(body, dict) else None
            detail = f"{err['type']}: {err['message']}" if err else e.reason
            raise CliError(f"GET {path} failed: {e.code} {detail}") from None
        except urllib.error.URLError as e:
            raise CliError(f"cannot reach {self.what} at {self.base}: {_reason(e.reason)}") from None
        except (TimeoutError, ConnectionError) as e:
            raise CliError(f"cannot reach {self.what} at {self.base}: {_reason(e)}") from None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _reason(reason: Any) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is it running?)"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(getattr(reason, "strerror", None) or reason)


# Output helpers --------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO) -> None:
    """Plain aligned columns, as `openstack … -f table` without the boxes; greps well."""
    data = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in data]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for r in data:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


class Progress:
    """A one-line progress note on stderr, only when stderr is a terminal (never in pipes or logs)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.shown = False

    def note(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _short(uuid: str | None) -> str:
    return (uuid or "")[:8]


# Commands --------------------------------------------------------------------------------------

def cmd_status(http: Http, args: argparse.Namespace, out: TextIO) -> int:
    _, ready = http.get("/readyz", ok=(200, 503))
    _, body = http.get("/v2.0/alcor/topology")
    t = body["topology"]
    checks = ", ".join(f"{n}: {c['detail']}" for n, c in ready["checks"].items())
    state = "ready" if ready["status"] == "ok" else "NOT READY"
    print(f"controller  {http.base}  {state}  ({checks})", file=out)
    delivered = "" if t["watermark"] is None else f"  delivered {t['watermark']}"
    print(f"change log  rev {t['rev']}{delivered}", file=out)
    ports = [p for v in t["vpcs"] for s in v["subnets"] for p in s["ports"]] + \
            [p for v in t["vpcs"] for p in v["unaddressed_ports"]]
    active = sum(p["status"] == "ACTIVE" for p in ports)
    print(f"VPCs {len(t['vpcs'])}  subnets {sum(len(v['subnets']) for v in t['vpcs'])}  "
          f"ports {len(ports)} ({active} active)  routers {len(t['routers'])}", file=out)
    status, sb = http.get("/v2.0/alcor/southbound", ok=(200, 404))
    lead = sb.get("southbound", {}) if status == 200 else {}
    controllers = lead.get("controllers") or []
    print(file=out)
    if controllers:
        print(f"dispatcher  led by {lead.get('leader')} since {lead.get('since')}, epoch "
              f"{lead.get('epoch')}", file=out)
        table(["CONTROLLER", "HOST", "URL", "ROLE", "LAST SEEN"],
              [[c["id"], c["host"], c["url"],
                "leader" if c["leader"] else "standby" if c["alive"] else "GONE", c["seen_at"]]
               for c in controllers], out)
        print(file=out)
    if not t["hosts"]:
        print("no nodes registered", file=out)
    rows = []
    for h in t["hosts"]:
        sync = h["sync"]
        revs = "" if not sync else f"{_dash(sync.get('applied_rev'))}/{sync.get('goal_rev')}"
        label = f"lagging {h['lag']}" if h["state"] == "lagging" else h["state"]
        rows.append([h["node_name"], h["local_ip"] or "", f"{h['active']}/{h['ports']}", revs, label])
    if rows:
        table(["NODE", "TUNNEL IP", "PORTS UP", "APPLIED/GOAL", "STATE"], rows, out)
    healthy = ready["status"] == "ok" and all(h["state"] in ("in sync", "unknown") for h in t["hosts"])
    if controllers and not any(c["leader"] and c["alive"] for c in controllers):
        healthy = False  # nobody dispatches
    return 0 if healthy else DEGRADED


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def change_line(c: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(c["time"]))
    body = c.get("body") or {}
    name = body.get("name") or body.get("node_name") or ""
    extra = f"  name={name}" if name else ""
    vpc = f"  vpc={_short(c['vpc_id'])}" if c.get("vpc_id") else ""
    return (f"rev {c['rev']:<7} {when}  {c['type']:<14} {c['op']:<6}  {c['id']}  "
            f"rn={_dash(c.get('revision_number'))}{vpc}{extra}")


def cmd_changes(http: Http, args: argparse.Namespace, out: TextIO) -> int:
    since = args.since
    if since is None:
        _, head = http.get("/v2.0/alcor/changes", [("since", 0), ("limit", 1)])
        since = max(head["last_rev"] - args.last, head["horizon"])
    progress = Progress()
    printed = 0
    while True:
        params = [("since", since), ("limit", args.page)]
        if args.follow:
            params.append(("wait", 30))
        try:
            _, page = http.get("/v2.0/alcor/changes", params, timeout=45.0)
        except CliError as e:
            if not args.follow or printed == 0 and since == args.since:
                raise
            progress.done()
            print(f"alcor: {e}; retrying", file=sys.stderr)
            time.sleep(2.0)
            continue
        if page["horizon"] > since:
            print(f"alcor: changes up to rev {page['horizon']} were compacted; starting after them",
                  file=sys.stderr)
        progress.done()
        for c in page["changes"]:
            print(json.dumps(c) if args.json else change_line(c), file=out, flush=True)
            since = c["rev"]
            printed += 1
        behind = page["last_rev"] - since
        if behind > 0:
            progress.note(f"… {behind} more changes to read (rev {since} of {page['last_rev']})")
            continue
        if not args.follow:
            return 0
        since = max(since, page["horizon"])


def _find_node(http: Http, name: str) -> dict[str, Any]:
    _, found = http.get("/v2.0/alcor/nodes", [("node_name", name)])
    if not found["nodes"]:
        status, by_id = http.get(f"/v2.0/alcor/nodes/{urllib.parse.quote(name)}", ok=(200, 404))
        if status == 404:
            raise CliError(f"no node named {name!r}")
        return dict(by_id["node"])
    _, shown = http.get(f"/v2.0/alcor/nodes/{found['nodes'][0]['node_id']}")
    return dict(shown["node"])


def cmd_node_show(http: Http, args: argparse.Namespace, out: TextIO) -> int:
    node = _find_node(http, args.name)
    nid = node["node_id"]
    status, goal = http.get(f"/v2.0/alcor/nodes/{nid}/goal_state", ok=(200, 503))
    _, ports = http.get("/v2.0/ports", [("binding:host_id", node["node_name"])])
    print(f"node        {node['node_name']}  ({nid})", file=out)
    print(f"tunnel      {node['local_ip']}  mac {node.get('mac_address') or '-'}", file=out)
    print(f"queue       {node.get('mq_queue')}  exchange {node.get('mq_exchange')}  "
          f"vhost {node.get('mq_vhost')}", file=out)
    sync: dict[str, Any] = {k: node[k] for k in ("goal_rev", "applied_rev", "in_sync", "digest_match",
                                 "snapshot_pending", "last_report_at") if k in node}
    state, lag = host_state(sync or None)
    label = f"lagging {lag}" if state == "lagging" else state
    if sync:
        print(f"sync        {label}: applied rev {_dash(sync.get('applied_rev'))} of goal "
              f"{sync.get('goal_rev')}, digest {'match' if sync.get('digest_match') else 'unchecked' if sync.get('digest_match') is None else 'MISMATCH'}, "
              f"last report {sync.get('last_report_at') or 'never'}", file=out)
    else:
        print("sync        unknown (no southbound in the controller)", file=out)
    if status == 200:
        g = goal["goal_state"]
        c = g["counts"]
        print(f"goal        {c.get('vpc', 0)} VPCs, {c.get('subnet', 0)} subnets, {c.get('router', 0)} "
              f"routers, {c.get('security_group', 0)} security groups, {len(g['local_ports'])} local "
              f"ports, {g['neighbours']} neighbours, {max(c.get('node', 0) - 1, 0)} peers", file=out)
    print(file=out)
    rows = [[p["id"], p.get("name", ""), p.get("status", ""),
             ",".join(f["ip_address"] for f in p.get("fixed_ips", [])), p.get("mac_address", ""),
             _short(p.get("network_id"))] for p in ports["ports"]]
    if rows:
        table(["PORT", "NAME", "STATUS", "IPS", "MAC", "NETWORK"], rows, out)
    else:
        print("no ports bound to this node", file=out)
    down = [p for p in ports["ports"] if p.get("status") != "ACTIVE"]
    return 0 if state in ("in sync", "unknown") and not down else DEGRADED


def cmd_agent_flows(http: Http, args: argparse.Namespace, out: TextIO) -> int:
    progress = Progress()
    progress.note(f"reading flows from the agent at {http.base} …")
    try:
        _, body = http.get("/agent/flows", timeout=90.0)
    except CliError:
        if args.agent_explicit:
            progress.done()
            raise
        # The dev run has no separate agent listener: its controller port serves the flows.
        fallback = Http(args.url, args.token, "the controller")
        try:
            _, body = fallback.get("/v2.0/alcor/agent/flows", timeout=90.0)
        except CliError as e:
            progress.done()
            raise CliError(f"cannot reach an agent at {http.base}, and the controller at {args.url} "
                           f"has no embedded agent ({e})") from None
    progress.done()
    report = body["flows"]
    if args.json:
        print(json.dumps(report, indent=2), file=out)
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(report["counts"].items())) or "no flows"
        switch = "switch connected" if report["switch_connected"] else "SWITCH NOT CONNECTED"
        print(f"node {report['node_id'] or '-'}  bridge {report['bridge']}  {switch}  ({counts})", file=out)
        for pid, why in report["port_problems"].items():
            if why:
                print(f"port {pid}: {why}", file=out)
        wanted = set(args.state.split(",")) if args.state else None
        rows = [[f["table"], f["priority"], f["state"], f"{f['resource']['type']}:{_short(f['resource']['id'])}",
                 f["match"], f["actions"]]
                for f in report["flows"] if wanted is None or f["state"] in wanted]
        print(file=out)
        table(["TABLE", "PRIO", "STATE", "RESOURCE", "MATCH", "ACTIONS"], rows, out)
    bad = sum(n for s, n in report["counts"].items() if s in ("missing", "differs", "stale"))
    return DEGRADED if bad or not report["switch_connected"] else 0


# Entry -----------------------------------------------------------------------------------------

def _common(suppress: bool) -> argparse.ArgumentParser:
    """The connection options, accepted before or after the command (`alcor status --url …`)."""
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", "-c", help="TOML file layered over config/alcor.toml (for the URLs)", **kw)
    p.add_argument("--url", help="controller URL (ALCOR_URL; default from api.host and api.port)", **kw)
    p.add_argument("--agent-url", help="agent URL (ALCOR_AGENT_URL; default from [agent] http)", **kw)
    p.add_argument("--token", help="X-Auth-Token for api.auth = token (ALCOR_TOKEN)", **kw)
    return p


def parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)  # after the command: only override what is given
    p = argparse.ArgumentParser(prog="alcor", description="Look at a running Alcor controller or agent.",
                                parents=[_common(suppress=False)])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common], help="controller readiness and every node's sync state")
    ch = sub.add_parser("changes", parents=[common], help="print the change log; --follow to tail it")
    ch.add_argument("--since", type=int, help="start after this rev (default: the last --last ones)")
    ch.add_argument("--last", type=int, default=20, help="without --since, how many recent changes")
    ch.add_argument("--follow", "-f", action="store_true", help="keep printing new changes")
    ch.add_argument("--json", action="store_true", help="one JSON object per line")
    ch.add_argument("--page", type=int, default=500, help=argparse.SUPPRESS)
    node = sub.add_parser("node", help="one node").add_subparsers(dest="node_command", required=True)
    show = node.add_parser("show", parents=[common],
                           help="sync state, goal-state summary and ports of a node")
    show.add_argument("name", help="node_name (or node_id)")
    agent = sub.add_parser("agent", help="the local agent").add_subparsers(dest="agent_command", required=True)
    flows = agent.add_parser("flows", parents=[common],
                             help="desired flows with their resource, diffed against the switch")
    flows.add_argument("--state", help="only these states, e.g. missing,stale")
    flows.add_argument("--json", action="store_true")
    return p


def _urls(args: argparse.Namespace) -> None:
    """Fill in the controller's and the agent's URLs from flags, environment, then the config."""
    args.agent_explicit = bool(args.agent_url or os.environ.get("ALCOR_AGENT_URL"))
    if args.url and args.agent_url:
        return
    cfg = sections.load(args.config)
    api = cfg.get(ApiConfig)
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
    args.url = args.url or os.environ.get("ALCOR_URL") or f"http://{host}:{api.port}"
    agent_http = cfg.get(AgentConfig).http
    args.agent_url = args.agent_url or os.environ.get("ALCOR_AGENT_URL") or (
        f"http://{agent_http.replace('0.0.0.0', '127.0.0.1')}" if agent_http else args.url)


def main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(list(argv))
    try:
        _urls(args)
    except ConfigError as e:
        print(f"alcor: config error: {e}", file=sys.stderr)
        return 2
    token = args.token = args.token or os.environ.get("ALCOR_TOKEN")
    try:
        if args.command == "status":
            return cmd_status(Http(args.url, token), args, out)
        if args.command == "changes":
            return cmd_changes(Http(args.url, token), args, out)
        if args.command == "node":
            return cmd_node_show(Http(args.url, token), args, out)
        return cmd_agent_flows(Http(args.agent_url, token, "the agent"), args, out)
    except CliError as e:
        print(f"alcor: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
