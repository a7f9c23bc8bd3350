"""An asyncio OpenFlow 1.3 channel: the agent listens, the host's ovs-vswitchd connects.

Only os-ken's message codecs are used (no app_manager, hub or eventlet). One `Switch` per
connection does the handshake (hello, features, port descriptions), answers echoes, and offers
the requests the reconciler needs: flow-mod batches closed by a barrier (every error reported
with the flow-mod that caused it), paged flow-stats read-back, group-mods and packet-outs.
Port-status and packet-in messages go to a `SwitchHandler`.

    server = OpenFlowServer("tcp:127.0.0.1:6653", handler)
    await server.start()      # handler.switch_connected(switch) once the handshake is done
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from os_ken.ofproto import ofproto_parser as ofproto_msg
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from alcor.agent import codec, fastcodec
from alcor.agent.ir import Flow

log = structlog.get_logger("alcor.agent.openflow")

HEADER = struct.Struct("!BBHI")  # version, type, length, xid
NX_VENDOR_ID = 0x00002320  # Nicira extensions (OVS)
NXT_CT_FLUSH_ZONE = 29  # body: nx_zone_id, six zero bytes then the zone (as ovs-ofctl sends it)
OFP13 = ofp.OFP_VERSION
STREAM_CHUNK = 1024  # flow-mods encoded and written at a time within one batch


class SwitchHandler(Protocol):
    async def switch_connected(self, switch: Switch) -> None: ...
    def switch_disconnected(self, switch: Switch) -> None: ...
    def port_changed(self, switch: Switch, reason: str, name: str, ofport: int) -> None: ...
    def packet_in(self, switch: Switch, msg: parser.OFPPacketIn) -> None: ...


class SwitchGone(ConnectionError):
    """The switch disconnected while a request was outstanding."""


@dataclass
class FlowModError:
    """An OpenFlow error, with the flow-mod that caused it."""

    command: str  # "add" | "delete" | "group" | ...
    flow: Flow | None
    error: str  # e.g. OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ
    request: Any = None  # the os-ken message that was sent

    def __str__(self) -> str:
        return f"{self.command} {self.flow or self.request}: {self.error}"


@dataclass
class _Batch:
    """Flow-mods sent together, by xid, and the errors the switch returned for them."""

    xids: dict[int, tuple[str, Flow | None, Any]] = field(default_factory=dict)
    errors: list[FlowModError] = field(default_factory=list)


class ReadAhead:
    """Flow-stats requests written ahead of other messages (Switch.flow_stats_ahead): `flows()`
    waits for their replies; `forget()` (always, once done) drops what the switch keeps for
    them."""

    def __init__(self, switch: Switch, futs: dict[int, asyncio.Future[list[Any]]]) -> None:
        self._switch = switch
        self._futs = futs

    async def flows(self) -> list[Flow]:
        out: list[Flow] = []
        async with asyncio.timeout(60.0):
            for fut in self._futs.values():
                pages = await fut
                out += [f for page in pages for f in fastcodec.decode_flow_stats(bytes(page))]
        return out

    def forget(self) -> None:
        self._switch._forget(self._futs)


class Switch:
    """One connected switch. Owned by the server; the handler uses its request methods."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: SwitchHandler | None = None,
    ) -> None:
        self.handler = handler
        self._reader = reader
        self._writer = writer
        self._xids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[list[Any]]] = {}
        self._partial: dict[int, list[Any]] = {}
        self._inflight: dict[int, _Batch] = {}
        self._raw_multipart: set[int] = set()  # xids whose multipart replies stay bytes
        self._reader_task: asyncio.Task[None] | None = None
        self.datapath_id = 0
        self.ports: dict[str, int] = {}  # interface name -> ofport
        self.closed = asyncio.Event()
        self.peer = str(writer.get_extra_info("peername") or writer.get_extra_info("sockname"))
        self.stats = {"flow_mods": 0, "packet_in": 0, "errors": 0}

    # --- sending ---

    def _next_xid(self) -> int:
        return next(self._xids) & 0xFFFFFFFF or next(self._xids)

    def _encode(self, msg: Any) -> bytes:
        if msg.xid is None:
            msg.set_xid(self._next_xid())
        msg.serialize()
        return bytes(msg.buf)

    def _write(self, data: bytes) -> None:
        if self.closed.is_set():
            raise SwitchGone(f"switch {self.datapath_id:#x} disconnected")
        self._writer.write(data)

    async def send(self, msg: Any) -> None:
        self._write(self._encode(msg))
        await self._writer.drain()

    def write(self, msg: Any) -> None:
        """Queue a message without waiting (several packet-outs, then one `drain`)."""
        self._write(self._encode(msg))

    async def drain(self) -> None:
        await self._writer.drain()

    async def request(self, msg: Any, timeout: float = 10.0) -> list[Any]:
        """Send a request and wait for its reply; a multipart reply comes back as all its pages."""
        data = self._encode(msg)
        return await self._request_encoded(msg.xid, data, timeout)

    async def _request_encoded(self, xid: int, data: bytes, timeout: float) -> list[Any]:
        """Write `data` (ending with the request `xid`) and wait for that request's reply."""
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[xid] = fut
        try:
            self._write(data)
            await self._writer.drain()
            # asyncio.timeout, not asyncio.wait_for: the latter (Python 3.11) returns the
            # reply when a cancellation meets it, so a reconcile cancelled as its barrier
            # is answered (an agent stopping) ran on and its caller never finished stopping
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(xid, None)
            self._partial.pop(xid, None)

    async def barrier(self, timeout: float = 30.0) -> None:
        await self.request(parser.OFPBarrierRequest(codec.DP), timeout)

    async def flow_mods(
        self,
        adds: Iterable[Flow] = (),
        deletes: Iterable[Flow] = (),
        timeout: float = 60.0,
        signatures: fastcodec.SigCache | None = None,
    ) -> list[FlowModError]:
        """Send adds then deletes in one write, close with a barrier, return the errors.

        Adds go first: a flow that replaces another (same match, new actions) is atomic, and a
        stale flow is deleted only once its successor is in place (make before break).
        """
        batch = _Batch()
        work = [("add", f) for f in adds] + [("delete", f) for f in deletes]
        if not work:
            return []
        try:
            # Written a chunk at a time, yielding in between: the switch starts on the first
            # chunk while the rest is encoded, and the batches of the other connections (a big
            # batch is spread over several) are encoded and written in turn with this one.
            for start in range(0, len(work), STREAM_CHUNK):
                chunks: list[bytes] = []
                with fastcodec.gc_paused():
                    for command, flow in work[start : start + STREAM_CHUNK]:
                        xid = self._next_xid()
                        batch.xids[xid] = (command, flow, None)
                        self._inflight[xid] = batch
                        if command == "add":
                            chunks.append(fastcodec.encode_add(flow, xid, signatures))
                        else:
                            chunks.append(fastcodec.encode_delete(flow, xid))
                self.stats["flow_mods"] += len(chunks)
                if start + STREAM_CHUNK < len(work):
                    self._write(b"".join(chunks))
                    await asyncio.sleep(0)
            barrier = parser.OFPBarrierRequest(codec.DP)
            barrier.set_xid(self._next_xid())
            chunks.append(self._encode(barrier))
            await self._request_encoded(barrier.xid, b"".join(chunks), timeout)
        finally:
            for xid in batch.xids:
                self._inflight.pop(xid, None)
        return batch.errors

    def open_batch(self) -> _Batch:
        """A batch written in parts (write_adds) while the caller still computes the rest,
        closed by one barrier (close_batch); forget_batch always, once done."""
        return _Batch()

    def write_adds(
        self, batch: _Batch, adds: list[Flow], signatures: fastcodec.SigCache | None = None
    ) -> None:
        chunks: list[bytes] = []
        with fastcodec.gc_paused():
            for flow in adds:
                xid = self._next_xid()
                batch.xids[xid] = ("add", flow, None)
                self._inflight[xid] = batch
                chunks.append(fastcodec.encode_add(flow, xid, signatures))
        self.stats["flow_mods"] += len(chunks)
        self._write(b"".join(chunks))

    async def close_batch(self, batch: _Batch, timeout: float = 60.0) -> list[FlowModError]:
        """The barrier after a batch's parts: its errors once the switch did all of them."""
        barrier = parser.OFPBarrierRequest(codec.DP)
        barrier.set_xid(self._next_xid())
        await self._request_encoded(barrier.xid, self._encode(barrier), timeout)
        return batch.errors

    def forget_batch(self, batch: _Batch) -> None:
        for xid in batch.xids:
            self._inflight.pop(xid, None)

    async def group_mod(self, msg: parser.OFPGroupMod) -> list[FlowModError]:
        """A group-mod closed by a barrier; errors come back like flow-mod errors."""
        return await self.mod(msg, "group")

    async def mod(self, msg: Any, command: str) -> list[FlowModError]:
        """A group-mod, meter-mod, … closed by a barrier; errors come back like flow-mods'."""
        return await self.mods([msg], command)

    async def mods(self, msgs: list[Any], command: str) -> list[FlowModError]:
        """Several such messages in one write closed by one barrier; each error names its
        message (`FlowModError.request`)."""
        batch = _Batch()
        chunks = []
        for msg in msgs:
            chunks.append(self._encode(msg))
            batch.xids[msg.xid] = (command, None, msg)
            self._inflight[msg.xid] = batch
        try:
            if chunks:
                self._write(b"".join(chunks))
                await self.barrier()
        finally:
            for xid in batch.xids:
                self._inflight.pop(xid, None)
        return batch.errors

    async def ct_flush_zone(self, zone: int) -> list[FlowModError]:
        """Forget every connection of a conntrack zone (NXT_CT_FLUSH_ZONE), closed by a barrier."""
        msg = parser.OFPExperimenter(
            codec.DP,
            experimenter=NX_VENDOR_ID,
            exp_type=NXT_CT_FLUSH_ZONE,
            data=struct.pack("!6xH", zone),
        )
        batch = _Batch()
        data = self._encode(msg)
        batch.xids[msg.xid] = ("ct_flush_zone", None, msg)
        self._inflight[msg.xid] = batch
        try:
            self._write(data)
            await self.barrier()
        finally:
            self._inflight.pop(msg.xid, None)
        return batch.errors

    async def packet_out(self, data: bytes, actions: list[Any], in_port: int | None = None) -> None:
        msg = parser.OFPPacketOut(
            codec.DP,
            buffer_id=ofp.OFP_NO_BUFFER,
            in_port=ofp.OFPP_CONTROLLER if in_port is None else in_port,
            actions=actions,
            data=data,
        )
        await self.send(msg)

    async def flow_stats(
        self, cookie: int = 0, cookie_mask: int = 0, table_id: int = ofp.OFPTT_ALL
    ) -> list[Flow]:
        """The switch's flows whose cookie matches, across all pages of the reply."""
        pages = await self.flow_stats_raw(cookie, cookie_mask, table_id)
        return [f for page in pages for f in fastcodec.decode_flow_stats(page)]

    async def flow_stats_raw(
        self, cookie: int = 0, cookie_mask: int = 0, table_id: int = ofp.OFPTT_ALL
    ) -> list[bytes]:
        """The flow-stats reply pages as bytes (each after its multipart header)."""
        req = parser.OFPFlowStatsRequest(
            codec.DP, table_id=table_id, cookie=cookie, cookie_mask=cookie_mask
        )
        # Pages are decoded by fastcodec.decode_flow_stats rather than os-ken's parser: tens of
        # thousands of flows are read back on every reconnect.
        req.set_xid(self._next_xid())
        self._raw_multipart.add(req.xid)
        try:
            pages = await self.request(req, timeout=60.0)
        finally:
            self._raw_multipart.discard(req.xid)
        return [bytes(page) for page in pages]

    async def flow_count(self, cookie: int = 0, cookie_mask: int = 0) -> int:
        """How many flows the switch holds under a cookie mask (one aggregate reply)."""
        req = parser.OFPAggregateStatsRequest(
            codec.DP,
            0,
            ofp.OFPTT_ALL,
            ofp.OFPP_ANY,
            ofp.OFPG_ANY,
            cookie,
            cookie_mask,
            parser.OFPMatch(),
        )
        req.set_xid(self._next_xid())
        pages = await self.request(req, timeout=60.0)
        return sum(int(page.body.flow_count) for page in pages)

    def flow_stats_ahead(self, cookies: Iterable[int]) -> ReadAhead:
        """flow_stats_many with every request written before this returns, so that the switch
        (which handles a connection's messages in order) answers them with its flows as they
        were before whatever is written next."""
        loop = asyncio.get_running_loop()
        futs: dict[int, asyncio.Future[list[Any]]] = {}
        data = []
        for c in sorted(set(cookies)):
            req = parser.OFPFlowStatsRequest(
                codec.DP, table_id=ofp.OFPTT_ALL, cookie=c, cookie_mask=codec.ALL_ONES64
            )
            req.set_xid(self._next_xid())
            data.append(self._encode(req))
            futs[req.xid] = loop.create_future()
        self._raw_multipart.update(futs)
        self._pending.update(futs)
        ahead = ReadAhead(self, futs)
        try:
            self._write(b"".join(data))
        except BaseException:
            ahead.forget()
            raise
        return ahead

    def _forget(self, xids: Iterable[int]) -> None:
        for xid in xids:
            self._pending.pop(xid, None)
            self._partial.pop(xid, None)
            self._raw_multipart.discard(xid)

    async def flow_stats_many(self, cookies: Iterable[int]) -> list[Flow]:
        """Read back the flows of several exact cookies with pipelined requests."""
        reqs = [
            self.flow_stats(cookie=c, cookie_mask=codec.ALL_ONES64) for c in sorted(set(cookies))
        ]
        pages = await asyncio.gather(*reqs)
        return [f for page in pages for f in page]

    # --- receiving ---

    async def handshake(self, timeout: float = 10.0, ports: bool = True) -> None:
        """Hello, features and (unless `ports` is false: a connection that only sends
        flow-mods and packet-outs needs no port map) the port descriptions."""
        await self.send(parser.OFPHello(codec.DP))
        version, mtype, _, _, _ = await asyncio.wait_for(self._read(), timeout)
        if mtype != ofp.OFPT_HELLO or version < OFP13:
            raise ConnectionError(f"switch speaks OpenFlow version {version}, need 1.3 (0x04)")
        self._reader_task = asyncio.create_task(self._read_loop())
        [features] = await self.request(parser.OFPFeaturesRequest(codec.DP), timeout)
        self.datapath_id = features.datapath_id
        if not ports:
            return
        pages = await self.request(parser.OFPPortDescStatsRequest(codec.DP, 0), timeout)
        for page in pages:
            for port in page.body:
                self._learn_port(port)

    async def _read(self) -> tuple[int, int, int, int, bytes]:
        head = await self._reader.readexactly(HEADER.size)
        version, mtype, length, xid = HEADER.unpack(head)
        body = await self._reader.readexactly(length - HEADER.size)
        return version, mtype, length, xid, head + body

    async def _read_loop(self) -> None:
        try:
            while True:
                version, mtype, length, xid, buf = await self._read()
                if mtype == ofp.OFPT_ECHO_REQUEST:
                    self._write(HEADER.pack(OFP13, ofp.OFPT_ECHO_REPLY, length, xid) + buf[8:])
                    continue
                if mtype == ofp.OFPT_MULTIPART_REPLY and xid in self._raw_multipart:
                    self._raw_page(xid, buf)
                    continue
                msg = ofproto_msg.msg(codec.DP, version, mtype, length, xid, buf)
                self._dispatch(msg)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception:
            log.exception("openflow.read_failed", dpid=self.datapath_id)
        finally:
            self._close()

    def _dispatch(self, msg: Any) -> None:
        xid = msg.xid
        if isinstance(msg, parser.OFPErrorMsg):
            self._on_error(msg)
            return
        if isinstance(msg, parser.OFPPortStatus):
            name, ofport = self._learn_port(msg.desc, deleted=msg.reason == ofp.OFPPR_DELETE)
            reason = {ofp.OFPPR_ADD: "add", ofp.OFPPR_DELETE: "delete"}.get(msg.reason, "modify")
            if self.handler is not None and name:
                self.handler.port_changed(self, reason, name, ofport)
            return
        if isinstance(msg, parser.OFPPacketIn):
            self.stats["packet_in"] += 1
            if self.handler is not None:
                self.handler.packet_in(self, msg)
            return
        fut = self._pending.get(xid)
        if fut is None:
            if not isinstance(msg, parser.OFPEchoReply):
                log.debug("openflow.unsolicited", type=type(msg).__name__, xid=xid)
            return
        if isinstance(msg, parser.OFPMultipartReply):
            pages = self._partial.setdefault(xid, [])
            pages.append(msg)
            if msg.flags & ofp.OFPMPF_REPLY_MORE:
                return
            result = pages
        else:
            result = [msg]
        if not fut.done():
            fut.set_result(result)

    def _raw_page(self, xid: int, buf: bytes) -> None:
        """One page of a multipart reply kept as bytes (after its 16-byte multipart header)."""
        _, flags = struct.unpack_from("!HH", buf, HEADER.size)
        pages = self._partial.setdefault(xid, [])
        pages.append(buf[16:])
        fut = self._pending.get(xid)
        if not flags & ofp.OFPMPF_REPLY_MORE and fut is not None and not fut.done():
            fut.set_result(pages)

    def _on_error(self, msg: parser.OFPErrorMsg) -> None:
        self.stats["errors"] += 1
        name = codec.error_name(msg.type, msg.code)
        batch = self._inflight.get(msg.xid)
        if batch is not None:
            command, flow, request = batch.xids[msg.xid]
            err = FlowModError(command, flow, name, request)
            batch.errors.append(err)
            log.warning(
                "openflow.flow_mod_failed",
                dpid=self.datapath_id,
                xid=msg.xid,
                command=command,
                error=name,
                flow=str(flow),
            )
            return
        fut = self._pending.get(msg.xid)
        if fut is not None and not fut.done():
            fut.set_exception(RuntimeError(f"OpenFlow error {name} for request xid {msg.xid}"))
            return
        log.warning("openflow.error", dpid=self.datapath_id, xid=msg.xid, error=name)

    def _learn_port(self, port: Any, deleted: bool = False) -> tuple[str, int]:
        name = port.name.rstrip(b"\0").decode(errors="replace")
        if port.port_no > ofp.OFPP_MAX:  # LOCAL and other reserved ports are not ours to map
            return "", port.port_no
        if deleted:
            if self.ports.get(name) == port.port_no:
                del self.ports[name]
        else:
            self.ports[name] = port.port_no
        return name, port.port_no

    def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        gone = SwitchGone(f"switch {self.datapath_id:#x} disconnected")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(gone)
        with contextlib.suppress(Exception):
            self._writer.close()

    async def close(self) -> None:
        self._close()
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def connect(path: str, timeout: float = 5.0) -> Switch:
    """A connection of the agent's own to a bridge's management socket (`<bridge>.mgmt` in
    OVS's run directory, as ovs-ofctl makes one): flow-mods sent on it are the switch's like
    any others. OVS sends such a service connection no asynchronous messages (packet-ins,
    port-status) unless it asks for them, and it does not: its port map stays empty."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    sw = Switch(reader, writer)
    try:
        await sw.handshake(timeout, ports=False)
    except BaseException:
        await sw.close()
        raise
    return sw


def parse_listen(listen: str) -> tuple[str, str, int]:
    """ "tcp:HOST:PORT" | "unix:PATH" -> (kind, host-or-path, port)."""
    kind, _, rest = listen.partition(":")
    if kind == "unix" and rest:
        return ("unix", rest, 0)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        return ("tcp", host.strip("[]") or "127.0.0.1", int(port or 6653))
    raise ValueError(f"listen address {listen!r}: expected tcp:HOST:PORT or unix:PATH")


def listening_socket(listen: str, netns: str | None = None) -> socket.socket:
    """A bound, listening socket; inside network namespace `netns` when given."""
    kind, where, port = parse_listen(listen)

    def make() -> socket.socket:
        if kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(where)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(where)
        else:
            family = socket.AF_INET6 if ":" in where else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((where, port))
        sock.listen(16)
        sock.setblocking(False)
        return sock

    return socket_in_netns(make, netns)


def socket_in_netns(make: Callable[[], socket.socket], netns: str | None) -> socket.socket:
    """`make()` run inside network namespace `netns` (as is, when None).

    It runs on a short-lived thread that enters the namespace, so the agent's own thread never
    changes namespace, yet the socket keeps serving inside it.
    """
    if netns is None:
        return make()
    result: list[socket.socket | BaseException] = []

    def in_netns() -> None:
        try:
            _setns(f"/var/run/netns/{netns}")
            result.append(make())
        except BaseException as exc:  # handed back to the caller's thread
            result.append(exc)

    t = threading.Thread(target=in_netns, name=f"netns-{netns}")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class OpenFlowServer:
    """Accepts switch connections; one `Switch` each, handed to the handler after the handshake."""

    def __init__(self, listen: str, handler: SwitchHandler, *, netns: str | None = None) -> None:
        self.listen = listen
        self.netns = netns
        self.handler = handler
        self.switches: set[Switch] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = listening_socket(self.listen, self.netns)
        if sock.family == socket.AF_UNIX:
            self._server = await asyncio.start_unix_server(self._accept, sock=sock)
        else:
            self._server = await asyncio.start_server(self._accept, sock=sock)
        log.info("openflow.listening", listen=self.listen, netns=self.netns)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for sw in list(self.switches):
            await sw.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # a flow-mod batch and its barrier must not wait out Nagle + delayed ACK (~40 ms)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sw = Switch(reader, writer, self.handler)
        try:
            await sw.handshake()
            self.switches.add(sw)
            log.info("openflow.switch_connected", dpid=f"{sw.datapath_id:#x}", ports=len(sw.ports))
            await self.handler.switch_connected(sw)
            await sw.closed.wait()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.warning("openflow.handshake_failed", peer=sw.peer, error=str(exc))
        except Exception:
            log.exception("openflow.switch_failed", dpid=f"{sw.datapath_id:#x}")
        finally:
            await sw.close()
            if sw in self.switches:
                self.switches.discard(sw)
                log.info("openflow.switch_disconnected", dpid=f"{sw.datapath_id:#x}")
                self.handler.switch_disconnected(sw)
            self._tasks.discard(task)  # type: ignore[arg-type]
