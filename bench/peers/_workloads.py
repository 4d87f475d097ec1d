"""The peer workloads, written once against bench.peers.Producer. Each
warms up (untimed), then measures one section: its time, and the CPU seconds
and peak RSS of every process of the system (the producer, its worker
processes, and the database and broker processes that serve it). A section
takes no new task once ``seconds`` have passed (so a slow system's run ends
in time): its rate is over the tasks it took, reported as ``n``.

loop
    The producer awaits each enqueue in turn (n of them), then waits for the
    last one's completion: n / (first enqueue to the last completion). Then,
    untimed, every result is checked.
lanes
    ``in_flight`` lanes each enqueue and await the result in turn, n in all;
    lanes are coroutines, or for a system with no async client, threads
    (concurrent producers), each with an event loop of its own.
batch
    The system's bulk enqueue, BATCH_SIZE a call, one call after another,
    then waits for the last one's completion: n / (first call to the last
    completion). Then, untimed, every result is checked.
sequential
    One task enqueued and its result awaited, ``rounds`` times; p50 and p99.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.compare._procstat import CpuMeter
from bench.peers import NoBulkEnqueue, Producer
from bench.workloads import percentile

WORKLOADS = ("loop", "lanes", "batch", "sequential")
WARMUP_ROUNDS = 20
BATCH_SIZE = 1_000
"""Tasks per bulk enqueue call (errands' start_activities takes up to 10,000)."""


class WrongResult(Exception):
    """A task returned something other than its argument."""


class Indexes:
    """0, 1, ... n - 1, or fewer: none is handed out once ``seconds`` have
    passed since the first. Safe to share between lanes and threads."""

    def __init__(self, n: int, seconds: float) -> None:
        self.n = n
        self.seconds = seconds
        self.taken = 0
        self._deadline = 0.0
        self._lock = threading.Lock()

    def __iter__(self) -> Indexes:
        return self

    def __next__(self) -> int:
        with self._lock:
            now = time.perf_counter()
            if self.taken == 0:
                self._deadline = now + self.seconds
            elif self.taken >= self.n or now > self._deadline:
                raise StopIteration
            self.taken += 1
            return self.taken - 1


def _check(got: list[Any], first: int) -> None:
    """Raise WrongResult unless ``got`` is first, first + 1, ..."""
    expected = list(range(first, first + len(got)))
    if got != expected:
        wrong = next(k for k, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e)
        raise WrongResult(f"task {first + wrong} returned {got[wrong]!r}")


async def _round_trip(producer: Producer, i: int) -> None:
    _check([await producer.result(await producer.enqueue(i))], i)


async def warm_up(producer: Producer) -> None:
    """Sequential round trips (tasks -1, -2, ...): connections, caches and
    worker processes up."""
    for k in range(WARMUP_ROUNDS):
        await _round_trip(producer, -1 - k)


async def _measured(
    meter: CpuMeter, indexes: Indexes, section: Callable[[], Awaitable[float]]
) -> dict[str, Any]:
    """Run ``section`` (it returns its own elapsed seconds) with ``meter``
    running; the rate, and CPU seconds per 1,000 tasks of all processes."""
    meter.start()
    elapsed = await section()
    own_s, server_s = meter.stop()
    count = indexes.taken
    return {
        "n": count,
        "throughput": count / elapsed,
        "wall_s": elapsed,
        "cpu_per_1k": 1000 * (own_s + (server_s or 0.0)) / count,
        "cpu_own_s": own_s,
        "cpu_server_s": server_s,
    }


async def _last_completed(producer: Producer, handles: list[Any], began: float) -> float:
    """Seconds from ``began`` to the last task's completion."""
    _check([await producer.result(handles[-1])], len(handles) - 1)
    return time.perf_counter() - began


async def _check_all(producer: Producer, handles: list[Any]) -> None:
    """Untimed: every task completed with its own result (where the system
    can still tell)."""
    got = await producer.results(handles)
    if got is not None:
        _check(got, 0)


async def loop(producer: Producer, meter: CpuMeter, n: int, seconds: float) -> dict[str, Any]:
    handles: list[Any] = []
    indexes = Indexes(n, seconds)

    async def section() -> float:
        began = time.perf_counter()
        handles.extend([await producer.enqueue(i) for i in indexes])
        return await _last_completed(producer, handles, began)

    figures = await _measured(meter, indexes, section)
    await _check_all(producer, handles)
    return figures


async def batch(producer: Producer, meter: CpuMeter, n: int, seconds: float) -> dict[str, Any]:
    handles: list[Any] = []
    indexes = Indexes(n, seconds)

    async def section() -> float:
        began = time.perf_counter()
        while chunk := list(itertools.islice(indexes, BATCH_SIZE)):
            handles.extend(await producer.enqueue_many(chunk))
        return await _last_completed(producer, handles, began)

    try:
        await producer.enqueue_many([])
    except NoBulkEnqueue:
        return {"n/a": "no bulk enqueue"}
    figures = await _measured(meter, indexes, section)
    await _check_all(producer, handles)
    return figures


async def _lane(producer: Producer, indexes: Indexes) -> None:
    for i in indexes:  # shared: each index is taken by exactly one lane
        await _round_trip(producer, i)


def _threaded_lanes(producer: Producer, indexes: Indexes, lanes: int) -> None:
    """``lanes`` threads, each running a lane on an event loop of its own
    (the producer's calls block); the first failure is raised."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_lane(producer, indexes))
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=run, name=f"lane-{k}") for k in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


async def lanes(
    producer: Producer, meter: CpuMeter, n: int, seconds: float, in_flight: int, *, blocking: bool
) -> dict[str, Any]:
    indexes = Indexes(n, seconds)

    async def section() -> float:
        began = time.perf_counter()
        if blocking:
            await asyncio.to_thread(_threaded_lanes, producer, indexes, in_flight)
        else:
            await asyncio.gather(*(_lane(producer, indexes) for _ in range(in_flight)))
        return time.perf_counter() - began

    return await _measured(meter, indexes, section)


async def sequential(
    producer: Producer, meter: CpuMeter, rounds: int, seconds: float
) -> dict[str, Any]:
    times_ms: list[float] = []
    indexes = Indexes(rounds, seconds)

    async def section() -> float:
        began = time.perf_counter()
        for i in indexes:
            t0 = time.perf_counter()
            await _round_trip(producer, i)
            times_ms.append((time.perf_counter() - t0) * 1000)
        return time.perf_counter() - began

    figures = await _measured(meter, indexes, section)
    del figures["throughput"]
    return {"p50": percentile(times_ms, 50), "p99": percentile(times_ms, 99), **figures}
