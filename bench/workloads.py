"""The six workloads. Each takes a connected client and the task queue its
worker serves, and returns the figures it measured."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bench.activities import ALL, cancel_seen_at, noop, spin
from errands import exceptions
from errands.client import ActivityHandle, Client
from errands.worker import Worker

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = timedelta(seconds=60)
WARMUP_ROUNDS = 20
WORKER_READY_TIMEOUT_S = 30.0
HEARTBEAT_WAIT_S = 30.0
DESCRIBE_POLL_S = 0.002


@dataclass
class Figure:
    """One measured number, with the target it is held to (if any)."""

    workload: str
    figure: str
    value: float
    unit: str
    target: str = ""  # ">= 4000" or "< 2"; empty: reported, not judged

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, bound = self.target.split()
        return self.value >= float(bound) if op == ">=" else self.value < float(bound)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------- workers


async def serve(url: str, task_queue: str, slots: int) -> None:
    """The child process: run a worker until SIGTERM; print 'ready' once it runs."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await Client.connect(url)
    try:
        async with Worker(
            client, task_queue=task_queue, activities=ALL, max_concurrent_activities=slots
        ):
            print("ready", flush=True)
            await stop.wait()
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def running_worker(
    client: Client, url: str, task_queue: str, *, child: bool, slots: int
) -> AsyncIterator[None]:
    """A worker on ``task_queue``: in this process, or in a child started with
    ``python -m bench worker``; either way it has run one activity on exit."""
    if not child:
        async with Worker(
            client, task_queue=task_queue, activities=ALL, max_concurrent_activities=slots
        ):
            yield
        return
    args = ["worker", "--url", url, "--task-queue", task_queue, "--slots", str(slots)]
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


async def warm_up(client: Client, task_queue: str) -> None:
    """A few round trips, so connections and caches are set up before timing."""
    for k in range(WARMUP_ROUNDS):
        await client.execute_activity(
            noop, k, id=f"warm-{k}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )


# --------------------------------------------------------------------------- workloads


async def throughput(
    name: str, client: Client, task_queue: str, n: int, in_flight: int
) -> list[Figure]:
    """Run ``n`` noops, ``in_flight`` lanes each doing start + result in turn."""
    indexes = iter(range(n))

    async def lane() -> None:
        for i in indexes:  # shared: each index is taken by exactly one lane
            handle = await client.start_activity(
                noop, i, id=f"tp-{i}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            if await handle.result() != i:
                raise RuntimeError(f"activity tp-{i} returned the wrong value")

    await warm_up(client, task_queue)
    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    elapsed = time.perf_counter() - began
    target = ">= 4000" if name.endswith("1p") else ">= 2000"
    return [
        Figure(name, "throughput", n / elapsed, "activities/s", target),
        Figure(name, "wall time", elapsed, "s"),
    ]


async def latency(name: str, client: Client, task_queue: str, rounds: int) -> list[Figure]:
    """``rounds`` sequential execute_activity round trips."""
    await warm_up(client, task_queue)
    times_ms = []
    for k in range(rounds):
        began = time.perf_counter()
        await client.execute_activity(
            noop, k, id=f"lat-{k}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        times_ms.append((time.perf_counter() - began) * 1000)
    target = "< 2" if name.endswith("1p") else "< 20"
    return [
        Figure(name, "p50", percentile(times_ms, 50), "ms", target),
        Figure(name, "p99", percentile(times_ms, 99), "ms"),
    ]


async def _wait_heartbeated(handle: ActivityHandle[None]) -> None:
    deadline = time.monotonic() + HEARTBEAT_WAIT_S
    while (await handle.describe()).last_heartbeat_time is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{handle.id} did not heartbeat within {HEARTBEAT_WAIT_S} s")
        await asyncio.sleep(DESCRIBE_POLL_S)


async def cancel_delivery(
    name: str, client: Client, task_queue: str, rounds: int, mark_dir: Path | None
) -> list[Figure]:
    """Cancel a heartbeating activity ``rounds`` times; time from just before
    ``cancel()`` to the activity's ``except asyncio.CancelledError``. With
    ``mark_dir`` the worker is in another process and reports time.time()
    through a file there; otherwise both ends read perf_counter()."""
    await warm_up(client, task_queue)
    times_ms = []
    for k in range(rounds):
        activity_id = f"cancel-{k}"
        mark = None if mark_dir is None else mark_dir / f"{activity_id}.t"
        handle = await client.start_activity(
            spin,
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
