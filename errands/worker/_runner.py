"""Runners: how an activity function is called and how cancellation reaches it.

The worker picks one runner per definition when it is built; this is the only
place that looks at what kind of function, or executor, an activity has.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Any

from errands.activity import _Context, _current, _Definition


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


class AsyncRunner(Runner):
    """Runs ``async def`` activities on the worker's event loop, in their own task,
    and cancels them with ``Task.cancel()``."""

    def __init__(self) -> None:
        self._tasks: dict[int, asyncio.Task[Any]] = {}

    async def run(self, definition: _Definition, context: _Context, args: Sequence[Any]) -> Any:
        token = _current.set(context)
        try:
            # The task copies the current context, so the activity sees its own.
            task = asyncio.ensure_future(definition.fn(*args))
        finally:
            _current.reset(token)
        key = id(context)
        self._tasks[key] = task
        try:
            return await task
        finally:
            del self._tasks[key]

    def deliver_cancel(self, context: _Context) -> None:
        task = self._tasks.get(id(context))
        if task is not None:
            task.cancel()
