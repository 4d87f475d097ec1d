"""Running plain ``def`` activities on a thread pool.

The attempt's context follows the call into the thread (``info()``,
``heartbeat()``, ``is_cancelled()`` work there). Cancellation sets the
attempt's flag, and unless the activity was defined with
``no_thread_cancel_exception``, raises ``errands.exceptions.CancelledError``
inside the thread with ``PyThreadState_SetAsyncExc``: it lands at the
thread's next Python bytecode, so a thread blocked in a C call (``time.sleep``,
a socket read) sees it only when that call returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import threading
from collections.abc import Sequence
from typing import Any

from errands.activity import _Context, _current, _Definition, _shield_target
from errands.exceptions import CancelledError
from errands.worker._runner import HeartbeatRecorder, Runner, from_any_thread


def _raise_in_thread(thread_id: int, error: type[BaseException] | None) -> None:
    """Schedule ``error`` in the thread; None clears a pending one (a NULL
    pointer, which is what ctypes passes for None without argtypes)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), None if error is None else ctypes.py_object(error)
    )


class _ThreadCall:
    """One attempt's call on a pool thread. ``lock`` guards the hand-off
    between the loop (which raises the cancel) and the thread (which ends)."""

    __slots__ = ("deferred", "done", "lock", "raise_on_cancel", "shield_depth", "thread_id")

    def __init__(self, raise_on_cancel: bool) -> None:
        self.lock = threading.Lock()
        self.thread_id: int | None = None
        self.done = False
        self.raise_on_cancel = raise_on_cancel
        self.shield_depth = 0
        self.deferred = False  # a cancel arrived inside a shield block

    def enter_shield(self) -> None:
        with self.lock:
            self.shield_depth += 1

    def exit_shield(self) -> bool:
        with self.lock:
            self.shield_depth -= 1
            if self.shield_depth == 0 and self.deferred:
                self.deferred = False
                return True
            return False

    def raise_cancel(self) -> None:
        """Raise ``CancelledError`` in the call's thread, or defer it to the end
        of a shield block; nothing if the call has not started or has ended,
        or its activity was defined with ``no_thread_cancel_exception``."""
        if not self.raise_on_cancel:
            return
        with self.lock:
            if self.done or self.thread_id is None:
                return
            if self.shield_depth:
                self.deferred = True
                return
            _raise_in_thread(self.thread_id, CancelledError)

    def end(self) -> None:
        """The call returned or raised, in its own thread: no cancel is raised
        after this, and one raised too late to land is withdrawn (it must not
        hit whatever the thread runs next)."""
        with self.lock:
            self.done = True
            if self.thread_id is not None:
                _raise_in_thread(self.thread_id, None)


class ThreadRunner(Runner):
    """Runs sync activities on a ``ThreadPoolExecutor`` (or any executor
    whose calls run on threads of this process)."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self._calls: dict[int, _ThreadCall] = {}

    def threadsafe(self, record: HeartbeatRecorder) -> HeartbeatRecorder:
        return from_any_thread(record)

    async def run(self, definition: _Definition, context: _Context, args: Sequence[Any]) -> Any:
        call = _ThreadCall(raise_on_cancel=not definition.no_thread_cancel_exception)
        key = id(context)
        self._calls[key] = call
        ctx = contextvars.copy_context()
        ctx.run(_current.set, context)
        ctx.run(_shield_target.set, call)
        fn = definition.fn

        def in_thread() -> Any:
            call.thread_id = threading.get_ident()
            try:
                return fn(*args)
            finally:
                call.end()

        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, ctx.run, in_thread
            )
        finally:
            del self._calls[key]

    def deliver_cancel(self, context: _Context) -> None:
        call = self._calls.get(id(context))
        if call is not None:
            call.raise_cancel()
