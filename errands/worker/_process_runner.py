"""Running plain ``def`` activities on a process pool.

The function, its arguments and its result cross the process boundary by
pickle; a failure to pickle is a non-retryable failure of the attempt, not a
hung worker. In the child the activity has its context (``info()``,
``heartbeat()``, ``is_cancelled()``, ``wait_for_cancelled_sync()``,
``cancellation_details()``, ``activity.logger``); heartbeats and log records
travel back through the ``SharedStateManager``.

Cancellation, beyond Temporal: a stdlib ``ProcessPoolExecutor`` runs calls in
the child's main thread, so the child installs a SIGUSR1 handler and a watcher
thread that waits on the attempt's cross-process event and signals its own
process; the handler raises ``errands.exceptions.CancelledError`` while that
same attempt runs. Unlike a thread's, this also interrupts ``time.sleep`` and
blocking system calls.

A dead child breaks a stdlib pool for good: every attempt in flight fails
retryably and the runner replaces the pool with a new one of the same size and
start method, which it then owns and shuts down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from errands.activity import (
    ActivityCancellationDetails,
    Info,
    _Context,
    _current,
    _Definition,
    _shield_target,
    _Signal,
)
from errands.converter import PayloadConverter
from errands.exceptions import ApplicationError, CancelledError
from errands.worker._runner import HeartbeatRecorder, Runner, from_any_thread
from errands.worker._shared_state import (
    CrossProcessEvent,
    SharedHeartbeatSender,
    SharedStateManager,
)

logger = logging.getLogger("errands.worker")

_FROM_ACTIVITY = "__errands_raised_by_activity__"
"""Set on exceptions the activity raised, so the worker tells them from the
pool's own (pickling, a dead child). Exceptions pickle their __dict__."""


# --------------------------------------------------------------------------- the child


@dataclasses.dataclass(frozen=True)
class _ChildSpec:
    """Everything a child needs for one attempt (pickled into the call)."""

    info: Info
    cancel_event: CrossProcessEvent
    shutdown_event: CrossProcessEvent
    details: MutableMapping[bytes, dict[str, bool]]  # task token -> cancellation flags
    sender: SharedHeartbeatSender
    payload_converter: PayloadConverter
    raise_on_cancel: bool


class _EventSignal(_Signal):
    """A child's view of a cross-process event."""

    __slots__ = ("_remote",)

    def __init__(self, remote: CrossProcessEvent) -> None:
        super().__init__()
        self._remote = remote

    def is_set(self) -> bool:
        return self._set or self._remote.is_set()

    def wait_sync(self, timeout: float | None) -> bool:
        return self._set or self._remote.wait(timeout)


class _ChildAttempt:
    """The attempt running in this child's main thread."""

    def __init__(self, spec: _ChildSpec) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.running = True
        self.shield_depth = 0
        self.deferred = False
        self.must_raise = False
        self.pending_details: Sequence[Any] | None = None
        self.wake_shipper = threading.Event()

    # heartbeats: stored here, shipped by a thread (a manager put is a round trip)
    def heartbeat(self, details: Sequence[Any]) -> None:
        self.pending_details = details
        self.wake_shipper.set()

    def ship_heartbeats(self) -> None:
        token = self.spec.info.task_token
        while True:
            self.wake_shipper.wait()
            self.wake_shipper.clear()
            details, self.pending_details = self.pending_details, None
            if details is not None:
                try:
                    self.spec.sender.send_heartbeat(token, details)
                except Exception:  # the manager is gone: the worker will time us out
                    return
            if not self.running and self.pending_details is None:
                return

    # cancellation
    def watch_cancel(self, context: _Context) -> None:
        spec = self.spec
        while self.running:
            try:
                if not spec.cancel_event.wait(0.25):
                    continue
                flags = spec.details.get(spec.info.task_token) or {}
            except Exception:
                return  # the manager is gone
            context.details = ActivityCancellationDetails(**flags)
            context.cancelled.set()
            if spec.raise_on_cancel:
                with self.lock:
                    if not self.running:
                        return
                    if self.shield_depth:
                        self.deferred = True
                        return
                    self.must_raise = True
                os.kill(os.getpid(), signal.SIGUSR1)
            return

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


_child_attempt: _ChildAttempt | None = None
_handler_installed = False


def _on_sigusr1(signum: int, frame: Any) -> None:
    attempt = _child_attempt
    if attempt is None:
        return
    with attempt.lock:
        if not (attempt.running and attempt.must_raise):
            return
        attempt.must_raise = False
    raise CancelledError()


class _ForwardToWorker(logging.Handler):
    def __init__(self, sender: SharedHeartbeatSender) -> None:
        super().__init__()
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            record.exc_info = None
            self.sender.send_log(record)
        except Exception:
            self.handleError(record)


def _run_in_child(fn: Callable[..., Any], args: Sequence[Any], spec: _ChildSpec) -> Any:
    """The call a pool child makes: set up the context, run, clean up."""
    global _child_attempt, _handler_installed
    if not _handler_installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, _on_sigusr1)
        _handler_installed = True
    attempt = _ChildAttempt(spec)
    context = _Context(
        info=lambda: spec.info,
        heartbeat=attempt.heartbeat,
        cancelled=_EventSignal(spec.cancel_event),
        worker_shutdown=_EventSignal(spec.shutdown_event),
        payload_converter=spec.payload_converter,
        client=None,
    )
    activity_logger = logging.getLogger("errands.activity")
    forward = _ForwardToWorker(spec.sender)
    activity_logger.addHandler(forward)
    activity_logger.propagate = False
    current_token = _current.set(context)
    shield_token = _shield_target.set(attempt)
    _child_attempt = attempt
    threading.Thread(target=attempt.ship_heartbeats, daemon=True).start()
    threading.Thread(target=attempt.watch_cancel, args=(context,), daemon=True).start()
    try:
        return fn(*args)
    except BaseException as e:
        setattr(e, _FROM_ACTIVITY, True)
        raise
    finally:
        with attempt.lock:
            attempt.running = False
            attempt.must_raise = False
        attempt.wake_shipper.set()
        _child_attempt = None
        _shield_target.reset(shield_token)
        _current.reset(current_token)
        activity_logger.removeHandler(forward)


# --------------------------------------------------------------------------- the worker side


class ProcessRunner(Runner):
    """Runs sync activities on a process pool through a SharedStateManager."""

    def __init__(self, executor: concurrent.futures.Executor, manager: SharedStateManager) -> None:
        self._executor = executor
        self._owned: list[concurrent.futures.Executor] = []
        self._manager = manager
        self._shutdown_event: CrossProcessEvent | None = None
        self._details: MutableMapping[bytes, dict[str, bool]] | None = None
        self._events: dict[int, tuple[bytes, CrossProcessEvent]] = {}
        self._signalling: set[asyncio.Future[None]] = set()

    def threadsafe(self, record: HeartbeatRecorder) -> HeartbeatRecorder:
        return from_any_thread(record)

    async def _shared(
        self,
    ) -> tuple[CrossProcessEvent, MutableMapping[bytes, dict[str, bool]]]:
        if self._shutdown_event is None:
            loop = asyncio.get_running_loop()
            self._shutdown_event = await loop.run_in_executor(None, self._manager.new_event)
            self._details = await loop.run_in_executor(None, self._manager.new_dict)
        assert self._details is not None
        return self._shutdown_event, self._details

    async def run(self, definition: _Definition, context: _Context, args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        shutdown_event, details = await self._shared()
        info = context.info
        token = info.task_token
        cancel_event = await loop.run_in_executor(None, self._manager.new_event)
        sender = self._manager.register_heartbeater(token, context.heartbeat)
        key = id(context)
        self._events[key] = (token, cancel_event)
        if context.cancelled.is_set():
            await self._signal(key, context)
        spec = _ChildSpec(
            info=info,
            cancel_event=cancel_event,
            shutdown_event=shutdown_event,
            details=details,
            sender=sender,
            payload_converter=context.payload_converter,
            raise_on_cancel=not definition.no_thread_cancel_exception,
        )
        executor = self._executor
        try:
            return await loop.run_in_executor(
                executor, _run_in_child, definition.fn, list(args), spec
            )
        except concurrent.futures.process.BrokenProcessPool as e:
            self._replace(executor)
            raise ApplicationError(
                f"the process running activity {definition.name!r} died ({e}); "
                "the pool was replaced",
                type="BrokenProcessPool",
            ) from e
        except BaseException as e:
            if getattr(e, _FROM_ACTIVITY, False) or isinstance(e, asyncio.CancelledError):
                raise
            raise ApplicationError(
                f"activity {definition.name!r} could not run in the process pool: "
                f"{type(e).__name__}: {e} (its function, arguments and result must pickle)",
                type=type(e).__name__,
                non_retryable=True,
            ) from e
        finally:
            del self._events[key]
            self._manager.unregister_heartbeater(token)

    def deliver_cancel(self, context: _Context) -> None:
        if id(context) in self._events:
            signalling = asyncio.ensure_future(self._signal(id(context), context))
            self._signalling.add(signalling)
            signalling.add_done_callback(self._signalling.discard)

    async def _signal(self, key: int, context: _Context) -> None:
        found = self._events.get(key)
        if found is None or context.details is None:
            return
        token, event = found
        flags = dataclasses.asdict(context.details)
        loop = asyncio.get_running_loop()

        def send() -> None:
            if self._details is not None:
                self._details[token] = flags
            event.set()

        try:
            await loop.run_in_executor(None, send)
        except Exception:
            logger.exception("could not deliver cancellation to a process-pool activity")

    async def worker_shutdown(self) -> None:
        """Tell children the worker is shutting down (is_worker_shutdown())."""
        if self._shutdown_event is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._shutdown_event.set)

    def _replace(self, broken: concurrent.futures.Executor) -> None:
        if self._executor is not broken or not isinstance(
            broken, concurrent.futures.ProcessPoolExecutor
        ):
            return
        size = pool_size(broken)
        replacement = concurrent.futures.ProcessPoolExecutor(
            max_workers=size, mp_context=getattr(broken, "_mp_context", None)
        )
        logger.warning(
            "a process-pool child died: replacing the broken pool with a new one of %d processes",
            size,
        )
        self._executor = replacement
        self._owned.append(replacement)

    def close(self) -> None:
        """Shut down the pools this runner made, and the shared state."""
        for executor in self._owned:
            executor.shutdown(wait=False, cancel_futures=True)
        self._manager.close()


def pool_size(executor: concurrent.futures.Executor) -> int | None:
    """How many calls a stdlib pool runs at once (None if it does not say)."""
    size = getattr(executor, "_max_workers", None)
    return size if isinstance(size, int) else None
