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
from typing import TYPE_CHECKING, Any, Protocol

from errands._lifecycle import AttemptFailure, FailureKind, RunState, Status
from errands.common import (
    ActivityIDConflictPolicy,
    ActivityIDReusePolicy,
    RetryPolicy,
    SearchAttributeIndexedValueType,
    TypedSearchAttributes,
)
from errands.exceptions import TimeoutType

if TYPE_CHECKING:
    from errands.converter import EncodedFailure
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
    headers: bytes | None = None
    """The start's headers, framed (``converter.serialize_headers``); None: none."""


@dataclass(frozen=True)
class ExecutionOptions:
    """The options of an execution that ``update_options`` may change."""

    task_queue: str
    schedule_to_close_s: float | None
    schedule_to_start_s: float | None
    start_to_close_s: float | None
    heartbeat_s: float | None
    start_delay_s: float | None
    retry_policy: RetryPolicy
    priority_key: int


OPTION_FIELDS = tuple(ExecutionOptions.__dataclass_fields__)
"""The names of those options (and of their columns)."""


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
    """The attempt's number, as ``activity.info().attempt`` (1 after a reset)."""
    serial: int
    """The attempt's serial, which the store's verbs take: it never repeats
    within a run, even across a reset, so a stale attempt's report is refused."""
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
    headers: bytes | None = None
    """The headers the execution was started with, framed; None: none."""


@dataclass(frozen=True)
class ClaimResult:
    """Claimed tasks, and when the next scheduled one of the queue becomes ready
    (None when the claim filled every slot or nothing waits)."""

    tasks: list[ClaimedTask]
    next_ready_at: float | None


class FollowUp(Protocol):
    """A claim for the slot a completion frees, run in that completion's
    transaction (``Store.follow_up_claim``)."""

    def release(self) -> None:
        """Call once the write it was passed to has ended, or if it was never
        passed: if no transaction ran it, its ``deliver`` gets an empty result
        (and it never runs)."""


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

    @classmethod
    def of(cls, encoded: EncodedFailure) -> FailureReport:
        """The report of an error the data converter encoded."""
        info = AttemptFailure(
            kind=FailureKind(encoded.kind),
            error_type=encoded.error_type,
            non_retryable=encoded.non_retryable,
            next_retry_delay_s=encoded.next_retry_delay_s,
        )
        return cls(info, encoded.data)


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
    """The current (or next) attempt's number, counted from 1 again after a reset."""
    serial: int
    """That attempt's serial (see ``ClaimedTask.serial``)."""
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
    """Its number (counted from 1 again after a reset)."""
    serial: int
    """Its serial (see ``ClaimedTask.serial``)."""
    started_time: float
    closed_time: float | None
    identity: str | None
    outcome: str  # RUNNING COMPLETED FAILED TIMED_OUT CANCELED PAUSED RESET WORKER_LOST
    failure: bytes | None
    heartbeats_before: int
    """The execution's heartbeat count when the attempt began."""
    heartbeat_count: int | None
    """The attempt's own heartbeats, once it closed."""
    last_heartbeat_time: float | None
    timeout_type: TimeoutType | None = None
    """The timeout that ended it, if one did."""


@dataclass(frozen=True)
class QueueBacklog:
    """A task queue's executions that could be claimed now and wait for a worker."""

    task_queue: str
    backlog: int
    """How many."""
    oldest_age_s: float
    """How long the one that became claimable first has waited (the store's clock)."""


@dataclass(frozen=True)
class WorkerRecord:
    """One registered worker (``Store.register_worker``, ``list_workers``)."""

    worker_id: str
    namespace: str
    identity: str
    host: str
    pid: int
    task_queue: str
    slots: int
    executor: str
    """async, thread or process: where its plain-def activities run (async: none)."""
    started: float
    last_seen: float
    """Its last claim that took work, or its start."""
    used: int = 0
    """Attempts its process runs on its task queue now."""


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
    group_by: str | None = None
    """Another field counts group by: TaskQueue or ActivityType."""


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
    async def start_many(self, news: Sequence[NewExecution]) -> builtins.list[StartResult]:
        """Record many new executions in one transaction, all or none (at most
        10,000); USE_EXISTING starts of a running id return that run.

        Raises ActivityAlreadyStartedError naming every id that is running
        (policy FAIL) or given twice, or the first refused reuse; ValueError
        for too many or a search attribute of another type. Nothing is
        written then.
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
        worker_id: str | None = None,
    ) -> ClaimResult:
        """Start up to ``max_tasks`` ready attempts of the queue: smallest
        priority key first, then in the order they became ready. A registered
        worker's claims (``worker_id``) name this process as the attempts'
        owner (see ``register_worker``)."""

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
        worker_id: str | None = None,
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

    def follow_up_claim(
        self,
        namespace: str,
        task_queue: str,
        *,
        identity: str,
        only_types: Sequence[str] | None,
        exclude_types: Sequence[str],
        deliver: Callable[[ClaimResult, int], None],
        worker_id: str | None = None,
    ) -> FollowUp | None:
        """Optional: a claim of one task for a slot that an attempt's
        completion frees, to pass to ``complete(then_claim=...)``: it runs in
        that completion's transaction (one commit for both instead of two), and
        ``deliver`` gets its result and the commit's number after the commit,
        on the caller's loop (an empty result and 0 if it rolled back). It runs
        at most once; ``release()`` it once the write ended (or if it was never
        passed to one). None if the store does not do this."""
        return None

    @abc.abstractmethod
    async def complete(
        self, run_id: str, attempt: int, result: bytes, *, then_claim: FollowUp | None = None
    ) -> bool:
        """Close the execution COMPLETED if the attempt is current; False if
        stale. ``then_claim`` (``follow_up_claim``) runs in the same
        transaction either way."""

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
    async def reset(
        self,
        namespace: str,
        activity_id: str,
        run_id: str | None,
        *,
        keep_paused: bool = False,
        reset_heartbeat: bool = False,
        jitter_s: float = 0.0,
        restore_original_options: bool = False,
    ) -> bool:
        """Make the next attempt number 1, claimable now (within ``jitter_s``);
        a running attempt is interrupted and its late outcome refused. False
        if nothing changed (a cancel was requested: it wins).

        Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
        """

    @abc.abstractmethod
    async def update_options(
        self,
        namespace: str,
        activity_id: str,
        run_id: str | None,
        changes: dict[str, Any] | None,
    ) -> ExecutionOptions:
        """Change an open execution's options (by ``ExecutionOptions`` field
        name; None restores the start's); the options after.

        Raises ActivityNotFoundError, ActivityAlreadyClosedError if closed,
        ValueError if the options would be invalid.
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
        reset: dict[str, bool] | None = None,
        batch: int = 1000,
        options: dict[str, Any] | None = None,
    ) -> int:
        """Apply ``verb`` (cancel, terminate, pause, unpause, reset: with the
        ``reset`` flags of ``reset()``, retry_now, update_options: with the
        ``options`` changes of ``update_options()``; an execution these would
        leave invalid is left as it is) to every execution open and matching
        the query when the call begins (and still when its batch comes), a
        batch of at most 1,000 per transaction (so workers wait for one batch
        at most); how many it changed.

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
    async def count_by(self, namespace: str, query: Query) -> dict[str, int]:
        """How many executions match, per value of the field the query
        groups by (``query.group_by``: TaskQueue or ActivityType)."""

    @abc.abstractmethod
    async def search_attribute_types(
        self, namespace: str
    ) -> dict[str, SearchAttributeIndexedValueType]:
        """The type of every search attribute name executions of the
        namespace were started with (a name keeps the type it was first
        started with)."""

    @abc.abstractmethod
    async def queue_backlog(self, namespace: str) -> builtins.list[QueueBacklog]:
        """The namespace's queues that have executions claimable now: how many
        and the oldest one's wait (one index-backed read), by queue name."""

    @abc.abstractmethod
    async def prune(self, namespace: str, closed_before: float, *, batch: int = 1000) -> int:
        """Delete closed executions closed before the time, a batch per
        transaction. Returns how many were deleted."""

    @abc.abstractmethod
    async def attempts(self, run_id: str) -> builtins.list[AttemptRecord]:
        """The attempts kept of an execution (the newest 100), oldest first."""

    # -- workers and their liveness (DESIGN §6 "Liveness and failover")

    @abc.abstractmethod
    async def register_worker(self, worker: WorkerRecord) -> None:
        """Register a worker, taking this process's liveness token first if it
        holds none yet: its claims (``claim_batch(worker_id=...)``) then name
        this process, and whoever sees the token gone fails them as WorkerLost.

        Raises StoreError if the token cannot be taken.
        """

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped."""

    @abc.abstractmethod
    async def list_workers(self, namespace: str) -> builtins.list[WorkerRecord]:
        """The namespace's registered workers, oldest first."""

    @abc.abstractmethod
    def watch_liveness(self, failure: bytes) -> None:
        """From now on, fail the attempts of every process whose liveness token
        is found gone, with ``failure`` (an encoded retryable
        ``ApplicationError(type="WorkerLost")``); a worker or a client awaiting
        a result calls this."""

    @abc.abstractmethod
    async def check_liveness(self) -> builtins.list[str]:
        """Look now for processes whose token is gone and fail their attempts
        (as ``watch_liveness`` does, which must have been called); the owners
        found gone."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""
