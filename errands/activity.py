"""Writing activities: ``@activity.defn`` and the functions an activity calls
while it runs (``info()``, ``heartbeat()``, cancellation and shutdown queries).

The worker fills a private per-attempt context; every public function here is
a read of it. Outside an activity they raise ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import threading
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar, overload

from errands.common import MetricMeter, Priority, RetryPolicy
from errands.exceptions import CancelledError

if TYPE_CHECKING:
    from errands.client import Client
    from errands.converter import PayloadConverter

__all__ = [
    "ActivityCancellationDetails",
    "ActivityDefaults",
    "Info",
    "cancellation_details",
    "client",
    "defn",
    "heartbeat",
    "heartbeat_details",
    "heartbeating",
    "in_activity",
    "info",
    "is_cancelled",
    "is_worker_shutdown",
    "logger",
    "metric_meter",
    "payload_converter",
    "raise_complete_async",
    "shield_thread_cancel_exception",
    "wait_for_cancelled",
    "wait_for_cancelled_sync",
    "wait_for_worker_shutdown",
    "wait_for_worker_shutdown_sync",
]

CallableType = TypeVar("CallableType", bound=Callable[..., Any])

DEFAULT_HEARTBEATING_S = 1.0
"""How often ``heartbeating()`` beats where no worker set an interval (ActivityEnvironment)."""

_DEFINITION_ATTR = "__errands_activity_definition__"
_CACHE_ATTR = "__errands_activity_cache__"


# --------------------------------------------------------------------------- defn


@dataclass(frozen=True)
class ActivityDefaults:
    """*(errands)* Start options an activity's definition carries
    (``@activity.defn(start_to_close_timeout=...)``): ``start_activity`` of
    the function uses each one its call leaves out. An activity started by
    name gets none of them."""

    task_queue: str | None = None
    schedule_to_close_timeout: timedelta | None = None
    schedule_to_start_timeout: timedelta | None = None
    start_to_close_timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    retry_policy: RetryPolicy | None = None
    priority: Priority | None = None

    def __post_init__(self) -> None:
        if self.task_queue is not None and (
            not isinstance(self.task_queue, str) or not self.task_queue
        ):
            raise ValueError(f"task_queue must be a non-empty string, got {self.task_queue!r}")
        for name in (
            "schedule_to_close_timeout",
            "schedule_to_start_timeout",
            "start_to_close_timeout",
            "heartbeat_timeout",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, timedelta):
                raise TypeError(f"{name} must be a timedelta, got {type(value).__name__}")
            if value <= timedelta(0):
                raise ValueError(f"{name} must be positive, got {value}")
        if self.retry_policy is not None and not isinstance(self.retry_policy, RetryPolicy):
            raise TypeError(
                f"retry_policy must be a RetryPolicy, got {type(self.retry_policy).__name__}"
            )
        if self.priority is not None and not isinstance(self.priority, Priority):
            raise TypeError(f"priority must be a Priority, got {type(self.priority).__name__}")


@dataclass(frozen=True)
class _Options:
    name: str | None
    dynamic: bool
    no_thread_cancel_exception: bool
    defaults: ActivityDefaults = ActivityDefaults()
    auto_heartbeat: bool = False


@overload
def defn(fn: CallableType) -> CallableType: ...


@overload
def defn(
    *,
    name: str | None = None,
    no_thread_cancel_exception: bool = False,
    dynamic: bool = False,
    task_queue: str | None = None,
    schedule_to_close_timeout: timedelta | None = None,
    schedule_to_start_timeout: timedelta | None = None,
    start_to_close_timeout: timedelta | None = None,
    heartbeat_timeout: timedelta | None = None,
    retry_policy: RetryPolicy | None = None,
    priority: Priority | None = None,
    auto_heartbeat: bool = False,
) -> Callable[[CallableType], CallableType]: ...


def defn(
    fn: CallableType | None = None,
    *,
    name: str | None = None,
    no_thread_cancel_exception: bool = False,
    dynamic: bool = False,
    task_queue: str | None = None,
    schedule_to_close_timeout: timedelta | None = None,
    schedule_to_start_timeout: timedelta | None = None,
    start_to_close_timeout: timedelta | None = None,
    heartbeat_timeout: timedelta | None = None,
    retry_policy: RetryPolicy | None = None,
    priority: Priority | None = None,
    auto_heartbeat: bool = False,
) -> CallableType | Callable[[CallableType], CallableType]:
    """Mark a function (or method) as an activity.

    ``@activity.defn`` names it after the function, ``@activity.defn(name="x")``
    names it ``x``, ``@activity.defn(dynamic=True)`` makes it the catch-all for
    unregistered names (it receives ``Sequence[RawValue]``).
    ``no_thread_cancel_exception=True`` keeps errands from raising
    ``CancelledError`` inside a sync activity's thread. The function is
    returned unchanged, so calling it directly still works.

    *(errands)* ``task_queue``, the four timeouts, ``retry_policy`` and
    ``priority`` are defaults for ``start_activity`` of the function: the
    call's own arguments win (see ``ActivityDefaults``). ``auto_heartbeat=True``
    runs the whole activity inside ``activity.heartbeating()``.

    Raises:
        TypeError: the function has keyword-only parameters (activities take
            positional arguments only), ``name`` and ``dynamic`` are both
            given, or a default has the wrong type.
        ValueError: a default timeout that is not positive, or an empty task_queue.
    """
    if name is not None and dynamic:
        raise TypeError("activity.defn: a dynamic activity takes no name")
    defaults = ActivityDefaults(
        task_queue=task_queue,
        schedule_to_close_timeout=schedule_to_close_timeout,
        schedule_to_start_timeout=schedule_to_start_timeout,
        start_to_close_timeout=start_to_close_timeout,
        heartbeat_timeout=heartbeat_timeout,
        retry_policy=retry_policy,
        priority=priority,
    )
    options = _Options(name, dynamic, no_thread_cancel_exception, defaults, auto_heartbeat)

    def decorate(f: CallableType) -> CallableType:
        if not callable(f):
            raise TypeError(f"activity.defn expects a function, got {type(f).__name__}")
        _check_parameters(f)
        setattr(f, _DEFINITION_ATTR, options)
        return f

    return decorate if fn is None else decorate(fn)


def _check_parameters(fn: Callable[..., Any]) -> None:
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(
                f"activity {getattr(fn, '__qualname__', fn)!r} has keyword-only parameter "
                f"{param.name!r}: activity arguments are positional only"
            )


@dataclass(frozen=True)
class _Definition:
    """An activity as the worker and client use it, worked out once per callable."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    dynamic: bool
    no_thread_cancel_exception: bool
    arg_names: Sequence[str]  # the positional parameters, in order
    arg_types: Sequence[Any]  # one hint (or None) per positional parameter
    required_args: int
    takes_varargs: bool
    result_type: Any
    defaults: ActivityDefaults = ActivityDefaults()
    auto_heartbeat: bool = False

    @staticmethod
    def from_callable(fn: Callable[..., Any]) -> _Definition:
        """The definition of a function ``@activity.defn`` marked.

        Raises TypeError if it was not marked.
        """
        bound = inspect.ismethod(fn)
        target = getattr(fn, "__func__", fn)
        cache: dict[bool, _Definition] | None = getattr(target, _CACHE_ATTR, None)
        cached = None if cache is None else cache.get(bound)
        if cached is not None:
            # Worked out once per function; a bound method differs only in ``fn``.
            return cached if cached.fn is fn else dataclasses.replace(cached, fn=fn)
        definition = _Definition._work_out(fn)
        if cache is None:
            cache = {}
            setattr(target, _CACHE_ATTR, cache)
        cache[bound] = definition
        return definition

    @staticmethod
    def _work_out(fn: Callable[..., Any]) -> _Definition:
        options: _Options | None = getattr(fn, _DEFINITION_ATTR, None)
        if options is None:
            raise TypeError(
                f"{getattr(fn, '__qualname__', fn)!r} is not an activity: decorate it with "
                "@activity.defn"
            )
        signature = inspect.signature(fn, eval_str=True)
        arg_names: list[str] = []
        arg_types: list[Any] = []
        required = 0
        varargs = False
        for param in signature.parameters.values():
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                varargs = True
                continue
            arg_names.append(param.name)
            arg_types.append(
                None if param.annotation is inspect.Parameter.empty else param.annotation
            )
            if param.default is inspect.Parameter.empty:
                required += 1
        result_type = (
            None
            if signature.return_annotation is inspect.Signature.empty
            else signature.return_annotation
        )
        target = fn.__func__ if inspect.ismethod(fn) else fn
        return _Definition(
            name=options.name or str(getattr(target, "__name__", repr(fn))),
            fn=fn,
            is_async=inspect.iscoroutinefunction(target),
            dynamic=options.dynamic,
            no_thread_cancel_exception=options.no_thread_cancel_exception,
            arg_names=arg_names,
            arg_types=arg_types,
            required_args=required,
            takes_varargs=varargs,
            result_type=result_type,
            defaults=options.defaults,
            auto_heartbeat=options.auto_heartbeat,
        )

    def check_arg_count(self, count: int) -> None:
        """Raise TypeError naming the activity if ``count`` arguments do not fit."""
        if self.dynamic:
            return
        if count < self.required_args or (count > len(self.arg_types) and not self.takes_varargs):
            expected = (
                f"{self.required_args}"
                if self.required_args == len(self.arg_types)
                else f"{self.required_args} to {len(self.arg_types)}"
            )
            if self.takes_varargs:
                expected = f"at least {self.required_args}"
            raise TypeError(f"activity {self.name!r} takes {expected} argument(s), got {count}")


# --------------------------------------------------------------------------- Info


@dataclass(frozen=True)
class Info:
    """What an attempt knows about itself (the fields of temporalio's
    ``activity.Info``, under the same names)."""

    activity_id: str
    """The execution's id, given at start."""
    activity_type: str
    """The registered activity name."""
    attempt: int
    """1 for the first attempt, then 2, 3, ..."""
    current_attempt_scheduled_time: datetime
    """When this attempt became ready to run (after any backoff)."""
    heartbeat_details: Sequence[Any]
    """The details of the last heartbeat that reached the store (earlier
    attempts included): resume from them on a retry."""
    heartbeat_timeout: timedelta | None
    """How long between heartbeats before the attempt times out."""
    is_local: bool
    """Always False: errands has no local activities."""
    schedule_to_close_timeout: timedelta | None
    """The limit on the whole execution, retries included."""
    scheduled_time: datetime
    """When the execution was started."""
    start_to_close_timeout: timedelta | None
    """The limit on one attempt."""
    started_time: datetime
    """When this attempt was claimed by the worker."""
    task_queue: str
    """The task queue the execution was started on."""
    task_token: bytes
    """Names this attempt (for async completion)."""
    workflow_id: str | None = None
    """None: errands activities have no workflow."""
    workflow_namespace: str | None = None
    """None: errands activities have no workflow."""
    workflow_run_id: str | None = None
    """None: errands activities have no workflow."""
    workflow_type: str | None = None
    """None: errands activities have no workflow."""
    priority: Priority = field(default_factory=Priority)
    """The execution's priority."""
    retry_policy: RetryPolicy | None = None
    """The execution's retry policy."""
    namespace: str = "default"
    """The namespace of the execution."""
    activity_run_id: str | None = None
    """The run id of this execution of the activity id."""


@dataclass(frozen=True)
class ActivityCancellationDetails:
    """Why an activity was cancelled (temporalio's flags)."""

    not_found: bool = False
    """The execution is gone: terminated, or removed from the store."""
    cancel_requested: bool = False
    """A client called ``cancel()``."""
    paused: bool = False
    """A client paused the execution (``ActivityHandle.pause()``)."""
    timed_out: bool = False
    """The attempt's own start_to_close or heartbeat timeout passed."""
    worker_shutdown: bool = False
    """The worker is shutting down and its grace period ran out."""
    reset: bool = False
    """The execution was reset (``ActivityHandle.reset``): the next attempt is a
    new first one, and this attempt's outcome is refused."""


# --------------------------------------------------------------------------- the context


_SIGNAL_LOCK = threading.Lock()


class _Signal:
    """A flag that async code and threads can both wait on. Cheap to make: the
    events behind the waits are created only when someone waits."""

    __slots__ = ("_async", "_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None
        self._async: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set the flag; call on the worker's event loop thread."""
        self._set = True
        event = self._event
        if event is not None:
            event.set()
        if self._async is not None:
            self._async.set()

    async def wait(self) -> None:
        if self._async is None:
            self._async = asyncio.Event()
            if self._set:
                self._async.set()
        await self._async.wait()

    def wait_sync(self, timeout: float | None) -> bool:
        event = self._event
        if event is None:
            with _SIGNAL_LOCK:
                if self._event is None:
                    self._event = threading.Event()
                event = self._event
        # set() stores the flag before it reads _event: one of the two sees the other.
        if self._set:
            return True
        return event.wait(timeout)


class _Context:
    """What the worker tells one running attempt. Internal."""

    __slots__ = (
        "_info",
        "_intercepted_info",
        "_make_info",
        "_meter",
        "_runtime_meter",
        "cancelled",
        "client",
        "details",
        "heartbeat",
        "heartbeat_every_s",
        "last_details",
        "payload_converter",
        "worker_shutdown",
    )

    def __init__(
        self,
        *,
        info: Callable[[], Info],
        heartbeat: Callable[[Sequence[Any]], None],
        cancelled: _Signal,
        worker_shutdown: _Signal,
        payload_converter: PayloadConverter,
        client: Client | None,
        heartbeat_every_s: float = DEFAULT_HEARTBEATING_S,
        metric_meter: MetricMeter | None = None,
    ) -> None:
        self._info: Info | None = None
        self._runtime_meter = metric_meter
        """The runtime's meter; None in a process-pool child (no runtime there)."""
        self._meter: MetricMeter | None = None
        self._intercepted_info: Callable[[], Info] | None = None
        self.heartbeat_every_s = heartbeat_every_s
        """How often ``heartbeating()`` heartbeats: the worker's throttle interval."""
        self.last_details: Sequence[Any] | None = None
        """The details of this attempt's latest ``heartbeat()``, once there is one."""
        self._make_info = info
        self.heartbeat = heartbeat
        self.cancelled = cancelled
        self.worker_shutdown = worker_shutdown
        self.payload_converter = payload_converter
        self.client = client
        self.details: ActivityCancellationDetails | None = None

    @property
    def info(self) -> Info:
        """The attempt's Info: what the outbound interceptors return, when
        there are some (asked at every call), else its own."""
        if self._intercepted_info is None:
            info = self._info
            if info is None:
                info = self._info = self._make_info()
            return info
        return self._intercepted_info()

    def own_info(self) -> Info:
        """The attempt's own Info, built on first use."""
        if self._info is None:
            self._info = self._make_info()
        return self._info

    @property
    def metric_meter(self) -> MetricMeter:
        """The runtime's meter with the attempt's namespace, task queue and
        activity type as attributes, made on first use."""
        if self._runtime_meter is None:
            raise RuntimeError(
                "metric_meter() is not available in process-pool activities: record "
                "metrics in the worker process (an async or thread-pool activity)"
            )
        if self._meter is None:
            info = self.info
            self._meter = self._runtime_meter.with_additional_attributes(
                {
                    "namespace": info.namespace,
                    "task_queue": info.task_queue,
                    "activity_type": info.activity_type,
                }
            )
        return self._meter

    def intercept(
        self, info: Callable[[], Info], heartbeat: Callable[[Sequence[Any]], None]
    ) -> None:
        """Send ``info()`` and ``heartbeat()`` through the worker's
        interceptors (``worker._interceptor``)."""
        self._intercepted_info = info
        self.heartbeat = heartbeat


_current: contextvars.ContextVar[_Context] = contextvars.ContextVar("errands_activity")


class _Shieldable(Protocol):
    """A running sync call that can defer its cancel exception."""

    def enter_shield(self) -> None: ...

    def exit_shield(self) -> bool:
        """Leave one shield level; True if a deferred cancel must be raised now."""
        ...


_shield_target: contextvars.ContextVar[_Shieldable] = contextvars.ContextVar("errands_shield")


@contextlib.contextmanager
def shield_thread_cancel_exception() -> Iterator[None]:
    """Defer the cancel exception errands raises into a sync (thread or
    process) activity until the outermost such block exits; nestable. Inside,
    ``is_cancelled()`` still turns true. Does nothing elsewhere."""
    target = _shield_target.get(None)
    if target is None:
        yield
        return
    target.enter_shield()
    try:
        yield
    finally:
        raise_now = target.exit_shield()
    if raise_now:
        raise CancelledError()


def _context() -> _Context:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("not in an activity: this works only while an activity runs") from None


def in_activity() -> bool:
    """True when called from inside a running activity."""
    return _current.get(None) is not None


def info() -> Info:
    """The running attempt's ``Info``. Raises RuntimeError outside an activity."""
    return _context().info


def heartbeat(*details: Any) -> None:
    """Report progress; the latest details win and reach the store throttled
    (at once for the first, then at most once per 0.8 x heartbeat_timeout).
    Never blocks. Heartbeating is also how cancellation reaches the activity.
    Raises RuntimeError outside an activity."""
    context = _context()
    context.last_details = details
    context.heartbeat(details)


@contextlib.contextmanager
def heartbeating(every: timedelta | None = None) -> Iterator[None]:
    """*(errands)* Heartbeat while the body runs: at once, then every
    ``every`` (default: the worker's heartbeat throttle interval, 0.8 x
    heartbeat_timeout), from a thread of its own, so a long call that never
    returns to the activity's code still keeps its heartbeat timeout and
    receives cancellation (async: at its next await; a thread: by the
    exception errands raises there; a process-pool child: by signal, even in
    a blocking call). Each beat repeats the details of the activity's latest
    ``heartbeat()`` (before any, those of the previous attempt).
    ``@activity.defn(auto_heartbeat=True)`` wraps the whole activity in it.

    Raises RuntimeError outside an activity; ValueError for a non-positive ``every``.
    """
    context = _context()
    every_s = context.heartbeat_every_s if every is None else every.total_seconds()
    if every_s <= 0:
        raise ValueError(f"heartbeating every {every} is not possible: it must be positive")
    stop = threading.Event()

    def beat() -> None:
        while True:
            details = context.last_details
            if details is None:
                details = context.info.heartbeat_details
            try:
                context.heartbeat(details)
            except Exception:  # the worker's loop closed, say: the attempt is over
                logging.getLogger("errands.worker").exception(
                    "activity.heartbeating() could not heartbeat; it stops"
                )
                return
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=beat, name="errands-heartbeating", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _auto_heartbeat(definition: _Definition) -> contextlib.AbstractContextManager[None]:
    """``heartbeating()`` for an ``auto_heartbeat`` activity, else nothing."""
    return heartbeating() if definition.auto_heartbeat else contextlib.nullcontext()


DetailsT = TypeVar("DetailsT")


def heartbeat_details(type_hint: type[DetailsT] | Any = None) -> DetailsT | None:
    """*(errands)* The first of the details the last heartbeat before this
    attempt stored (earlier attempts included), converted to ``type_hint``
    (a dataclass, a pydantic model, ``list[MyType]``, ...: what the payload
    converter reads), or None when there are none.

    Raises TypeError or ValueError if the details do not fit the type (the
    message says what was expected), RuntimeError outside an activity.
    """
    context = _context()
    details = context.info.heartbeat_details
    if not details:
        return None
    converter = context.payload_converter
    value: DetailsT = converter.from_payload(converter.to_payload(details[0]), type_hint)
    return value


def is_cancelled() -> bool:
    """True once cancellation has been delivered to this attempt.
    Raises RuntimeError outside an activity."""
    return _context().cancelled.is_set()


async def wait_for_cancelled() -> None:
    """Return when cancellation is delivered. Raises RuntimeError outside an activity."""
    await _context().cancelled.wait()


def wait_for_cancelled_sync(timeout: timedelta | float | None = None) -> bool:
    """Block (a sync activity's thread or process) until cancellation is
    delivered or ``timeout`` passes; True if cancelled. Raises RuntimeError
    outside an activity."""
    return _context().cancelled.wait_sync(_seconds(timeout))


def wait_for_worker_shutdown_sync(timeout: timedelta | float | None = None) -> bool:
    """Block until the worker begins shutting down or ``timeout`` passes; True
    if it did. Raises RuntimeError outside an activity."""
    return _context().worker_shutdown.wait_sync(_seconds(timeout))


def _seconds(timeout: timedelta | float | None) -> float | None:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else timeout


class _CompleteAsyncError(BaseException):
    """Raised by raise_complete_async(); the worker catches it and reports nothing.
    A BaseException so that ``except Exception`` in activity code lets it pass."""


def raise_complete_async() -> NoReturn:
    """End the activity function without completing the attempt: its outcome
    will come from an ``AsyncActivityHandle`` (``client.get_async_activity_handle
    (task_token=activity.info().task_token)``). The attempt's start_to_close and
    heartbeat timeouts still run. Raises RuntimeError outside an activity."""
    _context()
    raise _CompleteAsyncError()


def cancellation_details() -> ActivityCancellationDetails | None:
    """Why the attempt was cancelled, or None if it was not.
    Raises RuntimeError outside an activity."""
    return _context().details


def is_worker_shutdown() -> bool:
    """True once the worker began shutting down. Raises RuntimeError outside an activity."""
    return _context().worker_shutdown.is_set()


async def wait_for_worker_shutdown() -> None:
    """Return when the worker begins shutting down. Raises RuntimeError outside an activity."""
    await _context().worker_shutdown.wait()


def metric_meter() -> MetricMeter:
    """A meter for the activity's own metrics, recording with its namespace,
    task queue and activity type as attributes, into the worker's runtime
    (``errands.runtime``); ``MetricMeter.noop`` when its metrics are off.

    Raises RuntimeError outside an activity, and in a process-pool activity
    (as temporalio: the child process has no runtime).
    """
    return _context().metric_meter


def payload_converter() -> PayloadConverter:
    """The payload converter of the worker's client. Raises RuntimeError outside an activity."""
    return _context().payload_converter


def client() -> Client:
    """The client of the worker running this activity, for async activities.

    Raises RuntimeError outside an activity or in a sync (thread or process) one.
    """
    found = _context().client
    if found is None:
        raise RuntimeError("activity.client() is available in async activities only")
    return found


# --------------------------------------------------------------------------- logger


class LoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose records carry the running activity's id, type, attempt
    and task queue (in the message and as ``record.activity_info``)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        context = _current.get(None)
        if context is not None:
            i = context.info
            details = {
                "activity_id": i.activity_id,
                "activity_type": i.activity_type,
                "attempt": i.attempt,
                "task_queue": i.task_queue,
                "namespace": i.namespace,
            }
            extra = dict(kwargs.get("extra") or {})
            extra.setdefault("activity_info", details)
            extra.update({k: v for k, v in details.items() if k not in extra})
            kwargs["extra"] = extra
            msg = f"{msg} ({details})"
        return msg, kwargs


logger = LoggerAdapter(logging.getLogger("errands.activity"), None)
"""Log from an activity: records carry activity id, type, attempt and task queue."""
