"""The activities the benchmark runs. Module-level, so a worker in a child
process registers the same definitions under the same names, and a
process-pool child unpickles the sync ones as ``bench.activities.<name>``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from errands import activity, exceptions

HEARTBEAT_EVERY_S = 0.01

cancel_seen_at: dict[str, float] = {}
"""perf_counter() at which ``spin`` or ``spin_sync`` saw its cancellation, by
activity id (filled only in the process that runs the activity)."""


def _record_cancel(mark_path: str) -> None:
    """time.time() into ``mark_path`` (the activity runs in another process),
    else perf_counter() into ``cancel_seen_at`` (it runs in this one)."""
    if mark_path:
        with open(mark_path, "w") as f:
            f.write(repr(time.time()))
    else:
        cancel_seen_at[activity.info().activity_id] = time.perf_counter()


@activity.defn
async def noop(i: int) -> int:
    """Nothing to do: the round trip through the store is all that is measured."""
    return i


@activity.defn
async def io_wait(i: int, seconds: float) -> int:
    """An I/O-bound activity: await ``seconds`` (the fleet workload's 200 ms),
    holding a slot but no CPU."""
    await asyncio.sleep(seconds)
    return i


@activity.defn
async def spin(mark_path: str) -> None:
    """Heartbeat every 10 ms until cancelled; record when the cancel was seen."""
    try:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)
    except asyncio.CancelledError:
        _record_cancel(mark_path)
        raise


@activity.defn
async def stamp(i: int) -> list[float]:
    """Return when this attempt was scheduled and when it was claimed (the
    store's clock, seconds since the epoch): claim latency is the difference."""
    info = activity.info()
    return [info.current_attempt_scheduled_time.timestamp(), info.started_time.timestamp()]


@activity.defn
async def hold_first(mark_dir: str) -> list[float]:
    """The failover workload's activity (bench/failover.py). Attempt 1 writes
    its pid to ``<mark_dir>/<activity id>.pid`` and waits (its worker process
    is SIGKILLed); a later attempt returns ``[time.time() at its start, its
    pid]``."""
    began = time.time()
    info = activity.info()
    if info.attempt == 1:
        mark = os.path.join(mark_dir, f"{info.activity_id}.pid")
        with open(mark + ".part", "w") as f:
            f.write(str(os.getpid()))
        os.replace(mark + ".part", mark)  # a reader never sees half a file
        await asyncio.sleep(3600)
    return [began, float(os.getpid())]


@activity.defn
def noop_sync(i: int) -> int:
    """``noop`` as a plain ``def``, for the thread and process pools."""
    return i


@activity.defn
def spin_sync(mark_path: str) -> None:
    """``spin`` as a plain ``def``: heartbeat every 10 ms until errands raises
    its CancelledError in this thread (at the next bytecode, so when the sleep
    returns) or child process (from a signal handler, which cuts the sleep)."""
    try:
        while True:
            activity.heartbeat()
            time.sleep(HEARTBEAT_EVERY_S)
    except exceptions.CancelledError:
        _record_cancel(mark_path)
        raise


def carry(i: int, *carried: object) -> int:
    """Return ``i``; ``carried`` only rides along (pickled into the call and
    unpickled in the child, as errands' per-call channel is)."""
    return i


def child_ready(hold_s: float) -> int:
    """A pool call that keeps its child busy for ``hold_s``, so the next call
    goes to another child; returns the child's pid. Unpickling it imports this
    module, and errands' activity API with it, in the child."""
    time.sleep(hold_s)
    return os.getpid()


ALL: list[Callable[..., Any]] = [noop, io_wait, spin, stamp, hold_first]
"""The async activities (every worker registers them)."""

SYNC: list[Callable[..., Any]] = [noop_sync, spin_sync]
"""The plain ``def`` activities (workers with a pool register them too)."""
