"""The workloads. Each takes a connected client and the task queue its
worker serves, and returns the figures it measured. The worker runs async
activities on its event loop ("1p", "2p"), or sync ones on a thread pool
("thread") or a process pool with a SharedStateManager ("process")."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.managers
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.activities import (
    ALL,
    SYNC,
    cancel_seen_at,
    carry,
    child_ready,
    noop,
    noop_sync,
    spin,
    spin_sync,
)
from bench.compare._procstat import CpuMeter
from bench.compare._sides import postgres_backends
from errands import exceptions
from errands.client import ActivityHandle, Client
from errands.worker import SharedStateManager, Worker

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = timedelta(seconds=60)
WARMUP_ROUNDS = 20
WORKER_READY_TIMEOUT_S = 30.0
HEARTBEAT_WAIT_S = 30.0
DESCRIBE_POLL_S = 0.002
THREAD_POOL_SIZE = 64
PROCESS_POOL_SIZE = 2
START_METHOD = "spawn"
CHILD_HOLD_S = 1.0  # long enough for the pool's other child to start and take a call
CHILD_START_TRIES = 5

TARGETS: dict[str, dict[tuple[str, str], str]] = {
    "sqlite": {
        ("throughput-1p", "throughput"): ">= 4000",
        ("throughput-2p", "throughput"): ">= 2000",
        ("latency-1p", "p50"): "< 2",
        ("latency-2p", "p50"): "< 20",
        ("scaling", "1 worker process"): ">= 2000",
        ("bulk-cancel", "wall time"): "<= 10",  # issue 11 point 5, for 100,000
        ("bulk-cancel", "claim latency p99 during"): "<= 100",
        ("batch-2p", "throughput"): ">= 20000",  # issue 16 point 1
    },
    "postgresql": {  # issue 5 point 6: the database shares this 2-core machine
        ("throughput-1p", "throughput"): ">= 2000",
        ("throughput-2p", "throughput"): ">= 2000",
        ("latency-1p", "p50"): "< 10",
        ("latency-2p", "p50"): "< 10",
        ("scaling", "1 worker process"): ">= 2000",
        ("batch-2p", "throughput"): ">= 15000",  # issue 16 point 1
    },
}
"""Targets by store kind, (workload, figure); cancel delivery p50 (< 50 ms),
the retention ratios and the thread share hold for both stores and are set
where they are measured."""

WORD_TARGETS = {
    "throughput-thread": "n/a",  # set to 70% of throughput-1p when both ran (see __main__)
    "throughput-process": "limited by pickling",
    "throughput-process2p": ">= 1500",  # issue 16 point 4, the worker in its own process
}


COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    "<": lambda value, bound: value < bound,
    "<=": lambda value, bound: value <= bound,
}


@dataclass
class Figure:
    """One measured number, with the target it is held to (if any)."""

    workload: str
    figure: str
    value: float
    unit: str
    target: str = ""  # ">= 4000", "< 2" or "<= 1.2"; empty: reported, not judged

    @property
    def met(self) -> bool | None:
        """Judged only against ">= x", "< x" and "<= x"; other targets are words ("n/a")."""
        parts = self.target.split()
        if len(parts) != 2 or parts[0] not in COMPARISONS:
            return None
        op, bound = parts
        return COMPARISONS[op](self.value, float(bound))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------- pools


@dataclass
class Pool:
    """The executor a worker runs sync activities on; for a process pool also
    the multiprocessing manager and the SharedStateManager built on it."""

    executor: concurrent.futures.Executor
    manager: multiprocessing.managers.SyncManager | None = None
    shared: SharedStateManager | None = None


def _start_children(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Have every child of ``pool`` started (a pool starts them on demand) and
    its imports done, so no start is timed: calls that each hold their child
    until all children ran one."""
    for _ in range(CHILD_START_TRIES):
        calls = [pool.submit(child_ready, CHILD_HOLD_S) for _ in range(PROCESS_POOL_SIZE)]
        if len({c.result() for c in calls}) == PROCESS_POOL_SIZE:
            return
    raise RuntimeError(f"the process pool did not start {PROCESS_POOL_SIZE} children")


@contextlib.asynccontextmanager
async def activity_pool(where: str) -> AsyncIterator[Pool | None]:
    """The pool for workload suffix ``where`` (None for async-only workers);
    shut down, with its manager, on exit."""
    if where == "thread":
        threads = concurrent.futures.ThreadPoolExecutor(
            THREAD_POOL_SIZE, thread_name_prefix="bench-activity"
        )
        try:
            yield Pool(threads)
        finally:
            await asyncio.to_thread(threads.shutdown)
        return
    if where != "process":
        yield None
        return
    context = multiprocessing.get_context(START_METHOD)
    processes = concurrent.futures.ProcessPoolExecutor(PROCESS_POOL_SIZE, mp_context=context)
    manager = None
    try:
        manager = context.Manager()
        await asyncio.to_thread(_start_children, processes)
        shared = SharedStateManager.create_from_multiprocessing(manager)
        yield Pool(processes, manager, shared)
    finally:  # the children first: they hold proxies of the manager
        await asyncio.to_thread(processes.shutdown, True, cancel_futures=True)
        if manager is not None:
            await asyncio.to_thread(manager.shutdown)


# --------------------------------------------------------------------------- workers


def _worker(client: Client, task_queue: str, slots: int, pool: Pool | None) -> Worker:
    """The bench's worker: the async activities, and the sync ones on ``pool``."""
    return Worker(
        client,
        task_queue=task_queue,
        activities=ALL if pool is None else [*ALL, *SYNC],
        activity_executor=None if pool is None else pool.executor,
        shared_state_manager=None if pool is None else pool.shared,
        max_concurrent_activities=slots,
    )


async def serve(url: str, task_queue: str, slots: int, *, pooled: bool = False) -> None:
    """The child process: run a worker until SIGTERM; print 'ready' once it
    runs. ``pooled``: the sync activities too, on a process pool."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await Client.connect(url)
    try:
        async with (
            activity_pool("process" if pooled else "async") as pool,
            _worker(client, task_queue, slots, pool),
        ):
            print("ready", flush=True)
            await stop.wait()
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def running_worker(
    client: Client,
    url: str,
    task_queue: str,
    *,
    child: bool,
    slots: int,
    pool: Pool | None,
    pooled_child: bool = False,
) -> AsyncIterator[None]:
    """A worker on ``task_queue``: in this process (running the sync activities
    on ``pool`` when given), or in a child started with ``python -m bench
    worker`` (running them on a process pool of its own if ``pooled_child``)."""
    if not child:
        async with _worker(client, task_queue, slots, pool):
            yield
        return
    args = ["worker", "--url", url, "--task-queue", task_queue, "--slots", str(slots)]
    if pooled_child:
        args += ["--pool", "process"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench", *args, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), WORKER_READY_TIMEOUT_S)
        if line.strip() != b"ready":
            raise RuntimeError(f"worker child did not start (said {line!r})")
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def warm_up(client: Client, task_queue: str, activity: Callable[..., Any] = noop) -> None:
    """A few round trips, so connections and caches are set up before timing."""
    await _round_trips(client, task_queue, activity, WARMUP_ROUNDS, "warm")


async def _round_trips(
    client: Client, task_queue: str, activity: Callable[..., Any], rounds: int, prefix: str
) -> list[float]:
    """``rounds`` sequential execute_activity calls; their times in ms."""
    times_ms = []
    for k in range(rounds):
        began = time.perf_counter()
        await client.execute_activity(
            activity, k, id=f"{prefix}-{k}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        times_ms.append((time.perf_counter() - began) * 1000)
    return times_ms


# --------------------------------------------------------------------------- workloads


async def throughput(
    name: str,
    client: Client,
    task_queue: str,
    n: int,
    in_flight: int,
    activity: Callable[..., Any] = noop,
    meter: CpuMeter | None = None,
) -> list[Figure]:
    """Run ``n`` trivial activities, ``in_flight`` lanes each doing start +
    result in turn (and the CPU they took, if ``meter``)."""
    await warm_up(client, task_queue, activity)
    if meter is not None:
        meter.start()
    elapsed = await timed_run(client, task_queue, n, in_flight, activity)
    figures = [
        Figure(name, "throughput", n / elapsed, "activities/s", WORD_TARGETS.get(name, "")),
        Figure(name, "wall time", elapsed, "s"),
    ]
    return figures + ([cpu_figure(name, meter, n)] if meter is not None else [])


async def timed_run(
    client: Client,
    task_queue: str,
    n: int,
    in_flight: int,
    activity: Callable[..., Any] = noop,
    prefix: str = "tp",
) -> float:
    """Seconds to run ``n`` activities (ids ``<prefix>-<i>``) in ``in_flight``
    lanes, each doing start + result in turn."""
    indexes = iter(range(n))

    async def lane() -> None:
        for i in indexes:  # shared: each index is taken by exactly one lane
            handle = await client.start_activity(
                activity,
                i,
                id=f"{prefix}-{i}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            if await handle.result() != i:
                raise RuntimeError(f"activity {prefix}-{i} returned the wrong value")

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return time.perf_counter() - began


BATCH_SIZE = 1_000
"""Starts per start_activities call in the batch workload (issue 16 point 1)."""


async def batch_throughput(
    name: str, client: Client, task_queue: str, n: int, meter: CpuMeter | None = None
) -> list[Figure]:
    """Start ``n`` trivial activities with start_activities, BATCH_SIZE a call
    (one call after another), while awaiting every result; the rate from the
    first start to the last result (and the CPU it took, if ``meter``)."""
    await warm_up(client, task_queue)
    from errands.client import ActivityStart

    waits: list[asyncio.Task[Any]] = []
    if meter is not None:
        meter.start()
    began = time.perf_counter()
    for first in range(0, n, BATCH_SIZE):
        starts = [
            ActivityStart(noop, [i], id=f"batch-{i}", task_queue=task_queue,
                          start_to_close_timeout=TIMEOUT)
            for i in range(first, min(n, first + BATCH_SIZE))
        ]  # fmt: skip
        handles = await client.start_activities(starts)
        waits.extend(asyncio.ensure_future(h.result()) for h in handles)
    started = time.perf_counter() - began
    results = await asyncio.gather(*waits)
    elapsed = time.perf_counter() - began
    cpu = [cpu_figure(name, meter, n)] if meter is not None else []
    if results != list(range(n)):
        raise RuntimeError("a batch activity returned the wrong value")
    return [
        Figure(name, "throughput", n / elapsed, "activities/s"),
        Figure(name, "starts", n / started, "starts/s"),
        Figure(name, "wall time", elapsed, "s"),
        *cpu,
    ]


def cpu_meter(url: str) -> CpuMeter:
    """A meter of the CPU that the workload on ``url`` spends: this process
    and its children (the worker process, pools, the multiprocessing
    manager), and on PostgreSQL the backends serving the store's schema."""
    return CpuMeter(postgres_backends(url) if url.startswith("postgres") else lambda: [])


def cpu_figure(name: str, meter: CpuMeter, activities: int) -> Figure:
    """CPU seconds per 1,000 activities since ``meter.start()`` (issue 16
    point 6), the database's included where it runs on this machine."""
    tree_s, server_s = meter.stop()
    label = "CPU per 1,000" if server_s is not None else "CPU per 1,000 (database not counted)"
    return Figure(name, label, (tree_s + (server_s or 0.0)) / activities * 1000, "s")


def apply_targets(figures: list[Figure], kind: str) -> list[Figure]:
    """Give the figures the targets of store ``kind`` (TARGETS)."""
    targets = TARGETS[kind]
    for f in figures:
        f.target = targets.get((f.workload, f.figure), f.target)
    return figures


def judge_thread_throughput(figures: list[Figure], share: float) -> list[Figure]:
    """Hold throughput-thread to ``share`` of throughput-1p when both ran in
    this run: its target becomes that bound, and a ratio row is added."""
    found = {(f.workload, f.figure): f for f in figures}
    base = found.get(("throughput-1p", "throughput"))
    pooled = found.get(("throughput-thread", "throughput"))
    if base is None or pooled is None:
        return figures
    pooled.target = f">= {base.value * share:.0f}"
    ratio = Figure(
        "throughput-thread",
        "% of throughput-1p",
        100 * pooled.value / base.value,
        "%",
        f">= {100 * share:.0f}",
    )
    at = figures.index(pooled) + 1
    return [*figures[:at], ratio, *figures[at:]]


def _p50_ms(call: Callable[[int], object], rounds: int) -> float:
    """p50 of ``rounds`` sequential calls, in ms (run on a thread of its own)."""
    times_ms = []
    for k in range(rounds):
        began = time.perf_counter()
        call(k)
        times_ms.append((time.perf_counter() - began) * 1000)
    return percentile(times_ms, 50)


async def process_breakdown(
    name: str, client: Client, task_queue: str, pool: Pool, rounds: int
) -> list[Figure]:
    """Where one process-pool activity's time goes, each as a p50 of
    ``rounds`` sequential calls:

    - the pool's own round trip for the same function without errands, bare
      and carrying the SharedStateManager's ``child_channel()`` (which errands
      pickles into every call; a child builds its proxies once);
    - the manager round trips from this process: creating an ``Event()`` (a
      manager object made per attempt would cost this; errands makes none
      since 9696659) and a ``dict`` proxy read (what a child's cancel watcher
      does each time the manager's wake-up event is set, and what a cancel
      request's write costs);
    - errands' execute_activity of an async noop on the same worker (the
      store round trip every activity pays), then of the sync noop on the
      pool; "left to the process runner" is the second minus the first and
      minus the bare pool round trip."""
    assert pool.manager is not None and pool.shared is not None
    executor, manager, channel = pool.executor, pool.manager, pool.shared.child_channel()

    def bare(k: int) -> None:
        if executor.submit(noop_sync, k).result() != k:
            raise RuntimeError("the pool returned the wrong value")

    def carrying(k: int) -> None:
        if executor.submit(carry, k, channel).result() != k:
            raise RuntimeError("the pool returned the wrong value")

    events: list[Any] = []  # kept until timed, or their decrefs land in the next round
    shared_dict = manager.dict()
    shared_dict[b"token"] = {"cancel_requested": True}

    pool_ms = await asyncio.to_thread(_p50_ms, bare, rounds)
    carrying_ms = await asyncio.to_thread(_p50_ms, carrying, rounds)
    event_ms = await asyncio.to_thread(_p50_ms, lambda k: events.append(manager.Event()), rounds)
    events.clear()
    get_ms = await asyncio.to_thread(_p50_ms, lambda k: shared_dict.get(b"token"), rounds)
    async_ms = percentile(await _round_trips(client, task_queue, noop, rounds, "async"), 50)
    errands_ms = percentile(await _round_trips(client, task_queue, noop_sync, rounds, "lat"), 50)
    return [
        Figure(name, "pool round trip p50 (no errands)", pool_ms, "ms"),
        Figure(name, "same, carrying child_channel() p50", carrying_ms, "ms"),
        Figure(name, "manager Event() p50", event_ms, "ms"),
        Figure(name, "manager dict get p50", get_ms, "ms"),
        Figure(name, "execute_activity p50, async noop", async_ms, "ms"),
        Figure(name, "execute_activity p50, pool", errands_ms, "ms"),
        Figure(name, "left to the process runner", errands_ms - async_ms - pool_ms, "ms"),
    ]


async def latency(
    name: str, client: Client, task_queue: str, rounds: int, meter: CpuMeter | None = None
) -> list[Figure]:
    """``rounds`` sequential execute_activity round trips (and the CPU they
    took, if ``meter``)."""
    await warm_up(client, task_queue)
    if meter is not None:
        meter.start()
    times_ms = await _round_trips(client, task_queue, noop, rounds, "lat")
    return [
        Figure(name, "p50", percentile(times_ms, 50), "ms"),
        Figure(name, "p99", percentile(times_ms, 99), "ms"),
        *([cpu_figure(name, meter, rounds)] if meter is not None else []),
    ]


async def _wait_heartbeated(handle: ActivityHandle[None]) -> None:
    deadline = time.monotonic() + HEARTBEAT_WAIT_S
    while (await handle.describe()).last_heartbeat_time is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{handle.id} did not heartbeat within {HEARTBEAT_WAIT_S} s")
        await asyncio.sleep(DESCRIBE_POLL_S)


async def cancel_delivery(
    name: str,
    client: Client,
    task_queue: str,
    rounds: int,
    mark_dir: Path | None,
    sync: bool = False,
) -> list[Figure]:
    """Cancel a heartbeating activity ``rounds`` times; time from just before
    ``cancel()`` to the activity's ``except`` of the cancel (``spin``, or
    ``spin_sync`` when ``sync``). With ``mark_dir`` the activity runs in
    another process and reports time.time() through a file there; otherwise
    both ends read perf_counter()."""
    spin_fn = spin_sync if sync else spin
    await warm_up(client, task_queue, noop_sync if sync else noop)
    times_ms = []
    for k in range(rounds):
        activity_id = f"cancel-{k}"
        mark = None if mark_dir is None else mark_dir / f"{activity_id}.t"
        handle = await client.start_activity(
            spin_fn,
            "" if mark is None else str(mark),
            id=activity_id,
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            heartbeat_timeout=TIMEOUT,
        )
        await _wait_heartbeated(handle)
        clock = time.perf_counter if mark is None else time.time
        began = clock()
        await handle.cancel()
        try:
            await handle.result()
            raise RuntimeError(f"{activity_id} completed instead of ending cancelled")
        except exceptions.ActivityFailedError as e:
            if not isinstance(e.cause, exceptions.CancelledError):
                raise
        seen = cancel_seen_at.pop(activity_id) if mark is None else float(mark.read_text())
        times_ms.append((seen - began) * 1000)
    return [
        Figure(name, "p50", percentile(times_ms, 50), "ms", "< 50"),
        Figure(name, "max", max(times_ms), "ms"),
    ]


# --------------------------------------------------------------------------- scaling


async def scaling_rate(
    client: Client, url: str, task_queue: str, workers: int, n: int, in_flight: int
) -> float:
    """Activities/s of ``n`` trivial activities with ``workers`` worker
    processes (children of this one, ``in_flight`` slots each) and this
    process as the client, ``in_flight`` lanes of start + result."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(workers):
            await stack.enter_async_context(
                running_worker(client, url, task_queue, child=True, slots=in_flight, pool=None)
            )
        await warm_up(client, task_queue)
        return n / await timed_run(client, task_queue, n, in_flight)


def scaling_figures(rates: dict[int, float]) -> list[Figure]:
    """A throughput row per worker count, and each against the first count."""
    figures = []
    first = next(iter(rates), None)
    for workers, rate in rates.items():
        label = f"{workers} worker process" + ("es" if workers > 1 else "")
        figures.append(Figure("scaling", label, rate, "activities/s"))
        if first is not None and workers != first:
            figures.append(Figure("scaling", f"{label} / {first}", rate / rates[first], "x"))
    return figures


# --------------------------------------------------------------------------- retention


async def start_claimable(client: Client, task_queue: str, count: int) -> None:
    """Start ``count`` tasks on ``task_queue`` (which no worker serves)."""
    await asyncio.gather(
        *(
            client.start_activity(
                noop, k, id=f"claim-{k}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            for k in range(count)
        )
    )


async def claim_times(client: Client, task_queue: str, count: int) -> list[float]:
    """Claim ``count`` tasks of ``task_queue`` one ``store.claim_batch(max_tasks=1)``
    call at a time; the calls' times in ms."""
    store = client.store
    times_ms = []
    for _ in range(count):
        began = time.perf_counter()
        claimed = await store.claim_batch(
            client.namespace, task_queue, max_tasks=1, identity="bench"
        )
        times_ms.append((time.perf_counter() - began) * 1000)
        if len(claimed.tasks) != 1:
            raise RuntimeError(f"claim_batch claimed {len(claimed.tasks)} tasks, not 1")
    return times_ms
