"""Running plain ``def`` activities on a process pool.

The function, its arguments and its result cross the process boundary by
pickle; a failure to pickle is a non-retryable failure of the attempt, not a
hung worker. In the child the activity has its context (``info()``,
``heartbeat()``, ``is_cancelled()``, ``wait_for_cancelled_sync()``,
``cancellation_details()``, ``is_worker_shutdown()``, ``activity.logger``);
heartbeats and log records travel back through the ``SharedStateManager``.

Each child process keeps a thread that ships the latest heartbeat details and
log records (a manager put is a blocking round trip, and ``heartbeat()`` must
not block), and, per worker it serves, a watcher thread that blocks on that
worker's wake-up event in the manager (see ``_shared_state``) and reads the
worker's requests when woken: a cancel request or the worker's shutdown
reaches the child in a round trip or two, and a child waiting on a long
activity makes one manager call every WAKE_WAIT_S. Cancellation, beyond
Temporal: a stdlib ``ProcessPoolExecutor`` runs calls in the child's main
thread, so on a cancel request the watcher signals its own process (SIGUSR1)
and the handler raises ``errands.exceptions.CancelledError`` while that same
attempt runs. Unlike a thread's, this also interrupts ``time.sleep`` and
blocking system calls. The main thread itself never calls the manager while
an activity runs: a signal landing in the middle of a round trip would leave
its connection out of step.

A dead child breaks a stdlib pool for good: every attempt in flight fails
retryably and the runner replaces the pool with a new one of the same size and
start method, which it then owns and shuts down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from errands.activity import (
    ActivityCancellationDetails,
    Info,
    _Context,
    _current,
    _Definition,
    _shield_target,
    _Signal,
    heartbeating,
)
from errands.converter import PayloadConverter
from errands.exceptions import ApplicationError, CancelledError
from errands.worker._runner import HeartbeatRecorder, Runner
from errands.worker._shared_state import (
    ChildChannel,
    Requests,
    SharedStateManager,
    ThrottledLog,
)
from errands.worker._watchdog import die_with

logger = logging.getLogger("errands.worker")

WAKE_WAIT_S = 2.0
"""Longest one wait of a child's watcher on the manager's wake-up event. A wait
that ends with no news retires the watcher if its worker has given the child
nothing to run for that long; otherwise the watcher reads the requests again,
a cheap safety net."""

RETRY_S = 1.0
"""How long a watcher whose manager call failed waits before trying again."""

_FROM_ACTIVITY = "__errands_raised_by_activity__"
"""Set on exceptions the activity raised, so the worker tells them from the
pool's own (pickling, a dead child). Exceptions pickle their __dict__."""

_LAST_HEARTBEAT = "__errands_last_heartbeat__"
"""Set on an activity's exception: its latest heartbeat details."""


# --------------------------------------------------------------------------- the child


@dataclasses.dataclass(frozen=True)
class _ChildSpec:
    """What a child needs for one attempt (pickled into the call)."""

    info: Info
    channel: ChildChannel
    payload_converter: PayloadConverter
    raise_on_cancel: bool
    log_level: int
    """The worker's effective level for ``errands.activity``: a spawned child's
    logging is unconfigured (WARNING), which would drop ``logger.info``."""
    worker_shutdown: bool
    """Whether the worker was shutting down when it sent the call (its
    watcher in the child may not have read it yet)."""
    worker_pid: int
    """The worker's process: the child ends when it does (``_watchdog``)."""
    auto_heartbeat: bool
    """Whether the activity runs inside ``activity.heartbeating()``."""
    heartbeat_every_s: float
    """How often ``heartbeating()`` beats: the worker's throttle interval."""


class _ChildAttempt:
    """The attempt running in this child's main thread."""

    def __init__(self, spec: _ChildSpec, watch: _Watch) -> None:
        self.spec = spec
        self.watch = watch
        self.context = _Context(
            info=lambda: spec.info,
            heartbeat=self.heartbeat,
            cancelled=_Signal(),
            worker_shutdown=watch.shutdown,
            payload_converter=spec.payload_converter,
            client=None,
            heartbeat_every_s=spec.heartbeat_every_s,
        )
        # Re-entrant: the SIGUSR1 handler takes it on the main thread, which may
        # hold it already (a signal handler runs between any two bytecodes).
        self.lock = threading.RLock()
        self.running = False  # until start(): a cancel before marks it, and start() raises it
        self.shield_depth = 0
        self.deferred = False
        self.must_raise = False
        self.latest: Sequence[Any] | None = None  # the latest details heartbeat() took
        self.unsent = False

    def heartbeat(self, details: Sequence[Any]) -> None:
        self.latest = details
        self.unsent = True
        _child.ship.set()

    def start(self) -> None:
        """On the main thread, just before the function runs: from now on a
        cancel is raised by signal; one that came before is raised here."""
        with self.lock:
            self.running = True
            raise_now = self.context.details is not None and self.spec.raise_on_cancel
        if raise_now:
            raise CancelledError()

    def cancel(self, flags: dict[str, bool]) -> bool:
        """The worker asked to cancel this attempt: mark it, once; True if the
        watcher must now signal the main thread to raise CancelledError."""
        with self.lock:
            if self.context.details is not None:
                return False
            self.context.details = ActivityCancellationDetails(**flags)
            self.context.cancelled.set()
            if not self.spec.raise_on_cancel or not self.running:
                return False
            if self.shield_depth:
                self.deferred = True
                return False
            self.must_raise = True
            return True

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


class _Watch:
    """Carries one worker's requests into this child: a thread blocked on the
    worker's wake-up event, which reads the requests each time it is woken."""

    def __init__(self, channel: ChildChannel, key: Hashable) -> None:
        self.channel = channel
        self.key = key
        self.cancels: Mapping[bytes, dict[str, bool]] = {}  # as of the last read
        self.shutdown = _Signal()
        self.last_active = time.monotonic()  # when an attempt of this worker last ended
        threading.Thread(target=self._run, name="errands-watch", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self._apply(self.channel.read_requests())
                woken = self.channel.wait_for_requests(WAKE_WAIT_S)
            except Exception as e:  # the manager is gone or failing: cancels cannot arrive
                _complaints.warning(
                    "watch", "a process-pool child cannot read its worker's requests: %r", e
                )
                time.sleep(RETRY_S)
                woken = False
            if not woken and _child.retire_if_idle(self):
                return

    def _apply(self, requests: Requests) -> None:
        with _child.lock:
            self.cancels = requests.cancels
            attempt = _child.attempt
        if requests.worker_shutdown:
            self.shutdown.set()
        if attempt is None or attempt.watch is not self:
            return
        flags = requests.cancels.get(attempt.spec.info.task_token)
        if flags is not None and attempt.cancel(flags):
            os.kill(os.getpid(), signal.SIGUSR1)


class _Child:
    """Per child process: the current attempt and the threads that serve it."""

    def __init__(self) -> None:
        self.attempt: _ChildAttempt | None = None
        # Guards attempt and watches between the main thread and the watchers.
        self.lock = threading.Lock()
        self.watches: dict[Hashable, _Watch] = {}
        self.ship = threading.Event()
        self.logs: queue.SimpleQueue[tuple[ChildChannel, logging.LogRecord]] = queue.SimpleQueue()
        self.ready = False

    def begin(self, spec: _ChildSpec) -> _ChildAttempt:
        """Make the attempt current (not yet running), marked cancelled if its
        watcher already read a cancel request for it."""
        if not self.ready:
            self.ready = True
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGUSR1, _on_sigusr1)
            logging.getLogger("errands.activity").addHandler(_ForwardToWorker())
            threading.Thread(target=self._ship, name="errands-heartbeats", daemon=True).start()
        key = spec.channel.key()
        with self.lock:
            watch = self.watches.get(key)
            if watch is None:
                watch = self.watches[key] = _Watch(spec.channel, key)
            attempt = self.attempt = _ChildAttempt(spec, watch)
            flags = watch.cancels.get(spec.info.task_token)
        if spec.worker_shutdown:
            watch.shutdown.set()
        if flags is not None:
            attempt.cancel(flags)
        return attempt

    def end(self, attempt: _ChildAttempt) -> None:
        """The call returned or raised. A cancel signal may land in here (once:
        its handler clears must_raise before it raises); the cleanup still runs."""
        try:
            with attempt.lock:
                attempt.running = False
                attempt.must_raise = False
        finally:
            with self.lock:
                self.attempt = None
                attempt.watch.last_active = time.monotonic()

    def retire_if_idle(self, watch: _Watch) -> bool:
        """On a watcher after a quiet wait: forget the watch (its thread then
        ends) if no attempt of its worker ran for WAKE_WAIT_S."""
        with self.lock:
            attempt = self.attempt
            if attempt is not None and attempt.watch is watch:
                return False
            if time.monotonic() - watch.last_active < WAKE_WAIT_S:
                return False
            del self.watches[watch.key]
            return True

    def _ship(self) -> None:
        # The only thread that sends to the worker: if the manager is stuck, it
        # is stuck here, and the activity runs on (its result travels by the pool).
        while True:
            self.ship.wait()
            self.ship.clear()
            while True:
                try:
                    channel, record = self.logs.get_nowait()
                except queue.Empty:
                    break
                try:
                    channel.send_log(record)
                except Exception as e:
                    _complaints.warning(
                        "log", "a process-pool child could not send a log record: %r", e
                    )
            attempt = self.attempt
            if attempt is None or not attempt.unsent or attempt.latest is None:
                continue
            attempt.unsent = False
            try:
                attempt.spec.channel.send_heartbeat(attempt.spec.info.task_token, attempt.latest)
            except Exception as e:  # the worker gets the latest details with the result
                _complaints.warning(
                    "heartbeat", "a process-pool child could not send a heartbeat: %r", e
                )


_child = _Child()

_complaints = ThrottledLog(logger)
"""A child's failures to reach its worker: they go to the child's own logging
(stderr unless configured), since the way to the worker is what failed."""


def _on_sigusr1(signum: int, frame: Any) -> None:
    attempt = _child.attempt
    if attempt is None:
        return
    with attempt.lock:
        if not (attempt.running and attempt.must_raise):
            return
        attempt.must_raise = False
    raise CancelledError()


class _ForwardToWorker(logging.Handler):
    """Sends ``activity.logger`` records of the running attempt to the worker."""

    def emit(self, record: logging.LogRecord) -> None:
        attempt = _child.attempt
        if attempt is None:
            return
        try:
            record.msg = record.getMessage()
            record.args = None
            record.exc_info = None
        except Exception:
            self.handleError(record)
            return
        _child.logs.put((attempt.spec.channel, record))  # shipped by its thread: never blocks
        _child.ship.set()


def _run_in_child(
    fn: Callable[..., Any], args: Sequence[Any], spec: _ChildSpec
) -> tuple[Any, Sequence[Any] | None]:
    """The call a pool child makes: run the activity with its context; return
    its result and its latest heartbeat details (so none is lost in flight)."""
    die_with(spec.worker_pid)
    activity_logger = logging.getLogger("errands.activity")
    if activity_logger.level != spec.log_level:
        activity_logger.setLevel(spec.log_level)
    attempt = _child.begin(spec)
    current_token = _current.set(attempt.context)
    shield_token = _shield_target.set(attempt)
    try:
        try:
            attempt.start()
            with heartbeating() if spec.auto_heartbeat else contextlib.nullcontext():
                result = fn(*args)
        finally:
            # After end() the SIGUSR1 handler raises nothing; a cancel landing
            # before it (even here) is caught below and marked as the activity's.
            try:
                _child.end(attempt)
            finally:
                _shield_target.reset(shield_token)
                _current.reset(current_token)
    except BaseException as e:
        setattr(e, _FROM_ACTIVITY, True)
        setattr(e, _LAST_HEARTBEAT, attempt.latest)
        raise
    return result, attempt.latest


# --------------------------------------------------------------------------- the worker side


class _Recorder:
    """The attempt's heartbeat recorder, callable from any thread (the shared
    state's reader), and directly on the loop (``direct``)."""

    def __init__(self, record: HeartbeatRecorder) -> None:
        self.direct = record
        self._loop = asyncio.get_running_loop()

    def __call__(self, details: Sequence[Any]) -> None:
        self._loop.call_soon_threadsafe(self.direct, details)


class ProcessRunner(Runner):
    """Runs sync activities on a process pool through a SharedStateManager."""

    def __init__(self, executor: concurrent.futures.Executor, manager: SharedStateManager) -> None:
        self._executor = executor
        self._owned: list[concurrent.futures.Executor] = []
        self._manager = manager
        self._tokens: dict[int, bytes] = {}
        self._cancel_sent: set[bytes] = set()  # unregistering these is a manager round trip
        self._signalling: set[asyncio.Future[None]] = set()

    def threadsafe(self, record: HeartbeatRecorder) -> HeartbeatRecorder:
        return _Recorder(record)

    async def run(self, definition: _Definition, context: _Context, args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        token = context.info.task_token
        self._manager.register_heartbeater(token, context.heartbeat)
        key = id(context)
        self._tokens[key] = token
        if context.details is not None:
            self.deliver_cancel(context)
        spec = _ChildSpec(
            info=context.info,
            channel=self._manager.child_channel(),
            payload_converter=context.payload_converter,
            raise_on_cancel=not definition.no_thread_cancel_exception,
            log_level=logging.getLogger("errands.activity").getEffectiveLevel(),
            worker_shutdown=context.worker_shutdown.is_set(),
            worker_pid=os.getpid(),
            auto_heartbeat=definition.auto_heartbeat,
            heartbeat_every_s=context.heartbeat_every_s,
        )
        executor = self._executor
        direct = getattr(context.heartbeat, "direct", context.heartbeat)
        try:
            result, latest = await loop.run_in_executor(
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
            if isinstance(e, asyncio.CancelledError):
                raise
            if getattr(e, _FROM_ACTIVITY, False):
                latest = getattr(e, _LAST_HEARTBEAT, None)
                if latest is not None:
                    direct(latest)
                raise
            raise ApplicationError(
                f"activity {definition.name!r} could not run in the process pool: "
                f"{type(e).__name__}: {e} (its function, arguments and result must pickle)",
                type=type(e).__name__,
                non_retryable=True,
            ) from e
        finally:
            del self._tokens[key]
            if token in self._cancel_sent:
                self._cancel_sent.discard(token)
                try:
                    await _off_loop(self._manager.unregister_heartbeater, token)
                except Exception as e:
                    logger.warning("could not clear a cancel request in the shared state: %r", e)
            else:
                self._manager.unregister_heartbeater(token)
        if latest is not None:
            direct(latest)
        return result

    def deliver_cancel(self, context: _Context) -> None:
        token = self._tokens.get(id(context))
        if token is None or context.details is None:
            return
        flags = dataclasses.asdict(context.details)
        self._cancel_sent.add(token)
        sending = asyncio.ensure_future(_off_loop(self._manager.request_cancel, token, flags))
        self._signalling.add(sending)
        sending.add_done_callback(self._signal_sent)

    def _signal_sent(self, sending: asyncio.Future[None]) -> None:
        self._signalling.discard(sending)
        if not sending.cancelled() and sending.exception() is not None:
            logger.error(
                "could not deliver cancellation to a process-pool activity: %s",
                sending.exception(),
            )

    async def worker_shutdown(self) -> None:
        """Tell children the worker is shutting down (is_worker_shutdown())."""
        try:
            await _off_loop(self._manager.set_worker_shutdown)
        except Exception:
            logger.exception("could not tell process-pool activities of the shutdown")

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


MANAGER_CALL_TIMEOUT_S = 5.0
"""Longest the worker waits on one call to the shared-state manager."""


_Call = tuple[Callable[[], None], Callable[[BaseException | None], None]]
"""A manager call, and what to call with its exception (or None) once it returned."""


class _CallThreads:
    """Daemon threads for the worker's calls to the manager. An idle one takes
    the next call: it keeps its connection to the manager, where a thread of
    its own per call would connect afresh each time. A call stuck in a frozen
    manager holds its thread, and the next call starts another."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._free = 0  # threads idle or about to be, less the calls queued for them

    def submit(self, fn: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
        """Run ``fn`` on an idle thread (a new one if none is), then ``done``
        with its exception or None."""
        with self._lock:
            if self._free == 0:
                self._free += 1
                threading.Thread(
                    target=self._serve, name="errands-shared-state-call", daemon=True
                ).start()
            self._free -= 1
        self._calls.put((fn, done))

    def _serve(self) -> None:
        while True:
            fn, done = self._calls.get()
            error: BaseException | None = None
            try:
                fn()
            except BaseException as e:
                error = e
            with self._lock:
                self._free += 1  # before done(): the caller's next call finds this thread
            done(error)


_call_threads = _CallThreads()


async def _off_loop(fn: Callable[..., None], *args: Any) -> None:
    """Call the manager on a daemon thread, waiting at most
    MANAGER_CALL_TIMEOUT_S: a stuck manager must hang neither the loop nor,
    at exit, the interpreter (which joins the default executor's threads).

    Raises TimeoutError if the call did not return in time.
    """
    loop = asyncio.get_running_loop()
    settled: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if settled.done():
            return  # timed out already
        if error is None:
            settled.set_result(None)
        else:
            settled.set_exception(error)

    def done(error: BaseException | None) -> None:
        # RuntimeError: the loop closed while the call was stuck; nobody waits for it now.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, error)

    _call_threads.submit(functools.partial(fn, *args), done)
    await asyncio.wait_for(settled, MANAGER_CALL_TIMEOUT_S)


def pool_size(executor: concurrent.futures.Executor) -> int | None:
    """How many calls a stdlib pool runs at once (None if it does not say)."""
    size = getattr(executor, "_max_workers", None)
    return size if isinstance(size, int) else None
