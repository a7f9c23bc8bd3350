"""Prometheus metrics: API latency observed per request, and the other modules' counters read at scrape.

    m = Metrics()
    m.bind(kernel)
    m.observe_request("GET", "/v2.0/ports", 200, 0.004)   # the API's error middleware calls this
    body, content_type = m.render(request.headers.get("Accept", ""))

Each kernel gets its own `CollectorRegistry` (no process-wide default registry), so two controllers
in one test process never mix their numbers. The dispatcher, the agent stream and the datapath keep
their own plain counters; `StateCollector` reads them when Prometheus scrapes, so those modules need
no metrics code and a module that is not loaded simply exports nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from alcor.agent.stream import AgentStream, StreamModule
from alcor.db.backends import StoreModule
from alcor.southbound import SouthboundModule
from alcor.southbound.dispatcher import Dispatcher
from alcor.transport import Transport

if TYPE_CHECKING:
    from alcor.agent.datapath import Datapath
    from alcor.kernel import Kernel

# Buckets for API latency: the store answers in tens of microseconds, a bulk create in tens of ms.
API_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The dispatcher's Metrics fields exported as counters (name suffix, help).
DISPATCHER_COUNTERS = {
    "batches": "Dispatcher cycles that sent at least one change",
    "changes": "Change-log rows placed",
    "messages": "Messages published to nodes (deltas and snapshots)",
    "ops": "Resource operations published to nodes",
    "snapshots": "Snapshots sent to nodes",
    "publish_failures": "Messages the broker did not confirm",
    "agent_messages": "Messages received from agents (hello, status, resync)",
    "agent_rejected": "Agent messages dropped as malformed",
    "digest_mismatches": "Agent digests that did not match the goal state",
}
DATAPATH_COUNTERS = {
    "reconciles": ("alcor_agent_reconciles_total", "Reconciles of the switch against the goal state"),
    "full": ("alcor_agent_full_reconciles_total", "Reconciles that read back every flow"),
    "flow_mods": ("alcor_agent_flow_mods_total", "Flow adds and deletes sent to the switch"),
    "packet_in": ("alcor_agent_packet_in_total", "Packet-ins from the switch"),
    "arp_packet_in": ("alcor_agent_arp_packet_in_total", "ARP packet-ins (the datapath should answer ARP)"),
    "router_advertisements": ("alcor_agent_router_advertisements_total",
                              "IPv6 router advertisements sent to local ports"),
    "dhcp_packet_in": ("alcor_agent_dhcp_packet_in_total", "DHCP requests punted by local ports' DHCP flows"),
}


def datapath_of(kernel: Kernel) -> Datapath | None:
    """The agent's Datapath, when this process runs one."""
    # Imported here: the operator's commands import this package and must start without os-ken.
    from alcor.agent.datapath import DatapathModule

    return kernel.get(DatapathModule).datapath if kernel.has(DatapathModule) else None


def stream_of(kernel: Kernel) -> AgentStream | None:
    return kernel.get(StreamModule).stream if kernel.has(StreamModule) else None


def dispatcher_of(kernel: Kernel) -> Dispatcher | None:
    return kernel.get(SouthboundModule).dispatcher if kernel.has(SouthboundModule) else None


def transport_of(kernel: Kernel) -> Transport | None:
    """The southbound's transport, or the rabbitmq plugin's where no southbound runs (an agent)."""
    if kernel.has(SouthboundModule):
        return kernel.get(SouthboundModule).transport
    return kernel.get(Transport) if kernel.has(Transport) else None


def flows_installed(dp: Any) -> int | None:
    """Flows the agent believes are on the switch (as last read back or confirmed)."""
    count = getattr(dp, "flows_installed", None)
    if count is not None:
        return int(count() if callable(count) else count)
    reconciler = getattr(dp, "_reconciler", None)  # until the datapath exports the count itself
    installed = getattr(reconciler, "installed", None)
    return None if installed is None else len(installed)


class StateCollector:
    """Reads the kernel's modules at scrape time."""

    def __init__(self) -> None:
        self.kernel: Kernel | None = None  # set when the kernel starts the ops module

    def describe(self) -> list[Metric]:
        return []  # metrics depend on which modules are loaded; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        k = self.kernel
        if k is None:
            return
        last_rev = None
        if k.has(StoreModule):
            changes = k.get(StoreModule).store.changes
            last_rev = changes.last_rev
            yield GaugeMetricFamily("alcor_changelog_rev", "Newest rev in the change log", value=last_rev)
            yield GaugeMetricFamily("alcor_changelog_horizon", "Rows at or below this rev were compacted",
                                    value=changes.horizon)
        d = dispatcher_of(k)
        if d is not None:
            yield from self._dispatcher(d, last_rev)
        transport = transport_of(k)
        if transport is not None and hasattr(transport, "published"):
            yield CounterMetricFamily("alcor_mq_published", "Messages the broker confirmed",
                                      value=transport.published)
            yield CounterMetricFamily("alcor_mq_publish_failed", "Messages the broker did not confirm",
                                      value=getattr(transport, "failed", 0))
        stream = stream_of(k)
        if stream is not None:
            yield from self._stream(stream)
        dp = datapath_of(k)
        if dp is not None:
            yield from self._datapath(dp)

    def _dispatcher(self, d: Any, last_rev: int | None) -> Iterator[Metric]:
        # 1 on the controller that dispatches (one of them), with the epoch it was elected with.
        yield GaugeMetricFamily("alcor_southbound_leader", "1 while this controller dispatches",
                                value=1 if d.epoch else 0)
        yield GaugeMetricFamily("alcor_southbound_epoch", "Leader epoch this controller dispatches "
                                "with (0 while standing by)", value=d.epoch)
        yield GaugeMetricFamily("alcor_southbound_watermark", "Rev up to which changes were delivered",
                                value=d.watermark)
        if last_rev is not None:
            yield GaugeMetricFamily("alcor_southbound_backlog_revs",
                                    "Change-log revs not yet delivered (rev - watermark)",
                                    value=max(0, last_rev - d.watermark))
        for name, help_text in DISPATCHER_COUNTERS.items():
            yield CounterMetricFamily(f"alcor_southbound_{name}", help_text, value=getattr(d.metrics, name))
        names = {nid: body.get("node_name", "") for nid, body in d.topology.res["node"].items()}
        goal = GaugeMetricFamily("alcor_southbound_node_goal_rev",
                                 "Rev of the last message the broker confirmed for the node",
                                 labels=["node_id", "node_name"])
        applied = GaugeMetricFamily("alcor_southbound_node_applied_rev",
                                    "Rev the node's agent last reported applied", labels=["node_id", "node_name"])
        lag = GaugeMetricFamily("alcor_southbound_node_lag_revs",
                                "Revs sent to the node but not yet reported applied (goal - applied)",
                                labels=["node_id", "node_name"])
        in_sync = GaugeMetricFamily("alcor_southbound_node_in_sync",
                                    "1 when the node applied its goal and its digest matches",
                                    labels=["node_id", "node_name"])
        pending = GaugeMetricFamily("alcor_southbound_node_snapshot_pending",
                                    "1 while a snapshot is owed to the node", labels=["node_id", "node_name"])
        for nid, st in d.nodes.items():
            labels = [nid, names.get(nid, "")]
            goal.add_metric(labels, st.sent_rev)
            pending.add_metric(labels, int(st.need_snapshot))
            if st.applied_rev is not None:
                applied.add_metric(labels, st.applied_rev)
            # A node that never reported is behind by everything it was sent.
            lag.add_metric(labels, max(0, st.sent_rev - (st.applied_rev or 0)))
            sync = d.node_sync(nid)
            in_sync.add_metric(labels, int(bool(sync.get("in_sync"))))
        yield from (goal, applied, lag, in_sync, pending)
        latencies = list(d.metrics.latencies)
        if latencies:
            latencies.sort()
            q = GaugeMetricFamily("alcor_southbound_delivery_seconds",
                                  "Commit to broker-confirmed time of recent changes", labels=["quantile"])
            for quantile in (0.5, 0.9, 0.99):
                q.add_metric([str(quantile)], latencies[min(len(latencies) - 1, int(quantile * len(latencies)))])
            yield q

    def _stream(self, stream: Any) -> Iterator[Metric]:
        model = stream.model
        yield GaugeMetricFamily("alcor_agent_applied_rev", "Rev of the goal state the agent applied",
                                value=model.applied_rev)
        yield GaugeMetricFamily("alcor_agent_awaiting_snapshot", "1 while the agent waits for a snapshot",
                                value=int(bool(getattr(model, "awaiting_snapshot", False))))
        family = CounterMetricFamily("alcor_agent_stream_messages", "Southbound messages by outcome",
                                     labels=["outcome"])
        for name, value in dataclasses.asdict(stream.counters).items():
            family.add_metric([name], value)
        yield family

    def _datapath(self, dp: Any) -> Iterator[Metric]:
        counters = getattr(dp, "counters", {}) or {}
        for key, (name, help_text) in DATAPATH_COUNTERS.items():
            if key in counters:
                yield CounterMetricFamily(name, help_text, value=counters[key])
        installed = flows_installed(dp)
        if installed is not None:
            yield GaugeMetricFamily("alcor_agent_flows_installed", "Flows of ours on the switch",
                                    value=installed)
        connected = getattr(dp, "connected", None)
        if connected is not None:
            yield GaugeMetricFamily("alcor_agent_switch_connected", "1 while the switch is connected",
                                    value=int(connected.is_set()))
        report = getattr(dp, "last_report", None)
        if report is not None:
            yield GaugeMetricFamily("alcor_agent_last_reconcile_seconds",
                                    "Duration of the last reconcile", value=report.seconds)
        oam = getattr(dp, "oam_counters", None)
        if oam:
            family = CounterMetricFamily("alcor_agent_oam_messages", "Zeta OAM messages by outcome",
                                         labels=["outcome"])
            for outcome, value in oam.items():
                family.add_metric([outcome], value)
            yield family
        dhcp = getattr(getattr(dp, "dhcp", None), "counters", None)
        if dhcp:
            family = CounterMetricFamily("alcor_agent_dhcp_messages",
                                         "DHCP requests from local ports, by outcome",
                                         labels=["outcome"])
            for outcome, value in dhcp.items():
                family.add_metric([outcome], value)
            yield family


class Metrics:
    """The kernel's registry: API request latency plus everything `StateCollector` reads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "alcor_api_request_duration_seconds", "HTTP API request latency by route and status",
            ["method", "route", "status"], buckets=API_BUCKETS, registry=self.registry)
        self.state = StateCollector()
        self.registry.register(self.state)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def bind(self, kernel: Kernel) -> None:
        self.state.kernel = kernel

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).observe(seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition the scraper asked for (Accept: OpenMetrics or the text format)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

