"""The Store interface: the lifecycle of DESIGN.md as a few verbs.

A backend translates each verb into one atomic, conditional change, so any
number of workers and clients may share one store. Stores see arguments,
results, heartbeat details and failures as opaque bytes; the decisions about
retries and timeouts come from ``errands._lifecycle``.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from errands._lifecycle import AttemptFailure, RunState, Status
from errands.common import (
    ActivityIDConflictPolicy,
    ActivityIDReusePolicy,
    RetryPolicy,
    SearchAttributeIndexedValueType,
    TypedSearchAttributes,
)
from errands.exceptions import TimeoutType

if TYPE_CHECKING:
    from errands.store._changes import Feed


@dataclass(frozen=True)
class NewExecution:
    """Everything ``start`` records about a new execution."""

    namespace: str
    activity_id: str
    run_id: str
    activity_type: str
    task_queue: str
    input: bytes
    schedule_to_close_s: float | None
    schedule_to_start_s: float | None
    start_to_close_s: float | None
    heartbeat_s: float | None
    retry_policy: RetryPolicy
    priority_key: int
    start_delay_s: float | None = None
    summary: str | None = None
    id_reuse_policy: ActivityIDReusePolicy = ActivityIDReusePolicy.ALLOW_DUPLICATE
    id_conflict_policy: ActivityIDConflictPolicy = ActivityIDConflictPolicy.FAIL
    search_attributes: TypedSearchAttributes = TypedSearchAttributes.empty


@dataclass(frozen=True)
class StartResult:
    """The run that ``start`` made, or the running one it returned (USE_EXISTING)."""

    run_id: str
    created: bool


@dataclass(frozen=True)
class ClaimedTask:
    """One attempt handed to a worker by ``claim_batch``."""

    namespace: str
    activity_id: str
    run_id: str
    activity_type: str
    task_queue: str
    attempt: int
    input: bytes
    heartbeat_details: bytes | None
    schedule_time: float
    current_attempt_scheduled_time: float
    started_time: float
    schedule_to_close_s: float | None
    schedule_to_start_s: float | None
    start_to_close_s: float | None
    heartbeat_s: float | None
    retry_policy: RetryPolicy
    priority_key: int


@dataclass(frozen=True)
class ClaimResult:
    """Claimed tasks, and when the next scheduled one of the queue becomes ready
    (None when the claim filled every slot or nothing waits)."""

    tasks: list[ClaimedTask]
    next_ready_at: float | None


@dataclass(frozen=True)
class HeartbeatResult:
    """Whether a heartbeat was recorded, and whether cancellation or a pause
    was asked for."""

    accepted: bool
    cancel_requested: bool
    pause_requested: bool = False


@dataclass(frozen=True)
class FailureReport:
    """An attempt's failure: what the lifecycle needs, plus the encoded error."""

    info: AttemptFailure
    data: bytes


@dataclass(frozen=True)
class ClosedRun:
    """An execution that closed: its status and, if COMPLETED, its result."""

    run_id: str
    status: Status
    result: bytes | None = None


@dataclass(frozen=True)
class ExecutionRecord:
    """One execution as the store holds it."""

    namespace: str
    activity_id: str
    run_id: str
    activity_type: str
    task_queue: str
    status: Status
    run_state: RunState | None
    attempt: int
    input: bytes
    result: bytes | None
    failure: bytes | None
    timeout_type: TimeoutType | None
    heartbeat_details: bytes | None
    heartbeat_count: int
    last_heartbeat_time: float | None
    schedule_time: float
    current_attempt_scheduled_time: float
    started_time: float | None
    close_time: float | None
    schedule_to_close_s: float | None
    schedule_to_start_s: float | None
    start_to_close_s: float | None
    heartbeat_s: float | None
    retry_policy: RetryPolicy
    priority_key: int
    start_delay_s: float | None
    canceled_reason: str | None
    identity: str | None
    summary: str | None
    retry_interval_s: float | None
    cancel_requested: bool
    search_attributes: TypedSearchAttributes = TypedSearchAttributes.empty

    @property
    def is_open(self) -> bool:
        """True while the execution is RUNNING."""
        return self.status is Status.RUNNING


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of an execution as the store keeps it."""

    run_id: str
    attempt: int
    started_time: float
    closed_time: float | None
    identity: str | None
    outcome: str  # RUNNING COMPLETED FAILED TIMED_OUT CANCELED
    failure: bytes | None
    heartbeats_before: int
    """The execution's heartbeat count when the attempt began."""
    heartbeat_count: int | None
    """The attempt's own heartbeats, once it closed."""
    last_heartbeat_time: float | None


@dataclass(frozen=True)
class Field:
    """A field of a visibility query: a built-in one (``attribute`` None) or
    a search attribute of that type."""

    name: str
    attribute: SearchAttributeIndexedValueType | None = None


Value = str | int | float
"""A query value as the store compares it: a status or run state as stored,
a built-in time in seconds, a search attribute's bool as 0/1 and datetime in
microseconds since the epoch."""


@dataclass(frozen=True)
class Compare:
    """``field op value``: op is one of = != < <= > >= STARTS_WITH. Only an
    execution that has the field matches (a search attribute it was started
    with, a CloseTime once closed); a keyword list matches if an element
    does, and ``!=`` if none is equal."""

    field: Field
    op: str
    value: Value


@dataclass(frozen=True)
class In:
    """``field IN (values)``."""

    field: Field
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Between:
    """``field BETWEEN low AND high`` (both ends included)."""

    field: Field
    low: Value
    high: Value


@dataclass(frozen=True)
class IsNull:
    """``field IS NULL``: the execution has no value for it."""

    field: Field


@dataclass(frozen=True)
class Not:
    """``NOT term``: true exactly when the term is not."""

    term: Expr


@dataclass(frozen=True)
class And:
    """All of the terms."""

    terms: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    """Any of the terms."""

    terms: tuple[Expr, ...]


Expr = Compare | In | Between | IsNull | Not | And | Or
"""A parsed visibility condition."""

ORDER_FIELDS = ("ScheduleTime", "CloseTime")
"""The fields a query may ORDER BY."""


@dataclass(frozen=True)
class Query:
    """A parsed visibility query: a condition (None: everything), an order
    (None: newest first) and whether counts group by status."""

    where: Expr | None = None
    order_by: str | None = None  # one of ORDER_FIELDS
    descending: bool = True
    group_by_status: bool = False


class Store(abc.ABC):
    """What a backend implements. Every verb is a coroutine; every state change
    is one atomic conditional update. Errors of the database are raised as
    ``errands.exceptions.StoreError`` from the driver's error."""

    feed: Feed
    """The change feed: every committed transition, by this process or another,
    for waiters to subscribe to (see ``errands.store._changes``)."""

    @abc.abstractmethod
    async def start(self, new: NewExecution) -> StartResult:
        """Record a new SCHEDULED execution.

        Raises ActivityAlreadyStartedError when the id is running (policy FAIL)
        or closed and the reuse policy refuses it.
        """

    @abc.abstractmethod
    async def claim_batch(
        self,
        namespace: str,
        task_queue: str,
        *,
        max_tasks: int,
        identity: str,
        only_types: Sequence[str] | None = None,
        exclude_types: Sequence[str] = (),
        queue_rate_per_s: float | None = None,
    ) -> ClaimResult:
        """Start up to ``max_tasks`` ready attempts of the queue: smallest
        priority key first, then in the order they became ready."""

    def arm_claim(
        self,
        namespace: str,
        task_queue: str,
        *,
        max_tasks: int,
        identity: str,
        only_types: Sequence[str] | None,
        exclude_types: Sequence[str],
        deliver: Callable[[ClaimResult, int], None],
        listener: object = None,
    ) -> Callable[[], bool] | None:
        """Optional: a poller that found nothing asks the store to claim for it
        inside the transaction of the next change to its queue (a start by
        this process, or another process's change as it arrives), and to
        ``deliver`` the result and the number of the commit that made it (on
        the poller's loop) after that commit. Returns a function that
        withdraws the request: True if it was withdrawn, False if it already
        fired (its ``deliver`` call, perhaps of an empty result, is then on
        its way). ``listener``: the poller's change-feed subscription, which
        the change a claim ran for then skips. None if the store does not do
        this."""
        return None

    @abc.abstractmethod
    async def heartbeat(self, run_id: str, attempt: int, details: bytes | None) -> HeartbeatResult:
        """Record a heartbeat of a running attempt (details None keeps the old
        ones). A stale attempt is not accepted and changes nothing."""

    @abc.abstractmethod
    async def complete(self, run_id: str, attempt: int, result: bytes) -> bool:
        """Close the execution COMPLETED if the attempt is current; False if stale."""

    @abc.abstractmethod
    async def fail(self, run_id: str, attempt: int, failure: FailureReport) -> Status | None:
        """Fail the attempt: schedule a retry (returns RUNNING) or close the
        execution (returns its status). None if the attempt is stale."""

    @abc.abstractmethod
    async def report_cancelled(self, run_id: str, attempt: int, failure: bytes) -> bool:
        """Close the execution CANCELED if the attempt is current; False if stale."""

    @abc.abstractmethod
    async def request_cancel(
        self, namespace: str, activity_id: str, run_id: str | None, reason: str | None
    ) -> Status:
        """Ask to cancel: a SCHEDULED execution is CANCELED at once, a started
        one gets a request its worker sees. Returns the status after.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """

    @abc.abstractmethod
    async def terminate(
        self, namespace: str, activity_id: str, run_id: str | None, reason: str | None
    ) -> None:
        """Close an open execution TERMINATED.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """

    @abc.abstractmethod
    async def pause(self, namespace: str, activity_id: str, run_id: str | None) -> bool:
        """Pause: a waiting execution at once, a running attempt is asked to
        stop. False if nothing changed.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """

    @abc.abstractmethod
    async def unpause(
        self, namespace: str, activity_id: str, run_id: str | None, jitter_s: float
    ) -> bool:
        """Make a paused execution dispatchable again (within ``jitter_s``), or
        withdraw a pause requested of its attempt. False if it was not paused.

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """

    @abc.abstractmethod
    async def bulk(
        self,
        namespace: str,
        query: Query,
        verb: str,
        *,
        reason: str | None = None,
        jitter_s: float = 0.0,
        batch: int = 1000,
    ) -> int:
        """Apply ``verb`` (cancel, terminate, pause, unpause) to every open
        execution the query matches, a batch of at most 1,000 per transaction
        (so workers wait for one batch at most); how many it changed.

        Raises ValueError for an unknown verb.
        """

    @abc.abstractmethod
    async def retry_now(self, namespace: str, activity_id: str, run_id: str | None) -> bool:
        """Make an execution waiting out a retry backoff or a start delay
        claimable now; False if it was not waiting (it changes nothing).

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """

    @abc.abstractmethod
    async def fire_due_timers(
        self, namespace: str, *, run_ids: Sequence[str] | None = None, limit: int = 500
    ) -> float | None:
        """Apply every timeout that has passed (of ``run_ids`` only, if given).
        Returns the next deadline still pending, or None."""

    @abc.abstractmethod
    async def describe(
        self, namespace: str, activity_id: str, run_id: str | None = None
    ) -> ExecutionRecord:
        """The execution (the latest run of the id if ``run_id`` is None).

        Raises ActivityNotFoundError.
        """

    @abc.abstractmethod
    async def get_by_run_ids(self, run_ids: Sequence[str]) -> builtins.list[ExecutionRecord]:
        """The executions with these run ids (missing ones are left out)."""

    @abc.abstractmethod
    async def closed_runs(self, run_ids: Sequence[str]) -> builtins.list[ClosedRun]:
        """Those of these executions that have closed (open and missing ones
        are left out)."""

    @abc.abstractmethod
    async def list(
        self, namespace: str, query: Query, *, limit: int | None = None
    ) -> builtins.list[ExecutionRecord]:
        """Executions matching the query, newest first (or in its ORDER BY)."""

    @abc.abstractmethod
    async def count(self, namespace: str, query: Query) -> tuple[int, dict[Status, int]]:
        """How many executions match; per status when the query groups by it."""

    @abc.abstractmethod
    async def search_attribute_types(
        self, namespace: str
    ) -> dict[str, SearchAttributeIndexedValueType]:
        """The type of every search attribute name executions of the
        namespace were started with (a name keeps the type it was first
        started with)."""

    @abc.abstractmethod
    async def prune(self, namespace: str, closed_before: float, *, batch: int = 1000) -> int:
        """Delete closed executions closed before the time, a batch per
        transaction. Returns how many were deleted."""

    @abc.abstractmethod
    async def attempts(self, run_id: str) -> builtins.list[AttemptRecord]:
        """The attempts kept of an execution (the newest 100), oldest first."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""
