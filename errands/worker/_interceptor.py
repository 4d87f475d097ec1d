"""Worker interceptors, in temporalio's shapes (exported from ``errands.worker``).

An ``Interceptor`` given to ``Worker(interceptors=[...])`` (or to
``Client.connect(interceptors=[...])``, when it also implements the client's
``Interceptor``) wraps every attempt: ``intercept_activity(next)`` returns an
``ActivityInboundInterceptor``, whose ``init(outbound)`` receives the chain of
``ActivityOutboundInterceptor`` (what the activity's ``activity.info()`` and
``activity.heartbeat()`` call) and whose ``execute_activity(input)`` runs the
attempt. The first interceptor of the list is the outermost.

Where the chain runs, for every executor kind: on the worker's event loop, in
the attempt's own task, around the call of the activity function, as
temporalio runs it. For a thread-pool activity the innermost
``execute_activity`` hands the function to the pool (the interceptors' context
variables, an OpenTelemetry span say, follow it into the thread). For a
process-pool activity the chain also runs in the worker, and only the
function crosses into the child: interceptors are often unpicklable (a
tracer, a meter, a connection) and their exporters live in the worker, and a
span around the pool call still times the attempt. In the child,
``activity.info()`` returns what ``outbound.info()`` returned when the call was
sent, and each ``activity.heartbeat()`` comes back to the worker, where it
passes through ``outbound.heartbeat`` like any other. ``outbound.heartbeat``
always runs on the worker's event loop, with the attempt's context set
(``activity.info()`` works there), whatever thread or process heartbeated.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from errands.activity import Info, _current
from errands.converter import Payload

if TYPE_CHECKING:
    from errands.worker._attempt import Attempt


@dataclass
class ExecuteActivityInput:
    """Input for ``ActivityInboundInterceptor.execute_activity``."""

    fn: Callable[..., Any]
    """The activity function. An interceptor may replace it with another of
    the same kind (``async def`` for an async activity, picklable for a
    process pool)."""
    args: Sequence[Any]
    """The decoded arguments."""
    executor: concurrent.futures.Executor | None
    """The worker's activity_executor for a plain ``def`` activity; None for
    an ``async def`` one."""
    headers: Mapping[str, Payload]
    """What client interceptors put in ``StartActivityInput.headers`` at
    start; the same on every attempt."""


class ActivityInboundInterceptor:
    """Wraps one attempt. Subclass it and override what to intercept; each
    method's default hands on to ``self.next``."""

    def __init__(self, next: ActivityInboundInterceptor) -> None:
        """Wrap ``next``, the interceptor calls are handed on to."""
        self.next = next

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        """Called once per attempt, before ``execute_activity``, with the
        outbound chain. To add an outbound interceptor, wrap ``outbound`` and
        hand the wrapper to ``self.next.init``."""
        self.next.init(outbound)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        """Run the attempt: return the activity's result or raise its error."""
        return await self.next.execute_activity(input)


class ActivityOutboundInterceptor:
    """Wraps the calls an activity makes. Subclass it and override what to
    intercept; each method's default hands on to ``self.next``."""

    def __init__(self, next: ActivityOutboundInterceptor) -> None:
        """Wrap ``next``, the interceptor calls are handed on to."""
        self.next = next

    def info(self) -> Info:
        """Called for every ``activity.info()`` (in a process-pool child,
        once per attempt, when the call is sent)."""
        return self.next.info()

    def heartbeat(self, *details: Any) -> None:
        """Called for every ``activity.heartbeat()``, on the worker's event loop."""
        self.next.heartbeat(*details)


class Interceptor:
    """Intercepts a worker's attempts. Subclass it and override ``intercept_activity``."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap ``next`` (the rest of the chain) in this interceptor's
        ``ActivityInboundInterceptor``; the default returns ``next`` unchanged.
        Called once per attempt."""
        return next


# --------------------------------------------------------------------------- the chain's ends


class _InboundImpl(ActivityInboundInterceptor):
    """The innermost inbound interceptor: runs the function on its runner."""

    def __init__(self, attempt: Attempt) -> None:  # no next: nothing comes after it
        self._attempt = attempt

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        attempt = self._attempt
        context, runner = attempt.context, attempt.runner
        assert context is not None and runner is not None

        def heartbeat(details: Sequence[Any]) -> None:
            token = _current.set(context)  # as temporalio: info() works in outbound.heartbeat
            try:
                outbound.heartbeat(*details)
            finally:
                _current.reset(token)

        context.intercept(outbound.info, runner.threadsafe(heartbeat))

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        attempt = self._attempt
        definition, context, runner = attempt.definition, attempt.context, attempt.runner
        assert definition is not None and context is not None and runner is not None
        if input.fn is not definition.fn:
            definition = dataclasses.replace(definition, fn=input.fn)
        # A cancel that came while the interceptors ran reaches the function
        # when the runner begins the call (as one that came before them).
        return await runner.run(definition, context, input.args)


class _OutboundImpl(ActivityOutboundInterceptor):
    """The innermost outbound interceptor: the attempt's own info and heartbeat."""

    def __init__(self, attempt: Attempt, info: Callable[[], Info]) -> None:
        self._record = attempt.heartbeater.record
        self._info = info

    def info(self) -> Info:
        return self._info()

    def heartbeat(self, *details: Any) -> None:
        self._record(details)


async def run_intercepted(
    attempt: Attempt, interceptors: Sequence[Interceptor], args: Sequence[Any]
) -> Any:
    """Run the attempt through the interceptors: build the chain (in the
    attempt's context, so ``activity.info()`` works in the interceptors), init
    it and execute. Whatever the chain raises is the attempt's outcome."""
    context, definition = attempt.context, attempt.definition
    assert context is not None and definition is not None
    own_info = context.own_info
    token = _current.set(context)
    try:
        inbound: ActivityInboundInterceptor = _InboundImpl(attempt)
        for interceptor in reversed(interceptors):
            inbound = interceptor.intercept_activity(inbound)
        inbound.init(_OutboundImpl(attempt, own_info))
        return await inbound.execute_activity(
            ExecuteActivityInput(
                fn=definition.fn,
                args=args,
                executor=None if definition.is_async else attempt.env.executor,
                headers=attempt.headers,
            )
        )
    finally:
        _current.reset(token)
