"""The executors sync activities run on, the same for both systems: a thread
pool of 64, or a process pool of 2 ``spawn`` children with a multiprocessing
manager (each system wraps the manager in its own SharedStateManager).

Only the standard library is imported here: a pool child unpickles
:func:`child_ready` by importing this module, and should load neither system
before its first activity (the warm-up rounds load it, untimed)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.managers
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

THREAD_POOL_SIZE = 64
PROCESS_POOL_SIZE = 2
START_METHOD = "spawn"
CHILD_HOLD_S = 1.0  # long enough for the pool's other child to start and take a call
CHILD_START_TRIES = 5


@dataclass
class Pool:
    """An executor, and for a process pool the manager its SharedStateManager uses."""

    executor: concurrent.futures.Executor
    size: int
    manager: multiprocessing.managers.SyncManager | None = None


def child_ready(hold_s: float) -> int:
    """Keep this child busy for ``hold_s`` (so the next call goes to another
    child); its pid."""
    time.sleep(hold_s)
    return os.getpid()


def _start_children(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Start every child of ``pool`` now (a pool starts them on demand), so no
    start is timed or counted as CPU of the measured section."""
    for _ in range(CHILD_START_TRIES):
        calls = [pool.submit(child_ready, CHILD_HOLD_S) for _ in range(PROCESS_POOL_SIZE)]
        if len({c.result() for c in calls}) == PROCESS_POOL_SIZE:
            return
    raise RuntimeError(f"the process pool did not start {PROCESS_POOL_SIZE} children")


@contextlib.asynccontextmanager
async def activity_pool(kind: str) -> AsyncIterator[Pool | None]:
    """``kind`` "thread" or "process"; anything else yields None (async only)."""
    if kind == "thread":
        threads = concurrent.futures.ThreadPoolExecutor(
            THREAD_POOL_SIZE, thread_name_prefix="bench-activity"
        )
        try:
            yield Pool(threads, THREAD_POOL_SIZE)
        finally:
            await asyncio.to_thread(threads.shutdown)
        return
    if kind != "process":
        yield None
        return
    context = multiprocessing.get_context(START_METHOD)
    processes = concurrent.futures.ProcessPoolExecutor(PROCESS_POOL_SIZE, mp_context=context)
    manager = None
    try:
        manager = context.Manager()
        await asyncio.to_thread(_start_children, processes)
        yield Pool(processes, PROCESS_POOL_SIZE, manager)
    finally:  # the children first: they hold proxies of the manager
        await asyncio.to_thread(processes.shutdown, True, cancel_futures=True)
        if manager is not None:
            await asyncio.to_thread(manager.shutdown)
