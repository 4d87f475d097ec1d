"""Client interceptors, in temporalio's shapes (exported from ``errands.client``).

An ``Interceptor`` given to ``Client.connect(interceptors=[...])`` wraps the
client's calls: ``intercept_client(next)`` returns an ``OutboundInterceptor``
whose methods each take one call's input (a mutable dataclass, as temporalio's)
and hand it on to ``self.next``. The first interceptor of the list is the
outermost. An interceptor that also implements ``errands.worker.Interceptor``
is applied to every worker built on that client too (and should then not be
given to the Worker as well), as temporalio does.

Headers: ``StartActivityInput.headers`` maps names to
``errands.converter.Payload``; what a client interceptor puts there is stored
with the execution and reaches every attempt as
``errands.worker.ExecuteActivityInput.headers``. They pass through no codec.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from errands.common import (
    ActivityIDConflictPolicy,
    ActivityIDReusePolicy,
    Priority,
    RetryPolicy,
    TypedSearchAttributes,
)
from errands.converter import Payload

if TYPE_CHECKING:
    from errands.client import (
        ActivityAttempt,
        ActivityExecution,
        ActivityExecutionCount,
        ActivityExecutionDescription,
        ActivityExecutionOptions,
        ActivityHandle,
        ActivityOptionsUpdate,
        WorkerInfo,
    )

# --------------------------------------------------------------------------- inputs


@dataclass
class StartActivityInput:
    """Input for ``OutboundInterceptor.start_activity``: ``Client.start_activity``
    (and ``execute_activity``) with the activity's definition defaults applied."""

    activity_type: str
    args: Sequence[Any]
    id: str
    task_queue: str
    result_type: type | None
    schedule_to_close_timeout: timedelta | None
    start_to_close_timeout: timedelta | None
    schedule_to_start_timeout: timedelta | None
    heartbeat_timeout: timedelta | None
    id_reuse_policy: ActivityIDReusePolicy
    id_conflict_policy: ActivityIDConflictPolicy
    retry_policy: RetryPolicy | None
    priority: Priority
    search_attributes: TypedSearchAttributes | None
    summary: str | None
    start_delay: timedelta | None
    headers: Mapping[str, Payload]
    """Stored with the execution and handed to every attempt. Empty by default."""


@dataclass
class StartActivitiesInput:
    """*(errands)* Input for ``OutboundInterceptor.start_activities``: one
    ``StartActivityInput`` per start, written in one transaction."""

    starts: Sequence[StartActivityInput]


@dataclass
class GetActivityResultInput:
    """Input for ``OutboundInterceptor.get_activity_result``: ``ActivityHandle.result()``."""

    activity_id: str
    activity_run_id: str
    """The run awaited (a handle by id alone has looked its latest run up)."""
    result_type: type | None


@dataclass
class DescribeActivityInput:
    """Input for ``OutboundInterceptor.describe_activity``: ``ActivityHandle.describe()``."""

    activity_id: str
    activity_run_id: str | None
    result_type: type | None
    include_input: bool
    include_outcome: bool
    include_heartbeat_details: bool
    include_last_failure: bool


@dataclass
class CancelActivityInput:
    """Input for ``OutboundInterceptor.cancel_activity``: ``ActivityHandle.cancel()``."""

    activity_id: str
    activity_run_id: str | None
    reason: str | None


@dataclass
class TerminateActivityInput:
    """Input for ``OutboundInterceptor.terminate_activity``: ``ActivityHandle.terminate()``."""

    activity_id: str
    activity_run_id: str | None
    reason: str | None


@dataclass
class PauseActivityInput:
    """Input for ``OutboundInterceptor.pause_activity``: ``ActivityHandle.pause()``."""

    activity_id: str
    activity_run_id: str | None
    reason: str | None


@dataclass
class UnpauseActivityInput:
    """Input for ``OutboundInterceptor.unpause_activity``: ``ActivityHandle.unpause()``."""

    activity_id: str
    activity_run_id: str | None
    reason: str | None
    jitter: timedelta | None


@dataclass
class ResetActivityInput:
    """Input for ``OutboundInterceptor.reset_activity``: ``ActivityHandle.reset()``."""

    activity_id: str
    activity_run_id: str | None
    reason: str | None
    keep_paused: bool
    reset_heartbeat: bool
    jitter: timedelta | None
    restore_original_options: bool


@dataclass
class UpdateActivityOptionsInput:
    """Input for ``OutboundInterceptor.update_activity_options``:
    ``ActivityHandle.update_options()``, and ``restore_original_options()``
    (``updates`` None)."""

    activity_id: str
    activity_run_id: str | None
    updates: Sequence[ActivityOptionsUpdate[Any]] | None


@dataclass
class RetryActivityNowInput:
    """*(errands)* Input for ``OutboundInterceptor.retry_activity_now``:
    ``ActivityHandle.retry_now()``."""

    activity_id: str
    activity_run_id: str | None


@dataclass
class GetActivityAttemptsInput:
    """*(errands)* Input for ``OutboundInterceptor.get_activity_attempts``:
    ``ActivityHandle.attempts()``."""

    activity_id: str
    activity_run_id: str | None


@dataclass
class ListActivitiesInput:
    """Input for ``OutboundInterceptor.list_activities``: ``Client.list_activities()``."""

    query: str | None
    limit: int | None


@dataclass
class CountActivitiesInput:
    """Input for ``OutboundInterceptor.count_activities``: ``Client.count_activities()``."""

    query: str | None


@dataclass
class BulkActivitiesInput:
    """*(errands)* Input for the bulk calls (``cancel_activities``,
    ``terminate_activities``, ``pause_activities``, ``unpause_activities``,
    ``reset_activities``, ``retry_activities_now``,
    ``update_activities_options``); each fills the fields its call takes and
    leaves the others at their defaults."""

    query: str | None
    reason: str | None
    jitter: timedelta | None = None
    keep_paused: bool = False
    reset_heartbeat: bool = False
    restore_original_options: bool = False
    updates: Sequence[ActivityOptionsUpdate[Any]] = ()


@dataclass
class ListWorkersInput:
    """*(errands)* Input for ``OutboundInterceptor.list_workers``: ``Client.list_workers()``."""


@dataclass
class AsyncActivityReference:
    """Which attempt an ``AsyncActivityHandle`` reports on: by task token, or
    by activity id (and run id)."""

    task_token: bytes | None
    activity_id: str | None
    run_id: str | None


@dataclass
class HeartbeatAsyncActivityInput:
    """Input for ``OutboundInterceptor.heartbeat_async_activity``."""

    id_or_token: AsyncActivityReference
    details: Sequence[Any]


@dataclass
class CompleteAsyncActivityInput:
    """Input for ``OutboundInterceptor.complete_async_activity``."""

    id_or_token: AsyncActivityReference
    result: Any


@dataclass
class FailAsyncActivityInput:
    """Input for ``OutboundInterceptor.fail_async_activity``."""

    id_or_token: AsyncActivityReference
    error: BaseException
    last_heartbeat_details: Sequence[Any]


@dataclass
class ReportCancellationAsyncActivityInput:
    """Input for ``OutboundInterceptor.report_cancellation_async_activity``."""

    id_or_token: AsyncActivityReference
    details: Sequence[Any]


# --------------------------------------------------------------------------- interceptors


class Interceptor:
    """Intercepts a client's calls. Subclass it and override ``intercept_client``."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        """Wrap ``next`` (the rest of the chain) in this interceptor's
        ``OutboundInterceptor``; the default returns ``next`` unchanged."""
        return next


class OutboundInterceptor:
    """One method per client call; each hands its input on to ``self.next``.
    Subclass it and override the calls to intercept."""

    def __init__(self, next: OutboundInterceptor) -> None:
        """Wrap ``next``, the interceptor each call is handed on to."""
        self.next = next

    # Starting

    async def start_activity(self, input: StartActivityInput) -> ActivityHandle[Any]:
        """Called for every ``Client.start_activity`` (and ``execute_activity``)."""
        return await self.next.start_activity(input)

    async def start_activities(self, input: StartActivitiesInput) -> list[ActivityHandle[Any]]:
        """Called for every ``Client.start_activities``."""
        return await self.next.start_activities(input)

    # One execution

    async def get_activity_result(self, input: GetActivityResultInput) -> Any:
        """Called for every ``ActivityHandle.result`` (and ``execute_activity``)."""
        return await self.next.get_activity_result(input)

    async def describe_activity(self, input: DescribeActivityInput) -> ActivityExecutionDescription:
        """Called for every ``ActivityHandle.describe``."""
        return await self.next.describe_activity(input)

    async def cancel_activity(self, input: CancelActivityInput) -> None:
        """Called for every ``ActivityHandle.cancel``."""
        await self.next.cancel_activity(input)

    async def terminate_activity(self, input: TerminateActivityInput) -> None:
        """Called for every ``ActivityHandle.terminate``."""
        await self.next.terminate_activity(input)

    async def pause_activity(self, input: PauseActivityInput) -> None:
        """Called for every ``ActivityHandle.pause``."""
        await self.next.pause_activity(input)

    async def unpause_activity(self, input: UnpauseActivityInput) -> None:
        """Called for every ``ActivityHandle.unpause``."""
        await self.next.unpause_activity(input)

    async def reset_activity(self, input: ResetActivityInput) -> None:
        """Called for every ``ActivityHandle.reset``."""
        await self.next.reset_activity(input)

    async def update_activity_options(
        self, input: UpdateActivityOptionsInput
    ) -> ActivityExecutionOptions:
        """Called for every ``ActivityHandle.update_options`` and
        ``restore_original_options``."""
        return await self.next.update_activity_options(input)

    async def retry_activity_now(self, input: RetryActivityNowInput) -> bool:
        """Called for every ``ActivityHandle.retry_now``."""
        return await self.next.retry_activity_now(input)

    async def get_activity_attempts(self, input: GetActivityAttemptsInput) -> list[ActivityAttempt]:
        """Called for every ``ActivityHandle.attempts``."""
        return await self.next.get_activity_attempts(input)

    # Many executions

    def list_activities(self, input: ListActivitiesInput) -> AsyncIterator[ActivityExecution]:
        """Called for every ``Client.list_activities``."""
        return self.next.list_activities(input)

    async def count_activities(self, input: CountActivitiesInput) -> ActivityExecutionCount:
        """Called for every ``Client.count_activities``."""
        return await self.next.count_activities(input)

    async def cancel_activities(self, input: BulkActivitiesInput) -> int:
        """Called for every ``Client.cancel_activities``."""
        return await self.next.cancel_activities(input)

    async def terminate_activities(self, input: BulkActivitiesInput) -> int:
        """Called for every ``Client.terminate_activities``."""
        return await self.next.terminate_activities(input)

    async def pause_activities(self, input: BulkActivitiesInput) -> int:
        """Called for every ``Client.pause_activities``."""
        return await self.next.pause_activities(input)

    async def unpause_activities(self, input: BulkActivitiesInput) -> int:
        """Called for every ``Client.unpause_activities``."""
        return await self.next.unpause_activities(input)

    async def reset_activities(self, input: BulkActivitiesInput) -> int:
        """Called for every ``Client.reset_activities``."""
        return await self.next.reset_activities(input)

    async def retry_activities_now(self, input: BulkActivitiesInput) -> int:
        """Called for every ``Client.retry_activities_now``."""
        return await self.next.retry_activities_now(input)

    async def update_activities_options(self, input: BulkActivitiesInput) -> int:
        """Called for every ``Client.update_activities_options``."""
        return await self.next.update_activities_options(input)

    async def list_workers(self, input: ListWorkersInput) -> list[WorkerInfo]:
        """Called for every ``Client.list_workers``."""
        return await self.next.list_workers(input)

    # Async completion

    async def heartbeat_async_activity(self, input: HeartbeatAsyncActivityInput) -> None:
        """Called for every ``AsyncActivityHandle.heartbeat``."""
        await self.next.heartbeat_async_activity(input)

    async def complete_async_activity(self, input: CompleteAsyncActivityInput) -> None:
        """Called for every ``AsyncActivityHandle.complete``."""
        await self.next.complete_async_activity(input)

    async def fail_async_activity(self, input: FailAsyncActivityInput) -> None:
        """Called for every ``AsyncActivityHandle.fail``."""
        await self.next.fail_async_activity(input)

    async def report_cancellation_async_activity(
        self, input: ReportCancellationAsyncActivityInput
    ) -> None:
        """Called for every ``AsyncActivityHandle.report_cancellation``."""
        await self.next.report_cancellation_async_activity(input)
