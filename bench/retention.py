"""The retention workload (issue 5 point 7): claims stay as fast with a
million closed executions in the table as with none, and ``store.prune()``
removes them at a measured rate.

For 0 and for ``--closed-rows`` closed executions, each on a fresh store:
run one activity (the template), stop the worker, insert the closed rows with
SQL in bulk (copies of the template, closed a day ago), then measure

- claim throughput: ``--retention-n`` trivial activities through a worker in
  this process, ``--in-flight`` lanes, the median of RUNS runs (the stores
  take turns);
- claim latency: start ``--claim-rounds`` tasks on a queue no worker serves,
  then time ``store.claim_batch(max_tasks=1)`` calls one at a time (the
  stores take turns every CLAIM_BLOCK calls);
- with the closed rows only: ``store.prune()`` of them (its batches of 1000).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field

from bench import workloads as w
from bench.activities import noop
from bench.stores import StoreTarget, fill_closed
from errands.client import Client

RUNS = 5
"""Throughput runs per store; the median is reported."""
CLOSED_AGO_S = 86_400.0
"""The newest inserted row closed this long before the fill."""
PRUNE_MARGIN_S = 3_600.0
"""prune() deletes what closed before (fill time - this): the inserted rows only."""
CLAIM_BLOCK = 100
"""Claims timed on one store before the other store's turn."""
THROUGHPUT_RATIO = ">= 0.8"
CLAIM_RATIO = "< 1.2"
TASK_QUEUE = "bench"
CLAIM_QUEUE = "bench-claim"


@dataclass
class Measured:
    """What one store (with ``rows`` closed executions) measured."""

    rows: int
    url: str
    client: Client
    template_run_id: str = ""
    fill_s: float = 0.0
    filled_at: float = 0.0
    rates: list[float] = field(default_factory=list)  # activities/s, one per run
    claim_p50_ms: float = 0.0
    pruned: int = 0
    prune_s: float = 0.0

    @property
    def throughput(self) -> float:
        return statistics.median(self.rates)


async def prepare(store: StoreTarget, m: Measured, in_flight: int) -> None:
    """Run the template activity on the fresh store, then (its worker
    stopped) insert the closed rows."""
    async with w.running_worker(
        m.client, m.url, TASK_QUEUE, child=False, slots=in_flight, pool=None
    ):
        handle = await m.client.start_activity(
            noop, 0, id="template", task_queue=TASK_QUEUE, start_to_close_timeout=w.TIMEOUT
        )
        await handle.result()
    assert handle.run_id is not None
    m.filled_at = time.time()
    began = time.perf_counter()
    if m.rows:
        newest = m.filled_at - CLOSED_AGO_S
        await asyncio.to_thread(fill_closed, store.kind, m.url, m.rows, handle.run_id, newest)
    m.fill_s = time.perf_counter() - began


async def throughput_run(m: Measured, run: int, n: int, in_flight: int) -> None:
    """One throughput run on ``m``'s store, with a worker of its own."""
    async with w.running_worker(
        m.client, m.url, TASK_QUEUE, child=False, slots=in_flight, pool=None
    ):
        await w.warm_up(m.client, TASK_QUEUE)
        elapsed = await w.timed_run(m.client, TASK_QUEUE, n, in_flight, prefix=f"run{run}")
    m.rates.append(n / elapsed)
    print(f"  {m.rows:,} closed rows, run {run + 1}: {n / elapsed:,.0f}/s", file=sys.stderr)


async def prune(m: Measured) -> None:
    """Time ``store.prune()`` of the inserted rows (and only those)."""
    began = time.perf_counter()
    m.pruned = await m.client.store.prune(
        m.client.namespace, m.filled_at - PRUNE_MARGIN_S, batch=1000
    )
    m.prune_s = time.perf_counter() - began
    if m.pruned != m.rows:
        raise RuntimeError(f"prune() removed {m.pruned} rows, not the {m.rows} inserted")


async def measure(
    store: StoreTarget, found: list[Measured], n: int, in_flight: int, claims: int
) -> None:
    """Prepare the stores, then measure them: the throughput runs take turns
    between the stores (so a change of machine load hits both alike), then
    the claims (blocks of CLAIM_BLOCK, taking turns too), then prune."""
    for m in found:
        await prepare(store, m, in_flight)
    for run in range(RUNS):
        for m in found:
            await throughput_run(m, run, n, in_flight)
    times_ms: dict[int, list[float]] = {m.rows: [] for m in found}
    for m in found:
        await w.start_claimable(m.client, CLAIM_QUEUE, claims)
    for first in range(0, claims, CLAIM_BLOCK):
        for m in found:
            block = min(CLAIM_BLOCK, claims - first)
            times_ms[m.rows] += await w.claim_times(m.client, CLAIM_QUEUE, block)
    for m in found:
        m.claim_p50_ms = w.percentile(times_ms[m.rows], 50)
    for m in found:
        if m.rows:
            await prune(m)


async def retention(
    store: StoreTarget, closed_rows: int, n: int, in_flight: int, claims: int
) -> list[w.Figure]:
    """Measure a fresh store with no closed rows and one with ``closed_rows``
    (each dropped afterwards); the figures side by side and as ratios."""
    found: list[Measured] = []
    try:
        for rows in dict.fromkeys((0, closed_rows)):
            url = store.url_for(f"retention-{rows}")
            try:
                found.append(Measured(rows, url, await Client.connect(url)))
            except BaseException:
                await asyncio.to_thread(store.drop, url)
                raise
        await measure(store, found, n, in_flight, claims)
    finally:
        for m in found:
            try:
                await m.client.close()
            finally:
                await asyncio.to_thread(store.drop, m.url)
    name = "retention"
    figures = [
        w.Figure(name, f"throughput, {m.rows:,} closed rows", m.throughput, "activities/s")
        for m in found
    ]
    figures += [
        w.Figure(name, f"claim_batch p50, {m.rows:,} closed rows", m.claim_p50_ms, "ms")
        for m in found
    ]
    if len(found) == 2:
        empty, full = found
        figures += [
            w.Figure(
                name,
                f"throughput {full.rows:,} / 0",
                full.throughput / empty.throughput,
                "x",
                THROUGHPUT_RATIO,
            ),
            w.Figure(
                name,
                f"claim_batch p50 {full.rows:,} / 0",
                full.claim_p50_ms / empty.claim_p50_ms,
                "x",
                CLAIM_RATIO,
            ),
            w.Figure(name, f"fill {full.rows:,} closed rows (setup)", full.fill_s, "s"),
            w.Figure(name, f"prune {full.pruned:,} rows", full.pruned / full.prune_s, "rows/s"),
            w.Figure(name, "prune wall time", full.prune_s, "s"),
        ]
    return figures
