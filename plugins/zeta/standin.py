"""A Zeta stand-in for tests and the dev run. NOT Zeta: Zeta is XDP on Kubernetes and does not run
here. This plays its two visible parts with the same wire contracts:

- the management API: `POST /vpcs {"vpc_id", "vni"}` -> `{"zgc_id", "gws": [{"ip", "mac"}],
  "port_ibo": "8300"}`, `GET /vpcs/{id}`, `DELETE /vpcs/{id}`, `POST /ports [{port_id, vpc_id,
  ips_port: [{ip, vip}], mac_port, ip_node, mac_node}]`, `DELETE /ports/{id}`; plus `/_standin/…`
  knobs for tests (inject failures, delays, change the FWD set);
- a FWD: a UDP socket on <fwd ip>:4789 (in a network namespace when given) that receives the
  VXLAN frames hosts send to the gateway, forwards each to the destination port's host (VXLAN,
  same VNI, inner destination MAC rewritten to the port's) and sends the source host an OAM
  "inject" so that the rest of the flow takes the direct path.

    python -m alcor_plugins.zeta.standin --listen 127.0.0.1:8080 --gw 172.31.255.9=02:00:00:00:00:09
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from alcor.agent import zeta
from alcor.agent.oam import udp_socket

log = structlog.get_logger("alcor.zeta.standin")

VXLAN_PORT = 4789
SO_NO_CHECK = 11  # Linux socket option, not exported by the socket module


@dataclass
class Faults:
    """What the next management calls do instead of succeeding (tests)."""

    fail: int = 0  # answer `status` to this many calls
    status: int = 503
    delay: float = 0.0  # seconds before answering every call
    down: bool = False  # close the connection without answering
    path: str = ""  # only calls whose path starts with this (all when empty)


@dataclass
class StandinState:
    gws: list[dict[str, str]]
    port_ibo: int = zeta.DEFAULT_OAM_PORT
    idle_timeout: int = 10  # what the FWD puts in its OAM injects
    vpcs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path) answered 2xx
    zgc_id: str = "zgc-standin"

    def vpc_reply(self, vpc_id: str) -> dict[str, Any]:
        return {
            "zgc_id": self.zgc_id,
            "vpc_id": vpc_id,
            "gws": list(self.gws),
            "port_ibo": str(self.port_ibo),
        }

    def route(self, vni: int, ip: str) -> dict[str, Any] | None:
        """The registered port of VPC `vni` holding `ip`."""
        for p in self.ports.values():
            vpc = self.vpcs.get(str(p.get("vpc_id")))
            if vpc is None or vpc["vni"] != vni:
                continue
            if any(a.get("ip") == ip for a in p.get("ips_port") or ()):
                return p
        return None


def management_app(state: StandinState) -> web.Application:
    @web.middleware
    async def faults(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_standin"):
            return await handler(request)
        f = state.faults
        if f.path and not request.path.startswith(f.path):
            return await handler(request)
        if f.delay:
            await asyncio.sleep(f.delay)
        if f.down:
            assert request.transport is not None
            request.transport.close()
            raise web.HTTPServiceUnavailable()
        if f.fail > 0:
            f.fail -= 1
            return web.json_response({"error": "injected failure"}, status=f.status)
        response: web.StreamResponse = await handler(request)
        if response.status < 300:
            state.calls.append((request.method, request.path))
        return response

    async def post_vpc(request: web.Request) -> web.Response:
        body = await request.json()
        vpc_id, vni = body.get("vpc_id"), body.get("vni")
        if not isinstance(vpc_id, str) or not isinstance(vni, int):
            return web.json_response({"error": "vpc_id and vni required"}, status=400)
        state.vpcs[vpc_id] = {"vpc_id": vpc_id, "vni": vni}
        log.info("standin.vpc_registered", vpc=vpc_id, vni=vni)
        return web.json_response(state.vpc_reply(vpc_id), status=201)

    async def get_vpc(request: web.Request) -> web.Response:
        vpc_id = request.match_info["id"]
        if vpc_id not in state.vpcs:
            return web.json_response({"error": "no such vpc"}, status=404)
        return web.json_response(state.vpc_reply(vpc_id))

    async def delete_vpc(request: web.Request) -> web.Response:
        vpc_id = request.match_info["id"]
        if state.vpcs.pop(vpc_id, None) is None:
            return web.json_response({"error": "no such vpc"}, status=404)
        for pid in [p for p, b in state.ports.items() if b.get("vpc_id") == vpc_id]:
            del state.ports[pid]
        return web.Response(status=204)

    async def post_ports(request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, list):
            return web.json_response({"error": "a list of ports"}, status=400)
        for p in body:
            if p.get("vpc_id") not in state.vpcs:
                return web.json_response({"error": f"vpc {p.get('vpc_id')} unknown"}, status=400)
        for p in body:
            state.ports[str(p["port_id"])] = p
        return web.json_response(body, status=201)

    async def delete_port(request: web.Request) -> web.Response:
        if state.ports.pop(request.match_info["id"], None) is None:
            return web.json_response({"error": "no such port"}, status=404)
        return web.Response(status=204)

    async def set_faults(request: web.Request) -> web.Response:
        body = await request.json()
        state.faults = Faults(**body)
        return web.json_response({"faults": body})

    async def set_gws(request: web.Request) -> web.Response:
        state.gws = list((await request.json())["gws"])
        return web.json_response({"gws": state.gws})

    app = web.Application(middlewares=[faults])
    app.add_routes(
        [
            web.post("/vpcs", post_vpc),
            web.get("/vpcs/{id}", get_vpc),
            web.delete("/vpcs/{id}", delete_vpc),
            web.post("/ports", post_ports),
            web.delete("/ports/{id}", delete_port),
            web.put("/_standin/faults", set_faults),
            web.put("/_standin/gws", set_gws),
        ]
    )
    return app


class Management:
    """The management API on host:port (port 0: any free one, see `.url`)."""

    def __init__(self, state: StandinState, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state, self.host, self.port = state, host, port
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # a stand-in holding a delayed answer (tests) must not hold up its own stop
        self.runner = web.AppRunner(
            management_app(self.state), access_log=None, shutdown_timeout=0.5
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info("standin.listening", url=self.url)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


# --- the FWD ----------------------------------------------------------------------------------

_VXLAN = struct.Struct("!B3s3sB")


@dataclass(frozen=True)
class Inner:
    vni: int
    dst_mac: str
    ethertype: int
    src_ip: str = ""
    dst_ip: str = ""
    proto: int = 0
    src_port: int = 0
    dst_port: int = 0


def parse_vxlan(data: bytes) -> Inner | None:
    """The fields the FWD routes on, from a VXLAN payload (None if not one it handles)."""
    if len(data) < 8 + 14 or not data[0] & 0x08:
        return None
    vni = int.from_bytes(data[4:7], "big")
    eth = data[8:]
    dst_mac = ":".join(f"{b:02x}" for b in eth[0:6])
    ethertype = int.from_bytes(eth[12:14], "big")
    if ethertype == 0x0806 and len(eth) >= 42:  # ARP: route on the target IP
        return Inner(vni, dst_mac, ethertype, "", str(ipaddress.IPv4Address(eth[38:42])))
    if ethertype != 0x0800 or len(eth) < 34:
        return Inner(vni, dst_mac, ethertype)
    ip = eth[14:]
    ihl = (ip[0] & 0x0F) * 4
    proto = ip[9]
    src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
    sport = dport = 0
    if proto in (6, 17, 132) and len(ip) >= ihl + 4:
        sport, dport = struct.unpack_from("!HH", ip, ihl)
    return Inner(vni, dst_mac, ethertype, src, dst, proto, sport, dport)


class Fwd(asyncio.DatagramProtocol):
    """One FWD node: VXLAN in on ip:4789, VXLAN out to the destination host, OAM to the source."""

    def __init__(self, state: StandinState, ip: str, mac: str, netns: str | None = None) -> None:
        self.state, self.ip, self.mac, self.netns = state, ip, mac, netns
        self.transport: asyncio.DatagramTransport | None = None
        self.counters = {"received": 0, "forwarded": 0, "oam_sent": 0, "unroutable": 0}
        self.flows: dict[tuple[Any, ...], int] = {}  # 5-tuple + vni -> packets forwarded

    async def start(self) -> None:
        sock = await asyncio.to_thread(udp_socket, self.ip, VXLAN_PORT, self.netns)
        # Zero UDP checksum, as tunnel endpoints send VXLAN: over veth the kernel would leave
        # the checksum to an offload that never happens, and OVS drops the frame on tnl_pop.
        sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        log.info("standin.fwd_listening", ip=self.ip, netns=self.netns)

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.counters["received"] += 1
        inner = parse_vxlan(data)
        port = self.state.route(inner.vni, inner.dst_ip) if inner and inner.dst_ip else None
        if inner is None or port is None or self.transport is None:
            self.counters["unroutable"] += 1
            return
        out = bytearray(data)
        if inner.ethertype == 0x0800:
            out[8:14] = bytes.fromhex(str(port["mac_port"]).replace(":", ""))
        self.transport.sendto(bytes(out), (str(port["ip_node"]), VXLAN_PORT))
        self.counters["forwarded"] += 1
        if inner.ethertype != 0x0800:
            return
        key = (inner.vni, inner.src_ip, inner.dst_ip, inner.proto, inner.src_port, inner.dst_port)
        self.flows[key] = self.flows.get(key, 0) + 1
        # Every forwarded packet of a flow repeats the inject: one that got lost is made good by
        # the next packet, and once the direct path is in, packets stop coming here.
        oam = zeta.OamMessage(
            zeta.OP_INJECT,
            inner.src_ip,
            inner.dst_ip,
            inner.src_port,
            inner.dst_port,
            inner.proto,
            inner.vni,
            inner.dst_ip,
            str(port["ip_node"]),
            str(port["mac_port"]),
            str(port["mac_node"]),
            self.state.idle_timeout,
        )
        self.transport.sendto(zeta.encode_oam(oam), (str(addr[0]), self.state.port_ibo))
        self.counters["oam_sent"] += 1


class Standin:
    """Management API + FWDs, started and stopped together."""

    def __init__(
        self,
        gws: list[dict[str, str]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fwd_netns: str | None = None,
        run_fwds: bool = True,
    ) -> None:
        self.state = StandinState(gws=gws)
        self.management = Management(self.state, host, port)
        self.fwds = [Fwd(self.state, g["ip"], g["mac"], fwd_netns) for g in gws] if run_fwds else []

    @property
    def url(self) -> str:
        return self.management.url

    async def start(self) -> None:
        await self.management.start()
        for f in self.fwds:
            await f.start()

    async def stop(self) -> None:
        for f in self.fwds:
            f.stop()
        await self.management.stop()


def main() -> None:
    p = argparse.ArgumentParser(description="Zeta stand-in (management API and FWDs); not Zeta.")
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument(
        "--gw",
        action="append",
        default=[],
        metavar="IP=MAC",
        help="a FWD (repeatable); default 127.0.0.9=02:00:00:00:00:09",
    )
    p.add_argument("--netns", default=None, help="run the FWDs' sockets in this network namespace")
    p.add_argument("--no-fwd", action="store_true", help="management API only")
    args = p.parse_args()
    gws = [dict(zip(("ip", "mac"), g.split("="), strict=True)) for g in args.gw] or [
        {"ip": "127.0.0.9", "mac": "02:00:00:00:00:09"}
    ]
    host, _, port = args.listen.rpartition(":")

    async def run() -> None:
        s = Standin(gws, host=host, port=int(port), fwd_netns=args.netns, run_fwds=not args.no_fwd)
        await s.start()
        try:
            await asyncio.Event().wait()
        finally:
            await s.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()
