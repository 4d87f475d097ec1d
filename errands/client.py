"""Starting activities and looking at them: ``Client`` and ``ActivityHandle``."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import os
import random
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar, cast

from errands import _lifecycle as lc
from errands._async_completion import (
    AsyncActivityCancelledError,
    AsyncActivityHandle,
    async_complete,
    async_fail,
    async_heartbeat,
    async_report_cancellation,
)
from errands._interceptor import (
    AsyncActivityReference,
    BulkActivitiesInput,
    CancelActivityInput,
    CompleteAsyncActivityInput,
    CountActivitiesInput,
    DescribeActivityInput,
    FailAsyncActivityInput,
    GetActivityAttemptsInput,
    GetActivityResultInput,
    HeartbeatAsyncActivityInput,
    Interceptor,
    ListActivitiesInput,
    ListWorkersInput,
    OutboundInterceptor,
    PauseActivityInput,
    ReportCancellationAsyncActivityInput,
    ResetActivityInput,
    RetryActivityNowInput,
    StartActivitiesInput,
    StartActivityInput,
    TerminateActivityInput,
    UnpauseActivityInput,
    UpdateActivityOptionsInput,
)
from errands._outcomes import OutcomeWatcher
from errands._query import STATUS_NAMES, UnknownFieldError, parse_query
from errands.activity import _Definition
from errands.common import (
    ActivityIDConflictPolicy,
    ActivityIDReusePolicy,
    Priority,
    RetryPolicy,
    SearchAttributeIndexedValueType,
    TypedSearchAttributes,
)
from errands.converter import DataConverter, serialize_headers
from errands.exceptions import (
    ActivityFailedError,
    ApplicationError,
    CancelledError,
    FailureError,
    TerminatedError,
    TimeoutError,
)
from errands.runtime import Runtime
from errands.store import (
    ClosedRun,
    ExecutionOptions,
    ExecutionRecord,
    NewExecution,
    Query,
    Store,
)
from errands.store._shared import Lease, acquire

__all__ = [
    "ActivityAttempt",
    "ActivityExecution",
    "ActivityExecutionCount",
    "ActivityExecutionCountAggregationGroup",
    "ActivityExecutionDescription",
    "ActivityExecutionOptions",
    "ActivityExecutionStatus",
    "ActivityFailureError",
    "ActivityHandle",
    "ActivityOptionsKey",
    "ActivityOptionsKeys",
    "ActivityOptionsUpdate",
    "ActivityStart",
    "AsyncActivityCancelledError",
    "AsyncActivityHandle",
    "AsyncActivityReference",
    "AttemptOutcome",
    "BulkActivitiesInput",
    "CancelActivityInput",
    "Client",
    "CompleteAsyncActivityInput",
    "CountActivitiesInput",
    "DescribeActivityInput",
    "FailAsyncActivityInput",
    "GetActivityAttemptsInput",
    "GetActivityResultInput",
    "HeartbeatAsyncActivityInput",
    "Interceptor",
    "ListActivitiesInput",
    "ListWorkersInput",
    "OutboundInterceptor",
    "PauseActivityInput",
    "PendingActivityState",
    "ReportCancellationAsyncActivityInput",
    "ResetActivityInput",
    "RetryActivityNowInput",
    "StartActivitiesInput",
    "StartActivityInput",
    "TerminateActivityInput",
    "UnpauseActivityInput",
    "UpdateActivityOptionsInput",
    "WorkerInfo",
]

logger = logging.getLogger("errands.client")

ActivityFailureError = ActivityFailedError
"""temporalio's name for ``errands.exceptions.ActivityFailedError`` (the same class)."""

DEFAULT_URL = "sqlite:///errands.db"
"""The store ``Client.connect()`` opens when neither a URL nor $ERRANDS_URL is given."""

DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
"""Largest encoded arguments, result or heartbeat details: 2 MiB."""

DEFAULT_PAYLOAD_WARNING_BYTES = 256 * 1024
"""Arguments larger than this (encoded) are logged as a warning at start."""

DEFAULT_RETENTION = timedelta(days=7)
"""How long closed executions are kept."""

ReturnType = TypeVar("ReturnType")
T = TypeVar("T")

_DEFAULT_PRIORITY = Priority()
_DEFAULT_RETRY_POLICY = RetryPolicy()

_NO_ARG: Any = object()

_expect_result: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "errands_expect_result", default=False
)
"""Set while execute_activity starts an activity whose result it will await."""


class ActivityExecutionStatus(enum.IntEnum):
    """Where an execution is (temporalio's names and numbers)."""

    RUNNING = 1
    COMPLETED = 2
    FAILED = 3
    CANCELED = 4
    TERMINATED = 5
    TIMED_OUT = 6
    PAUSED = 7
    """Open, and paused with no attempt running (``ExecutionStatus = 'Paused'``)."""


class PendingActivityState(enum.IntEnum):
    """Where a RUNNING execution is."""

    SCHEDULED = 1
    STARTED = 2
    CANCEL_REQUESTED = 3
    PAUSED = 4
    PAUSE_REQUESTED = 5


class AttemptOutcome(enum.Enum):
    """How one attempt ended (errands; Temporal keeps only the last failure)."""

    RUNNING = "RUNNING"  # it still runs
    COMPLETED = "COMPLETED"  # it returned a value
    FAILED = "FAILED"  # it raised
    TIMED_OUT = "TIMED_OUT"  # start_to_close, heartbeat or schedule_to_close ran out
    CANCELED = "CANCELED"  # it let a cancellation out, or was terminated
    PAUSED = "PAUSED"  # it was interrupted by a pause
    RESET = "RESET"  # it was interrupted by a reset
    WORKER_LOST = "WORKER_LOST"  # its worker died


@dataclass(frozen=True)
class ActivityAttempt:
    """One attempt of an execution (``ActivityHandle.attempts()``)."""

    attempt: int
    started_time: datetime
    closed_time: datetime | None
    """None while it runs."""
    worker_identity: str | None
    outcome: AttemptOutcome
    failure: FailureError | None
    """What it raised (or its timeout), if it failed; None otherwise."""
    heartbeat_count: int
    last_heartbeat_time: datetime | None


OptionT = TypeVar("OptionT")


@dataclass(frozen=True)
class ActivityOptionsUpdate(Generic[OptionT]):
    """One change to an execution's options, made by a key of
    ``ActivityOptionsKeys``: ``value_set(v)`` or ``value_unset()``."""

    key: ActivityOptionsKey[OptionT]
    value: OptionT | None
    """The new value; None when the option is unset."""
    unset: bool = False
    """True for ``value_unset()``: no timeout, no start delay, the default
    retry policy or priority."""


class ActivityOptionsKey(Generic[OptionT]):
    """One option ``update_options`` can change (use those of ``ActivityOptionsKeys``)."""

    def __init__(
        self, name: str, check: Callable[[str, Any], Any], *, can_unset: bool = True
    ) -> None:
        self._name = name
        self._check = check  # the value as the store keeps it; raises if invalid
        self._can_unset = can_unset

    @property
    def name(self) -> str:
        """The option's name (as ``start_activity``'s parameter)."""
        return self._name

    def value_set(self, value: OptionT) -> ActivityOptionsUpdate[OptionT]:
        """An update that sets the option to ``value``.

        Raises TypeError or ValueError if the value is not one the option takes.
        """
        self._check(self._name, value)
        return ActivityOptionsUpdate(self, value)

    def value_unset(self) -> ActivityOptionsUpdate[OptionT]:
        """An update that clears the option.

        Raises ValueError for task_queue, which an execution cannot be without.
        """
        if not self._can_unset:
            raise ValueError(f"{self._name} cannot be unset")
        return ActivityOptionsUpdate(self, None, unset=True)

    def _stored(self, update: ActivityOptionsUpdate[Any]) -> Any:
        return None if update.unset else self._check(self._name, update.value)

    def __repr__(self) -> str:
        return f"ActivityOptionsKey({self._name!r})"


def _task_queue(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _timeout(name: str, value: Any) -> float | None:
    return _seconds(name, value)


def _delay(name: str, value: Any) -> float | None:
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0):
        raise ValueError(f"{name} must not be negative, got {value}")
    return value.total_seconds()


def _policy(name: str, value: Any) -> RetryPolicy:
    if not isinstance(value, RetryPolicy):
        raise TypeError(f"{name} must be a RetryPolicy, got {type(value).__name__}")
    return value


def _priority(name: str, value: Any) -> int:
    if not isinstance(value, Priority):
        raise TypeError(f"{name} must be a Priority, got {type(value).__name__}")
    return value.effective_key


class ActivityOptionsKeys:
    """The options of a started execution that ``ActivityHandle.update_options``
    can change, as temporalio names them."""

    task_queue: ActivityOptionsKey[str] = ActivityOptionsKey(
        "task_queue", _task_queue, can_unset=False
    )
    schedule_to_close_timeout: ActivityOptionsKey[timedelta] = ActivityOptionsKey(
        "schedule_to_close_timeout", _timeout
    )
    schedule_to_start_timeout: ActivityOptionsKey[timedelta] = ActivityOptionsKey(
        "schedule_to_start_timeout", _timeout
    )
    start_to_close_timeout: ActivityOptionsKey[timedelta] = ActivityOptionsKey(
        "start_to_close_timeout", _timeout
    )
    heartbeat_timeout: ActivityOptionsKey[timedelta] = ActivityOptionsKey(
        "heartbeat_timeout", _timeout
    )
    start_delay: ActivityOptionsKey[timedelta] = ActivityOptionsKey("start_delay", _delay)
    retry_policy: ActivityOptionsKey[RetryPolicy] = ActivityOptionsKey("retry_policy", _policy)
    priority: ActivityOptionsKey[Priority] = ActivityOptionsKey("priority", _priority)


_OPTION_FIELD = {
    "task_queue": "task_queue",
    "schedule_to_close_timeout": "schedule_to_close_s",
    "schedule_to_start_timeout": "schedule_to_start_s",
    "start_to_close_timeout": "start_to_close_s",
    "heartbeat_timeout": "heartbeat_s",
    "start_delay": "start_delay_s",
    "retry_policy": "retry_policy",
    "priority": "priority_key",
}
"""Each key's field of the store's ``ExecutionOptions``."""

_UNSET = {"retry_policy": RetryPolicy(), "priority_key": Priority.DEFAULT_KEY}
"""What an unset option falls back to, where it is not None."""


@dataclass(frozen=True)
class ActivityExecutionOptions:
    """The options of an execution, as ``update_options`` leaves them."""

    task_queue: str
    schedule_to_close_timeout: timedelta | None
    schedule_to_start_timeout: timedelta | None
    start_to_close_timeout: timedelta | None
    heartbeat_timeout: timedelta | None
    start_delay: timedelta | None
    retry_policy: RetryPolicy
    priority: Priority

    @classmethod
    def _of(cls, o: ExecutionOptions) -> ActivityExecutionOptions:
        return cls(
            task_queue=o.task_queue,
            schedule_to_close_timeout=_td(o.schedule_to_close_s),
            schedule_to_start_timeout=_td(o.schedule_to_start_s),
            start_to_close_timeout=_td(o.start_to_close_s),
            heartbeat_timeout=_td(o.heartbeat_s),
            start_delay=_td(o.start_delay_s),
            retry_policy=o.retry_policy,
            priority=_priority_of(o.priority_key),
        )


def _priority_of(key: int) -> Priority:
    return Priority(None if key == Priority.DEFAULT_KEY else key)


def _option_changes(updates: Sequence[ActivityOptionsUpdate[Any]]) -> dict[str, Any]:
    """The store's changes for these updates. Raises ValueError for none, or
    for one option updated twice; TypeError for what is not an update."""
    if not updates:
        raise ValueError("update_options needs at least one update")
    changes: dict[str, Any] = {}
    for update in updates:
        if not isinstance(update, ActivityOptionsUpdate):
            raise TypeError(
                "update_options takes ActivityOptionsKeys.<option>.value_set(v) or "
                f".value_unset(), got {type(update).__name__}"
            )
        name = _OPTION_FIELD[update.key.name]
        if name in changes:
            raise ValueError(f"{update.key.name} is updated twice")
        value = update.key._stored(update)
        changes[name] = _UNSET.get(name) if value is None else value
    return changes


_STATUS = {s: ActivityExecutionStatus[s.name] for s in lc.Status}
_RUN_STATE = {s: PendingActivityState[s.name] for s in lc.RunState}
_STATUS_QUERY_NAME = {status: name for name, status in STATUS_NAMES.items()}


_run_ids = random.Random()
os.register_at_fork(after_in_child=_run_ids.seed)


def _new_run_id() -> str:
    """A random (version 4) UUID. Drawn from a PRNG seeded from os.urandom, not
    from os.urandom itself: a system call per start was a measurable cost, and
    run ids need uniqueness (the store enforces it), not secrecy."""
    return str(uuid.UUID(int=_run_ids.getrandbits(128), version=4))


async def _read(
    decoding: Awaitable[T], execution: ExecutionRecord | tuple[str, str], what: str
) -> T:
    """The decoded value of an execution's stored bytes; a ValueError or
    TypeError names the execution and the field (corrupt bytes, or a value
    that does not fit the type asked for)."""
    try:
        return await decoding
    except (TypeError, ValueError) as e:
        activity_id, run_id = (
            execution if isinstance(execution, tuple) else (execution.activity_id, execution.run_id)
        )
        kind = TypeError if isinstance(e, TypeError) else ValueError
        raise kind(
            f"activity {activity_id!r} (run {run_id}): its {what} cannot be read: {e}"
        ) from e


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def _utc_required(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _td(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


OrT = TypeVar("OrT")


def _or(given: OrT | None, default: OrT | None) -> OrT | None:
    """The call's own value, or the definition's default when it gave none."""
    return default if given is None else given


def _jitter_s(jitter: timedelta | None) -> float:
    """Seconds of an unpause or reset jitter. Raises ValueError if negative."""
    seconds = 0.0 if jitter is None else jitter.total_seconds()
    if seconds < 0:
        raise ValueError(f"jitter must not be negative, got {jitter}")
    return seconds


def _seconds(name: str, value: timedelta | None) -> float | None:
    if value is None:
        return None
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a timedelta, got {type(value).__name__}")
    if value <= timedelta(0):
        raise ValueError(f"{name} must be positive, got {value}")
    return value.total_seconds()


@dataclass(frozen=True)
class ActivityExecution:
    """One execution, as ``list_activities`` returns it."""

    activity_id: str
    activity_run_id: str
    activity_type: str
    status: ActivityExecutionStatus
    task_queue: str
    namespace: str
    schedule_time: datetime
    close_time: datetime | None
    execution_duration: timedelta | None
    """close_time - schedule_time, once closed."""
    typed_search_attributes: TypedSearchAttributes = TypedSearchAttributes.empty
    """The search attributes it was started with."""

    @classmethod
    def _fields_from(cls, r: ExecutionRecord) -> dict[str, Any]:
        schedule_time = _utc(r.schedule_time)
        assert schedule_time is not None
        return {
            "activity_id": r.activity_id,
            "activity_run_id": r.run_id,
            "activity_type": r.activity_type,
            "status": (
                ActivityExecutionStatus.PAUSED
                if r.run_state is lc.RunState.PAUSED
                else _STATUS[r.status]
            ),
            "task_queue": r.task_queue,
            "namespace": r.namespace,
            "schedule_time": schedule_time,
            "close_time": _utc(r.close_time),
            "execution_duration": (
                None if r.close_time is None else timedelta(seconds=r.close_time - r.schedule_time)
            ),
            "typed_search_attributes": r.search_attributes,
        }


@dataclass(frozen=True)
class ActivityExecutionDescription(ActivityExecution):
    """Everything known about one execution (``ActivityHandle.describe()``)."""

    attempt: int = 1
    run_state: PendingActivityState | None = None
    """Where a RUNNING execution is; None once closed."""
    canceled_reason: str | None = None
    """The reason given to cancel() (or terminate())."""
    last_heartbeat_time: datetime | None = None
    last_started_time: datetime | None = None
    last_worker_identity: str | None = None
    next_attempt_schedule_time: datetime | None = None
    """When the next attempt becomes ready, while one waits (backoff or start_delay)."""
    current_retry_interval: timedelta | None = None
    expiration_time: datetime | None = None
    """schedule_time + schedule_to_close_timeout, if set."""
    retry_policy: RetryPolicy | None = None
    priority: Priority = field(default_factory=Priority)
    start_delay: timedelta | None = None
    schedule_to_close_timeout: timedelta | None = None
    schedule_to_start_timeout: timedelta | None = None
    start_to_close_timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    total_heartbeat_count: int = 0
    last_failure: FailureError | None = None
    """The last attempt's failure, if an attempt failed (with include_last_failure)."""
    input: Sequence[Any] = ()
    """The arguments, decoded as plain values (with include_input)."""
    has_result: bool = False
    """Whether the execution completed with a value (with include_outcome)."""
    result: Any = None
    """That value, typed like ``result()`` (with include_outcome)."""
    failure: FailureError | None = None
    """Why a closed execution did not complete (with include_outcome)."""
    _heartbeat_details: Sequence[Any] = ()

    async def heartbeat_details(self) -> Sequence[Any]:
        """The decoded details of the last heartbeat; empty unless describe() was
        called with include_heartbeat_details=True."""
        return self._heartbeat_details


@dataclass(frozen=True)
class ActivityExecutionCountAggregationGroup:
    """One group of a grouped count: the status and how many have it."""

    count: int
    group_values: Sequence[Any]


@dataclass(frozen=True)
class ActivityExecutionCount:
    """The result of ``count_activities``; ``groups`` is filled by
    ``GROUP BY ExecutionStatus`` (or TaskQueue, ActivityType)."""

    count: int
    groups: Sequence[ActivityExecutionCountAggregationGroup] = ()


@dataclass(frozen=True)
class ActivityStart:
    """*(errands)* One start of ``Client.start_activities``: the arguments of
    ``start_activity``, the function or name first, then ``args``."""

    activity: Callable[..., Any] | str
    args: Sequence[Any] = ()
    _: KW_ONLY
    id: str
    task_queue: str | None = None
    result_type: type | None = None
    schedule_to_close_timeout: timedelta | None = None
    schedule_to_start_timeout: timedelta | None = None
    start_to_close_timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    retry_policy: RetryPolicy | None = None
    id_reuse_policy: ActivityIDReusePolicy = ActivityIDReusePolicy.ALLOW_DUPLICATE
    id_conflict_policy: ActivityIDConflictPolicy = ActivityIDConflictPolicy.FAIL
    start_delay: timedelta | None = None
    priority: Priority | None = None
    summary: str | None = None
    search_attributes: TypedSearchAttributes | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """*(errands)* One running worker, as ``Client.list_workers`` shows it."""

    worker_id: str
    identity: str
    host: str
    pid: int
    task_queues: Sequence[str]
    slots: int
    """Attempts it runs at most (max_concurrent_activities)."""
    slots_used: int
    """Attempts its process runs on its task queue now."""
    executor: str
    """Where its plain-def activities run: "thread", "process", or "async" (none)."""
    started_time: datetime
    last_seen_time: datetime
    """Its last claim that took work (at most a second behind), or its start."""

    @property
    def slots_free(self) -> int:
        """Slots it has left."""
        return max(0, self.slots - self.slots_used)


class Client:
    """Starts activities and looks at them, on one store and namespace.

    Make one with ``await Client.connect(...)``. Clients of one URL in one
    process share one store; closing a client (``await client.close()`` or
    ``async with``) is optional, as temporalio's Client has no close().
    """

    def __init__(
        self,
        store: Store,
        *,
        namespace: str = "default",
        data_converter: DataConverter | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        retention: timedelta = DEFAULT_RETENTION,
        payload_warning_bytes: int = DEFAULT_PAYLOAD_WARNING_BYTES,
        runtime: Runtime | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self._store = store
        self.interceptors: Sequence[Interceptor] = _checked_interceptors(interceptors)
        """The client's interceptors, outermost first (workers built on this
        client apply those that are also worker interceptors)."""
        self._impl: OutboundInterceptor = _ClientImpl(self)
        for interceptor in reversed(self.interceptors):
            self._impl = interceptor.intercept_client(self._impl)
        self.namespace = namespace
        self.runtime = runtime or Runtime.default()
        """Where this client's and its workers' metrics go."""
        if self.runtime._metrics is not None:
            self.runtime._metrics.watch_store(store)
        self.data_converter = data_converter or DataConverter()
        self.max_payload_bytes = max_payload_bytes
        self.payload_warning_bytes = payload_warning_bytes
        """*(errands)* Arguments larger than this, encoded, are logged at start."""
        self.retention = retention
        self._watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OutcomeWatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._lease: Lease | None = None
        self._watching_liveness = False
        self._finalizer: weakref.finalize[[], Client] | None = None
        self._attribute_types: dict[str, SearchAttributeIndexedValueType] = {}
        """Search attribute names the store has seen (a name never changes type)."""

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        namespace: str = "default",
        data_converter: DataConverter | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        retention: timedelta = DEFAULT_RETENTION,
        payload_warning_bytes: int = DEFAULT_PAYLOAD_WARNING_BYTES,
        runtime: Runtime | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> Client:
        """Open the store at ``url`` (default ``$ERRANDS_URL``, else
        ``sqlite:///errands.db``), applying pending schema migrations.
        ``runtime`` says where metrics go (default ``Runtime.default()``:
        nowhere, unless set); workers built on the client use it too.

        ``interceptors`` wrap the client's calls, the first outermost (see
        ``errands.client.Interceptor``); those that also implement
        ``errands.worker.Interceptor`` are applied to every worker built on
        this client too, before the Worker's own, as temporalio does.

        Raises:
            ValueError: an unknown URL or a bad option.
            TypeError: an interceptor that is not an ``errands.client.Interceptor``.
            StoreError: the store cannot be opened (missing directory, not a
                database, locked, newer schema).
        """
        if not namespace:
            raise ValueError("namespace must not be empty")
        if max_payload_bytes < 1:
            raise ValueError("max_payload_bytes must be positive")
        if retention <= timedelta(0):
            raise ValueError("retention must be positive")
        interceptors = _checked_interceptors(interceptors)
        lease = await acquire(url or os.environ.get("ERRANDS_URL") or DEFAULT_URL)
        client = cls(
            lease.store,
            namespace=namespace,
            data_converter=data_converter,
            max_payload_bytes=max_payload_bytes,
            retention=retention,
            payload_warning_bytes=payload_warning_bytes,
            runtime=runtime,
            interceptors=interceptors,
        )
        client._lease = lease
        # A client dropped without close() gives its lease back when collected.
        # Not at exit: the process's end closes every connection anyway.
        client._finalizer = weakref.finalize(client, lease.drop)
        client._finalizer.atexit = False
        return client

    async def close(self) -> None:
        """Let go of the store; idempotent. The store closes once no client of
        this process holds it (a client never closed lets go when collected)."""
        if self._lease is None:  # made with Client(store): the store is its own
            for watcher in list(self._watchers.values()):
                watcher.close()
            await self._store.close()
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        await self._lease.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def store(self) -> Store:
        """The store this client talks to."""
        return self._store

    # ---------------------------------------------------------------- starting

    async def start_activity(
        self,
        activity: Callable[..., Any] | str,
        arg: Any = _NO_ARG,
        *,
        args: Sequence[Any] = (),
        id: str,
        task_queue: str | None = None,
        result_type: type | None = None,
        schedule_to_close_timeout: timedelta | None = None,
        schedule_to_start_timeout: timedelta | None = None,
        start_to_close_timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        id_reuse_policy: ActivityIDReusePolicy = ActivityIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy: ActivityIDConflictPolicy = ActivityIDConflictPolicy.FAIL,
        start_delay: timedelta | None = None,
        priority: Priority | None = None,
        summary: str | None = None,
        search_attributes: TypedSearchAttributes | None = None,
    ) -> ActivityHandle[Any]:
        """Start an activity execution and return its handle (without waiting).

        ``activity`` is a function marked ``@activity.defn`` or an activity
        name; pass one argument as ``arg`` or several as ``args``. One of
        schedule_to_close_timeout and start_to_close_timeout is required;
        start_to_close defaults to schedule_to_close. ``search_attributes``
        are kept with the execution for queries; a name keeps the type the
        namespace's first start with it gave it.

        Raises:
            ValueError: a missing timeout or id, arg and args both given,
                arguments over the payload size limit, a search attribute
                name used before with another type (nothing is written).
            TypeError: the wrong number of arguments for the function, or an
                argument that cannot be converted.
            ActivityAlreadyStartedError: the id is running (policy FAIL) or its
                reuse is refused.
            StoreError: the store failed.
        """
        input = self._start_input(
            ActivityStart(
                activity,
                args,
                id=id,
                task_queue=task_queue,
                result_type=result_type,
                schedule_to_close_timeout=schedule_to_close_timeout,
                schedule_to_start_timeout=schedule_to_start_timeout,
                start_to_close_timeout=start_to_close_timeout,
                heartbeat_timeout=heartbeat_timeout,
                retry_policy=retry_policy,
                id_reuse_policy=id_reuse_policy,
                id_conflict_policy=id_conflict_policy,
                start_delay=start_delay,
                priority=priority,
                summary=summary,
                search_attributes=search_attributes,
            ),
            arg,
        )
        return await self._impl.start_activity(input)

    async def _start(self, input: StartActivityInput) -> ActivityHandle[Any]:
        """Start one execution (the end of the interceptor chain)."""
        new = await self._new_execution(input)
        run_id = new.run_id
        expecting = _expect_result.get()
        if expecting:
            # execute_activity: watch for the close before the start commits,
            # so waiting for it needs no first look.
            self._outcomes().expect(run_id)
        try:
            result = await self._store.start(new)
        except BaseException:
            if expecting:
                self._outcomes().forget(run_id)
            raise
        if expecting and result.run_id != run_id:  # USE_EXISTING gave another run
            self._outcomes().forget(run_id)
        handle: ActivityHandle[Any] = ActivityHandle(
            self, input.id, result.run_id, input.result_type
        )
        handle._exists = True
        return handle

    async def start_activities(self, starts: Sequence[ActivityStart]) -> list[ActivityHandle[Any]]:
        """*(errands)* Start many executions in one transaction, all or none (at
        most 10,000; each ``ActivityStart`` holds ``start_activity``'s
        arguments); their handles, in order. A start whose id is running
        fails the whole call unless its conflict policy is USE_EXISTING (its
        handle is then the running one's).

        Raises:
            ActivityAlreadyStartedError: ids running (policy FAIL) or given
                twice, named in the message; or a refused reuse. Nothing is
                written.
            ValueError, TypeError: as ``start_activity``, naming the start;
                more than 10,000 starts.
            StoreError: the store failed.
        """
        inputs = []
        for i, start in enumerate(starts):
            if not isinstance(start, ActivityStart):
                raise TypeError(f"start {i} is a {type(start).__name__}, not an ActivityStart")
            try:
                inputs.append(self._start_input(start))
            except (ValueError, TypeError) as e:
                raise type(e)(f"start {i} (id {start.id!r}): {e}") from e
        return await self._impl.start_activities(StartActivitiesInput(inputs))

    async def _start_many(self, input: StartActivitiesInput) -> list[ActivityHandle[Any]]:
        """Start executions in one transaction (the end of the interceptor chain)."""
        news = []
        for i, start in enumerate(input.starts):
            try:
                news.append(await self._new_execution(start))
            except (ValueError, TypeError) as e:
                raise type(e)(f"start {i} (id {start.id!r}): {e}") from e
        results = await self._store.start_many(news)
        handles: list[ActivityHandle[Any]] = []
        for start, result in zip(input.starts, results, strict=True):
            handle: ActivityHandle[Any] = ActivityHandle(
                self, start.id, result.run_id, start.result_type
            )
            handle._exists = True
            handles.append(handle)
        return handles

    def _start_input(self, start: ActivityStart, arg: Any = _NO_ARG) -> StartActivityInput:
        """A start's options resolved (the definition's defaults where the
        call gave none) and checked, as interceptors see them; raises as
        ``start_activity``."""
        activity, args, id, task_queue = start.activity, start.args, start.id, start.task_queue
        result_type, retry_policy, priority = start.result_type, start.retry_policy, start.priority
        schedule_to_close_timeout = start.schedule_to_close_timeout
        schedule_to_start_timeout = start.schedule_to_start_timeout
        start_to_close_timeout = start.start_to_close_timeout
        heartbeat_timeout = start.heartbeat_timeout
        start_delay, search_attributes = start.start_delay, start.search_attributes
        if not isinstance(id, str) or not id:
            raise ValueError("start_activity needs a non-empty id")
        if arg is not _NO_ARG and args:
            raise ValueError("pass either arg or args, not both")
        if search_attributes is None:
            search_attributes = TypedSearchAttributes.empty
        elif not isinstance(search_attributes, TypedSearchAttributes):
            raise TypeError(
                "search_attributes must be a TypedSearchAttributes, not "
                f"{type(search_attributes).__name__}"
            )
        values = [arg] if arg is not _NO_ARG else list(args)
        if isinstance(activity, str):
            if not activity:
                raise ValueError("activity name must not be empty")
            name = activity
        else:
            definition = _Definition.from_callable(activity)
            if definition.dynamic:
                raise ValueError("a dynamic activity has no name to start; start it by name")
            definition.check_arg_count(len(values))
            name = definition.name
            if result_type is None:
                result_type = definition.result_type
            # The definition's defaults, where the call leaves an option out.
            d = definition.defaults
            task_queue = _or(task_queue, d.task_queue)
            schedule_to_close_timeout = _or(schedule_to_close_timeout, d.schedule_to_close_timeout)
            schedule_to_start_timeout = _or(schedule_to_start_timeout, d.schedule_to_start_timeout)
            start_to_close_timeout = _or(start_to_close_timeout, d.start_to_close_timeout)
            heartbeat_timeout = _or(heartbeat_timeout, d.heartbeat_timeout)
            retry_policy = _or(retry_policy, d.retry_policy)
            priority = _or(priority, d.priority)
        if not isinstance(task_queue, str) or not task_queue:
            raise ValueError(
                "start_activity needs a non-empty task_queue (the call gave none, and the "
                "activity's definition sets none)"
            )
        return StartActivityInput(
            activity_type=name,
            args=values,
            id=id,
            task_queue=task_queue,
            result_type=result_type,
            schedule_to_close_timeout=schedule_to_close_timeout,
            start_to_close_timeout=start_to_close_timeout,
            schedule_to_start_timeout=schedule_to_start_timeout,
            heartbeat_timeout=heartbeat_timeout,
            id_reuse_policy=start.id_reuse_policy,
            id_conflict_policy=start.id_conflict_policy,
            retry_policy=retry_policy,
            priority=priority or _DEFAULT_PRIORITY,
            search_attributes=search_attributes,
            summary=start.summary,
            start_delay=start_delay,
            headers={},  # a dict of its own: an interceptor may fill it in place
        )

    async def _new_execution(self, input: StartActivityInput) -> NewExecution:
        """What the store records for a start: its timeouts checked, its
        arguments encoded; raises as ``start_activity``."""
        name, id, task_queue = input.activity_type, input.id, input.task_queue
        start_delay = input.start_delay
        if not isinstance(id, str) or not id:
            raise ValueError("start_activity needs a non-empty id")
        if not isinstance(task_queue, str) or not task_queue:
            raise ValueError("start_activity needs a non-empty task_queue")
        s2c = _seconds("schedule_to_close_timeout", input.schedule_to_close_timeout)
        stc = _seconds("start_to_close_timeout", input.start_to_close_timeout)
        if s2c is None and stc is None:
            raise ValueError(
                "start_activity needs schedule_to_close_timeout or start_to_close_timeout"
            )
        delay = None
        if start_delay is not None:
            if start_delay < timedelta(0):
                raise ValueError("start_delay must not be negative")
            delay = start_delay.total_seconds()
        try:
            data = await self.data_converter.encode(input.args)
        except (TypeError, ValueError) as e:
            raise TypeError(f"arguments of activity {name!r} cannot be converted: {e}") from e
        if len(data) > self.max_payload_bytes:
            raise ValueError(
                f"arguments of activity {name!r} are {len(data)} bytes encoded, over the "
                f"{self.max_payload_bytes}-byte payload limit"
            )
        if len(data) > self.payload_warning_bytes:
            logger.warning(
                "activity %r (id %r) is started with %d bytes of arguments, over the "
                "%d-byte warning threshold: large payloads slow every read of the execution",
                name,
                id,
                len(data),
                self.payload_warning_bytes,
            )
        return NewExecution(
            namespace=self.namespace,
            activity_id=id,
            run_id=_new_run_id(),
            activity_type=name,
            task_queue=task_queue,
            input=data,
            schedule_to_close_s=s2c,
            schedule_to_start_s=_seconds(
                "schedule_to_start_timeout", input.schedule_to_start_timeout
            ),
            start_to_close_s=stc if stc is not None else s2c,
            heartbeat_s=_seconds("heartbeat_timeout", input.heartbeat_timeout),
            retry_policy=input.retry_policy or _DEFAULT_RETRY_POLICY,
            priority_key=input.priority.effective_key,
            start_delay_s=delay,
            summary=input.summary,
            id_reuse_policy=input.id_reuse_policy,
            id_conflict_policy=input.id_conflict_policy,
            search_attributes=input.search_attributes or TypedSearchAttributes.empty,
            headers=serialize_headers(input.headers) if input.headers else None,
        )

    async def execute_activity(
        self,
        activity: Callable[..., Any] | str,
        arg: Any = _NO_ARG,
        *,
        args: Sequence[Any] = (),
        id: str,
        task_queue: str | None = None,
        result_type: type | None = None,
        schedule_to_close_timeout: timedelta | None = None,
        schedule_to_start_timeout: timedelta | None = None,
        start_to_close_timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        id_reuse_policy: ActivityIDReusePolicy = ActivityIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy: ActivityIDConflictPolicy = ActivityIDConflictPolicy.FAIL,
        start_delay: timedelta | None = None,
        priority: Priority | None = None,
        summary: str | None = None,
        search_attributes: TypedSearchAttributes | None = None,
    ) -> Any:
        """``start_activity`` and await its result: the same arguments and
        errors, plus ``ActivityFailedError`` if the execution did not complete."""
        token = _expect_result.set(True)
        try:
            handle = await self.start_activity(
                activity,
                arg,
                args=args,
                id=id,
                task_queue=task_queue,
                result_type=result_type,
                schedule_to_close_timeout=schedule_to_close_timeout,
                schedule_to_start_timeout=schedule_to_start_timeout,
                start_to_close_timeout=start_to_close_timeout,
                heartbeat_timeout=heartbeat_timeout,
                retry_policy=retry_policy,
                id_reuse_policy=id_reuse_policy,
                id_conflict_policy=id_conflict_policy,
                start_delay=start_delay,
                priority=priority,
                summary=summary,
                search_attributes=search_attributes,
            )
        finally:
            _expect_result.reset(token)
        return await handle.result()

    # ---------------------------------------------------------------- finding

    def get_activity_handle(
        self, activity_id: str, *, run_id: str | None = None, result_type: type | None = None
    ) -> ActivityHandle[Any]:
        """A handle to an execution by id (the latest run unless ``run_id``).
        Nothing is read until the handle is used."""
        return ActivityHandle(self, activity_id, run_id, result_type)

    def get_async_activity_handle(
        self,
        *,
        task_token: bytes | None = None,
        activity_id: str | None = None,
        run_id: str | None = None,
    ) -> AsyncActivityHandle:
        """A handle to report on an attempt left open by
        ``activity.raise_complete_async()``: by its task token, or by activity
        id (and run id) for whichever attempt runs when the handle is used.

        Raises ValueError unless exactly one of task_token and activity_id is given.
        """
        return AsyncActivityHandle(
            self, task_token=task_token, activity_id=activity_id, run_id=run_id
        )

    def list_activities(
        self, query: str | None = None, *, limit: int | None = None
    ) -> AsyncIterator[ActivityExecution]:
        """Executions matching a visibility query, newest first (or as its
        ORDER BY says).

        Queries: conditions such as ``Field = 'value'`` joined with AND, OR,
        NOT and parentheses; operators = != < <= > >= IN BETWEEN IS NULL
        STARTS_WITH; fields ActivityId, ActivityType, TaskQueue,
        ExecutionStatus, RunState, ScheduleTime, CloseTime, Attempt and
        every search attribute (the grammar: ``errands._query``). E.g.
        ``Customer = 'acme' AND (Attempt > 1 OR ExecutionStatus = 'Failed')
        ORDER BY CloseTime DESC``.

        Raises ValueError for a query outside the grammar, an unknown field,
        or a value of the wrong type for its field.
        """
        return self._impl.list_activities(ListActivitiesInput(query, limit))

    async def _list(self, input: ListActivitiesInput) -> AsyncIterator[ActivityExecution]:
        parsed = await self._parse(input.query)
        if parsed.group_by_status or parsed.group_by:
            raise ValueError("GROUP BY works with count_activities only")
        if input.limit is not None and input.limit < 0:
            raise ValueError("limit must not be negative")
        for record in await self._store.list(self.namespace, parsed, limit=input.limit):
            yield ActivityExecution(**ActivityExecution._fields_from(record))

    async def cancel_activities(self, query: str | None, *, reason: str | None = None) -> int:
        """*(errands)* Cancel every open execution the query matches (see
        ``list_activities``; None: all), as ``ActivityHandle.cancel`` does, at
        most 1,000 per transaction; how many it changed.

        Raises ValueError for a malformed query.
        """
        return await self._impl.cancel_activities(BulkActivitiesInput(query, reason))

    async def terminate_activities(self, query: str | None, *, reason: str | None = None) -> int:
        """*(errands)* Terminate every open execution the query matches, at
        most 1,000 per transaction; how many it changed.

        Raises ValueError for a malformed query.
        """
        return await self._impl.terminate_activities(BulkActivitiesInput(query, reason))

    async def pause_activities(self, query: str | None, *, reason: str | None = None) -> int:
        """*(errands)* Pause every open execution the query matches (see
        ``ActivityHandle.pause``), at most 1,000 per transaction; how many it
        changed (paused ones are left as they are).

        Raises ValueError for a malformed query.
        """
        return await self._impl.pause_activities(BulkActivitiesInput(query, reason))

    async def unpause_activities(
        self,
        query: str | None,
        *,
        reason: str | None = None,
        jitter: timedelta | None = None,
    ) -> int:
        """*(errands)* Unpause every paused execution the query matches (see
        ``ActivityHandle.unpause``), at most 1,000 per transaction; how many
        it changed.

        Raises ValueError for a malformed query or a negative jitter.
        """
        return await self._impl.unpause_activities(BulkActivitiesInput(query, reason, jitter))

    async def reset_activities(
        self,
        query: str | None,
        *,
        reason: str | None = None,
        keep_paused: bool = False,
        reset_heartbeat: bool = False,
        jitter: timedelta | None = None,
        restore_original_options: bool = False,
    ) -> int:
        """*(errands)* Reset every open execution the query matches (see
        ``ActivityHandle.reset``), at most 1,000 per transaction; how many it
        changed (those whose cancel was requested are left as they are).

        Raises ValueError for a malformed query or a negative jitter.
        """
        return await self._impl.reset_activities(
            BulkActivitiesInput(
                query,
                reason,
                jitter,
                keep_paused=keep_paused,
                reset_heartbeat=reset_heartbeat,
                restore_original_options=restore_original_options,
            )
        )

    async def retry_activities_now(self, query: str | None) -> int:
        """*(errands)* Run the next attempt now of every open execution the
        query matches that waits out a retry backoff or a start delay (see
        ``ActivityHandle.retry_now``), at most 1,000 per transaction; how
        many it changed.

        Raises ValueError for a malformed query.
        """
        return await self._impl.retry_activities_now(BulkActivitiesInput(query, None))

    async def update_activities_options(
        self, query: str | None, updates: Sequence[ActivityOptionsUpdate[Any]]
    ) -> int:
        """*(errands)* Change the options of every open execution the query
        matches (see ``ActivityHandle.update_options``), at most 1,000 per
        transaction; how many it changed. One that the updates would leave
        with neither start_to_close nor schedule_to_close is left as it is.

        Raises ValueError for a malformed query, no updates or an option
        updated twice; TypeError for what is not an update.
        """
        return await self._impl.update_activities_options(
            BulkActivitiesInput(query, None, updates=list(updates))
        )

    async def _bulk(self, verb: str, input: BulkActivitiesInput) -> int:
        parsed = await self._parse(input.query)
        if parsed.group_by_status or parsed.group_by:
            raise ValueError("GROUP BY works with count_activities only")
        reset = None
        if verb == "reset":
            reset = {
                "keep_paused": input.keep_paused,
                "reset_heartbeat": input.reset_heartbeat,
                "restore_original_options": input.restore_original_options,
            }
        return await self._store.bulk(
            self.namespace,
            parsed,
            verb,
            reason=input.reason,
            jitter_s=_jitter_s(input.jitter),
            reset=reset,
            options=_option_changes(input.updates) if verb == "update_options" else None,
        )

    async def list_workers(self) -> list[WorkerInfo]:
        """*(errands)* The namespace's running workers, oldest first. A worker
        is listed from its start until it stops, or until its process is seen
        gone (its attempts then fail as WorkerLost)."""
        return await self._impl.list_workers(ListWorkersInput())

    async def _list_workers(self) -> list[WorkerInfo]:
        return [
            WorkerInfo(
                worker_id=w.worker_id,
                identity=w.identity,
                host=w.host,
                pid=w.pid,
                task_queues=[w.task_queue],
                slots=w.slots,
                slots_used=w.used,
                executor=w.executor,
                started_time=_utc_required(w.started),
                last_seen_time=_utc_required(w.last_seen),
            )
            for w in await self._store.list_workers(self.namespace)
        ]

    async def count_activities(self, query: str | None = None) -> ActivityExecutionCount:
        """How many executions match a visibility query (see list_activities);
        a trailing ``GROUP BY ExecutionStatus`` fills ``groups`` (in status
        order); *(errands)* ``GROUP BY TaskQueue`` or ``GROUP BY
        ActivityType`` too (the most numerous first).

        Raises ValueError for a malformed query.
        """
        return await self._impl.count_activities(CountActivitiesInput(query))

    async def _count(self, input: CountActivitiesInput) -> ActivityExecutionCount:
        parsed = await self._parse(input.query)
        if parsed.group_by is not None:
            by_value = await self._store.count_by(self.namespace, parsed)
            return ActivityExecutionCount(
                sum(by_value.values()),
                [
                    ActivityExecutionCountAggregationGroup(n, [value])
                    for value, n in sorted(by_value.items(), key=lambda kv: (-kv[1], kv[0]))
                ],
            )
        total, groups = await self._store.count(self.namespace, parsed)
        return ActivityExecutionCount(
            total,
            [
                ActivityExecutionCountAggregationGroup(n, [_STATUS_QUERY_NAME[status]])
                for status, n in sorted(groups.items(), key=lambda kv: _STATUS[kv[0]])
            ],
        )

    # ---------------------------------------------------------------- internals

    async def _parse(self, query: str | None) -> Query:
        """The query parsed, its search attribute names typed as the store
        knows them (looked up again when one is new to this client)."""
        try:
            return parse_query(query, self._attribute_types)
        except UnknownFieldError:
            self._attribute_types = await self._store.search_attribute_types(self.namespace)
            return parse_query(query, self._attribute_types)

    def _outcomes(self) -> OutcomeWatcher:
        """The outcome watcher of the running event loop."""
        loop = asyncio.get_running_loop()
        watcher = self._watchers.get(loop)
        if watcher is None:
            watcher = self._watchers[loop] = OutcomeWatcher(self._store, self.namespace)
            if self._lease is not None:  # it listens to a store other clients share
                self._lease.call_on_release(watcher.close)
        return watcher

    async def _wait_closed(self, run_id: str) -> ClosedRun:
        await self._watch_liveness()
        return await self._outcomes().wait(run_id)

    async def _watch_liveness(self) -> None:
        """Fail the attempts of worker processes found gone, from now on (a
        worker watches, and so does a client awaiting a result)."""
        if not self._watching_liveness:
            self._watching_liveness = True
            lost = ApplicationError(
                "the worker process running this attempt is gone", type=lc.WORKER_LOST_ERROR_TYPE
            )
            encoded = await self.data_converter.encode_failure(lost)
            self._store.watch_liveness(encoded.data)

    async def _failure(self, record: ExecutionRecord) -> FailureError | None:
        converter = self.data_converter
        if record.timeout_type is not None and record.status in (
            lc.Status.TIMED_OUT,
            lc.Status.RUNNING,
        ):
            details: Sequence[Any] = (
                await _read(
                    converter.decode(record.heartbeat_details), record, "last heartbeat details"
                )
                if record.heartbeat_details
                else ()
            )
            return TimeoutError(
                f"activity timed out ({record.timeout_type.name})",
                type=record.timeout_type,
                last_heartbeat_details=details,
            )
        if record.status is lc.Status.TERMINATED:
            return TerminatedError(record.canceled_reason or "Terminated")
        decoded = (
            None
            if record.failure is None
            else await _read(converter.decode_failure(record.failure), record, "failure")
        )
        if record.status is lc.Status.CANCELED:
            # Cancelled during retry backoff, the failure column still holds the
            # previous attempt's error: the execution's cause is the cancel.
            if isinstance(decoded, CancelledError):
                return decoded
            return CancelledError(record.canceled_reason or "Cancelled")
        if decoded is not None:
            return decoded
        if record.status is lc.Status.FAILED:
            return ApplicationError("activity failed")
        return None


class ActivityHandle(Generic[ReturnType]):
    """A handle to one execution: read its result, cancel, terminate, describe."""

    def __init__(
        self,
        client: Client,
        id: str,
        run_id: str | None = None,
        result_type: type | None = None,
    ) -> None:
        self._client = client
        self._id = id
        self._run_id = run_id
        self._result_type = result_type
        self._exists = False  # known to be in the store (so result() need not check)

    @property
    def id(self) -> str:
        """The activity id."""
        return self._id

    @property
    def run_id(self) -> str | None:
        """The run id (None for a handle by id whose run is not known yet)."""
        return self._run_id

    async def _resolved_run_id(self) -> str:
        if self._run_id is None or not self._exists:
            record = await self._client._store.describe(
                self._client.namespace, self._id, self._run_id
            )
            self._run_id = record.run_id
            self._exists = True
        return self._run_id

    async def result(self) -> ReturnType:
        """Wait for the execution to close and return its value, converted to
        the function's return annotation (or ``result_type``).

        Raises:
            ActivityFailedError: it failed, timed out, was cancelled or
                terminated; ``cause`` says which.
            ActivityNotFoundError: no such execution.
        """
        run_id = await self._resolved_run_id()
        value = await self._client._impl.get_activity_result(
            GetActivityResultInput(self._id, run_id, self._result_type)
        )
        return cast(ReturnType, value)

    async def cancel(self, reason: str | None = None) -> None:
        """Ask to cancel. A not-yet-started execution is CANCELED at once; a
        started one learns of it through its heartbeats.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """
        await self._client._impl.cancel_activity(
            CancelActivityInput(self._id, self._run_id, reason)
        )

    async def terminate(self, reason: str | None = None) -> None:
        """End the execution TERMINATED now; a running attempt is interrupted
        and its outcome refused.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """
        await self._client._impl.terminate_activity(
            TerminateActivityInput(self._id, self._run_id, reason)
        )

    async def pause(self, *, reason: str | None = None) -> None:
        """Pause: no new attempt is dispatched until ``unpause()``. One that
        waits is PAUSED at once; a running attempt is asked to stop as a cancel
        is (``cancellation_details().paused``), and the execution shows
        PAUSE_REQUESTED until it has stopped. If the attempt lets the
        CancelledError out, it ends as a retryable
        ``ApplicationError(type="ActivityPause")`` and no retry is scheduled;
        if it returns, the execution completes. schedule_to_close keeps
        running while paused; schedule_to_start does not. Pausing a paused
        execution changes nothing; ``reason`` is for the caller's logs (it is
        not stored).

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """
        await self._client._impl.pause_activity(PauseActivityInput(self._id, self._run_id, reason))

    async def unpause(self, *, reason: str | None = None, jitter: timedelta | None = None) -> None:
        """Make a paused execution dispatchable again, at a random moment
        within ``jitter``: its attempt count and heartbeat details are kept,
        and a retry backoff that was pending still runs out (``retry_now()``
        skips it). A pause still waiting for its attempt to stop is withdrawn.
        Unpausing an execution that is not paused changes nothing.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed;
        ValueError for a negative jitter.
        """
        await self._client._impl.unpause_activity(
            UnpauseActivityInput(self._id, self._run_id, reason, jitter)
        )

    async def reset(
        self,
        *,
        reason: str | None = None,
        keep_paused: bool = False,
        reset_heartbeat: bool = False,
        jitter: timedelta | None = None,
        restore_original_options: bool = False,
    ) -> None:
        """*(errands; Temporal has only a raw RPC)* Start over: the next attempt
        is attempt 1, dispatched at once (at a random moment within
        ``jitter``), whatever backoff or start delay was pending. A running
        attempt is interrupted (``cancellation_details().reset``, delivered as
        a cancel is, at its first heartbeat) and its late outcome is refused
        as stale. Heartbeat details are kept unless ``reset_heartbeat``; a
        paused execution is unpaused unless ``keep_paused``;
        ``restore_original_options`` also undoes ``update_options``.
        schedule_to_close still counts from the first schedule time. A reset
        after a cancel was requested changes nothing (the cancel wins).
        ``reason`` is for the caller's logs (it is not stored).

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed;
        ValueError for a negative jitter.
        """
        await self._client._impl.reset_activity(
            ResetActivityInput(
                self._id,
                self._run_id,
                reason,
                keep_paused=keep_paused,
                reset_heartbeat=reset_heartbeat,
                jitter=jitter,
                restore_original_options=restore_original_options,
            )
        )

    async def update_options(
        self, updates: Sequence[ActivityOptionsUpdate[Any]]
    ) -> ActivityExecutionOptions:
        """Change the execution's options, each with
        ``ActivityOptionsKeys.<option>.value_set(v)`` or ``.value_unset()``
        (task_queue, the four timeouts, start_delay, retry_policy, priority);
        returns the options after. One that waits takes the change at once: a
        new queue (a worker of it runs the execution, the old queue's never
        does), a recomputed retry backoff, a new start delay. A running attempt
        keeps its own timeouts and the next attempt uses the new ones;
        schedule_to_close applies at once, still from the schedule time.

        Raises ActivityNotFoundError, ActivityAlreadyClosedError if closed;
        ValueError for no updates, an option updated twice, or options that
        would leave neither start_to_close nor schedule_to_close; TypeError
        for what is not an update.
        """
        return await self._client._impl.update_activity_options(
            UpdateActivityOptionsInput(self._id, self._run_id, updates)
        )

    async def restore_original_options(self) -> ActivityExecutionOptions:
        """Undo every ``update_options``: back to the options the execution
        was started with (taken at once, as ``update_options`` does); returns
        them.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """
        return await self._client._impl.update_activity_options(
            UpdateActivityOptionsInput(self._id, self._run_id, None)
        )

    async def retry_now(self) -> bool:
        """*(errands)* Run the next attempt now: an execution waiting out a
        retry backoff or a ``start_delay`` becomes claimable at once, and its
        attempt count goes on. True if it was waiting; False (nothing changes)
        if it was not, say because an attempt runs.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """
        return await self._client._impl.retry_activity_now(
            RetryActivityNowInput(self._id, self._run_id)
        )

    async def attempts(self) -> list[ActivityAttempt]:
        """Every attempt of the execution, oldest first: when it ran, on which
        worker, how it ended and with what failure, and its heartbeats. The
        newest 100 are kept (their numbers stay exact); they go when the
        execution is pruned.

        Raises ActivityNotFoundError.
        """
        return await self._client._impl.get_activity_attempts(
            GetActivityAttemptsInput(self._id, self._run_id)
        )

    async def describe(
        self,
        *,
        include_input: bool = False,
        include_outcome: bool = False,
        include_heartbeat_details: bool = False,
        include_last_failure: bool = False,
    ) -> ActivityExecutionDescription:
        """Everything known about the execution. As in temporalio, the fields
        that carry payloads are filled only when asked for: ``input``
        (include_input), ``has_result`` / ``result`` / ``failure``
        (include_outcome), ``heartbeat_details()`` (include_heartbeat_details)
        and ``last_failure`` (include_last_failure).

        Raises ActivityNotFoundError.
        """
        return await self._client._impl.describe_activity(
            DescribeActivityInput(
                self._id,
                self._run_id,
                self._result_type,
                include_input=include_input,
                include_outcome=include_outcome,
                include_heartbeat_details=include_heartbeat_details,
                include_last_failure=include_last_failure,
            )
        )


def _checked_interceptors(interceptors: Sequence[Interceptor]) -> tuple[Interceptor, ...]:
    """The interceptors as a tuple. Raises TypeError for one that is not an Interceptor."""
    checked = tuple(interceptors)
    for interceptor in checked:
        if not isinstance(interceptor, Interceptor):
            raise TypeError(
                "client interceptors must be errands.client.Interceptor instances, got "
                f"{type(interceptor).__name__}"
            )
    return checked


class _ClientImpl(OutboundInterceptor):
    """The end of a client's interceptor chain: each call done."""

    def __init__(self, client: Client) -> None:  # no next: nothing comes after it
        self._client = client

    async def start_activity(self, input: StartActivityInput) -> ActivityHandle[Any]:
        return await self._client._start(input)

    async def start_activities(self, input: StartActivitiesInput) -> list[ActivityHandle[Any]]:
        return await self._client._start_many(input)

    async def get_activity_result(self, input: GetActivityResultInput) -> Any:
        client, run_id = self._client, input.activity_run_id
        closed = await client._wait_closed(run_id)
        if closed.status is lc.Status.COMPLETED and closed.result is not None:
            hints = None if input.result_type is None else [input.result_type]
            values = await _read(
                client.data_converter.decode(closed.result, hints),
                (input.activity_id, run_id),
                "result",
            )
            return values[0] if values else None
        (record,) = await client._store.get_by_run_ids([run_id])
        cause = await client._failure(record)
        assert cause is not None
        raise ActivityFailedError(
            f"activity {input.activity_id!r} (run {record.run_id}) {record.status.value.lower()}",
            cause=cause,
        )

    async def describe_activity(self, input: DescribeActivityInput) -> ActivityExecutionDescription:
        client = self._client
        converter = client.data_converter
        r = await client._store.describe(client.namespace, input.activity_id, input.activity_run_id)
        details: Sequence[Any] = ()
        if input.include_heartbeat_details and r.heartbeat_details:
            details = await _read(converter.decode(r.heartbeat_details), r, "heartbeat details")
        payloads: dict[str, Any] = {}
        if input.include_input:
            payloads["input"] = await _read(converter.decode(r.input), r, "input")
        if input.include_outcome and r.status is lc.Status.COMPLETED and r.result is not None:
            hints = None if input.result_type is None else [input.result_type]
            values = await _read(converter.decode(r.result, hints), r, "result")
            payloads["has_result"] = True
            payloads["result"] = values[0] if values else None
        elif input.include_outcome and not r.is_open:
            payloads["failure"] = await client._failure(r)
        if input.include_last_failure and (r.attempt > 1 or not r.is_open):
            payloads["last_failure"] = await client._failure(r)
        waiting = r.run_state is lc.RunState.SCHEDULED
        return ActivityExecutionDescription(
            **ActivityExecution._fields_from(r),
            attempt=r.attempt,
            run_state=None if r.run_state is None else _RUN_STATE[r.run_state],
            canceled_reason=r.canceled_reason,
            last_heartbeat_time=_utc(r.last_heartbeat_time),
            last_started_time=_utc(r.started_time),
            last_worker_identity=r.identity,
            next_attempt_schedule_time=_utc(r.current_attempt_scheduled_time) if waiting else None,
            current_retry_interval=_td(r.retry_interval_s),
            expiration_time=(
                None
                if r.schedule_to_close_s is None
                else _utc(r.schedule_time + r.schedule_to_close_s)
            ),
            retry_policy=r.retry_policy,
            priority=_priority_of(r.priority_key),
            start_delay=_td(r.start_delay_s),
            schedule_to_close_timeout=_td(r.schedule_to_close_s),
            schedule_to_start_timeout=_td(r.schedule_to_start_s),
            start_to_close_timeout=_td(r.start_to_close_s),
            heartbeat_timeout=_td(r.heartbeat_s),
            total_heartbeat_count=r.heartbeat_count,
            _heartbeat_details=details,
            **payloads,
        )

    async def cancel_activity(self, input: CancelActivityInput) -> None:
        client = self._client
        await client._store.request_cancel(
            client.namespace, input.activity_id, input.activity_run_id, input.reason
        )

    async def terminate_activity(self, input: TerminateActivityInput) -> None:
        client = self._client
        await client._store.terminate(
            client.namespace, input.activity_id, input.activity_run_id, input.reason
        )

    async def pause_activity(self, input: PauseActivityInput) -> None:
        # The reason is for the caller's logs (it is not stored).
        client = self._client
        await client._store.pause(client.namespace, input.activity_id, input.activity_run_id)

    async def unpause_activity(self, input: UnpauseActivityInput) -> None:
        client = self._client
        await client._store.unpause(
            client.namespace, input.activity_id, input.activity_run_id, _jitter_s(input.jitter)
        )

    async def reset_activity(self, input: ResetActivityInput) -> None:
        client = self._client
        await client._store.reset(
            client.namespace,
            input.activity_id,
            input.activity_run_id,
            keep_paused=input.keep_paused,
            reset_heartbeat=input.reset_heartbeat,
            jitter_s=_jitter_s(input.jitter),
            restore_original_options=input.restore_original_options,
        )

    async def update_activity_options(
        self, input: UpdateActivityOptionsInput
    ) -> ActivityExecutionOptions:
        changes = None if input.updates is None else _option_changes(input.updates)
        client = self._client
        after = await client._store.update_options(
            client.namespace, input.activity_id, input.activity_run_id, changes
        )
        return ActivityExecutionOptions._of(after)

    async def retry_activity_now(self, input: RetryActivityNowInput) -> bool:
        client = self._client
        return await client._store.retry_now(
            client.namespace, input.activity_id, input.activity_run_id
        )

    async def get_activity_attempts(self, input: GetActivityAttemptsInput) -> list[ActivityAttempt]:
        client = self._client
        found = await client._store.describe(
            client.namespace, input.activity_id, input.activity_run_id
        )
        run_id = found.run_id
        kept = await client._store.attempts(run_id)
        (record,) = await client._store.get_by_run_ids([run_id])
        out = []
        for a in kept:
            running = a.closed_time is None
            failure = None
            if a.failure is not None:
                failure = await _read(
                    client.data_converter.decode_failure(a.failure),
                    record,
                    f"attempt {a.attempt}'s failure",
                )
            elif a.outcome == "TIMED_OUT":
                # Attempts recorded before schema 4 kept no timeout type of their own.
                kind = a.timeout_type or record.timeout_type
                if kind is not None:
                    failure = TimeoutError(f"activity timed out ({kind.name})", type=kind)
            out.append(
                ActivityAttempt(
                    attempt=a.attempt,
                    started_time=_utc_required(a.started_time),
                    closed_time=_utc(a.closed_time),
                    worker_identity=a.identity,
                    outcome=AttemptOutcome(a.outcome),
                    failure=failure,
                    heartbeat_count=(
                        record.heartbeat_count - a.heartbeats_before
                        if running
                        else a.heartbeat_count or 0
                    ),
                    last_heartbeat_time=_utc(
                        record.last_heartbeat_time
                        if running and (record.last_heartbeat_time or 0) >= a.started_time
                        else a.last_heartbeat_time
                    ),
                )
            )
        return out

    def list_activities(self, input: ListActivitiesInput) -> AsyncIterator[ActivityExecution]:
        return self._client._list(input)

    async def count_activities(self, input: CountActivitiesInput) -> ActivityExecutionCount:
        return await self._client._count(input)

    async def cancel_activities(self, input: BulkActivitiesInput) -> int:
        return await self._client._bulk("cancel", input)

    async def terminate_activities(self, input: BulkActivitiesInput) -> int:
        return await self._client._bulk("terminate", input)

    async def pause_activities(self, input: BulkActivitiesInput) -> int:
        return await self._client._bulk("pause", input)

    async def unpause_activities(self, input: BulkActivitiesInput) -> int:
        return await self._client._bulk("unpause", input)

    async def reset_activities(self, input: BulkActivitiesInput) -> int:
        return await self._client._bulk("reset", input)

    async def retry_activities_now(self, input: BulkActivitiesInput) -> int:
        return await self._client._bulk("retry_now", input)

    async def update_activities_options(self, input: BulkActivitiesInput) -> int:
        return await self._client._bulk("update_options", input)

    async def list_workers(self, input: ListWorkersInput) -> list[WorkerInfo]:
        return await self._client._list_workers()

    async def heartbeat_async_activity(self, input: HeartbeatAsyncActivityInput) -> None:
        await async_heartbeat(self._client, input.id_or_token, input.details)

    async def complete_async_activity(self, input: CompleteAsyncActivityInput) -> None:
        await async_complete(self._client, input.id_or_token, input.result)

    async def fail_async_activity(self, input: FailAsyncActivityInput) -> None:
        await async_fail(self._client, input.id_or_token, input.error, input.last_heartbeat_details)

    async def report_cancellation_async_activity(
        self, input: ReportCancellationAsyncActivityInput
    ) -> None:
        await async_report_cancellation(self._client, input.id_or_token, input.details)
