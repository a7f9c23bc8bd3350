"""The agents' feedback: hello, resync and status reports on the controller queue, and digests.

`Feedback` consumes the controller queue on every broker a node uses, records each agent's
report in its `NodeState` (applied rev, digest, boot id), owes a snapshot to an agent that says
hello or saw a gap, writes the port states agents report back to the ports (acknowledging a
report only once what it carried is committed: it is said once), and compares agents' digests
with their goal state, owing a repair snapshot on a mismatch (docs/wire.md, "Messages node →
controller").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from alcor.db.store import Store
from alcor.southbound.goalstate import node_digest
from alcor.southbound.state import DispatchState, write_reports
from alcor.transport import Address, Delivery, Transport
from alcor.wire import WIRE_VERSION

if TYPE_CHECKING:
    from alcor.southbound.dispatcher import Metrics, Settings

log = structlog.get_logger("alcor.southbound")

PORT_STATES = ("ACTIVE", "ERROR", "DOWN")


class Pipeline(Protocol):
    """What feedback needs of the dispatcher it serves."""

    state: DispatchState
    store: Store
    transport: Transport
    settings: Settings
    metrics: Metrics

    def fence(self) -> bool: ...
    def kick(self) -> None: ...
    def between_batches(self) -> bool: ...
    def address(self, node_id: str) -> Address | None: ...


class Feedback:
    def __init__(
        self,
        pipeline: Pipeline,
        set_statuses: Callable[[dict[str, tuple[str, str]]], Awaitable[None]] | None,
        set_fip_statuses: Callable[[dict[str, tuple[str, str]]], Awaitable[None]] | None = None,
    ) -> None:
        self.p = pipeline
        self.set_statuses = set_statuses
        self.set_fip_statuses = set_fip_statuses
        self.verify: set[str] = set()  # nodes whose last report awaits a digest check
        # port → (status, name of the reporting node), the latest report winning, until written;
        # the same for floating IPs (gateway nodes' reports), written only when some came.
        self._port_updates: dict[str, tuple[str, str]] = {}
        self._fip_updates: dict[str, tuple[str, str]] = {}
        # Status reports not acknowledged yet: an agent reports a port's state once (wire.md), so
        # its message is acked only after the statuses it carried are committed; a crash before
        # that hands it back to the broker.
        self._held: list[Delivery] = []
        self._flush_now = asyncio.Event()
        self._subscribed: set[tuple[str, str, str]] = set()
        self._subs: list[Any] = []
        self._reports_written: dict[str, tuple[Any, ...]] = {}

    # -- consuming -----------------------------------------------------------------------------

    async def listen(self, address: Address) -> None:
        """Consume the controller queue on this node's broker (once per broker and exchange)."""
        key = (address.url, address.vhost, address.exchange)
        if key in self._subscribed:
            return
        self._subscribed.add(key)
        s = self.p.settings
        q = address.with_queue(s.controller_queue)
        try:
            self._subs.append(await self.p.transport.consume(q, self.on_message, s.feedback_prefetch))
        except Exception:
            self._subscribed.discard(key)
            log.exception("feedback.listen_failed", url=_safe(address.url), vhost=address.vhost)

    async def listen_all(self) -> None:
        s = self.p.settings
        await self.listen(Address(s.mq_url, s.mq_vhost, s.mq_exchange, ""))
        for node in list(self.p.state.topology.res["node"]):
            addr = self.p.address(node)
            if addr is not None:
                await self.listen(addr)

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.cancel()
            except Exception:
                log.exception("dispatch.unsubscribe_failed")
        self._subs.clear()
        self._subscribed.clear()

    async def on_message(self, delivery: Delivery) -> None:
        m = self.p.metrics
        m.agent_messages += 1
        try:
            msg = json.loads(delivery.body)
            if not isinstance(msg, dict) or msg.get("v") != WIRE_VERSION:
                raise ValueError(f"not a v{WIRE_VERSION} object")
            kind = msg.get("kind")
            node = msg.get("node_id")
            state = self.p.state
            if not isinstance(node, str) or node not in state.topology.res["node"]:
                raise ValueError(f"unknown node {node!r}")
            if kind == "hello":
                st = state.node(node)
                st.boot_id = str(msg.get("boot_id"))
                st.last_report = time.time()
                log.info(
                    "agent.hello", node=node, boot_id=st.boot_id, applied_rev=msg.get("applied_rev")
                )
                self.request_snapshot(node, "hello")
            elif kind == "resync":
                vpc = msg.get("vpc_id")
                log.info("agent.resync", node=node, applied_rev=msg.get("applied_rev"), vpc=vpc)
                if isinstance(vpc, str) and vpc in state.followed(node):
                    state.node(node).vpc_resync.add(vpc)  # that VPC's state only
                    self.p.kick()
                else:
                    self.request_snapshot(node, "gap")
            elif kind == "status":
                self.on_status(node, msg)
                if self.set_statuses is not None:
                    self._held.append(delivery)
                    if len(self._held) >= self.p.settings.status_flush_reports:
                        self._flush_now.set()
                    return  # acked by run() once written
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, TypeError) as e:
            m.agent_rejected += 1
            log.warning("feedback.rejected", error=str(e))
            await delivery.reject()
            return
        await delivery.ack()

    def on_status(self, node: str, msg: dict[str, Any]) -> None:
        applied = msg.get("applied_rev")
        dig = msg.get("digest")
        ports = msg.get("ports") or {}
        fips = msg.get("floating_ips") or {}
        if not isinstance(applied, int) or not isinstance(dig, str) or not isinstance(ports, dict):
            raise ValueError("status needs applied_rev, digest and ports")
        if not isinstance(fips, dict):
            raise ValueError("status floating_ips must be an object")
        state = self.p.state
        st = state.node(node)
        if st.applied_rev is not None and applied < st.applied_rev:
            # An older report than one already heard: it waited at a controller that was
            # deposed and handed it back to the queue. An agent's applied rev never goes back
            # (a restarted one gets a snapshot at the newest rev), so keep the newer one; the
            # port states it carries are still taken below.
            log.info("feedback.stale_report", node=node, applied_rev=applied, held=st.applied_rev)
        else:
            st.applied_rev, st.digest = applied, dig
            chains = msg.get("vpcs") or {}
            if not isinstance(chains, dict):
                raise ValueError("status vpcs must be an object")
            st.chains = {str(v): r for v, r in chains.items() if isinstance(r, int)}
        st.last_report = time.time()
        self.verify.add(node)
        if self.p.between_batches():
            self.verify_digests()
        # Whether the node hosts the port is checked where it is written, against the store: this
        # topology can be behind the agent (a controller that restarted replays the change log),
        # and a report, said once, must not be dropped for that.
        name = str(state.topology.res["node"][node].get("node_name") or "")
        for reported, pending in ((ports, self._port_updates), (fips, self._fip_updates)):
            for rid, status in reported.items():
                if status in PORT_STATES and isinstance(rid, str):
                    pending[rid] = (status, name)
        self.p.kick()

    def request_snapshot(self, node: str, reason: str) -> None:
        self.p.state.request_snapshot(node, reason)
        self.p.kick()

    # -- writing back --------------------------------------------------------------------------

    async def run(self) -> None:
        """Write reported port states back every `status_flush` seconds (or sooner, once
        `status_flush_reports` reports wait), then acknowledge the reports that carried them."""
        while True:
            try:
                await asyncio.wait_for(self._flush_now.wait(), self.p.settings.status_flush)
            except TimeoutError:
                pass
            self._flush_now.clear()
            if self.verify and self.p.between_batches():
                self.verify_digests()  # reports deferred while busy
            if not self.p.fence():
                continue  # not leading (for now): reports stay unacknowledged
            held, self._held = self._held, []
            batch, self._port_updates = self._port_updates, {}
            fips, self._fip_updates = self._fip_updates, {}
            if (batch or fips) and self.set_statuses is not None:
                try:
                    if batch:
                        await self.set_statuses(batch)
                    if fips and self.set_fip_statuses is not None:
                        await self.set_fip_statuses(fips)
                except Exception:
                    log.exception("ports.status_failed", count=len(batch), floating_ips=len(fips))
                    # Keep the reports (unacked) and retry at the next flush; a newer report
                    # received meanwhile wins.
                    for pending, written in ((self._port_updates, batch), (self._fip_updates, fips)):
                        for rid, report in written.items():
                            pending.setdefault(rid, report)
                    self._held[:0] = held
                    continue
                log.debug("ports.status_set", count=len(batch), floating_ips=len(fips),
                          reports=len(held))
            for d in held:
                await d.ack()
            if self.p.store.shared:
                try:
                    await self._write_reports()
                except Exception:
                    log.exception("dispatch.reports_failed")

    async def _write_reports(self) -> None:
        """On a shared store, each node's last agent report as this leader saw it, for the
        other controllers' views (GET /v2.0/alcor/nodes/{id} on any of them)."""
        rows = []
        for node, st in self.p.state.nodes.items():
            report = (st.applied_rev, st.digest_match, st.last_report)
            if st.last_report is not None and self._reports_written.get(node) != report:
                rows.append((node, st.applied_rev, None if st.digest_match is None
                             else int(st.digest_match), st.last_report))
                self._reports_written[node] = report
        if rows:
            await write_reports(self.p.store, rows)

    # -- digests -------------------------------------------------------------------------------

    def verify_digests(self) -> None:
        """Compare agents' digests with the goal state (only between batches: the topology is then
        the model at W, which is every node's goal at its sent_rev)."""
        s = self.p.settings
        state = self.p.state
        now = time.monotonic()
        busy = self.p.store.changes.last_rev > state.watermark
        later = []
        while self.verify:
            node = self.verify.pop()
            st = state.nodes.get(node)
            if st is None or st.applied_rev is None or st.digest is None or st.need_snapshot:
                continue
            if not (st.sent_rev <= st.applied_rev <= state.watermark):
                continue  # behind (more is on its way) or not comparable
            chains = st.chains or {}
            followed = state.followed(node)
            if any(not (sent <= chains.get(v, -1) <= state.watermark)
                   for v, sent in followed.items()):
                continue  # a VPC chain it follows is behind, or not comparable
            # The goal moves with the node's chain and with every VPC chain it follows.
            at = (st.sent_rev, tuple(sorted(followed.items())))
            if st.expected is None or st.expected[0] != at:
                if busy and (
                    now - st.verified_at < s.verify_interval
                    or time.monotonic() - now > s.verify_budget
                ):
                    later.append(node)
                    continue
                st.expected = (at, node_digest(state.topology, node))
                st.verified_at = now
            match = st.expected[1] == st.digest
            if match != st.digest_match:
                log.info("node.sync", node=node, in_sync=match, applied_rev=st.applied_rev)
            st.digest_match = match
            if not match:
                self.p.metrics.digest_mismatches += 1
                now = time.monotonic()
                if now - st.last_repair >= s.repair_interval:
                    st.last_repair = now
                    log.warning("node.digest_mismatch", node=node, applied_rev=st.applied_rev)
                    self.request_snapshot(node, "digest")
        self.verify.update(later)


def _safe(url: str) -> str:
    """A broker URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
