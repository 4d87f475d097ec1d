"""The lifecycle of one activity execution, as pure functions.

Both stores call these to decide what a failure, a timeout or a cancel request
does to an execution, so they cannot disagree. Times are float seconds since
the epoch; ``FAR`` stands for "no deadline" so that deadlines compare and index
as plain numbers.

::

    start ─► SCHEDULED ─claim─► STARTED ─return─► COMPLETED
                ▲                 │ raise / timeout (retryable, attempts left)
                └──── backoff ────┘
    STARTED ─ non-retryable, attempts or schedule_to_close used up ─► FAILED / TIMED_OUT
    SCHEDULED|STARTED ─ cancel ─► CANCELED
    any open state ─ terminate ─► TERMINATED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from errands.common import ActivityIDReusePolicy, RetryPolicy
from errands.exceptions import TimeoutType

FAR = 1.0e15
"""A deadline that never comes (year 31 million)."""


class Status(str, enum.Enum):
    """The status column of an execution."""

    RUNNING = "RUNNING"  # open: see RunState
    COMPLETED = "COMPLETED"  # returned a value
    FAILED = "FAILED"  # failed for good: non-retryable, or retries used up
    CANCELED = "CANCELED"  # cancelled before it started, or the attempt let the cancel out
    TERMINATED = "TERMINATED"  # terminated by a client
    TIMED_OUT = "TIMED_OUT"  # a final timeout, or retries used up after a timeout
    PAUSED = "PAUSED"  # open and paused: reported, never stored (the row holds RUNNING, PAUSED)


class RunState(str, enum.Enum):
    """Where a RUNNING execution is."""

    SCHEDULED = "SCHEDULED"  # waiting to be claimed (ready_at may lie in the future: backoff)
    STARTED = "STARTED"  # an attempt runs on a worker
    CANCEL_REQUESTED = "CANCEL_REQUESTED"  # an attempt runs and a client asked to cancel it
    PAUSED = "PAUSED"  # paused: no attempt runs and none is dispatched until unpause
    PAUSE_REQUESTED = "PAUSE_REQUESTED"  # paused while an attempt runs: it is asked to stop


NO_ATTEMPT_RUNS = frozenset({RunState.SCHEDULED, RunState.PAUSED})
"""The run states of an open execution no attempt of which runs: a cancel or
terminate closes it at once (there is no attempt to interrupt)."""


class FailureKind(str, enum.Enum):
    """What ended an attempt badly."""

    APPLICATION = "application"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    TERMINATED = "terminated"


def retry_delay_s(policy: RetryPolicy, attempt: int, next_retry_delay_s: float | None) -> float:
    """Seconds to wait before the attempt after ``attempt`` (1-based)."""
    if next_retry_delay_s is not None:
        return max(0.0, next_retry_delay_s)
    initial = policy.initial_interval.total_seconds()
    maximum = (
        policy.maximum_interval.total_seconds()
        if policy.maximum_interval is not None
        else 100.0 * initial
    )
    try:
        delay = initial * policy.backoff_coefficient ** (attempt - 1)
    except OverflowError:
        delay = maximum
    return min(delay, maximum)


@dataclass(frozen=True)
class AttemptFailure:
    """An attempt's failure as the lifecycle sees it."""

    kind: FailureKind
    error_type: str | None = None
    non_retryable: bool = False
    next_retry_delay_s: float | None = None
    timeout_type: TimeoutType | None = None


@dataclass(frozen=True)
class Retry:
    """Schedule attempt ``attempt`` to become claimable at ``ready_at``."""

    attempt: int
    ready_at: float
    interval_s: float


@dataclass(frozen=True)
class Hold:
    """Keep the execution paused; attempt ``attempt`` becomes claimable at
    ``ready_at`` once it is unpaused (a pending backoff still runs out)."""

    attempt: int
    ready_at: float
    interval_s: float


PAUSE_ERROR_TYPE = "ActivityPause"
"""The error type of an attempt that let the cancel of a pause out."""


WORKER_LOST_ERROR_TYPE = "WorkerLost"
"""The error type of an attempt whose worker died."""


PAYLOAD_DECODE_ERROR_TYPE = "PayloadDecodeError"
"""The error type of an attempt whose stored input (or heartbeat details)
cannot be decoded: corrupt bytes, or a codec that refuses them. It is not
retryable: the next attempt would read the same bytes."""


def failed_attempt_outcome(failure: AttemptFailure, *, pause_requested: bool) -> str:
    """How an attempt that failed is shown in the history: TIMED_OUT, PAUSED
    (it let out the cancel of a pause), WORKER_LOST or FAILED."""
    if failure.kind is FailureKind.TIMEOUT:
        return "TIMED_OUT"
    if failure.error_type == PAUSE_ERROR_TYPE and pause_requested:
        return "PAUSED"
    if failure.error_type == WORKER_LOST_ERROR_TYPE:
        return "WORKER_LOST"
    return "FAILED"


@dataclass(frozen=True)
class Close:
    """Close the execution with ``status``."""

    status: Status


def after_failure(
    *,
    policy: RetryPolicy,
    attempt: int,
    failure: AttemptFailure,
    cancel_requested: bool,
    schedule_to_close_deadline: float,
    now: float,
    paused: bool = False,
) -> Retry | Hold | Close:
    """What a failed attempt leads to: another attempt, or the end.

    A cancel request stops retries (Temporal's retry state CANCEL_REQUESTED); so
    do a non-retryable error, a type in ``non_retryable_error_types``, used-up
    attempts, and a retry that would start after the schedule_to_close deadline.
    An attempt that failed while its execution was being paused is held: the
    next attempt waits for unpause (and, but for an attempt stopped by the
    pause itself, for its backoff too).
    """
    final = Close(Status.TIMED_OUT if failure.kind is FailureKind.TIMEOUT else Status.FAILED)
    if cancel_requested or failure.non_retryable:
        return final
    if failure.kind is FailureKind.APPLICATION and failure.error_type in (
        policy.non_retryable_error_types
    ):
        return final
    if policy.maximum_attempts and attempt >= policy.maximum_attempts:
        return final
    if paused and failure.error_type == PAUSE_ERROR_TYPE:
        return Hold(attempt=attempt + 1, ready_at=now, interval_s=0.0)
    delay = retry_delay_s(policy, attempt, failure.next_retry_delay_s)
    ready_at = now + delay
    if ready_at >= schedule_to_close_deadline:
        return final
    if paused:
        return Hold(attempt=attempt + 1, ready_at=ready_at, interval_s=delay)
    return Retry(attempt=attempt + 1, ready_at=ready_at, interval_s=delay)


def scheduled_deadline(
    *, ready_at: float, schedule_to_start_s: float | None, schedule_to_close_deadline: float
) -> float:
    """When a SCHEDULED execution times out if nobody claims it."""
    s2s = FAR if schedule_to_start_s is None else ready_at + schedule_to_start_s
    return min(s2s, schedule_to_close_deadline)


def started_timeout_type(
    *,
    now: float,
    attempt_started: float,
    start_to_close_s: float | None,
    heartbeat_s: float | None,
    last_heartbeat: float | None,
    schedule_to_close_deadline: float,
) -> TimeoutType | None:
    """Which timeout of a STARTED attempt has passed at ``now``, if any.

    schedule_to_close wins over the per-attempt timeouts because it ends the
    execution rather than the attempt.
    """
    if now >= schedule_to_close_deadline:
        return TimeoutType.SCHEDULE_TO_CLOSE
    if start_to_close_s is not None and now >= attempt_started + start_to_close_s:
        return TimeoutType.START_TO_CLOSE
    if heartbeat_s is not None:
        since = attempt_started if last_heartbeat is None else max(last_heartbeat, attempt_started)
        if now >= since + heartbeat_s:
            return TimeoutType.HEARTBEAT
    return None


def started_deadline(
    *,
    attempt_started: float,
    start_to_close_s: float | None,
    heartbeat_s: float | None,
    last_heartbeat: float | None,
    schedule_to_close_deadline: float,
) -> float:
    """The next timeout of a STARTED attempt: the earliest of schedule_to_close,
    start_to_close and the heartbeat deadline."""
    since = attempt_started if last_heartbeat is None else max(attempt_started, last_heartbeat)
    return min(
        schedule_to_close_deadline,
        FAR if start_to_close_s is None else attempt_started + start_to_close_s,
        FAR if heartbeat_s is None else since + heartbeat_s,
    )


@dataclass(frozen=True)
class StartTimes:
    """The times a new execution is recorded with."""

    ready_at: float
    schedule_to_close_deadline: float
    deadline: float


def start_times(
    *,
    now: float,
    start_delay_s: float | None,
    schedule_to_close_s: float | None,
    schedule_to_start_s: float | None,
) -> StartTimes:
    """When a new execution becomes claimable, when it must close, and its
    first deadline."""
    ready_at = now + (start_delay_s or 0.0)
    s2c = FAR if schedule_to_close_s is None else now + schedule_to_close_s
    return StartTimes(
        ready_at=ready_at,
        schedule_to_close_deadline=s2c,
        deadline=scheduled_deadline(
            ready_at=ready_at,
            schedule_to_start_s=schedule_to_start_s,
            schedule_to_close_deadline=s2c,
        ),
    )


def reuse_refused(policy: ActivityIDReusePolicy, latest_status: Status | None) -> bool:
    """Whether the id reuse policy refuses a new run of an id whose latest run
    has ``latest_status`` (None: the id was never used). A running id is a
    conflict, not a reuse: see ``ActivityIDConflictPolicy``."""
    if latest_status is None or latest_status is Status.RUNNING:
        return False
    if policy is ActivityIDReusePolicy.REJECT_DUPLICATE:
        return True
    if policy is ActivityIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY:
        return latest_status is Status.COMPLETED
    return False


def interrupt_kind(
    status: Status, run_state: RunState | None, *, superseded: bool = False
) -> str | None:
    """What a running attempt must be told, given its execution's state:
    "terminate", "cancel", "pause", "reset", or None. ``superseded``: a reset
    has made a later attempt the current one."""
    if status is Status.TERMINATED:
        return "terminate"
    if superseded and status is Status.RUNNING:
        return "reset"
    if run_state is RunState.CANCEL_REQUESTED:
        return "cancel"
    if run_state is RunState.PAUSE_REQUESTED:
        return "pause"
    return None


def unpaused_ready_at(*, ready_at: float, now: float, jitter_s: float, draw: float) -> float:
    """When an unpaused execution's next attempt becomes claimable: once its
    pending backoff (if any) ran out, at a moment within ``jitter_s`` after
    (``draw`` is uniform in [0, 1))."""
    return max(ready_at, now) + jitter_s * draw


def reset_ready_at(*, now: float, jitter_s: float, draw: float) -> float:
    """When the first attempt after a reset becomes claimable: at once, or at
    a moment within ``jitter_s`` (``draw`` is uniform in [0, 1)). A pending
    backoff or start delay does not count: the next attempt is a new first."""
    return now + jitter_s * draw


@dataclass(frozen=True)
class Rescheduled:
    """The times of an open execution after its options changed."""

    ready_at: float
    schedule_to_close_deadline: float
    deadline: float
    attempt_deadline: float
    """The running attempt's start_to_close deadline (FAR when none runs)."""
    interval_s: float | None
    """The pending retry backoff, if one is pending."""


def after_options_change(
    *,
    run_state: RunState,
    schedule_time: float,
    ready_at: float,
    deadline: float,
    attempt: int,
    never_started: bool,
    interval_s: float | None,
    attempt_started: float | None,
    attempt_start_to_close_s: float | None,
    policy: RetryPolicy,
    policy_changed: bool,
    start_delay_s: float | None,
    start_delay_changed: bool,
    schedule_to_close_s: float | None,
    schedule_to_start_s: float | None,
) -> Rescheduled:
    """The times of an open execution whose options changed.

    schedule_to_close bounds the whole execution, so it applies at once, still
    counted from the schedule time. An execution that waits takes the rest at
    once too: a first attempt that never started waits for the new start
    delay (from the schedule time), a pending retry backoff is recomputed with
    the new retry policy (from when the attempt failed), and schedule_to_start
    counts from when it becomes ready. A running attempt keeps its own
    start_to_close and heartbeat timeouts; the next attempt takes the new
    ones. A pending retry stays pending even if the new policy allows fewer
    attempts: that decision was made when the attempt failed.
    """
    s2c = FAR if schedule_to_close_s is None else schedule_time + schedule_to_close_s
    if run_state not in (RunState.SCHEDULED, RunState.PAUSED):
        assert attempt_started is not None
        stc = attempt_start_to_close_s
        own = FAR if stc is None else attempt_started + stc
        # A later deadline than the stored one is found by the timer when that passes.
        return Rescheduled(ready_at, s2c, min(deadline, s2c), min(s2c, own), interval_s)
    if never_started and start_delay_changed:
        ready_at = schedule_time + (start_delay_s or 0.0)
    if policy_changed and interval_s is not None and attempt > 1:
        failed_at = ready_at - interval_s
        interval_s = retry_delay_s(policy, attempt - 1, None)
        ready_at = failed_at + interval_s
    if run_state is RunState.PAUSED:  # only schedule_to_close counts while paused
        waits_until = s2c
    else:
        waits_until = scheduled_deadline(
            ready_at=ready_at,
            schedule_to_start_s=schedule_to_start_s,
            schedule_to_close_deadline=s2c,
        )
    return Rescheduled(ready_at, s2c, waits_until, FAR, interval_s)


def scheduled_timeout_type(
    *,
    now: float,
    ready_at: float,
    schedule_to_start_s: float | None,
    schedule_to_close_deadline: float,
) -> TimeoutType | None:
    """Which timeout of a SCHEDULED execution has passed at ``now``, if any."""
    if now >= schedule_to_close_deadline:
        return TimeoutType.SCHEDULE_TO_CLOSE
    if schedule_to_start_s is not None and now >= ready_at + schedule_to_start_s:
        return TimeoutType.SCHEDULE_TO_START
    return None


def task_token(run_id: str, attempt: int) -> bytes:
    """The token that names one attempt of one execution."""
    return f"{run_id}/{attempt}".encode()


def parse_task_token(token: bytes) -> tuple[str, int]:
    """(run_id, attempt) of a token; ValueError if it is not one."""
    try:
        run_id, attempt = token.decode("ascii").rsplit("/", 1)
        return run_id, int(attempt)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"not an errands task token: {token!r}") from e
