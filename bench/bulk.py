"""The bulk-cancel workload (issue 11 point 5): cancelling 100,000 scheduled
executions by query, while a worker process goes on claiming from another
queue.

On a fresh store: start ``--bulk-n`` executions on a queue no worker serves
(FILL_LANES start_activity calls in flight, group-committed), then start a
worker child on another queue and feed it one short activity (``stamp``)
every FEED_EVERY_S from this process. After a baseline window, run
``client.cancel_activities("TaskQueue = '<idle queue>'")`` and time it; it
must say it changed exactly ``--bulk-n``. Each fed activity reports when it
was scheduled and when the worker claimed it (the store's clock): claim
latency is the difference, taken for the activities scheduled during the
bulk cancel, and for those of the baseline window before it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

from bench import workloads as w
from bench.activities import noop, stamp
from bench.children import started, worker_argv
from bench.stores import StoreTarget
from errands.client import ActivityHandle, Client

IDLE_QUEUE = "bulk-idle"
"""Where the executions to cancel wait (no worker serves it)."""
STEADY_QUEUE = "bulk-steady"
"""The worker child's queue."""
FILL_LANES = 2_000
"""start_activity calls in flight while filling."""
FEED_EVERY_S = 0.01
"""How often the steady feed starts an activity (100 a second)."""
BASELINE_S = 3.0
"""The window before the bulk cancel whose claim latency is the baseline."""
WORKER_SLOTS = 100


@dataclass
class Feed:
    """The steady feed: one ``stamp`` activity every FEED_EVERY_S; each
    result is (scheduled, claimed) on the store's clock."""

    client: Client
    stamps: list[tuple[float, float]] = field(default_factory=list)
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)

    async def run(self) -> None:
        """Start one activity per tick until cancelled (ticks that fall
        behind are not made up: the rate stays at most 1 / FEED_EVERY_S)."""
        k = 0
        while True:
            began = time.perf_counter()
            handle = await self.client.start_activity(
                stamp,
                k,
                id=f"steady-{k}",
                task_queue=STEADY_QUEUE,
                start_to_close_timeout=w.TIMEOUT,
            )
            task = asyncio.ensure_future(self._collect(handle))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
            k += 1
            await asyncio.sleep(max(0.0, FEED_EVERY_S - (time.perf_counter() - began)))

    async def _collect(self, handle: ActivityHandle[list[float]]) -> None:
        try:
            scheduled, claimed = await handle.result()
            self.stamps.append((scheduled, claimed))
        except Exception as e:  # reported after the run
            self.errors.append(e)

    def latencies_ms(self, since: float, until: float) -> list[float]:
        """Claim latencies of the activities scheduled in [since, until]."""
        return [(c - s) * 1000 for s, c in self.stamps if since <= s <= until]


async def fill(client: Client, count: int) -> float:
    """Start ``count`` executions on IDLE_QUEUE; the seconds it took."""
    began = time.perf_counter()
    indexes = iter(range(count))

    async def lane() -> None:
        for i in indexes:  # shared: each index is taken by exactly one lane
            await client.start_activity(
                noop, i, id=f"idle-{i}", task_queue=IDLE_QUEUE, start_to_close_timeout=w.TIMEOUT
            )

    await asyncio.gather(*(lane() for _ in range(FILL_LANES)))
    return time.perf_counter() - began


async def bulk_cancel(store: StoreTarget, count: int, notes: list[str]) -> list[w.Figure]:
    """The workload on a fresh store (dropped afterwards); its figures."""
    url = store.url_for("bulk-cancel")
    try:
        client = await Client.connect(url)
        try:
            return await measure(client, url, count, notes)
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(store.drop, url)


async def measure(client: Client, url: str, count: int, notes: list[str]) -> list[w.Figure]:
    name = "bulk-cancel"
    fill_s = await fill(client, count)
    print(f"  filled {count:,} in {fill_s:.1f} s", file=sys.stderr)
    feed = Feed(client)
    async with started([worker_argv(url, STEADY_QUEUE, WORKER_SLOTS)]):
        feeding = asyncio.ensure_future(feed.run())
        try:
            await asyncio.sleep(1.0)  # warm up: connections, the worker's first claims
            base_from = time.time()
            await asyncio.sleep(BASELINE_S)
            base_until = began_at = time.time()
            began = time.perf_counter()
            changed = await client.cancel_activities(f"TaskQueue = '{IDLE_QUEUE}'")
            wall_s = time.perf_counter() - began
            ended_at = time.time()
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
        await asyncio.wait_for(asyncio.gather(*feed.pending), w.TIMEOUT.total_seconds())
    if feed.errors:
        raise RuntimeError(f"{len(feed.errors)} steady activities failed: {feed.errors[0]!r}")
    if changed != count:
        raise RuntimeError(f"cancel_activities said it changed {changed:,}, not {count:,}")
    left = await client.count_activities(
        f"TaskQueue = '{IDLE_QUEUE}' AND ExecutionStatus = 'Running'"
    )
    if left.count:
        raise RuntimeError(f"{left.count:,} executions still run after the bulk cancel")
    during = feed.latencies_ms(began_at, ended_at)
    before = feed.latencies_ms(base_from, base_until)
    if not during:
        raise RuntimeError("no steady activity was scheduled during the bulk cancel")
    notes.append(
        f"bulk-cancel: cancel_activities changed {changed:,} in {wall_s:.2f} s; "
        f"filled {count:,} scheduled executions in {fill_s:.1f} s; "
        f"{len(during)} steady activities scheduled during the cancel, {len(before)} before"
    )
    return [
        w.Figure(name, "wall time", wall_s, "s"),
        w.Figure(name, "rate", count / wall_s, "executions/s"),
        w.Figure(name, "claim latency p50 during", w.percentile(during, 50), "ms"),
        w.Figure(name, "claim latency p99 during", w.percentile(during, 99), "ms"),
        w.Figure(name, "claim latency max during", max(during), "ms"),
        w.Figure(name, "claim latency p99 before", w.percentile(before, 99), "ms"),
    ]
