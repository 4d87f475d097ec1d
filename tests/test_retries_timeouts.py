"""Retries and timeouts end to end: a real SQLite store, a Client and a Worker.

DESIGN.md §2 "Lifecycle of one activity execution" and §5: backoff, next_retry_delay,
non-retryable errors, used-up attempts, the four timeouts, heartbeat throttling, and
stale task tokens (a late outcome is refused; no outcome is recorded twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from errands import _lifecycle as lc
from errands import activity, exceptions
from errands.client import (
    ActivityExecutionStatus,
    Client,
    PendingActivityState,
)
from errands.common import RetryPolicy
from errands.worker import Worker
from tests.support import CEILING_S, describe_until, eventually, failure_of

LONG = timedelta(seconds=30)
"""A timeout that must not fire during a test."""


@dataclass(frozen=True)
class Run:
    """What one attempt saw of itself."""

    attempt: int
    started_time: datetime
    heartbeat_details: tuple[Any, ...]


# Per activity id: the attempts that ran, in order (activities run on the test's loop).
runs: dict[str, list[Run]] = defaultdict(list)
# Per activity id: attempts whose function returned a value, and whether the attempt's
# own timeout had been delivered to it by then (so its completion is late).
returned: dict[str, list[tuple[int, bool]]] = defaultdict(list)
# Per activity id: how many times heartbeat() was called.
heartbeat_calls: dict[str, int] = defaultdict(int)
# Per activity id: a gate the test opens to let an attempt finish.
gates: dict[str, asyncio.Event] = {}


def record_run() -> activity.Info:
    info = activity.info()
    runs[info.activity_id].append(
        Run(info.attempt, info.started_time, tuple(info.heartbeat_details))
    )
    return info


# ------------------------------------------------------------------ activities


@activity.defn
async def succeed_on(attempt: int) -> str:
    info = record_run()
    if info.attempt < attempt:
        raise RuntimeError(f"attempt {info.attempt} fails")
    return f"done on attempt {info.attempt}"


@activity.defn
async def fail_with_retry_delay(delay_ms: int) -> int:
    info = record_run()
    if info.attempt == 1:
        raise exceptions.ApplicationError(
            "come back later", next_retry_delay=timedelta(milliseconds=delay_ms)
        )
    return info.attempt


@activity.defn
async def fail_non_retryable() -> None:
    record_run()
    raise exceptions.ApplicationError(
        "card declined", {"code": 51}, "retry-never", type="CardDeclined", non_retryable=True
    )


@activity.defn
async def raise_value_error() -> None:
    info = record_run()
    raise ValueError(f"bad value in attempt {info.attempt}")


@activity.defn
async def always_fail() -> None:
    info = record_run()
    raise RuntimeError(f"failure of attempt {info.attempt}")


@activity.defn
async def sleep_forever() -> None:
    record_run()
    await asyncio.sleep(3600)


@activity.defn
async def heartbeat_once_then_hang() -> None:
    info = record_run()
    activity.heartbeat(f"progress of attempt {info.attempt}")
    await asyncio.sleep(3600)


@activity.defn
async def heartbeat_fast(duration_s: float) -> int:
    info = record_run()
    end = time.monotonic() + duration_s
    i = 0
    while time.monotonic() < end:
        i += 1
        activity.heartbeat(i)
        heartbeat_calls[info.activity_id] += 1
        await asyncio.sleep(0.005)
    return i


@activity.defn
async def uninterruptible_work(work_s: float) -> str:
    """Work that finishes even when the attempt is interrupted, so its
    completion always reaches the store, racing the attempt's timeout."""
    info = record_run()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(work_s)
    details = activity.cancellation_details()
    returned[info.activity_id].append((info.attempt, details is not None and details.timed_out))
    return f"attempt {info.attempt}"


@activity.defn
async def hang_then_wait_for_gate() -> str:
    info = record_run()
    if info.attempt == 1:
        await asyncio.sleep(3600)
    activity.heartbeat("attempt 2 running")
    await gates[info.activity_id].wait()
    return f"attempt {info.attempt}"


ACTIVITIES = [
    succeed_on,
    fail_with_retry_delay,
    fail_non_retryable,
    raise_value_error,
    always_fail,
    sleep_forever,
    heartbeat_once_then_hang,
    heartbeat_fast,
    uninterruptible_work,
    hang_then_wait_for_gate,
]


@pytest.fixture(autouse=True)
def clear_records() -> None:
    runs.clear()
    returned.clear()
    heartbeat_calls.clear()
    gates.clear()


# ------------------------------------------------------------------ retries


async def test_a_failing_activity_is_retried_with_backoff_and_succeeds_on_attempt_3(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=150), backoff_coefficient=2.0)
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            succeed_on,
            3,
            id="flaky",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            retry_policy=policy,
        )
        assert await asyncio.wait_for(handle.result(), CEILING_S) == "done on attempt 3"
    assert [r.attempt for r in runs["flaky"]] == [1, 2, 3]
    first, second, third = (r.started_time for r in runs["flaky"])
    # Both times come from the same clock (the store's); allow for float rounding only.
    assert (second - first).total_seconds() >= 0.150 - 0.001
    assert (third - second).total_seconds() >= 0.300 - 0.001
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.COMPLETED
    assert desc.attempt == 3
    assert desc.current_retry_interval == timedelta(milliseconds=300)


async def test_next_retry_delay_of_an_application_error_replaces_the_backoff(
    client: Client, task_queue: str
) -> None:
    # The policy would wait 20 s; the error asks for 0.3 s.
    policy = RetryPolicy(initial_interval=timedelta(seconds=20))
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            fail_with_retry_delay,
            300,
            id="later",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            retry_policy=policy,
        )
        assert await asyncio.wait_for(handle.result(), 10.0) == 2
    first, second = (r.started_time for r in runs["later"])
    assert (second - first).total_seconds() >= 0.300 - 0.001
    desc = await handle.describe()
    assert desc.current_retry_interval == timedelta(milliseconds=300)


async def test_a_non_retryable_application_error_ends_failed_at_once(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50))  # unlimited attempts
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            fail_non_retryable,
            id="declined",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            retry_policy=policy,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.ApplicationError)
    assert cause.type == "CardDeclined"
    assert cause.message == "card declined"
    assert list(cause.details) == [{"code": 51}, "retry-never"]
    assert cause.non_retryable is True
    assert [r.attempt for r in runs["declined"]] == [1]
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.FAILED
    assert desc.attempt == 1
    assert desc.run_state is None


async def test_a_plain_exception_whose_class_is_listed_non_retryable_ends_failed_at_once(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(milliseconds=50), non_retryable_error_types=["ValueError"]
    )
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            raise_value_error,
            id="bad-value",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            retry_policy=policy,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.ApplicationError)
    assert cause.type == "ValueError"
    assert cause.message == "bad value in attempt 1"
    assert cause.non_retryable is False  # stopped by the policy, not by the error
    assert [r.attempt for r in runs["bad-value"]] == [1]
    assert (await handle.describe()).status is ActivityExecutionStatus.FAILED


async def test_a_plain_exception_whose_class_is_not_listed_is_retried(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(milliseconds=50),
        maximum_attempts=2,
        non_retryable_error_types=["KeyError", "valueerror"],
    )
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            raise_value_error,
            id="retried-value",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            retry_policy=policy,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.ApplicationError)
    assert cause.message == "bad value in attempt 2"
    assert [r.attempt for r in runs["retried-value"]] == [1, 2]


async def test_used_up_attempts_end_failed_with_the_last_attempts_error(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3)
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            always_fail,
            id="hopeless",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            retry_policy=policy,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.ApplicationError)
    assert cause.type == "RuntimeError"
    assert cause.message == "failure of attempt 3"
    assert [r.attempt for r in runs["hopeless"]] == [1, 2, 3]
    desc = await handle.describe(include_last_failure=True)
    assert desc.status is ActivityExecutionStatus.FAILED
    assert desc.attempt == 3
    assert isinstance(desc.last_failure, exceptions.ApplicationError)
    assert desc.last_failure.message == "failure of attempt 3"


# ------------------------------------------------------------------ timeouts


async def test_start_to_close_timeout_retries_and_then_ends_timed_out(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=2)
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            sleep_forever,
            id="slow",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(milliseconds=300),
            retry_policy=policy,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.TimeoutError)
    assert cause.type is exceptions.TimeoutType.START_TO_CLOSE
    assert [r.attempt for r in runs["slow"]] == [1, 2]
    first, second = (r.started_time for r in runs["slow"])
    assert (second - first).total_seconds() >= 0.300 + 0.050 - 0.001
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.TIMED_OUT
    assert desc.attempt == 2


async def test_heartbeat_timeout_retries_with_the_last_details_and_then_ends_timed_out(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=2)
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            heartbeat_once_then_hang,
            id="silent",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            heartbeat_timeout=timedelta(milliseconds=300),
            retry_policy=policy,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.TimeoutError)
    assert cause.type is exceptions.TimeoutType.HEARTBEAT
    assert list(cause.last_heartbeat_details) == ["progress of attempt 2"]
    first, second = runs["silent"]
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.heartbeat_details == ()
    assert second.heartbeat_details == ("progress of attempt 1",)  # resume where it stopped
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.TIMED_OUT
    assert desc.attempt == 2


async def test_schedule_to_close_timeout_ends_timed_out_even_with_retries_left(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50))  # unlimited attempts
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            sleep_forever,
            id="overall",
            task_queue=task_queue,
            schedule_to_close_timeout=timedelta(milliseconds=500),
            start_to_close_timeout=LONG,
            retry_policy=policy,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.TimeoutError)
    assert cause.type is exceptions.TimeoutType.SCHEDULE_TO_CLOSE
    assert [r.attempt for r in runs["overall"]] == [1]
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.TIMED_OUT
    assert desc.close_time is not None
    assert (desc.close_time - desc.schedule_time).total_seconds() >= 0.500 - 0.001


async def test_a_retry_that_would_start_after_the_schedule_to_close_deadline_is_not_made(
    client: Client, task_queue: str
) -> None:
    # The retry would be due 2 s after the failure, past the 1 s deadline: the execution
    # ends with the attempt's own failure at once instead of waiting to time out.
    policy = RetryPolicy(initial_interval=timedelta(seconds=2))
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            always_fail,
            id="no-time-left",
            task_queue=task_queue,
            schedule_to_close_timeout=timedelta(seconds=1),
            retry_policy=policy,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.ApplicationError)
    assert cause.message == "failure of attempt 1"
    assert [r.attempt for r in runs["no-time-left"]] == [1]
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.FAILED
    assert desc.attempt == 1


async def test_schedule_to_start_timeout_fires_without_any_worker(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_activity(
        sleep_forever,
        id="unclaimed",
        task_queue=task_queue,
        start_to_close_timeout=LONG,
        schedule_to_start_timeout=timedelta(milliseconds=200),
    )
    # Only this client's result() is there to fire the timer.
    cause = await failure_of(handle)
    assert isinstance(cause, exceptions.TimeoutError)
    assert cause.type is exceptions.TimeoutType.SCHEDULE_TO_START
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.TIMED_OUT
    assert desc.attempt == 1
    assert desc.last_started_time is None
    assert desc.close_time is not None
    assert (desc.close_time - desc.schedule_time).total_seconds() >= 0.200 - 0.001


# ------------------------------------------------------------------ heartbeats


async def test_heartbeats_are_throttled_and_the_last_details_are_flushed_at_the_end(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            heartbeat_fast,
            0.5,
            id="chatty",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            heartbeat_timeout=timedelta(seconds=1),
        )
        last = await asyncio.wait_for(handle.result(), CEILING_S)
    calls = heartbeat_calls["chatty"]
    assert calls == last
    assert calls >= 10  # it really did heartbeat many times
    desc = await handle.describe(include_heartbeat_details=True)
    # Throttle window 0.8 s over a 0.5 s attempt: the first at once, the last at the end.
    assert 1 <= desc.total_heartbeat_count <= 5
    assert list(await desc.heartbeat_details()) == [last]
    assert desc.last_heartbeat_time is not None


# ------------------------------------------------------------------ one outcome per execution


@pytest.mark.parametrize("maximum_attempts", [1, 2])
async def test_a_completion_racing_a_timeout_leaves_exactly_one_outcome(
    client: Client, task_queue: str, maximum_attempts: int
) -> None:
    timeout_s = 0.2
    rounds = 30
    policy = RetryPolicy(
        initial_interval=timedelta(milliseconds=50), maximum_attempts=maximum_attempts
    )
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handles = []
        for i in range(rounds):
            # Every attempt works from a little under to well over the timeout.
            work_s = timeout_s - 0.05 + 0.2 * i / rounds
            handles.append(
                await client.start_activity(
                    uninterruptible_work,
                    work_s,
                    id=f"race-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(seconds=timeout_s),
                    retry_policy=policy,
                )
            )
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(h.result() for h in handles), return_exceptions=True), CEILING_S
        )
        # Every attempt reaches its end and reports; leaving the worker awaits the reports.
        await eventually(
            lambda: all(len(returned[h.id]) == len(runs[h.id]) for h in handles),
            "every attempt to return",
        )
    late_completions = 0
    for handle, outcome in zip(handles, outcomes, strict=True):
        record = await client.store.describe(client.namespace, handle.id)
        attempts = [r.attempt for r in runs[handle.id]]
        # A new attempt starts only after the previous one timed out: never two outcomes.
        assert record.attempt == attempts[-1] == len(attempts) <= maximum_attempts, handle.id
        late = {attempt for attempt, timed_out in returned[handle.id] if timed_out}
        late_completions += len(late)
        if record.status is lc.Status.COMPLETED:
            assert outcome == f"attempt {record.attempt}", handle.id
            assert record.result is not None
            # The attempt whose timeout had been delivered to it cannot be the one that
            # completed: its late completion is refused as stale.
            assert record.attempt not in late, handle.id
        else:
            assert record.status is lc.Status.TIMED_OUT, (handle.id, record.status)
            assert record.attempt == maximum_attempts
            assert record.result is None  # the late completion was refused
            assert isinstance(outcome, exceptions.ActivityFailedError)
            assert isinstance(outcome.cause, exceptions.TimeoutError)
            assert outcome.cause.type is exceptions.TimeoutType.START_TO_CLOSE
    # The slower half ran past its timeout, so late completions did race it.
    assert late_completions > 0


async def test_a_stale_task_token_is_refused_and_changes_nothing(
    client: Client, task_queue: str
) -> None:
    gates["stale"] = asyncio.Event()
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=2)
    async with Worker(client, task_queue=task_queue, activities=ACTIVITIES):
        handle = await client.start_activity(
            hang_then_wait_for_gate,
            id="stale",
            task_queue=task_queue,
            # Long enough that attempt 2 outlives the checks below, even on a slow machine.
            start_to_close_timeout=timedelta(seconds=1),
            retry_policy=policy,
        )
        before = await describe_until(
            handle,
            lambda d: d.attempt == 2 and d.total_heartbeat_count == 1,
            "attempt 2 to start and heartbeat",
        )
        assert before.run_state is PendingActivityState.STARTED
        run_id = before.activity_run_id
        store = client.store
        forged = await client.data_converter.encode(["forged by attempt 1"])

        assert await store.complete(run_id, 1, forged) is False
        assert (await store.heartbeat(run_id, 1, None)).accepted is False
        heartbeat = await store.heartbeat(run_id, 1, forged)
        assert heartbeat.accepted is False
        assert heartbeat.cancel_requested is False

        after = await handle.describe(include_heartbeat_details=True)
        assert after.status is ActivityExecutionStatus.RUNNING
        assert after.run_state is PendingActivityState.STARTED
        assert after.attempt == 2
        assert after.total_heartbeat_count == before.total_heartbeat_count
        assert after.last_heartbeat_time == before.last_heartbeat_time
        assert list(await after.heartbeat_details()) == ["attempt 2 running"]

        gates["stale"].set()
        assert await asyncio.wait_for(handle.result(), CEILING_S) == "attempt 2"
    assert await store.complete(run_id, 2, forged) is False  # closed: refused as well
    assert await handle.result() == "attempt 2"
