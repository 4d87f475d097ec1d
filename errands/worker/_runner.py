"""Runners: how an activity function is called and how cancellation reaches it.

This module holds the interface every runner implements and the runner for
``async def`` activities; the thread and process runners live beside it. The
Worker makes its runners once, when it is built: one AsyncRunner, and for
plain ``def`` activities one runner that ``_sync_runner`` in ``_worker.py``
picks from the executor (a ``ThreadPoolExecutor`` gets a ThreadRunner, any
other executor a ProcessRunner). Each attempt takes the one its definition's
kind calls for. Past that choice nothing asks which runner it has: what
differs is behind the hooks below (``threadsafe``, ``worker_shutdown``,
``close``).
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

from errands.activity import _auto_heartbeat, _Context, _current, _Definition

HeartbeatRecorder = Callable[[Sequence[Any]], None]
"""Takes an activity's heartbeat details."""


class Runner(abc.ABC):
    """Calls one kind of activity function with the attempt's context set."""

    @abc.abstractmethod
    async def run(self, definition: _Definition, context: _Context, args: Sequence[Any]) -> Any:
        """Call the function; return its result or raise its exception. A
        delivered cancellation surfaces as ``asyncio.CancelledError`` (async) or
        ``errands.exceptions.CancelledError`` (sync)."""

    @abc.abstractmethod
    def deliver_cancel(self, context: _Context) -> None:
        """Interrupt the running call; on the worker's event loop thread."""

    def threadsafe(self, record: HeartbeatRecorder) -> HeartbeatRecorder:
        """Wrap the attempt's heartbeat recorder so the activity may call it
        from where this runner runs it (the event loop by default)."""
        return record

    async def worker_shutdown(self) -> None:  # noqa: B027 - a hook; most runners need nothing
        """The worker began shutting down: tell activities that cannot see the
        worker's own flag (in other processes)."""

    def close(self) -> None:  # noqa: B027 - a hook; most runners need nothing
        """The worker stopped: release what this runner made."""


def from_any_thread(record: HeartbeatRecorder) -> HeartbeatRecorder:
    """``record``, callable from any thread: it runs on the current event loop
    (at once when called there)."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def heartbeat(details: Sequence[Any]) -> None:
        if threading.get_ident() == loop_thread:
            record(details)
        else:
            loop.call_soon_threadsafe(record, details)

    return heartbeat


class AsyncRunner(Runner):
    """Runs ``async def`` activities on the worker's event loop, inside the
    attempt's own task, and cancels them with ``Task.cancel()``. The attempt
    delivers cancellation only while the function runs, so the
    ``asyncio.CancelledError`` lands in the activity's code (one that came
    before the call began keeps the call from beginning)."""

    def __init__(self) -> None:
        self._tasks: dict[int, asyncio.Task[Any]] = {}

    async def run(self, definition: _Definition, context: _Context, args: Sequence[Any]) -> Any:
        task = asyncio.current_task()
        assert task is not None
        if context.details is not None:
            # It came before the call began: the call does not begin (as in a
            # thread). Not task.cancel(): a function that never awaits would
            # leave that pending for the outcome's report.
            raise asyncio.CancelledError()
        key = id(context)
        self._tasks[key] = task
        token = _current.set(context)
        try:
            with _auto_heartbeat(definition):
                return await definition.fn(*args)
        finally:
            _current.reset(token)
            del self._tasks[key]
            if context.details is not None:
                _uncancel(task)

    def deliver_cancel(self, context: _Context) -> None:
        task = self._tasks.get(id(context))
        if task is not None:
            task.cancel()

    def threadsafe(self, record: HeartbeatRecorder) -> HeartbeatRecorder:
        # activity.heartbeating() beats from a thread of its own.
        return from_any_thread(record)


def _uncancel(task: asyncio.Task[Any]) -> None:
    """Forget delivered cancel requests (Python 3.11+): the activity let the
    cancel out or swallowed it, and either way later awaits of this task (the
    outcome report) must not be cancelled."""
    cancelling = getattr(task, "cancelling", None)
    uncancel = getattr(task, "uncancel", None)
    if cancelling is not None and uncancel is not None:
        while cancelling():
            uncancel()
