"""Unit tests of errands._lifecycle: the pure rules both stores obey."""

from __future__ import annotations

from datetime import timedelta

import pytest

from errands import _lifecycle as lc
from errands.common import RetryPolicy
from errands.exceptions import TimeoutType

NOW = 1_700_000_000.0


def app_failure(
    error_type: str | None = "Boom",
    *,
    non_retryable: bool = False,
    next_retry_delay_s: float | None = None,
) -> lc.AttemptFailure:
    return lc.AttemptFailure(
        lc.FailureKind.APPLICATION,
        error_type=error_type,
        non_retryable=non_retryable,
        next_retry_delay_s=next_retry_delay_s,
    )


def timeout_failure(timeout_type: TimeoutType = TimeoutType.START_TO_CLOSE) -> lc.AttemptFailure:
    return lc.AttemptFailure(lc.FailureKind.TIMEOUT, timeout_type=timeout_type)


def decide(
    failure: lc.AttemptFailure,
    *,
    retry_policy: RetryPolicy | None = None,
    attempt: int = 1,
    cancel_requested: bool = False,
    deadline: float = lc.FAR,
    now: float = NOW,
) -> lc.Retry | lc.Close:
    return lc.after_failure(
        policy=retry_policy or RetryPolicy(),
        attempt=attempt,
        failure=failure,
        cancel_requested=cancel_requested,
        schedule_to_close_deadline=deadline,
        now=now,
    )


# ------------------------------------------------------------------ retry_delay_s


@pytest.mark.parametrize(("attempt", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)])
def test_the_default_policy_doubles_the_delay_from_one_second(
    attempt: int, expected: float
) -> None:
    assert lc.retry_delay_s(RetryPolicy(), attempt, None) == pytest.approx(expected)


def test_the_backoff_coefficient_and_initial_interval_shape_the_delay() -> None:
    p = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=3.0)
    delays = [lc.retry_delay_s(p, n, None) for n in (1, 2, 3)]
    assert delays == pytest.approx([0.2, 0.6, 1.8])


def test_a_coefficient_of_one_keeps_the_delay_constant() -> None:
    p = RetryPolicy(initial_interval=timedelta(seconds=5), backoff_coefficient=1.0)
    assert [lc.retry_delay_s(p, n, None) for n in (1, 2, 10)] == pytest.approx([5.0] * 3)


def test_maximum_interval_caps_the_delay() -> None:
    p = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5))
    delays = [lc.retry_delay_s(p, n, None) for n in (1, 2, 3, 4, 5, 30)]
    assert delays == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0, 5.0])


def test_without_maximum_interval_the_delay_is_capped_at_100_times_the_initial() -> None:
    p = RetryPolicy(initial_interval=timedelta(milliseconds=500))
    assert lc.retry_delay_s(p, 7, None) == pytest.approx(32.0)  # 0.5 * 2**6, below the cap
    assert lc.retry_delay_s(p, 8, None) == pytest.approx(50.0)  # 0.5 * 2**7 = 64 -> 50
    assert lc.retry_delay_s(p, 40, None) == pytest.approx(50.0)


def test_a_huge_attempt_number_does_not_overflow_and_gives_the_maximum() -> None:
    p = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=10.0)
    assert lc.retry_delay_s(p, 100_000, None) == pytest.approx(100.0)


def test_next_retry_delay_replaces_the_backoff_even_above_the_maximum() -> None:
    p = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=2))
    assert lc.retry_delay_s(p, 5, 0.123) == pytest.approx(0.123)
    assert lc.retry_delay_s(p, 1, 30.0) == pytest.approx(30.0)


def test_next_retry_delay_of_zero_retries_at_once_and_a_negative_one_is_clamped() -> None:
    assert lc.retry_delay_s(RetryPolicy(), 3, 0.0) == 0.0
    assert lc.retry_delay_s(RetryPolicy(), 3, -5.0) == 0.0


# ------------------------------------------------------------------ after_failure


def test_a_retryable_failure_schedules_the_next_attempt_after_the_backoff() -> None:
    p = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=3.0)
    decision = decide(app_failure(), retry_policy=p, attempt=2)
    assert isinstance(decision, lc.Retry)
    assert decision.attempt == 3
    assert decision.interval_s == pytest.approx(6.0)
    assert decision.ready_at == pytest.approx(NOW + 6.0)


def test_a_failure_with_next_retry_delay_schedules_after_that_delay() -> None:
    decision = decide(app_failure(next_retry_delay_s=0.25), attempt=4)
    assert isinstance(decision, lc.Retry)
    assert decision.attempt == 5
    assert decision.ready_at == pytest.approx(NOW + 0.25)
    assert decision.interval_s == pytest.approx(0.25)


def test_a_non_retryable_failure_closes_failed_at_once() -> None:
    assert decide(app_failure(non_retryable=True)) == lc.Close(lc.Status.FAILED)


def test_a_non_retryable_flag_wins_over_next_retry_delay() -> None:
    failure = app_failure(non_retryable=True, next_retry_delay_s=0.1)
    assert decide(failure) == lc.Close(lc.Status.FAILED)


def test_an_error_type_listed_as_non_retryable_closes_failed() -> None:
    p = RetryPolicy(non_retryable_error_types=["ValueError", "KeyError"])
    assert decide(app_failure("KeyError"), retry_policy=p) == lc.Close(lc.Status.FAILED)


def test_an_error_type_not_listed_is_retried() -> None:
    p = RetryPolicy(non_retryable_error_types=["ValueError"])
    assert isinstance(decide(app_failure("TypeError"), retry_policy=p), lc.Retry)
    assert isinstance(decide(app_failure(None), retry_policy=p), lc.Retry)


def test_non_retryable_error_types_match_the_type_name_exactly() -> None:
    p = RetryPolicy(non_retryable_error_types=["ValueError"])
    assert isinstance(decide(app_failure("valueerror"), retry_policy=p), lc.Retry)
    assert isinstance(decide(app_failure("ValueErrorX"), retry_policy=p), lc.Retry)


def test_non_retryable_error_types_do_not_apply_to_timeouts() -> None:
    p = RetryPolicy(non_retryable_error_types=["TIMEOUT", "START_TO_CLOSE", "TimeoutError"])
    failure = lc.AttemptFailure(
        lc.FailureKind.TIMEOUT, error_type="TimeoutError", timeout_type=TimeoutType.START_TO_CLOSE
    )
    assert isinstance(decide(failure, retry_policy=p), lc.Retry)


def test_maximum_attempts_counts_the_first_attempt() -> None:
    p = RetryPolicy(maximum_attempts=3)
    assert isinstance(decide(app_failure(), retry_policy=p, attempt=1), lc.Retry)
    assert isinstance(decide(app_failure(), retry_policy=p, attempt=2), lc.Retry)
    assert decide(app_failure(), retry_policy=p, attempt=3) == lc.Close(lc.Status.FAILED)


def test_maximum_attempts_of_one_never_retries() -> None:
    p = RetryPolicy(maximum_attempts=1)
    assert decide(app_failure(), retry_policy=p) == lc.Close(lc.Status.FAILED)


def test_maximum_attempts_zero_retries_without_limit() -> None:
    decision = decide(app_failure(), retry_policy=RetryPolicy(maximum_attempts=0), attempt=10_000)
    assert isinstance(decision, lc.Retry)
    assert decision.attempt == 10_001


def test_a_retry_that_would_start_after_the_schedule_to_close_deadline_is_not_made() -> None:
    p = RetryPolicy(initial_interval=timedelta(seconds=10))
    assert decide(app_failure(), retry_policy=p, deadline=NOW + 9.99) == lc.Close(lc.Status.FAILED)
    assert decide(app_failure(), retry_policy=p, deadline=NOW + 10.0) == lc.Close(lc.Status.FAILED)
    assert isinstance(decide(app_failure(), retry_policy=p, deadline=NOW + 10.01), lc.Retry)


def test_the_schedule_to_close_deadline_also_bounds_next_retry_delay() -> None:
    failure = app_failure(next_retry_delay_s=5.0)
    assert decide(failure, deadline=NOW + 4.0) == lc.Close(lc.Status.FAILED)
    assert isinstance(decide(failure, deadline=NOW + 6.0), lc.Retry)


def test_a_cancel_request_stops_retries() -> None:
    assert decide(app_failure(), cancel_requested=True) == lc.Close(lc.Status.FAILED)
    assert decide(timeout_failure(), cancel_requested=True) == lc.Close(lc.Status.TIMED_OUT)


def test_a_timeout_that_ends_the_execution_closes_timed_out() -> None:
    p = RetryPolicy(maximum_attempts=2)
    for kind in (TimeoutType.START_TO_CLOSE, TimeoutType.HEARTBEAT):
        assert decide(timeout_failure(kind), retry_policy=p, attempt=2) == lc.Close(
            lc.Status.TIMED_OUT
        )


def test_a_timeout_with_attempts_left_is_retried() -> None:
    p = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=2)
    decision = decide(timeout_failure(TimeoutType.HEARTBEAT), retry_policy=p, attempt=1)
    assert isinstance(decision, lc.Retry)
    assert decision.attempt == 2
    assert decision.ready_at == pytest.approx(NOW + 0.1)


@pytest.mark.parametrize(
    "kind", [lc.FailureKind.APPLICATION, lc.FailureKind.CANCELLED, lc.FailureKind.TERMINATED]
)
def test_non_timeout_failures_that_end_the_execution_close_failed(kind: lc.FailureKind) -> None:
    failure = lc.AttemptFailure(kind)
    assert decide(failure, retry_policy=RetryPolicy(maximum_attempts=1)) == lc.Close(
        lc.Status.FAILED
    )


# ------------------------------------------------------------------ deadlines and timeouts


def test_scheduled_deadline_is_the_earlier_of_schedule_to_start_and_schedule_to_close() -> None:
    assert lc.scheduled_deadline(
        ready_at=NOW, schedule_to_start_s=5.0, schedule_to_close_deadline=NOW + 3.0
    ) == pytest.approx(NOW + 3.0)
    assert lc.scheduled_deadline(
        ready_at=NOW, schedule_to_start_s=2.0, schedule_to_close_deadline=NOW + 3.0
    ) == pytest.approx(NOW + 2.0)
    assert (
        lc.scheduled_deadline(
            ready_at=NOW, schedule_to_start_s=None, schedule_to_close_deadline=lc.FAR
        )
        == lc.FAR
    )


def started(
    now: float,
    *,
    start_to_close_s: float | None = None,
    heartbeat_s: float | None = None,
    last_heartbeat: float | None = None,
    deadline: float = lc.FAR,
) -> TimeoutType | None:
    return lc.started_timeout_type(
        now=now,
        attempt_started=NOW,
        start_to_close_s=start_to_close_s,
        heartbeat_s=heartbeat_s,
        last_heartbeat=last_heartbeat,
        schedule_to_close_deadline=deadline,
    )


def test_a_started_attempt_within_its_timeouts_has_not_timed_out() -> None:
    assert started(NOW + 0.9, start_to_close_s=1.0, heartbeat_s=1.0, deadline=NOW + 1.0) is None
    assert started(NOW + 1e6) is None


def test_start_to_close_fires_at_started_plus_the_timeout() -> None:
    assert started(NOW + 1.999, start_to_close_s=2.0) is None
    assert started(NOW + 2.0, start_to_close_s=2.0) is TimeoutType.START_TO_CLOSE


def test_schedule_to_close_wins_over_the_per_attempt_timeouts() -> None:
    assert (
        started(NOW + 5.0, start_to_close_s=1.0, heartbeat_s=1.0, deadline=NOW + 5.0)
        is TimeoutType.SCHEDULE_TO_CLOSE
    )


def test_start_to_close_wins_over_heartbeat() -> None:
    assert started(NOW + 3.0, start_to_close_s=2.0, heartbeat_s=1.0) is TimeoutType.START_TO_CLOSE


def test_heartbeat_timeout_counts_from_the_start_until_the_first_heartbeat() -> None:
    assert started(NOW + 0.99, heartbeat_s=1.0) is None
    assert started(NOW + 1.0, heartbeat_s=1.0) is TimeoutType.HEARTBEAT


def test_heartbeat_timeout_counts_from_the_last_heartbeat() -> None:
    assert started(NOW + 1.5, heartbeat_s=1.0, last_heartbeat=NOW + 0.8) is None
    assert started(NOW + 1.8, heartbeat_s=1.0, last_heartbeat=NOW + 0.8) is TimeoutType.HEARTBEAT


def test_a_heartbeat_from_before_the_attempt_started_does_not_count() -> None:
    # The last heartbeat of the previous attempt must not shorten this one's window.
    assert started(NOW + 0.5, heartbeat_s=1.0, last_heartbeat=NOW - 10.0) is None
    assert started(NOW + 1.0, heartbeat_s=1.0, last_heartbeat=NOW - 10.0) is TimeoutType.HEARTBEAT


def scheduled(
    now: float, *, schedule_to_start_s: float | None = None, deadline: float = lc.FAR
) -> TimeoutType | None:
    return lc.scheduled_timeout_type(
        now=now,
        ready_at=NOW,
        schedule_to_start_s=schedule_to_start_s,
        schedule_to_close_deadline=deadline,
    )


def test_schedule_to_start_fires_at_ready_plus_the_timeout() -> None:
    assert scheduled(NOW + 0.99, schedule_to_start_s=1.0) is None
    assert scheduled(NOW + 1.0, schedule_to_start_s=1.0) is TimeoutType.SCHEDULE_TO_START


def test_a_scheduled_execution_past_schedule_to_close_times_out_schedule_to_close() -> None:
    assert scheduled(NOW + 2.0, deadline=NOW + 2.0) is TimeoutType.SCHEDULE_TO_CLOSE
    assert (
        scheduled(NOW + 2.0, schedule_to_start_s=1.0, deadline=NOW + 2.0)
        is TimeoutType.SCHEDULE_TO_CLOSE
    )


def test_a_scheduled_execution_without_timeouts_never_times_out() -> None:
    assert scheduled(NOW + 1e9) is None


# ------------------------------------------------------------------ task tokens


@pytest.mark.parametrize(
    ("run_id", "attempt"),
    [("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", 1), ("r", 12345), ("with/slash", 7)],
)
def test_a_task_token_round_trips(run_id: str, attempt: int) -> None:
    token = lc.task_token(run_id, attempt)
    assert isinstance(token, bytes)
    assert lc.parse_task_token(token) == (run_id, attempt)


def test_task_tokens_of_different_attempts_differ() -> None:
    assert lc.task_token("run", 1) != lc.task_token("run", 2)
    assert lc.task_token("run", 1) != lc.task_token("other", 1)


@pytest.mark.parametrize(
    "token", [b"", b"no-separator", b"run/", b"run/one", b"run/1.5", b"\xff\xfe/1"]
)
def test_a_malformed_task_token_raises_value_error(token: bytes) -> None:
    with pytest.raises(ValueError, match="not an errands task token"):
        lc.parse_task_token(token)


# ------------------------------------------------------------------ steering


@pytest.mark.parametrize(
    ("failure", "pause_requested", "outcome"),
    [
        (timeout_failure(), False, "TIMED_OUT"),
        (app_failure(lc.PAUSE_ERROR_TYPE), True, "PAUSED"),
        (app_failure(lc.PAUSE_ERROR_TYPE), False, "FAILED"),  # raised by the activity itself
        (app_failure(lc.WORKER_LOST_ERROR_TYPE), False, "WORKER_LOST"),
        (app_failure("Boom"), True, "FAILED"),
    ],
)
def test_a_failed_attempt_is_shown_by_what_ended_it(
    failure: lc.AttemptFailure, pause_requested: bool, outcome: str
) -> None:
    assert lc.failed_attempt_outcome(failure, pause_requested=pause_requested) == outcome


def reschedule(**changes: object) -> lc.Rescheduled:
    """after_options_change of a retry (attempt 3) that failed at NOW and waits
    10 s, with nothing changed but ``changes``."""
    args: dict[str, object] = {
        "run_state": lc.RunState.SCHEDULED,
        "schedule_time": NOW - 100,
        "ready_at": NOW + 10,
        "deadline": lc.FAR,
        "attempt": 3,
        "never_started": False,
        "interval_s": 10.0,
        "attempt_started": None,
        "attempt_start_to_close_s": None,
        "policy": RetryPolicy(),
        "policy_changed": False,
        "start_delay_s": None,
        "start_delay_changed": False,
        "schedule_to_close_s": None,
        "schedule_to_start_s": None,
    }
    args.update(changes)
    return lc.after_options_change(**args)  # type: ignore[arg-type]


def test_a_new_retry_policy_recomputes_a_pending_backoff_from_when_the_attempt_failed() -> None:
    policy = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=3.0)
    times = reschedule(policy=policy, policy_changed=True)
    # Attempt 3 follows the second failure: 1 s * 3 ** (2 - 1).
    assert (times.ready_at, times.interval_s) == (NOW + 3.0, 3.0)
    assert reschedule(policy=policy).ready_at == NOW + 10  # the same policy: unchanged


def test_a_new_start_delay_moves_only_a_first_attempt_that_never_started() -> None:
    first = reschedule(
        attempt=1, never_started=True, interval_s=None, start_delay_s=5.0, start_delay_changed=True
    )
    retry = reschedule(start_delay_s=5.0, start_delay_changed=True)
    assert first.ready_at == NOW - 95
    assert retry.ready_at == NOW + 10


def test_schedule_to_close_counts_from_the_schedule_time_and_bounds_what_waits() -> None:
    waiting = reschedule(schedule_to_close_s=105.0, schedule_to_start_s=60.0)
    paused = reschedule(run_state=lc.RunState.PAUSED, schedule_to_start_s=60.0)
    assert waiting.schedule_to_close_deadline == NOW + 5
    assert waiting.deadline == NOW + 5  # sooner than ready_at + schedule_to_start
    assert paused.deadline == lc.FAR  # schedule_to_start does not count while paused


def test_a_running_attempt_keeps_its_own_start_to_close_but_not_a_later_schedule_to_close() -> None:
    running = reschedule(
        run_state=lc.RunState.STARTED,
        deadline=NOW + 30,
        attempt_started=NOW,
        attempt_start_to_close_s=30.0,
        schedule_to_close_s=110.0,
    )
    assert running.schedule_to_close_deadline == NOW + 10
    assert (running.deadline, running.attempt_deadline) == (NOW + 10, NOW + 10)
    longer = reschedule(
        run_state=lc.RunState.STARTED,
        deadline=NOW + 30,
        attempt_started=NOW,
        attempt_start_to_close_s=30.0,
    )
    assert (longer.deadline, longer.attempt_deadline) == (NOW + 30, NOW + 30)


def test_a_reset_dispatches_at_once_or_within_its_jitter() -> None:
    assert lc.reset_ready_at(now=NOW, jitter_s=0.0, draw=0.7) == NOW
    assert lc.reset_ready_at(now=NOW, jitter_s=10.0, draw=0.5) == NOW + 5


def test_only_a_superseded_attempt_of_a_running_execution_is_told_of_a_reset() -> None:
    running = lc.Status.RUNNING
    assert lc.interrupt_kind(running, lc.RunState.SCHEDULED, superseded=True) == "reset"
    assert lc.interrupt_kind(running, lc.RunState.STARTED) is None
    assert lc.interrupt_kind(lc.Status.TERMINATED, None, superseded=True) == "terminate"
    assert lc.interrupt_kind(lc.Status.COMPLETED, None, superseded=True) is None
