"""The Worker: validate options and activities once, wire the parts, run and
shut down."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from errands._aio import Flag
from errands._outage import Outage
from errands.activity import ActivityCancellationDetails, _Definition, _Signal
from errands.store import ClaimedTask, WorkerRecord
from errands.store._base import FollowUp
from errands.store._changes import Interrupted
from errands.worker._attempt import Attempt, AttemptEnv
from errands.worker._interceptor import Interceptor
from errands.worker._interrupts import InterruptWatcher, details_for, needs_heartbeat
from errands.worker._loopwatch import LoopWatch
from errands.worker._poller import Poller
from errands.worker._process_runner import ProcessRunner, pool_size
from errands.worker._runner import AsyncRunner, Runner
from errands.worker._shared_state import SharedStateManager
from errands.worker._thread_runner import ThreadRunner
from errands.worker._timers import TimerFirer

if TYPE_CHECKING:
    from errands.client import Client

logger = logging.getLogger("errands.worker")


class _State(enum.Enum):
    """The worker's lifecycle."""

    NEW = 1  # built, not yet run
    RUNNING = 2  # claiming and running activities
    SHUTTING_DOWN = 3  # no new claims; running attempts finish or are cancelled
    STOPPED = 4  # everything ended; cannot run again


class Worker:
    """Runs activities of one task queue, claimed from the client's store.

    Args:
        client: The client whose store, namespace and data converter to use.
        task_queue: The task queue to take activities from.
        activities: Functions (or bound methods) marked with ``@activity.defn``.
        activity_executor: Runs plain ``def`` activities (needed if there are any).
        shared_state_manager: Needed with a non-thread executor.
        max_concurrent_activities: Most attempts running at once. Default 100.
        max_activities_per_second: Most attempts this worker starts per second.
        max_task_queue_activities_per_second: Most attempts all workers of the
            task queue start per second (kept in the store).
        graceful_shutdown_timeout: How long shutdown waits for running attempts
            before cancelling them. Default 0.
        identity: Recorded on each attempt. Default ``pid@hostname``.
        default_heartbeat_throttle_interval: Heartbeat throttle when the activity
            has no heartbeat timeout. Default 30 s.
        max_heartbeat_throttle_interval: Longest heartbeat throttle. Default 60 s.
        blocked_loop_threshold: *(errands)* An async activity that holds the
            worker's event loop longer than this is reported (a warning with
            the activity and its stack). Default 1 s; None turns it off.
        interceptors: Wrap every attempt (``errands.worker.Interceptor``),
            the first outermost. The client's interceptors that are also
            worker interceptors come before them, as temporalio does.

    Raises:
        ValueError: no activities, a name registered twice, two dynamic
            activities, a sync activity without an executor, or a bad option.
        TypeError: an activity not marked with ``@activity.defn``, or an
            interceptor that is not an ``errands.worker.Interceptor``.
    """

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str,
        activities: Sequence[Callable[..., Any]],
        activity_executor: concurrent.futures.Executor | None = None,
        shared_state_manager: SharedStateManager | None = None,
        max_concurrent_activities: int = 100,
        max_activities_per_second: float | None = None,
        max_task_queue_activities_per_second: float | None = None,
        graceful_shutdown_timeout: timedelta = timedelta(0),
        identity: str | None = None,
        default_heartbeat_throttle_interval: timedelta = timedelta(seconds=30),
        max_heartbeat_throttle_interval: timedelta = timedelta(seconds=60),
        blocked_loop_threshold: timedelta | None = timedelta(seconds=1),
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        if not task_queue:
            raise ValueError("Worker needs a task_queue")
        if not activities:
            raise ValueError("Worker needs at least one activity")
        if max_concurrent_activities < 1:
            raise ValueError("max_concurrent_activities must be at least 1")
        for name, rate in (
            ("max_activities_per_second", max_activities_per_second),
            ("max_task_queue_activities_per_second", max_task_queue_activities_per_second),
        ):
            if rate is not None and rate <= 0:
                raise ValueError(f"{name} must be positive")
        if graceful_shutdown_timeout < timedelta(0):
            raise ValueError("graceful_shutdown_timeout must not be negative")
        if blocked_loop_threshold is not None and blocked_loop_threshold <= timedelta(0):
            raise ValueError("blocked_loop_threshold must be positive (or None)")
        self._blocked_loop_s = (
            None if blocked_loop_threshold is None else blocked_loop_threshold.total_seconds()
        )
        for interceptor in interceptors:
            if not isinstance(interceptor, Interceptor):
                raise TypeError(
                    "worker interceptors must be errands.worker.Interceptor instances, got "
                    f"{type(interceptor).__name__}"
                )
        self._interceptors = (
            *(i for i in client.interceptors if isinstance(i, Interceptor)),
            *interceptors,
        )
        self._executor = activity_executor
        self._loop_watch: LoopWatch | None = None
        self._client = client
        self._task_queue = task_queue
        self._identity = identity or f"{os.getpid()}@{socket.gethostname()}"
        self._worker_id = uuid.uuid4().hex
        self._graceful_s = graceful_shutdown_timeout.total_seconds()
        self._async_runner = AsyncRunner()
        self._definitions: dict[str, _Definition] = {}
        self._dynamic: _Definition | None = None
        definitions = [_Definition.from_callable(fn) for fn in activities]
        sync = [d for d in definitions if not d.is_async]
        self._executor_kind = (
            "async"
            if activity_executor is None
            else "thread"
            if isinstance(activity_executor, concurrent.futures.ThreadPoolExecutor)
            else "process"
        )
        self._sync_runner, self._sync_slots = _sync_runner(
            sync, activity_executor, shared_state_manager, max_concurrent_activities
        )
        for definition in definitions:
            if definition.dynamic:
                if self._dynamic is not None:
                    raise ValueError(
                        f"two dynamic activities: {self._dynamic.fn!r} and {definition.fn!r}"
                    )
                self._dynamic = definition
            elif definition.name in self._definitions:
                raise ValueError(f"activity {definition.name!r} is registered twice")
            else:
                self._definitions[definition.name] = definition
        self._slots = max_concurrent_activities
        self._max_per_second = max_activities_per_second
        self._queue_rate = max_task_queue_activities_per_second
        self._default_throttle_s = default_heartbeat_throttle_interval.total_seconds()
        self._max_throttle_s = max_heartbeat_throttle_interval.total_seconds()
        self._state = _State.NEW
        self._running: dict[tuple[str, int], Attempt] = {}
        self._busy_async = 0  # attempts holding an async slot
        self._busy_sync = 0  # attempts holding a sync slot
        self._shutdown_requested: asyncio.Event | None = None
        self._cut_grace: asyncio.Event | None = None  # set by shutdown(cancel_now=True)
        self._run_task: asyncio.Task[None] | None = None
        self._shutdown_signal = _Signal()
        self._attempt_tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- running

    @property
    def task_queue(self) -> str:
        """The task queue this worker serves."""
        return self._task_queue

    @property
    def identity(self) -> str:
        """Recorded on every attempt this worker runs."""
        return self._identity

    async def run(self) -> None:
        """Run until ``shutdown()`` is called (or this coroutine is cancelled,
        which shuts down too).

        Raises RuntimeError if the worker already ran.
        """
        if self._state is not _State.NEW:
            raise RuntimeError("Worker.run() called twice: a worker runs once")
        self._state = _State.RUNNING
        self._shutdown_requested = asyncio.Event()
        self._cut_grace = asyncio.Event()
        self._wire()
        self._watch_loop()
        unwatch = self._watch_metrics()
        await self._register()
        self._watcher.subscribe()  # before the first claim, or a request could be missed
        stop_background = Flag()
        background = [
            asyncio.ensure_future(self._watcher.run(stop_background)),
            asyncio.ensure_future(self._timers.run(stop_background)),
        ]
        stop_polling = Flag()
        polling = asyncio.gather(*(p.run(stop_polling) for p in self._pollers))
        logger.info(
            "worker %s started on task queue %r (%d activities)",
            self._identity,
            self._task_queue,
            len(self._definitions) + (self._dynamic is not None),
        )
        try:
            await self._shutdown_requested.wait()
        finally:
            self._state = _State.SHUTTING_DOWN
            stop_polling.set()
            await asyncio.gather(polling, return_exceptions=True)
            await self._finish_attempts()
            stop_background.set()
            await asyncio.gather(*background, return_exceptions=True)
            if self._sync_runner is not None:
                self._sync_runner.close()
            if self._loop_watch is not None:
                self._loop_watch.stop()
            unwatch()
            try:
                await self._client._store.unregister_worker(self._worker_id)
            except Exception as e:  # the store's own record goes when the process's hold does
                logger.warning("worker %s could not unregister: %s", self._identity, e)
            self._state = _State.STOPPED
            logger.info("worker %s stopped", self._identity)

    def _wire(self) -> None:
        """Build the parts that run: attempt environment, watchers, pollers."""
        client = self._client
        store, namespace = client._store, client.namespace
        # One outage per worker: its parts log a store outage once between them.
        outage = Outage(logger, f"worker {self._identity}")
        self._timers = timers = TimerFirer(
            store, namespace, client.retention.total_seconds(), outage
        )
        self._env = AttemptEnv(
            store=store,
            namespace=namespace,
            converter=client.data_converter,
            client=client,
            worker_shutdown=self._shutdown_signal,
            default_throttle_s=self._default_throttle_s,
            max_throttle_s=self._max_throttle_s,
            max_payload_bytes=client.max_payload_bytes,
            on_slot_free=self._slot_free,
            on_done=self._attempt_done,
            fire_timers=lambda _run_id: timers.fire_soon(),
            outage=outage,
            metrics=client.runtime._metrics,
            metric_meter=client.runtime.metric_meter,
            interceptors=self._interceptors,
            executor=self._executor,
        )
        self._watcher = InterruptWatcher(store, self._deliver_interrupt)
        sync_names = [n for n, d in self._definitions.items() if not d.is_async]
        async_names = [n for n, d in self._definitions.items() if d.is_async]
        # Unknown types go to the dynamic activity's kind (async when there is none).
        sync_takes_unknown = self._dynamic is not None and not self._dynamic.is_async
        make_poller = functools.partial(
            Poller,
            store=store,
            namespace=namespace,
            task_queue=self._task_queue,
            identity=self._identity,
            start=self._start_attempt,
            max_per_second=self._max_per_second,
            queue_rate_per_s=self._queue_rate,
            worker_id=self._worker_id,
            outage=outage,
        )
        self._poller = make_poller(
            slots=self._slots,
            running=lambda: self._busy_async,
            only_types=async_names if sync_takes_unknown else None,
            exclude_types=() if sync_takes_unknown else sync_names,
        )
        self._pollers = [self._poller]
        self._sync_poller: Poller | None = None
        if self._sync_runner is not None:
            self._sync_poller = make_poller(
                slots=self._sync_slots,
                running=lambda: self._busy_sync,
                only_types=None if sync_takes_unknown else sync_names,
                exclude_types=async_names if sync_takes_unknown else (),
            )
            self._pollers.append(self._sync_poller)

    def _watch_metrics(self) -> Callable[[], None]:
        """Report this worker's slots and its namespace's queue backlog in the
        client's runtime's metrics (read when collected) until the returned
        function is called."""
        metrics = self._client.runtime._metrics
        if metrics is None:
            return lambda: None
        common = {
            "namespace": self._client.namespace,
            "task_queue": self._task_queue,
            "worker_type": "ActivityWorker",  # Temporal's label for activity slots
        }
        async_labels = {**common, "slot_type": "async"}
        sync_labels = {**common, "slot_type": "sync"}

        def slots() -> list[tuple[dict[str, str], int, int]]:
            rows = [(async_labels, self._slots - self._busy_async, self._busy_async)]
            if self._sync_runner is not None:
                rows.append((sync_labels, self._sync_slots - self._busy_sync, self._busy_sync))
            return rows

        removals = [
            metrics.add_slots(slots),
            metrics.watch_backlog(self._client._store, self._client.namespace),
        ]

        def unwatch() -> None:
            for remove in removals:
                remove()

        return unwatch

    def _watch_loop(self) -> None:
        """Report async activities that hold the event loop (``_loopwatch``)."""
        async_definitions = [d for d in self._definitions.values() if d.is_async]
        if self._dynamic is not None and self._dynamic.is_async:
            async_definitions.append(self._dynamic)
        if self._blocked_loop_s is None or not async_definitions:
            return
        codes = {getattr(d.fn, "__func__", d.fn).__code__: d.name for d in async_definitions}
        metrics = self._client.runtime._metrics
        on_blocked = None
        if metrics is not None:
            namespace, task_queue = self._client.namespace, self._task_queue

            def on_blocked(name: str | None) -> None:  # on the watch's thread
                metrics.activity(namespace, task_queue, name or "unknown").loop_blocked(1)

        self._loop_watch = LoopWatch(
            asyncio.get_running_loop(),
            self._blocked_loop_s,
            codes,
            busy=lambda: self._busy_async > 0,
            on_blocked=on_blocked,
        )

    async def _register(self) -> None:
        """Register in the store's worker registry, holding this process's
        liveness token, and watch the other processes' tokens: a worker whose
        process dies has its attempts failed as WorkerLost by whoever sees it.

        Raises StoreError if the store refuses.
        """
        store = self._client._store
        await store.register_worker(
            WorkerRecord(
                worker_id=self._worker_id,
                namespace=self._client.namespace,
                identity=self._identity,
                host=socket.gethostname(),
                pid=os.getpid(),
                task_queue=self._task_queue,
                slots=self._slots,
                executor=self._executor_kind,
                started=time.time(),
                last_seen=time.time(),
            )
        )
        await self._client._watch_liveness()

    async def _finish_attempts(self) -> None:
        """Shutdown after claiming stopped: tell activities, wait out the grace
        period, cancel what still runs, wait for every outcome to be reported."""
        self._shutdown_signal.set()
        if self._sync_runner is not None:
            await self._sync_runner.worker_shutdown()
        if self._attempt_tasks and self._graceful_s > 0:
            await self._grace_period()
        for attempt in list(self._running.values()):
            attempt.request_cancel(
                ActivityCancellationDetails(worker_shutdown=True), needs_heartbeat=False
            )
        if self._attempt_tasks:
            await asyncio.wait(set(self._attempt_tasks))

    async def _grace_period(self) -> None:
        """Wait until every attempt ended, graceful_shutdown_timeout passed, or
        ``shutdown(cancel_now=True)`` cut the wait short."""
        assert self._cut_grace is not None
        all_ended = asyncio.ensure_future(asyncio.wait(set(self._attempt_tasks)))
        cut = asyncio.ensure_future(self._cut_grace.wait())
        await asyncio.wait(
            {all_ended, cut}, timeout=self._graceful_s, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in (all_ended, cut):  # cancelling a wait leaves the attempts alone
            waiter.cancel()
        await asyncio.gather(all_ended, cut, return_exceptions=True)

    async def shutdown(self, *, cancel_now: bool = False) -> None:
        """Stop claiming, tell running activities (``is_worker_shutdown()``), wait
        up to graceful_shutdown_timeout, cancel what still runs (those attempts
        fail retryably), and return when everything ended.

        ``cancel_now=True`` skips the wait (what remains of it, when called again
        during a shutdown): running attempts are cancelled at once. The
        ``errands worker`` command does this on a second SIGINT / SIGTERM.
        """
        if self._shutdown_requested is not None:
            self._shutdown_requested.set()
        if cancel_now and self._cut_grace is not None:
            self._cut_grace.set()
        if self._run_task is not None:
            await asyncio.gather(self._run_task, return_exceptions=True)

    async def __aenter__(self) -> Worker:
        self._run_task = asyncio.ensure_future(self.run())
        await asyncio.sleep(0)  # let run() start
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # ---------------------------------------------------------------- attempts

    def _start_attempt(self, task: ClaimedTask) -> None:
        definition = self._definitions.get(task.activity_type, self._dynamic)
        runner: Runner | None = None
        reason = ""
        if definition is None:
            reason = (
                f"activity type {task.activity_type!r} is not registered on this worker; "
                f"registered: {', '.join(sorted(self._definitions)) or 'none'}"
            )
        elif definition.is_async:
            runner = self._async_runner
        else:
            runner = self._sync_runner
        if runner is not None and runner is self._sync_runner:
            self._busy_sync += 1
        else:
            self._busy_async += 1
            if self._loop_watch is not None:
                self._loop_watch.attempt_started()
        attempt = Attempt(self._env, task, definition, runner, reason)
        self._running[(task.run_id, task.serial)] = attempt
        early = self._watcher.take_early(task.run_id, task.serial)
        if early is not None:
            self._deliver_interrupt(early)
        work = asyncio.ensure_future(attempt.run())
        self._attempt_tasks.add(work)
        work.add_done_callback(self._attempt_tasks.discard)

    def _slot_free(self, attempt: Attempt, completing: bool) -> FollowUp | None:
        if attempt.runner is not None and attempt.runner is self._sync_runner:
            self._busy_sync -= 1
            assert self._sync_poller is not None
            return self._sync_poller.slot_freed(reporting=completing)
        self._busy_async -= 1
        return self._poller.slot_freed(reporting=completing)

    def _attempt_done(self, attempt: Attempt) -> None:
        self._running.pop((attempt.task.run_id, attempt.task.serial), None)

    def _deliver_interrupt(self, interrupt: Interrupted) -> bool:
        attempt = self._running.get((interrupt.run_id, interrupt.attempt))
        if attempt is None:
            return False
        attempt.request_cancel(details_for(interrupt), needs_heartbeat=needs_heartbeat(interrupt))
        return True


def _sync_runner(
    sync: Sequence[_Definition],
    executor: concurrent.futures.Executor | None,
    shared_state_manager: SharedStateManager | None,
    max_concurrent: int,
) -> tuple[Runner | None, int]:
    """The runner for plain ``def`` activities and how many may run at once:
    never more than the executor can start, so no attempt's start_to_close
    clock burns while it waits in the executor's queue."""
    if not sync:
        return None, 0
    if executor is None:
        raise ValueError(
            f"activity {sync[0].name!r} is not async: pass activity_executor "
            "(for example concurrent.futures.ThreadPoolExecutor) to run it"
        )
    slots = min(max_concurrent, pool_size(executor) or max_concurrent)
    if isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        return ThreadRunner(executor), slots
    if shared_state_manager is None:
        raise ValueError(
            f"activity_executor {type(executor).__name__} does not run on threads of this "
            "process: also pass shared_state_manager=SharedStateManager."
            "create_from_multiprocessing(multiprocessing.Manager())"
        )
    if not isinstance(shared_state_manager, SharedStateManager):
        raise TypeError(
            "shared_state_manager must be a SharedStateManager, got "
            f"{type(shared_state_manager).__name__}"
        )
    return ProcessRunner(executor, shared_state_manager), slots
