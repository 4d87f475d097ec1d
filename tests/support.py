"""What the behaviour tests share: waiting helpers (conditions are polled with
generous ceilings, never waited for with bare sleeps), the ``Probe`` through
which in-process activities report to their test, and the common bounds."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import multiprocessing
import multiprocessing.managers
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from errands import activity, exceptions
from errands.client import ActivityExecutionDescription, ActivityHandle, Client
from errands.common import RetryPolicy
from errands.worker import SharedStateManager, Worker

CEILING_S = 30.0
"""Longest a test waits for a condition that should hold far sooner."""

CANCEL_CEILING_S = 5.0
"""Generous bound on cancel delivery (the design's target is p50 under 50 ms)."""

TIMEOUT = timedelta(seconds=30)
"""A start-to-close timeout that must not fire during a test."""

FAST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100))
"""Retries soon enough that a test can wait for attempt 2."""

SPAWN = multiprocessing.get_context("spawn")
"""The start method of every process pool and manager the tests make."""

POOL_PREFIX = "errands-test-pool"
"""The name of every pool thread the tests make."""


# --------------------------------------------------------------------------- waiting


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    ceiling_s: float = CEILING_S,
    interval_s: float = 0.01,
) -> None:
    """Poll ``check`` (a plain or an async predicate) until it is true;
    AssertionError naming ``what`` after the ceiling."""
    deadline = time.monotonic() + ceiling_s
    while True:
        outcome = check()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {ceiling_s} s: {what}")
        await asyncio.sleep(interval_s)


async def describe_until(
    handle: ActivityHandle[Any],
    condition: Callable[[ActivityExecutionDescription], bool | Awaitable[bool]],
    what: str,
    ceiling_s: float = CEILING_S,
    include_heartbeat_details: bool = False,
) -> ActivityExecutionDescription:
    """The first description of the execution for which ``condition`` (plain or
    async) holds; AssertionError naming ``what`` and the last one after the ceiling."""
    deadline = time.monotonic() + ceiling_s
    while True:
        desc = await handle.describe(
            include_heartbeat_details=include_heartbeat_details, include_last_failure=True
        )
        holds = condition(desc)
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return desc
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {ceiling_s} s: {what}; last: {desc}")
        await asyncio.sleep(0.01)


async def heartbeat_stored(handle: ActivityHandle[Any]) -> ActivityExecutionDescription:
    """The first description with a heartbeat (its details included): the
    activity runs, wherever it runs."""
    return await describe_until(
        handle,
        lambda d: d.last_heartbeat_time is not None,
        "the activity's heartbeat reaches the store",
        include_heartbeat_details=True,
    )


async def failure_of(
    handle: ActivityHandle[Any], ceiling_s: float = CEILING_S
) -> exceptions.FailureError:
    """The cause of the ActivityFailedError that ``result()`` raises (it must)."""
    with pytest.raises(exceptions.ActivityFailedError) as caught:
        await asyncio.wait_for(handle.result(), ceiling_s)
    assert caught.value.__cause__ is caught.value.cause
    return caught.value.cause


async def cancel_and_time(
    handle: ActivityHandle[Any], reason: str | None = None
) -> tuple[exceptions.FailureError, float]:
    """Cancel; the failure and how long the execution took to close (failing
    the test if it is still open CANCEL_CEILING_S after ``cancel()``)."""
    began = time.monotonic()
    await handle.cancel(reason)
    try:
        cause = await failure_of(handle, CANCEL_CEILING_S)
    except asyncio.TimeoutError:
        raise AssertionError(f"still running {CANCEL_CEILING_S} s after cancel()") from None
    return cause, time.monotonic() - began


async def wait_event(event: asyncio.Event | Flag, what: str, ceiling_s: float = CEILING_S) -> None:
    """Wait for ``event``; AssertionError naming ``what`` after the ceiling."""
    try:
        await asyncio.wait_for(event.wait(), ceiling_s)
    except asyncio.TimeoutError:
        raise AssertionError(f"not within {ceiling_s} s: {what}") from None


# --------------------------------------------------------------------------- the probe


class Flag:
    """An event that coroutines and threads can both set and wait for.

    An ``asyncio.Event`` may be set only from its loop's thread, and waiting on
    a ``threading.Event`` would block the loop; async activities run on the
    test's loop while sync ones run in pool threads, so a probe needs both.
    ``wait()`` is for coroutines and ``wait_sync()`` for threads, like
    ``activity.wait_for_cancelled()`` and ``wait_for_cancelled_sync()``.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        """Set the flag and wake every waiter, from any thread."""
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_wake, future)

    def clear(self) -> None:
        self._event.clear()

    def wait_sync(self, timeout_s: float) -> bool:
        """Block this thread until the flag is set (True) or ``timeout_s`` passed (False)."""
        return self._event.wait(timeout_s)

    async def wait(self) -> None:
        """Wait, without blocking the loop, until the flag is set."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append((loop, future))
        try:
            await future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, future))


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class Probe:
    """What the in-process activities of one test report back, and the gates
    they wait on. The ``probe`` fixture (conftest.py) makes one per test;
    an activity finds its test's with ``my_probe()``. Activities in child
    processes cannot reach it: they report through results, heartbeats and
    files (tests/pool_activities.py)."""

    started: Flag = field(default_factory=Flag)
    """Set by an activity once it runs (a test may clear it between activities)."""
    release: Flag = field(default_factory=Flag)
    """Set by the test to let waiting activities finish (and at teardown, so no
    pool thread stays blocked after a failed test)."""
    cancel_seen: Flag = field(default_factory=Flag)
    """Set by an activity once a cancel (or terminate, or shutdown) reached it."""
    seen: dict[str, Any] = field(default_factory=dict)
    """Whatever an activity observed, by name; also gates a test hands to activities."""
    attempts: int = 0
    """How many attempts ran."""
    order: list[str] = field(default_factory=list)
    """Labels in the order the activities ran."""
    start_times: list[float] = field(default_factory=list)
    """``time.monotonic()`` at the start of each attempt."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards ``running`` and ``most_running`` for activities in pool threads."""
    running: int = 0
    """How many activities run now."""
    most_running: int = 0
    """The most that ran at once."""

    def enter(self) -> None:
        """Count one more activity running (call ``leave()`` as it ends)."""
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


probes: dict[str, Probe] = {}
"""One probe per running test, keyed by the test's task queue."""


def my_probe() -> Probe:
    """The probe of the test whose task queue the current activity runs on."""
    return probes[activity.info().task_queue]


def pool_worker(
    client: Client,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    executor: Executor | None,
    manager: multiprocessing.managers.SyncManager | None,
    **options: Any,
) -> Worker:
    """A Worker running ``activities`` on ``executor`` (None: async only),
    with a SharedStateManager on ``manager`` when a process pool needs one."""
    if manager is not None:
        options["shared_state_manager"] = SharedStateManager.create_from_multiprocessing(manager)
    return Worker(
        client,
        task_queue=task_queue,
        activities=activities,
        activity_executor=executor,
        **options,
    )
