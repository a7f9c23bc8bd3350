"""Bring a switch's flows to the desired set: read ours back by cookie, send only the difference.

Level-triggered, like a Kubernetes controller: desired flows in, the smallest set of flow-mods
out. A batch of more than SPREAD_FLOW_MODS is spread over the switch connection and more of the
agent's own (`helpers`, kept open by their owner): ovs-vswitchd reads at most 50 messages of a
connection per turn of its main loop, and a turn costs more the more ports the bridge has (~4-8 ms
at 1,000 ports here), so tens of thousands of flow-mods on one connection spend most of their time
waiting for turns, and even a few hundred wait for several. After a (re)connect the whole set of
our flows (cookie tag) is read back and diffed; after a goal-state delta only the flows of the
touched cookies are read back. Unchanged flows are never
touched, stale ones are deleted one by one (DELETE_STRICT on cookie, table, priority and match),
and flows without our cookie tag are left alone. A barrier closes every batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from alcor.agent import fastcodec
from alcor.agent.ir import COOKIE_TAG, COOKIE_TAG_MASK, Flow, Key
from alcor.agent.openflow import FlowModError, Switch

log = structlog.get_logger("alcor.agent.reconcile")


@dataclass
class Report:
    """What one reconcile did."""

    full: bool
    read_back: int = 0
    adds: int = 0
    deletes: int = 0
    errors: list[FlowModError] = field(default_factory=list)
    seconds: float = 0.0
    connections: int = 1  # the flow-mods went over this many connections

    @property
    def failed_cookies(self) -> set[int]:
        return {e.flow.cookie for e in self.errors if e.flow is not None}


def plan(
    desired: Mapping[Key, Flow], installed: Mapping[Key, Flow], scope: Collection[Key] | None = None
) -> tuple[list[Flow], list[Flow]]:
    """(adds, deletes) that turn `installed` into `desired`, over `scope` keys or all of them.

    A flow whose key is installed with other actions, cookie or timeouts is re-added: OFPFC_ADD
    on the same (table, priority, match) replaces it atomically.
    """
    if scope is None:
        if not installed:  # a switch with none of ours: everything, without a key's hash
            return list(desired.values()), []
        # identity first: flows matched on read-back are the desired objects themselves
        adds = [
            f
            for k, f in desired.items()
            if (h := installed.get(k)) is not f and (h is None or h != f)
        ]
        deletes = [f for k, f in installed.items() if k not in desired]
        return adds, deletes
    adds, deletes = [], []
    for k in scope:
        want, have = desired.get(k), installed.get(k)
        if want is not None and want != have:
            adds.append(want)
        elif want is None and have is not None:
            deletes.append(have)
    return adds, deletes


def _after(
    before: list[Flow], adds: list[Flow], deletes: list[Flow], errors: list[FlowModError]
) -> list[Flow]:
    """The flows read back before `adds` and `deletes` were applied, as the switch holds them
    after: an add replaces the flow of its key, a strict delete removes the flow of its key and
    cookie; a flow-mod the switch rejected changed nothing."""
    failed = {id(e.flow) for e in errors if e.flow is not None}
    now = {f.key: f for f in before}
    for f in adds:
        if id(f) not in failed:
            now[f.key] = f
    for f in deletes:
        have = now.get(f.key)
        if id(f) not in failed and have is not None and have.cookie == f.cookie:
            del now[f.key]
    return list(now.values())


# more flow-mods than this (two turns of OVS's loop on one connection) go over several
SPREAD_FLOW_MODS = 100
# a bulk batch (a start, an OVS restart) is this big or more
BULK_FLOW_MODS = 4000
READ_BACK_COOKIES = 32  # a partial reconcile reads back the touched resources up to this many

# More connections to the switch for a big batch; [] when there are none (the batch then goes on
# the main connection alone). Their owner keeps them open between batches and closes them.
Helpers = Callable[[], Awaitable[list[Switch]]]


class Reconciler:
    """One per switch connection; `installed` is the switch's state as last read or confirmed."""

    def __init__(
        self,
        switch: Switch,
        *,
        barrier_timeout: float = 60.0,
        signatures: fastcodec.SigCache | None = None,
        helpers: Helpers | None = None,
    ) -> None:
        self.switch = switch
        self.helpers = helpers
        # kept by the owner across connections, so a reconnect does not re-encode every flow
        self.signatures: fastcodec.SigCache = signatures if signatures is not None else {}
        self.installed: dict[Key, Flow] | None = None  # unknown until the first full read-back
        self.barrier_timeout = barrier_timeout

    async def read_back(self) -> list[bytes]:
        """Our flows on the switch, as flow-stats pages (for full; none: a from-scratch start)."""
        return await self.switch.flow_stats_raw(cookie=COOKIE_TAG, cookie_mask=COOKIE_TAG_MASK)

    async def holds_none(self) -> bool:
        """Whether the switch holds none of our flows (one aggregate count, no read-back)."""
        return await self.switch.flow_count(COOKIE_TAG, COOKIE_TAG_MASK) == 0

    async def full(self, desired: Mapping[Key, Flow], pages: list[bytes] | None = None) -> Report:
        """Read back all our flows (or take `pages`, just read back) and send the difference."""
        start = time.perf_counter()
        if pages is None:
            pages = await self.read_back()
        read = time.perf_counter()
        with fastcodec.gc_paused():
            same, other = fastcodec.match_read_back(pages, desired.values(), self.signatures)
            matched = time.perf_counter()
            self.installed = {f.key: f for f in same}
            self.installed.update((f.key, f) for f in other)
            adds, deletes = plan(desired, self.installed)
            # none of the desired flows was there (a start, an OVS restart): all of them go
            # (a copy, as sent: the copy reuses the dict's hashes)
            everything = dict(desired) if len(adds) == len(desired) and not same else None
        report = Report(full=True, read_back=len(same) + len(other))
        log.debug(
            "reconcile.read_back",
            read_ms=round((read - start) * 1000, 1),
            match_ms=round((matched - read) * 1000, 1),
            plan_ms=round((time.perf_counter() - matched) * 1000, 1),
            pages=len(pages),
            decoded=len(other),
        )
        await self._send(adds, deletes, report, everything)
        report.seconds = time.perf_counter() - start
        return report

    async def stream(self, chunks: Iterable[list[Flow]]) -> tuple[Report, list[Flow]]:
        """Send the flows of a compile from scratch as it yields them, to a switch that holds
        none of ours (read back just before): each chunk is spread over the connections and
        written while the next one is compiled (ovs-vswitchd, on the other core, starts on the
        first chunk at once), and one barrier per connection closes them all. Flows naming a
        meter are held back and returned (their meters go first: added once the compile said
        which). `installed` is left unknown: `finish` records it from the desired set."""
        start = time.perf_counter()
        report = Report(full=True)
        held: list[Flow] = []
        lanes = [self.switch, *await self._live_helpers()]
        report.connections = len(lanes)
        batches = [sw.open_batch() for sw in lanes]
        lost: set[int] = set()  # helpers that went away: their flows go on the main connection
        sent = 0
        try:
            with fastcodec.gc_paused():
                for chunk in chunks:
                    ready = [f for f in chunk if f.meter is None]
                    if len(ready) != len(chunk):
                        held += [f for f in chunk if f.meter is not None]
                    for i, (sw, batch) in enumerate(zip(lanes, batches, strict=True)):
                        part = ready[i :: len(lanes)]
                        if not part:
                            continue
                        if i not in lost:
                            try:
                                sw.write_adds(batch, part, self.signatures)
                                continue
                            except ConnectionError:
                                if sw is self.switch:
                                    raise
                                lost.add(i)
                        lanes[0].write_adds(batches[0], part, self.signatures)
                    sent += len(ready)
                    await asyncio.sleep(0)  # the writes go out; the next chunk is compiled
                results = await asyncio.gather(
                    *(
                        sw.close_batch(b, self.barrier_timeout)
                        for sw, b in zip(lanes, batches, strict=True)
                    ),
                    return_exceptions=True,
                )
                for i, result in enumerate(results):
                    if isinstance(result, BaseException):
                        if i == 0 or not isinstance(result, ConnectionError):
                            raise result
                        lost.add(i)
                    else:
                        report.errors.extend(result)
                for i in sorted(lost):  # again on the main connection, once it has the rest
                    again = [f for _c, f, _m in batches[i].xids.values() if f is not None]
                    log.info("reconcile.helper_lost", flow_mods=len(again))
                    report.errors.extend(
                        await self.switch.flow_mods(
                            again, (), self.barrier_timeout, self.signatures
                        )
                    )
        finally:
            for sw, b in zip(lanes, batches, strict=True):
                sw.forget_batch(b)
        report.adds = sent
        report.seconds = time.perf_counter() - start
        return report, held

    async def finish(
        self,
        desired: Mapping[Key, Flow],
        report: Report,
        late_adds: list[Flow],
    ) -> None:
        """After `stream`: the flows that replace a streamed one (a merge of several resources'
        flows) and those held back, once the stream's barriers confirmed it; then what the
        switch holds is recorded."""
        start = time.perf_counter()
        streamed = report.errors
        later = Report(full=True)
        self.installed = {}
        await self._send(late_adds, [], later)
        # everything desired, but what the switch rejected (unknown: read back next time)
        installed = dict(desired)
        for e in [*streamed, *later.errors]:
            if e.flow is not None:
                installed.pop(e.flow.key, None)
        self.installed = installed
        report.adds += later.adds
        report.errors = streamed + later.errors
        report.seconds += time.perf_counter() - start

    async def partial(
        self, desired: Mapping[Key, Flow], keys: Collection[Key], cookies: Collection[int]
    ) -> Report:
        """Reconcile the flows under `keys` (changed in the desired set) after reading back the
        switch's flows of `cookies` (the resources those keys belong to, before and after), when
        they are few: a change that touches hundreds of resources (a rule naming a new remote
        group reaches every member) is planned against what the agent installed, without a
        read-back request per resource. Drift is repaired by full read-backs (reconnects,
        `flow_resync_interval`)."""
        if self.installed is None:
            return await self.full(desired)
        start = time.perf_counter()
        if len(cookies) > READ_BACK_COOKIES:
            cookies = ()
        installed = self.installed
        report = Report(full=False)
        cookie_set = set(cookies)
        ahead: list[Flow] | None = None
        if cookies:
            adds, deletes = plan(desired, installed, keys)
            if len(adds) + len(deletes) <= SPREAD_FLOW_MODS:
                # One round trip, not two (each waits for a turn of ovs-vswitchd's main loop,
                # several ms at 1,000 ports): the read-back goes first on the connection, the
                # flow-mods planned against what the agent installed right behind it, one
                # barrier for both. The read-back shows the flows as they were before those
                # flow-mods; drift it finds (rare) is repaired by a second batch below.
                reading = self.switch.flow_stats_ahead(cookies)
                try:
                    await self._send(adds, deletes, report)
                    before = await reading.flows()  # answered before the barrier was
                finally:
                    reading.forget()
                ahead = _after(before, adds, deletes, report.errors)
                report.read_back = len(before)
        truth = ahead if ahead is not None else []
        if ahead is None and cookies:
            truth = await self.switch.flow_stats_many(cookies)
            report.read_back = len(truth)
        for f in truth:
            installed[f.key] = f
        # a cached flow of a read-back cookie that the switch no longer has is gone
        seen = {f.key for f in truth}
        scope = set(keys) | seen
        for k in list(scope):
            have = installed.get(k)
            if have is not None and have.cookie in cookie_set and k not in seen:
                del installed[k]
        adds, deletes = plan(desired, installed, scope)
        if ahead is None:
            await self._send(adds, deletes, report)
        elif adds or deletes:  # drift under the touched cookies
            repair = Report(full=False)
            await self._send(adds, deletes, repair)
            report.adds += repair.adds
            report.deletes += repair.deletes
            report.errors = report.errors + repair.errors
        report.seconds = time.perf_counter() - start
        return report

    async def _send(
        self,
        adds: list[Flow],
        deletes: list[Flow],
        report: Report,
        by_key: Mapping[Key, Flow] | None = None,
    ) -> None:
        """Send the flow-mods and record what the switch now holds; `by_key`: the adds are
        exactly its flows (a switch that held none of the desired set)."""
        assert self.installed is not None
        report.adds, report.deletes = len(adds), len(deletes)
        if not adds and not deletes:
            return
        if len(adds) + len(deletes) > SPREAD_FLOW_MODS:
            # the cyclic GC held off over the whole batch, not each chunk of it: every
            # re-enable would collect the chunk's young objects again (~10 ms each at 70,000
            # flows); the owner collects once idle after a bulk batch
            with fastcodec.gc_paused():
                errors = await self._flow_mods(adds, deletes, report)
        else:
            errors = await self._flow_mods(adds, deletes, report)
        report.errors = errors
        failed = {e.flow.key for e in errors if e.flow is not None}
        installed = self.installed
        if by_key is not None and not failed:  # all of them, as the desired set has them
            installed.update(by_key)  # (a dict's update reuses its hashes: keys cost ~1 µs)
        elif not failed:
            for f in adds:
                installed[f.key] = f
        else:
            for f in adds:
                if f.key in failed:
                    installed.pop(f.key, None)  # unknown: read back next time
                else:
                    installed[f.key] = f
        for f in deletes:
            installed.pop(f.key, None)

    async def _flow_mods(
        self, adds: list[Flow], deletes: list[Flow], report: Report
    ) -> list[FlowModError]:
        helpers: list[Switch] = []
        if len(adds) + len(deletes) > SPREAD_FLOW_MODS:
            helpers = await self._live_helpers()
        if not helpers:
            return await self.switch.flow_mods(
                adds, deletes, timeout=self.barrier_timeout, signatures=self.signatures
            )
        conns = [self.switch, *helpers]
        report.connections = len(conns)
        # every add confirmed (each connection's barrier) before any delete: a flow that
        # takes over from a stale one is in place before the stale one goes
        errors: list[FlowModError] = []
        for batch, kind in ((adds, "adds"), (deletes, "deletes")):
            parts = [batch[i :: len(conns)] for i in range(len(conns))]
            results = await asyncio.gather(
                *(self._send_part(sw, kind, part) for sw, part in zip(conns, parts, strict=True)),
                return_exceptions=True,
            )
            for sw, part, result in zip(conns, parts, results, strict=True):
                if isinstance(result, BaseException):
                    if sw is self.switch or not isinstance(result, ConnectionError):
                        raise result
                    # a helper went away: its share goes on the main connection
                    log.info("reconcile.helper_lost", error=str(result), flow_mods=len(part))
                    result = await self._send_part(self.switch, kind, part)
                errors.extend(result)
        return errors

    async def _live_helpers(self) -> list[Switch]:
        """The helper connections open now (none without a way to open them)."""
        if self.helpers is None:
            return []
        return [sw for sw in await self.helpers() if not sw.closed.is_set()]

    async def _send_part(self, sw: Switch, kind: str, part: list[Flow]) -> list[FlowModError]:
        if not part:
            return []
        if kind == "adds":
            return await sw.flow_mods(part, (), self.barrier_timeout, self.signatures)
        return await sw.flow_mods((), part, self.barrier_timeout, self.signatures)
