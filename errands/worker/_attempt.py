"""One attempt, end to end: build its context, decode its arguments, run it on
its runner, deliver cancellation, and report the outcome to the store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from errands import _lifecycle as lc
from errands._lifecycle import PAUSE_ERROR_TYPE
from errands._metrics import ActivityMetrics, Metrics
from errands._outage import Backoff, Outage
from errands.activity import (
    ActivityCancellationDetails,
    Info,
    _CompleteAsyncError,
    _Context,
    _Definition,
    _Signal,
)
from errands.common import MetricMeter, Priority, RawValue
from errands.converter import DataConverter, Payload, deserialize_headers
from errands.exceptions import ApplicationError, CancelledError, FailureError, StoreError
from errands.store import ClaimedTask, FailureReport, Store
from errands.store._base import FollowUp
from errands.worker._heartbeats import Heartbeater
from errands.worker._interceptor import Interceptor, run_intercepted

if TYPE_CHECKING:
    from errands.client import Client
    from errands.worker._runner import Runner

logger = logging.getLogger("errands.worker")

T = TypeVar("T")

LOCAL_TIMEOUT_GRACE_S = 0.05
"""The worker interrupts a timed-out attempt this long after its deadline, so
the store's timer (which makes the retry) is due by then."""


@dataclass(frozen=True)
class AttemptEnv:
    """What every attempt of one worker shares."""

    store: Store
    namespace: str
    converter: DataConverter
    client: Client | None
    worker_shutdown: _Signal
    default_throttle_s: float
    max_throttle_s: float
    max_payload_bytes: int
    on_slot_free: Callable[[Attempt, bool], FollowUp | None]
    """Called when the attempt's function returned, with whether its
    completion is about to be written: the claim to run in that write, if any
    (see ``Poller.slot_freed``)."""
    on_done: Callable[[Attempt], None]
    fire_timers: Callable[[str], None]
    outage: Outage
    """The worker's store outage: its parts log one once."""
    metrics: Metrics | None = None
    """Where the attempts' metrics go (None: metrics are off)."""
    metric_meter: MetricMeter = MetricMeter.noop
    """The runtime's meter, for ``activity.metric_meter()``."""
    interceptors: Sequence[Interceptor] = ()
    """The worker's interceptors, outermost first (none: attempts skip the chain)."""
    executor: concurrent.futures.Executor | None = None
    """The worker's activity_executor, as interceptors see it."""


class Phase(enum.Enum):
    """Where an attempt is; cancellation is delivered only while RUNNING."""

    PREPARING = 1  # decoding arguments
    RUNNING = 2  # the activity function runs
    REPORTING = 3  # the outcome is on its way to the store


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _td(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


class _Undecodable(Exception):
    """Stored bytes of an attempt could not be decoded; ``error`` is the
    failure to report."""

    def __init__(self, error: ApplicationError) -> None:
        super().__init__(error.message)
        self.error = error


class Attempt:
    """One claimed task being worked on."""

    def __init__(
        self,
        env: AttemptEnv,
        task: ClaimedTask,
        definition: _Definition | None,
        runner: Runner | None,
        unknown_reason: str = "",
    ) -> None:
        self.env = env
        self.task = task
        self.definition = definition
        self.runner = runner
        self._unknown_reason = unknown_reason
        self.phase = Phase.PREPARING
        self.heartbeated = False
        self._pending_cancel: ActivityCancellationDetails | None = None
        self._timeout_handle: asyncio.TimerHandle | None = None
        self.heartbeater = Heartbeater(self)
        self._claimed_at = time.monotonic()  # the store's started_time, on this worker's clock
        self.context: _Context | None = None
        self.headers: Mapping[str, Payload] = {}
        """The execution's headers, decoded when the worker has interceptors."""
        self._slot_held = True
        self._follow_up: FollowUp | None = None
        """The claim for this attempt's slot that rides its completion."""
        self._cancel_heard_at: float | None = None
        """When this worker heard of a client's cancel request (monotonic)."""
        self.metrics: ActivityMetrics | None = None
        if env.metrics is not None:
            self.metrics = m = env.metrics.activity(
                task.namespace, task.task_queue, task.activity_type
            )
            m.received(1)
            waited_s = task.started_time - task.current_attempt_scheduled_time
            m.schedule_to_start(max(0.0, waited_s) * 1000.0)

    # ---------------------------------------------------------------- cancellation

    def request_cancel(
        self, details: ActivityCancellationDetails, *, needs_heartbeat: bool
    ) -> None:
        """Deliver cancellation now, or (a client cancel before the activity's
        first heartbeat of the attempt) when it first heartbeats."""
        if details.cancel_requested and self._cancel_heard_at is None:
            self._cancel_heard_at = time.monotonic()
        context = self.context
        if context is not None and context.details is not None:
            return  # already delivered
        if needs_heartbeat and not self.heartbeated:
            self._pending_cancel = details
            return
        self._deliver(details)

    def _deliver(self, details: ActivityCancellationDetails) -> None:
        context = self.context
        if context is None:
            self._pending_cancel = details
            return
        context.details = details
        context.cancelled.set()
        if self.phase is Phase.RUNNING and self.runner is not None:
            self.runner.deliver_cancel(context)

    def on_heartbeat(self) -> None:
        """The activity called heartbeat(): a pending client cancel can go in."""
        self.heartbeated = True
        if self._pending_cancel is not None:
            pending, self._pending_cancel = self._pending_cancel, None
            self._deliver(pending)

    def arm_timeout(self, deadline: float) -> None:
        """Interrupt the attempt (timed_out) at ``deadline`` (``time.monotonic()``)."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        delay = max(0.0, deadline - time.monotonic()) + LOCAL_TIMEOUT_GRACE_S
        self._timeout_handle = asyncio.get_running_loop().call_later(delay, self._timed_out)

    def _timed_out(self) -> None:
        self._timeout_handle = None
        self.request_cancel(ActivityCancellationDetails(timed_out=True), needs_heartbeat=False)

    def local_deadline(self, last_heartbeat: float | None) -> float:
        """The attempt's next deadline on this worker's monotonic clock, given
        when (on that clock) its last heartbeat was sent. The store's times come
        from its own clock (the database's, on PostgreSQL), so only their
        differences are used here: a worker clock that is off moves nothing."""
        t = self.task
        start = self._claimed_at
        deadlines = [lc.FAR]
        if t.start_to_close_s is not None:
            deadlines.append(start + t.start_to_close_s)
        if t.schedule_to_close_s is not None:
            deadlines.append(start + (t.schedule_time + t.schedule_to_close_s - t.started_time))
        if t.heartbeat_s is not None:
            deadlines.append((last_heartbeat or start) + t.heartbeat_s)
        return min(deadlines)

    # ---------------------------------------------------------------- running

    def build_info(self, heartbeat_details: Sequence[Any]) -> Info:
        t = self.task
        return Info(
            activity_id=t.activity_id,
            activity_type=t.activity_type,
            attempt=t.attempt,
            current_attempt_scheduled_time=_utc(t.current_attempt_scheduled_time),
            heartbeat_details=heartbeat_details,
            heartbeat_timeout=_td(t.heartbeat_s),
            is_local=False,
            schedule_to_close_timeout=_td(t.schedule_to_close_s),
            scheduled_time=_utc(t.schedule_time),
            start_to_close_timeout=_td(t.start_to_close_s),
            started_time=_utc(t.started_time),
            task_queue=t.task_queue,
            task_token=lc.task_token(t.run_id, t.serial),
            priority=Priority(None if t.priority_key == Priority.DEFAULT_KEY else t.priority_key),
            retry_policy=t.retry_policy,
            namespace=t.namespace,
            activity_run_id=t.run_id,
        )

    async def run(self) -> None:
        """Run the attempt and report its outcome; never raises."""
        try:
            await self._run()
        except Exception:
            logger.exception(
                "attempt %d of activity %r (%s) could not be reported",
                self.task.attempt,
                self.task.activity_id,
                self.task.activity_type,
            )
        finally:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._free_slot()
            self._drop_follow_up()
            self.env.on_done(self)

    def _free_slot(self, *, completing: bool = False) -> None:
        # The function has returned: its slot can take the next task while the
        # outcome is reported (so the claim joins the outcome's group commit,
        # or runs in the completion's own transaction when ``completing``).
        if self._slot_held:
            self._slot_held = False
            self._follow_up = self.env.on_slot_free(self, completing)

    def _drop_follow_up(self) -> None:
        """Release the follow-up claim: its completion's write ended, or it
        was never passed to one (the outcome was a failure after all, or the
        report never reached the store); one no transaction ran frees its slot."""
        follow_up, self._follow_up = self._follow_up, None
        if follow_up is not None:
            follow_up.release()

    async def _run(self) -> None:
        env, task, definition = self.env, self.task, self.definition
        if definition is None or self.runner is None:
            await self._fail(
                ApplicationError(self._unknown_reason, type="NotFoundError"), "not registered"
            )
            return
        converter = env.converter
        try:
            heartbeat_details: Sequence[Any] = (
                await self._decode_stored("its last heartbeat details", task.heartbeat_details)
                if task.heartbeat_details
                else ()
            )
            args = await self._decode_args(definition)
            if env.interceptors and task.headers is not None:
                self.headers = self._decode_headers(task.headers)
        except _Undecodable as e:
            await self._fail(e.error, "undecodable")
            return
        except (TypeError, ValueError) as e:
            await self._fail(
                ApplicationError(str(e), type=type(e).__name__, non_retryable=True),
                "bad arguments",
            )
            return
        self.context = _Context(
            info=lambda: self.build_info(heartbeat_details),
            heartbeat=self.runner.threadsafe(self.heartbeater.record),
            cancelled=_Signal(),
            worker_shutdown=env.worker_shutdown,
            payload_converter=converter.payload_converter,
            client=env.client if definition.is_async else None,
            heartbeat_every_s=self.heartbeater.throttle_s,
            metric_meter=env.metric_meter,
        )
        self.arm_timeout(self.local_deadline(None))
        pending = self._pending_cancel
        if pending is not None and not (
            (pending.cancel_requested or pending.paused or pending.reset) and not self.heartbeated
        ):
            self._pending_cancel = None
            self._deliver(pending)
        self.phase = Phase.RUNNING
        try:
            if env.interceptors:
                result = await run_intercepted(self, env.interceptors, args)
            else:
                result = await self.runner.run(definition, self.context, args)
        except _CompleteAsyncError:
            # The activity hands its outcome to someone else (AsyncActivityHandle):
            # report nothing; the store's timers still apply to the attempt.
            self._ran()
            self.phase = Phase.REPORTING
            self._free_slot()
            await self.heartbeater.flush()
            logger.info(
                "activity %r (%s) attempt %d will be completed asynchronously",
                self.task.activity_id,
                self.task.activity_type,
                self.task.attempt,
            )
            return
        except (asyncio.CancelledError, CancelledError) as e:
            self._ran(cancelled=True)
            self.phase = Phase.REPORTING
            self._free_slot()
            if self.context.details is None:
                if isinstance(e, asyncio.CancelledError):
                    raise  # the worker itself is being torn down
                await self._fail(e, "raised CancelledError")
                return
            await self._report_cancelled(self.context.details, e)
            return
        except Exception as e:
            self._ran()
            self.phase = Phase.REPORTING
            self._free_slot()
            await self.heartbeater.flush()
            await self._fail(e, "failed")
            return
        self._ran()
        self.phase = Phase.REPORTING
        self._free_slot(completing=True)
        await self.heartbeater.flush()
        await self._complete(definition, result)

    def _ran(self, *, cancelled: bool = False) -> None:
        """The function ended: record how long it ran and, if a client's
        cancel request ended it, how long that took to land."""
        m = self.metrics
        if m is None:
            return
        now = time.monotonic()
        m.execution((now - self._claimed_at) * 1000.0)
        heard = self._cancel_heard_at
        context = self.context
        if (
            cancelled
            and heard is not None
            and context is not None
            and context.details is not None
            and context.details.cancel_requested
        ):
            m.cancel_delivery((now - heard) * 1000.0)

    async def _decode_stored(self, what: str, data: bytes) -> list[Any]:
        """The plain values of stored bytes; _Undecodable if they cannot be read."""
        try:
            payloads = await self.env.converter.decode_to_payloads(data)
            return [self.env.converter.payload_converter.from_payload(p) for p in payloads]
        except Exception as e:
            raise self._undecodable(what, e) from e

    def _undecodable(self, what: str, error: Exception) -> _Undecodable:
        # Bytes that do not decode now will not decode on the next attempt
        # either; only a codec's own trouble (say, its key server is down) may pass.
        permanent = isinstance(error, (TypeError, ValueError))
        return _Undecodable(
            ApplicationError(
                f"activity {self.task.activity_id!r} ({self.task.activity_type}): {what} "
                f"cannot be decoded: {type(error).__name__}: {error}",
                type=lc.PAYLOAD_DECODE_ERROR_TYPE,
                non_retryable=permanent,
            )
        )

    def _decode_headers(self, data: bytes) -> Mapping[str, Payload]:
        """The stored headers; _Undecodable if they cannot be read."""
        try:
            return deserialize_headers(data)
        except ValueError as e:
            raise self._undecodable("its headers", e) from e

    async def _decode_args(self, definition: _Definition) -> list[Any]:
        converter = self.env.converter
        try:
            payloads = await converter.decode_to_payloads(self.task.input)
        except Exception as e:
            raise self._undecodable("its input", e) from e
        if definition.dynamic:
            return [[RawValue(p) for p in payloads]]
        definition.check_arg_count(len(payloads))
        args = []
        for i, payload in enumerate(payloads):
            hint = definition.arg_types[i] if i < len(definition.arg_types) else None
            name = definition.arg_names[i] if i < len(definition.arg_names) else f"#{i}"
            try:
                args.append(converter.payload_converter.from_payload(payload, hint))
            except (TypeError, ValueError) as e:
                try:  # bytes that are no value at all are corrupt, not of the wrong type
                    converter.payload_converter.from_payload(payload)
                except (TypeError, ValueError) as plain:
                    raise self._undecodable(f"its input (parameter {name!r})", plain) from e
                raise type(e)(f"activity {definition.name!r} parameter {name!r}: {e}") from e
        return args

    # ---------------------------------------------------------------- reporting

    def _report_deadline(self) -> float:
        """When the store's timer will have decided the attempt whatever it
        is told (its start-to-close or schedule-to-close deadline, on this
        worker's monotonic clock; a heartbeat timeout is left out: a report
        that lands before its timer fires still counts)."""
        t = self.task
        deadlines = [lc.FAR]
        if t.start_to_close_s is not None:
            deadlines.append(self._claimed_at + t.start_to_close_s)
        if t.schedule_to_close_s is not None:
            deadlines.append(
                self._claimed_at + (t.schedule_time + t.schedule_to_close_s - t.started_time)
            )
        return min(deadlines)

    async def _reporting(self, what: str, report: Callable[[], Awaitable[T]]) -> T:
        """Run a report to the store, trying again with backoff while the
        store fails (an outage fails nothing on its own). A retry after a
        report that went through unanswered is refused as stale, which is
        what the caller then logs. Gives up, raising the StoreError, once the
        store's timer decides the attempt anyway, or once the worker shuts
        down (its shutdown would otherwise wait for the store: the store's
        timer then retries the attempt elsewhere)."""
        backoff, outage = Backoff(), self.env.outage
        while True:
            try:
                result = await report()
            except StoreError as e:
                outage.failed(f"{what} of activity {self.task.activity_id!r}", e)
                pause = backoff.next()
                if (
                    time.monotonic() + pause > self._report_deadline()
                    or self.env.worker_shutdown.is_set()
                ):
                    raise
                await asyncio.sleep(pause)
                continue
            outage.passed()
            return result

    async def _complete(self, definition: _Definition, result: Any) -> None:
        env, task = self.env, self.task
        try:
            data = await env.converter.encode([result])
        except (TypeError, ValueError) as e:
            await self._fail(
                ApplicationError(
                    f"activity {definition.name!r} returned a value that cannot be converted: {e}",
                    type=type(e).__name__,
                    non_retryable=True,
                ),
                "bad result",
            )
            return
        if len(data) > env.max_payload_bytes:
            await self._fail(
                ApplicationError(
                    f"activity {definition.name!r} returned {len(data)} bytes, over the "
                    f"{env.max_payload_bytes}-byte payload limit",
                    type="PayloadSizeError",
                    non_retryable=True,
                ),
                "result too large",
            )
            return
        if self.metrics is not None:
            # From the first schedule, on the store's clock: when claimed, plus
            # how long it has run since on this worker's.
            since_s = task.started_time - task.schedule_time + time.monotonic() - self._claimed_at
            self.metrics.succeeded(max(0.0, since_s) * 1000.0)
        # The follow-up claim rides the first try; a try that did not commit
        # delivered nothing for it, and it is never run twice.
        follow_up = self._follow_up
        try:
            completed = await self._reporting(
                "the completion",
                lambda: env.store.complete(task.run_id, task.serial, data, then_claim=follow_up),
            )
        finally:
            self._drop_follow_up()
        if not completed:
            logger.info(
                "completion of %r attempt %d refused: the attempt is stale (timed out, "
                "terminated or cancelled)",
                task.activity_id,
                task.attempt,
            )
        else:
            logger.info(
                "activity %r (%s) attempt %d completed in %.3f s",
                task.activity_id,
                task.activity_type,
                task.attempt,
                time.monotonic() - self._claimed_at,  # started_time: the store's clock
            )

    async def _fail(self, error: BaseException, what: str, *, counted: bool = True) -> None:
        """Report a failure of the attempt; ``counted`` puts it in the
        activity_execution_failed metric (not a pause or a worker shutdown)."""
        env, task = self.env, self.task
        if counted and self.metrics is not None:
            self.metrics.failed(1)
        report = FailureReport.of(await env.converter.encode_failure(error))
        status = await self._reporting(
            "the failure", lambda: env.store.fail(task.run_id, task.serial, report)
        )
        if status is None:
            logger.info(
                "failure of %r attempt %d refused: the attempt is stale",
                task.activity_id,
                task.attempt,
            )
        elif status is lc.Status.RUNNING:
            logger.warning(
                "activity %r (%s) attempt %d %s, will retry: %s",
                task.activity_id,
                task.activity_type,
                task.attempt,
                what,
                error,
            )
        else:
            logger.warning(
                "activity %r (%s) attempt %d %s, execution %s: %s",
                task.activity_id,
                task.activity_type,
                task.attempt,
                what,
                status.value,
                error,
            )

    async def _report_cancelled(
        self, details: ActivityCancellationDetails, error: BaseException
    ) -> None:
        env, task = self.env, self.task
        if details.not_found:
            logger.info(
                "activity %r (%s) attempt %d stopped: the execution was terminated",
                task.activity_id,
                task.activity_type,
                task.attempt,
            )
            return  # terminated: the store already closed it
        if details.reset:
            logger.info(
                "activity %r (%s) attempt %d stopped: the execution was reset",
                task.activity_id,
                task.activity_type,
                task.attempt,
            )
            return  # the store moved on to a new first attempt; a report would be stale
        if details.timed_out:
            logger.warning(
                "activity %r (%s) attempt %d timed out",
                task.activity_id,
                task.activity_type,
                task.attempt,
            )
            # The store's timer decides retry or TIMED_OUT; make sure it fires now.
            env.fire_timers(task.run_id)
            return
        await self.heartbeater.flush()
        if details.cancel_requested:
            cancelled = error if isinstance(error, FailureError) else CancelledError()
            encoded = await env.converter.encode_failure(cancelled)
            if await self._reporting(
                "the cancellation",
                lambda: env.store.report_cancelled(task.run_id, task.serial, encoded.data),
            ):
                logger.info(
                    "activity %r (%s) attempt %d canceled",
                    task.activity_id,
                    task.activity_type,
                    task.attempt,
                )
            return
        if details.paused:
            # No retry is scheduled: the store holds the next attempt for unpause.
            await self._fail(
                ApplicationError("the activity was paused", type=PAUSE_ERROR_TYPE),
                "stopped by a pause",
                counted=False,
            )
            return
        # Worker shutdown: fail retryably so that another worker takes it.
        await self._fail(
            ApplicationError("worker shut down while the activity ran", type="WorkerShutdown"),
            "interrupted by worker shutdown",
            counted=False,
        )
