"""OpenTelemetry traces of activities: ``TracingInterceptor``.

Give one to the client (``Client.connect(interceptors=[TracingInterceptor()])``);
workers built on that client use it too. Then:

- ``start_activity`` is a ``StartActivity:{type}`` span (kind PRODUCER) whose
  context travels with the execution in a header (``_tracer-data``, the
  propagator's carrier as JSON, as temporalio names it);
- every attempt is a ``RunActivity:{type}`` span (kind CONSUMER) whose parent
  is that start span, in whatever process or on whatever machine the worker
  runs: retries are sibling attempt spans under one start span;
- ``start_activities`` is one ``StartActivities`` span that every start of
  the batch names as its parent.

Spans carry OpenTelemetry's messaging attributes (``messaging.system`` =
``errands``, ``messaging.destination.name`` = the task queue,
``messaging.message.id`` = the activity id, ``messaging.operation.type``) and
errands' own (``errands.activity.type``, ``errands.activity.run_id``,
``errands.activity.attempt``). A failure sets the span's status to ERROR,
records the exception as an event and sets ``error.type`` (an
ApplicationError's ``type``, else the exception's class name); a cancellation
does the same and says why in ``errands.activity.cancellation`` (the flags of
``activity.cancellation_details()``: ``cancel_requested``, ``timed_out``,
``worker_shutdown``, ``paused``, ``reset``, ``not_found``). An attempt handed
to ``raise_complete_async()`` ends its span without error, marked
``errands.activity.completed_async``.

The span of an attempt runs in the worker process, around the activity:
context variables follow a thread-pool activity into its thread, so spans the
activity makes there are children of the attempt's span; a process-pool child
gets no span context (see ``errands.worker._interceptor`` for why the chain
stays in the worker).

Needs ``opentelemetry-api`` (``pip install 'errands[opentelemetry]'``); the
rest of errands never imports this module or OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import Any

try:
    import opentelemetry.context
    import opentelemetry.propagate
    import opentelemetry.trace
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
    from opentelemetry.util.types import AttributeValue
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "errands.contrib.opentelemetry needs opentelemetry-api: "
        "pip install 'errands[opentelemetry]'"
    ) from e

from errands import activity, client, worker
from errands.activity import _CompleteAsyncError
from errands.converter import Payload
from errands.exceptions import ApplicationError, CancelledError

__all__ = ["HEADER_KEY", "TracingInterceptor"]

logger = logging.getLogger("errands.contrib.opentelemetry")

HEADER_KEY = "_tracer-data"
"""The header that carries the start span's context to the attempts."""

MESSAGING_SYSTEM = "errands"
"""``messaging.system`` of every span."""

_CANCELLATION_FLAGS = ("cancel_requested", "timed_out", "worker_shutdown", "paused", "reset")


class TracingInterceptor(client.Interceptor, worker.Interceptor):
    """Traces starts and attempts with OpenTelemetry (see the module's docstring).

    Args:
        tracer: The tracer to make spans with. Default: the global tracer
            provider's (``opentelemetry.trace.get_tracer``), as temporalio.
        propagator: How span context is written into, and read from, the
            header. Default: the global text-map propagator (W3C trace
            context and baggage, unless configured otherwise).
    """

    def __init__(
        self,
        tracer: opentelemetry.trace.Tracer | None = None,
        *,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracer = tracer or opentelemetry.trace.get_tracer(__name__)
        self.propagator = propagator or opentelemetry.propagate.get_global_textmap()

    def intercept_client(self, next: client.OutboundInterceptor) -> client.OutboundInterceptor:
        """Trace the client's starts."""
        return _TracingOutbound(next, self)

    def intercept_activity(
        self, next: worker.ActivityInboundInterceptor
    ) -> worker.ActivityInboundInterceptor:
        """Trace every attempt."""
        return _TracingInbound(next, self)

    # ---------------------------------------------------------------- carriers

    def _header(self) -> Payload | None:
        """The current span context as a header value: the carrier as JSON
        (what ``PayloadConverter.to_payload`` writes for it, done directly).
        None when the propagator writes nothing (no valid span context and no
        baggage, as under a no-op tracer): the start then carries no header,
        and its attempts begin a new trace, as from an empty carrier."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier)
        if not carrier:
            return None
        return Payload({"encoding": b"json/plain"}, json.dumps(carrier).encode())

    def _parent(self, headers: Mapping[str, Payload]) -> opentelemetry.context.Context:
        """The span context the start put in the headers (an empty context,
        so a new trace, when there is none or it cannot be read)."""
        payload = headers.get(HEADER_KEY)
        if payload is None:
            return opentelemetry.context.Context()
        try:
            carrier = json.loads(payload.data)
            if not isinstance(carrier, dict) or not all(
                isinstance(v, str) for v in carrier.values()
            ):
                raise ValueError(f"a JSON object of strings was expected, not {carrier!r}")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            logger.warning("the %s header cannot be read (%s): a new trace begins", HEADER_KEY, e)
            return opentelemetry.context.Context()
        return self.propagator.extract(carrier, context=opentelemetry.context.Context())

    def _span(
        self,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue],
        context: opentelemetry.context.Context | None = None,
    ) -> _Scope:
        """A current span that records how the block ended."""
        return _Scope(
            self.tracer.start_span(
                name,
                context=context,
                kind=kind,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
        )


class _Scope:
    """What ``Tracer.start_as_current_span`` and ``trace.use_span`` do for a
    span (make it current in the block, end it after), without their two
    generator-based context managers per span, and recording how the block
    ended (``_record``) before the span ends."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._token: Token[opentelemetry.context.Context] | None = None

    def __enter__(self) -> Span:
        self._token = opentelemetry.context.attach(
            opentelemetry.trace.set_span_in_context(self.span)
        )
        return self.span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self.span
        try:
            if error is not None:
                _record(span, error)
        finally:
            assert self._token is not None
            opentelemetry.context.detach(self._token)
            span.end()


def _message(task_queue: str, operation: str) -> dict[str, AttributeValue]:
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": task_queue,
        "messaging.operation.type": operation,
    }


def _record(span: Span, error: BaseException) -> None:
    """Record how an exception ended the span's work."""
    if isinstance(error, _CompleteAsyncError):
        span.set_attribute("errands.activity.completed_async", True)
        return
    if isinstance(error, (asyncio.CancelledError, CancelledError)):
        details = activity.cancellation_details() if activity.in_activity() else None
        if details is not None:
            why = [flag for flag in _CANCELLATION_FLAGS if getattr(details, flag)]
            if details.not_found:
                why.append("not_found")
            span.set_attribute("errands.activity.cancellation", ",".join(why))
        span.set_attribute("error.type", "CancelledError")
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
        return
    error_type = (
        error.type if isinstance(error, ApplicationError) and error.type else type(error).__name__
    )
    span.set_attribute("error.type", error_type)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class _TracingOutbound(client.OutboundInterceptor):
    def __init__(self, next: client.OutboundInterceptor, root: TracingInterceptor) -> None:
        super().__init__(next)
        self._root = root

    async def start_activity(self, input: client.StartActivityInput) -> client.ActivityHandle[Any]:
        root = self._root
        attributes = _message(input.task_queue, "send")
        attributes["messaging.message.id"] = input.id
        attributes["errands.activity.type"] = input.activity_type
        with root._span(
            f"StartActivity:{input.activity_type}", SpanKind.PRODUCER, attributes
        ) as span:
            header = root._header()
            if header is not None:
                input.headers = {**input.headers, HEADER_KEY: header}
            handle = await super().start_activity(input)
            if handle.run_id is not None:
                span.set_attribute("errands.activity.run_id", handle.run_id)
            return handle

    async def start_activities(
        self, input: client.StartActivitiesInput
    ) -> list[client.ActivityHandle[Any]]:
        root = self._root
        queues = {start.task_queue for start in input.starts}
        attributes: dict[str, AttributeValue] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.batch.message_count": len(input.starts),
        }
        if len(queues) == 1:
            attributes["messaging.destination.name"] = queues.pop()
        with root._span("StartActivities", SpanKind.PRODUCER, attributes):
            header = root._header()
            if header is not None:
                for start in input.starts:
                    start.headers = {**start.headers, HEADER_KEY: header}
            return await super().start_activities(input)


class _TracingInbound(worker.ActivityInboundInterceptor):
    def __init__(self, next: worker.ActivityInboundInterceptor, root: TracingInterceptor) -> None:
        super().__init__(next)
        self._root = root

    async def execute_activity(self, input: worker.ExecuteActivityInput) -> Any:
        root = self._root
        info = activity.info()
        attributes = _message(info.task_queue, "process")
        attributes["messaging.message.id"] = info.activity_id
        attributes["errands.activity.type"] = info.activity_type
        attributes["errands.activity.attempt"] = info.attempt
        if info.activity_run_id is not None:
            attributes["errands.activity.run_id"] = info.activity_run_id
        with root._span(
            f"RunActivity:{info.activity_type}",
            SpanKind.CONSUMER,
            attributes,
            context=root._parent(input.headers),
        ):
            return await super().execute_activity(input)
