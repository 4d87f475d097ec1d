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

from errands.activity import (
    _auto_heartbeat,
    _Context,
    _current,
    _Definition,
    _shield_target,
    _Signal,
)
from errands.exceptions import CancelledError
from errands.worker._runner import HeartbeatRecorder, Runner, from_any_thread


def _raise_in_thread(thread_id: int, error: type[BaseException]) -> None:
    """Schedule ``error`` in the thread, to be raised at its next bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(error))


def _let_pending_cancel_land() -> None:
    """Give a cancel raised into this thread a place to land, and swallow it.

    Withdrawing it with ``SetAsyncExc(tid, NULL)`` instead would leave, on
    Python 3.11, the interpreter's "async exception pending" flag set for good:
    the next call made under a profiler or tracer then spins forever. The loop's
    backward jumps are where the interpreter checks for the exception.
    """
    try:
        for _ in range(1000):
            pass
    except CancelledError:
        pass


class _ThreadCall:
    """One attempt's call on a pool thread. ``lock`` guards the hand-off
    between the loop (which raises the cancel) and the thread (which ends)."""

    __slots__ = (
        "cancelled",
        "deferred",
        "done",
        "lock",
        "queued_cancel",
        "raise_on_cancel",
        "raised",
        "shield_depth",
        "thread_id",
    )

    def __init__(self, raise_on_cancel: bool, cancelled: _Signal) -> None:
        self.cancelled = cancelled
        """The attempt's cancel signal: set just before ``raise_cancel``."""
        self.lock = threading.Lock()
        self.thread_id: int | None = None
        self.done = False
        self.raise_on_cancel = raise_on_cancel
        self.shield_depth = 0
        self.deferred = False  # a cancel arrived inside a shield block
        self.queued_cancel = False  # a cancel arrived while the call waited for a thread
        self.raised = False  # a cancel was raised into the thread (at most one is)

    def enter_shield(self) -> None:
        with self.lock:
            self.shield_depth += 1

    def exit_shield(self) -> bool:
        """The thread leaves a shield block: True if it must raise the cancel
        now. That is so when one was deferred, and also when the cancel was
        signalled but its raise has not come yet (it would otherwise land
        some bytecodes later, after code that should not run)."""
        with self.lock:
            self.shield_depth -= 1
            if self.shield_depth:
                return False
            signalled = self.raise_on_cancel and not self.raised and self.cancelled.is_set()
            if self.deferred or signalled:
                self.deferred = False
                self.raised = True  # the loop's raise_cancel, when it comes, does nothing
                return True
            return False

    def begin(self, thread_id: int) -> bool:
        """The call starts in its thread; True if a cancel arrived while it
        waited in the executor's queue (it must not run unaware of it)."""
        with self.lock:
            self.thread_id = thread_id
            return self.queued_cancel

    def raise_cancel(self) -> None:
        """Raise ``CancelledError`` in the call's thread, or defer it to the end
        of a shield block, or to the start of a call still waiting for a
        thread; nothing if the call has ended, or its activity was defined
        with ``no_thread_cancel_exception``."""
        if not self.raise_on_cancel:
            return
        with self.lock:
            if self.done or self.raised:
                return
            if self.thread_id is None:
                self.queued_cancel = True
                return
            if self.shield_depth:
                self.deferred = True
                return
            self.raised = True
            _raise_in_thread(self.thread_id, CancelledError)

    def end(self) -> None:
        """The call returned or raised, in its own thread: no cancel is raised
        after this, and one raised that has not landed yet lands here (it must
        not hit whatever the thread runs next)."""
        with self.lock:
            self.done = True
            raised = self.raised
        if raised:
            _let_pending_cancel_land()


class ThreadRunner(Runner):
    """Runs sync activities on a ``ThreadPoolExecutor`` (or any executor
    whose calls run on threads of this process)."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self._calls: dict[int, _ThreadCall] = {}

    def threadsafe(self, record: HeartbeatRecorder) -> HeartbeatRecorder:
        return from_any_thread(record)

    async def run(self, definition: _Definition, context: _Context, args: Sequence[Any]) -> Any:
        call = _ThreadCall(not definition.no_thread_cancel_exception, context.cancelled)
        key = id(context)
        self._calls[key] = call
        if context.details is not None:
            call.raise_cancel()  # it came before the call began: the call does not begin
        ctx = contextvars.copy_context()
        ctx.run(_current.set, context)
        ctx.run(_shield_target.set, call)
        fn = definition.fn

        def in_thread() -> Any:
            try:
                if call.begin(threading.get_ident()):
                    raise CancelledError()
                with _auto_heartbeat(definition):
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
