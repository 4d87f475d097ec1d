"""Attempt history: every attempt of an execution, how it ended, with its
failure, worker and heartbeats; the newest 100 kept with exact numbers."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from errands import activity, exceptions
from errands.client import ActivityExecutionStatus, AttemptOutcome, Client
from errands.common import RetryPolicy
from errands.worker import Worker
from tests.support import CEILING_S, describe_until

FAST = RetryPolicy(initial_interval=timedelta(milliseconds=5), backoff_coefficient=1.0)


@activity.defn
async def fails_then_times_out_then_succeeds() -> str:
    attempt = activity.info().attempt
    activity.heartbeat(attempt)
    if attempt == 1:
        raise RuntimeError("the first attempt fails")
    if attempt == 2:
        await asyncio.sleep(60)  # start_to_close (1 s) ends it
    return "done"


@activity.defn
async def fails_until_105() -> int:
    attempt = activity.info().attempt
    if attempt < 105:
        raise RuntimeError(f"attempt {attempt} fails")
    return attempt


@activity.defn
async def heartbeats_then_waits() -> str:
    activity.heartbeat("started")
    await asyncio.sleep(60)
    return "never"


async def test_a_failure_a_timeout_and_a_success_are_three_attempts_with_their_endings(
    client: Client, task_queue: str
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[fails_then_times_out_then_succeeds],
        identity="worker-a",
    ):
        handle = await client.start_activity(
            fails_then_times_out_then_succeeds,
            id="three",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=1),
            retry_policy=FAST,
        )
        assert await asyncio.wait_for(handle.result(), CEILING_S) == "done"
        attempts = await handle.attempts()

    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert [a.outcome for a in attempts] == [
        AttemptOutcome.FAILED,
        AttemptOutcome.TIMED_OUT,
        AttemptOutcome.COMPLETED,
    ]
    assert isinstance(attempts[0].failure, exceptions.ApplicationError)
    assert "the first attempt fails" in str(attempts[0].failure)
    assert isinstance(attempts[1].failure, exceptions.TimeoutError)
    assert attempts[2].failure is None
    assert {a.worker_identity for a in attempts} == {"worker-a"}
    for a in attempts:
        assert a.closed_time is not None and a.closed_time >= a.started_time
        assert a.heartbeat_count == 1
        assert a.last_heartbeat_time is not None
        assert a.started_time <= a.last_heartbeat_time <= a.closed_time
    assert attempts[0].closed_time <= attempts[1].started_time  # type: ignore[operator]


async def test_only_the_newest_100_attempts_are_kept_and_their_numbers_stay_exact(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[fails_until_105]):
        handle = await client.start_activity(
            fails_until_105,
            id="many",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=1), backoff_coefficient=1.0
            ),
        )
        assert await asyncio.wait_for(handle.result(), CEILING_S) == 105
        attempts = await handle.attempts()

    assert [a.attempt for a in attempts] == list(range(6, 106))
    assert all(a.outcome is AttemptOutcome.FAILED for a in attempts[:-1])
    assert attempts[-1].outcome is AttemptOutcome.COMPLETED
    assert "attempt 104 fails" in str(attempts[-2].failure)


async def test_a_running_attempt_shows_running_with_its_heartbeats_and_a_cancel_ends_it(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[heartbeats_then_waits]):
        handle = await client.start_activity(
            heartbeats_then_waits,
            id="running",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=60),
        )
        await describe_until(
            handle, lambda d: d.total_heartbeat_count >= 1, "the attempt heartbeated"
        )
        (running,) = await handle.attempts()
        assert running.outcome is AttemptOutcome.RUNNING
        assert running.closed_time is None
        assert running.heartbeat_count == 1
        assert running.last_heartbeat_time is not None
        await handle.cancel()
        await describe_until(
            handle,
            lambda d: d.status is ActivityExecutionStatus.CANCELED,
            "the attempt was cancelled",
        )
        (cancelled,) = await handle.attempts()

    assert cancelled.outcome is AttemptOutcome.CANCELED
    assert isinstance(cancelled.failure, exceptions.CancelledError)
    assert cancelled.closed_time is not None


async def test_attempts_of_an_unknown_execution_is_not_found(client: Client) -> None:
    with pytest.raises(exceptions.ActivityNotFoundError):
        await client.get_activity_handle("no-such-id").attempts()
