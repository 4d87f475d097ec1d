"""Unit-testing activities without a worker or a store: :class:`ActivityEnvironment`.

An activity run by the environment sees the same ``errands.activity`` context a
worker gives it (``info()``, ``heartbeat()``, cancellation and shutdown
queries), filled from attributes the test sets, and the test delivers
cancellation and worker shutdown itself. Nothing is stored or sent anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from errands.activity import (
    _DEFINITION_ATTR,
    ActivityCancellationDetails,
    Info,
    _Context,
    _current,
    _Options,
    _shield_target,
    _Signal,
)
from errands.common import MetricMeter
from errands.converter import PayloadConverter
from errands.worker._thread_runner import _ThreadCall

if TYPE_CHECKING:
    from errands.client import Client

__all__ = ["ActivityEnvironment"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_CANCEL_REQUESTED = ActivityCancellationDetails(cancel_requested=True)
"""What a client's ``cancel()`` delivers: the default of ``ActivityEnvironment.cancel``."""


def _ignore_heartbeat(*details: Any) -> None:
    """The default ``on_heartbeat``: heartbeats go nowhere."""


class ActivityEnvironment:
    """Runs activity functions (async or sync) with the activity context set,
    as a worker would, and lets the test cancel them or announce a worker
    shutdown. No store is touched.

    Attributes (set them before :meth:`run`: a run reads ``payload_converter``
    and ``client`` when it starts, ``info`` at the activity's first
    ``activity.info()`` call, ``on_heartbeat`` at each heartbeat):

    - ``info``: what ``activity.info()`` returns; :meth:`default_info` until
      set (change fields with ``dataclasses.replace(env.info, ...)``).
    - ``on_heartbeat``: called with the details of each ``activity.heartbeat(
      *details)`` as positional arguments, in the activity's thread; does
      nothing until set.
    - ``payload_converter``: what ``activity.payload_converter()`` returns; a
      fresh ``errands.converter.PayloadConverter`` until set.
    - ``client``: what ``activity.client()`` returns in async activities; None
      until set, and then ``activity.client()`` raises ``RuntimeError`` (as it
      always does in sync activities).
    - ``metric_meter``: what ``activity.metric_meter()`` builds on (with the
      info's namespace, task queue and activity type); ``MetricMeter.noop``
      until set (as temporalio's).
    """

    def __init__(self, client: Client | None = None) -> None:
        """An environment whose ``activity.client()`` is ``client``."""
        self.info: Info = ActivityEnvironment.default_info()
        self.on_heartbeat: Callable[..., None] = _ignore_heartbeat
        self.payload_converter: PayloadConverter = PayloadConverter()
        self.client: Client | None = client
        self.metric_meter: MetricMeter = MetricMeter.noop
        self._lock = threading.Lock()  # guards the three fields below
        self._runs: set[_Run] = set()
        self._cancellation: ActivityCancellationDetails | None = None
        self._worker_shutdown = False

    @staticmethod
    def default_info() -> Info:
        """A new ``Info`` for a first attempt of activity type ``"unknown"``,
        id ``"test"``, on task queue ``"test"``, scheduled and started now
        (UTC), with temporalio's test timeouts (1 s schedule-to-close and
        start-to-close, which nothing here enforces) and no heartbeat details."""
        now = datetime.now(timezone.utc)
        return Info(
            activity_id="test",
            activity_type="unknown",
            attempt=1,
            current_attempt_scheduled_time=now,
            heartbeat_details=(),
            heartbeat_timeout=None,
            is_local=False,
            schedule_to_close_timeout=timedelta(seconds=1),
            scheduled_time=now,
            start_to_close_timeout=timedelta(seconds=1),
            started_time=now,
            task_queue="test",
            task_token=b"test",
        )

    def run(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Call ``fn(*args, **kwargs)`` inside an activity context and return
        what the call returns.

        ``fn`` may be any callable: an activity (decorated or not), a bound
        method, a callable object. For an async ``fn`` the result is an
        awaitable of the coroutine's result: the function runs in a task of
        its own when that is awaited (so :meth:`cancel` can cancel it). A sync
        ``fn`` runs at once in the calling thread; to cancel it from the event
        loop, run it in another thread (``asyncio.to_thread(env.run, fn)``).

        Raises whatever ``fn`` raises; a delivered cancellation surfaces as
        ``asyncio.CancelledError`` (async) or ``errands.exceptions.CancelledError``
        (sync, unless ``no_thread_cancel_exception``).
        """
        if _is_async(fn):
            return cast(_R, self._run_async(fn, args, kwargs))
        return self._run_sync(fn, args, kwargs)

    def cancel(self, cancellation_details: ActivityCancellationDetails = _CANCEL_REQUESTED) -> None:
        """Deliver cancellation, as a worker does, to the runs in progress and
        to any started later: ``is_cancelled()`` turns true,
        ``wait_for_cancelled()`` / ``wait_for_cancelled_sync()`` return,
        ``cancellation_details()`` returns ``cancellation_details``; an async
        activity's task is cancelled (``asyncio.CancelledError`` inside it); a
        sync activity gets ``errands.exceptions.CancelledError`` raised in its
        thread at its next bytecode (deferred by ``shield_thread_cancel_exception``;
        not at all with ``no_thread_cancel_exception``, nor for a run that
        starts after this call, which only sees the flag). Only the first call
        has an effect. Callable from any thread; an async activity on another
        thread's event loop is told through that loop, soon after this returns.
        Raises nothing."""
        with self._lock:
            if self._cancellation is not None:
                return
            self._cancellation = cancellation_details
            runs = list(self._runs)
        for run in runs:
            run.on_its_loop(run.cancel, cancellation_details, True)

    def worker_shutdown(self) -> None:
        """Tell the runs in progress, and any started later, that the worker is
        shutting down: ``is_worker_shutdown()`` turns true and
        ``wait_for_worker_shutdown()`` / ``wait_for_worker_shutdown_sync()``
        return. Nothing is cancelled. Only the first call has an effect.
        Callable from any thread. Raises nothing."""
        with self._lock:
            if self._worker_shutdown:
                return
            self._worker_shutdown = True
            runs = list(self._runs)
        for run in runs:
            run.on_its_loop(run.context.worker_shutdown.set)

    # ------------------------------------------------------------------ running

    def _context(self, client: Client | None) -> _Context:
        return _Context(
            info=lambda: self.info,
            heartbeat=lambda details: self.on_heartbeat(*details),
            cancelled=_Signal(),
            worker_shutdown=_Signal(),
            payload_converter=self.payload_converter,
            client=client,
            metric_meter=self.metric_meter,
        )

    def _run_sync(self, fn: Callable[..., _R], args: Sequence[Any], kwargs: dict[str, Any]) -> _R:
        context = self._context(client=None)
        call = _ThreadCall(not _no_thread_cancel_exception(fn), context.cancelled)
        call.thread_id = threading.get_ident()
        run = _Run(context, thread_call=call)
        current = _current.set(run.context)
        shield = _shield_target.set(call)
        try:
            self._enter(run)
            return fn(*args, **kwargs)
        finally:
            try:
                call.end()
            finally:
                _shield_target.reset(shield)
                _current.reset(current)
                self._leave(run)

    async def _run_async(
        self, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Any:
        run = _Run(self._context(client=self.client), loop=asyncio.get_running_loop())
        # The task copies ``ctx``, so the context is set inside the activity only.
        ctx = contextvars.copy_context()
        ctx.run(_current.set, run.context)
        task: asyncio.Future[Any] = ctx.run(lambda: asyncio.ensure_future(fn(*args, **kwargs)))
        run.task = task
        self._enter(run)
        try:
            return await task
        finally:
            self._leave(run)

    def _enter(self, run: _Run) -> None:
        """Make ``run`` reachable by cancel() / worker_shutdown(), and give it
        what they already delivered (on its own thread or loop)."""
        with self._lock:
            self._runs.add(run)
            cancellation = self._cancellation
            shutting_down = self._worker_shutdown
        if shutting_down:
            run.context.worker_shutdown.set()
        if cancellation is not None:
            # As temporalio: a sync run that starts cancelled sees the flag, no exception.
            run.cancel(cancellation, False)

    def _leave(self, run: _Run) -> None:
        with self._lock:
            self._runs.discard(run)


class _Run:
    """One ``run`` in progress: its context, and how cancellation reaches it
    (its task on ``loop`` if async, its ``thread_call`` if sync)."""

    __slots__ = ("context", "loop", "task", "thread_call")

    def __init__(
        self,
        context: _Context,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        thread_call: _ThreadCall | None = None,
    ) -> None:
        self.context = context
        self.loop = loop
        self.thread_call = thread_call
        self.task: asyncio.Future[Any] | None = None

    def on_its_loop(self, action: Callable[..., None], *args: Any) -> None:
        """Do ``action(*args)`` now, or, for an async run whose loop is another
        thread's, on that loop (its task and asyncio events are not thread-safe)."""
        loop = self.loop
        if loop is None or _running_loop() is loop:
            action(*args)
            return
        # A closed loop raises RuntimeError: its run is over, there is nothing to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(action, *args)

    def cancel(self, details: ActivityCancellationDetails, raise_in_thread: bool) -> None:
        """Set the flag and details, then interrupt the task or thread."""
        self.context.details = details  # before the flag: a woken waiter reads it
        self.context.cancelled.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.thread_call is not None and raise_in_thread:
            self.thread_call.raise_cancel()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _is_async(fn: Callable[..., Any]) -> bool:
    """An ``async def`` function or method, or an object with an async ``__call__``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _no_thread_cancel_exception(fn: Callable[..., Any]) -> bool:
    """True if ``fn`` was defined with ``@activity.defn(no_thread_cancel_exception=True)``."""
    options = getattr(fn, _DEFINITION_ATTR, None)
    return isinstance(options, _Options) and options.no_thread_cancel_exception
