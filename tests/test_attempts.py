"""Attempt history: every attempt of an execution, how it ended, with its
failure, worker and heartbeats; the newest 100 kept with exact numbers."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from pathlib import Path

import pytest

from errands import activity, exceptions
from errands.client import ActivityExecutionStatus, AttemptOutcome, Client
from errands.common import RetryPolicy
from errands.worker import Worker
from tests import procs
from tests.support import CEILING_S, describe_until

FAST = RetryPolicy(initial_interval=timedelta(milliseconds=5), backoff_coefficient=1.0)


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


async def test_a_failure_a_timeout_a_lost_worker_and_a_success_are_four_attempts(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    with procs.Children(tmp_path) as children:
        first = await children.worker("worker-1", db_url, task_queue)
        handle = await client.start_activity(
            procs.four_endings,
            str(log),
            id="four",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=3),  # longer than a failover takes
            retry_policy=FAST,
        )
        # Attempt 3 heartbeats: the first at once, the next after the throttle.
        await describe_until(
            handle,
            lambda d: d.attempt == 3 and d.total_heartbeat_count >= 4,
            "attempt 3 heartbeated twice",
        )
        first.kill()
        second = await children.worker("worker-2", db_url, task_queue)
        assert await asyncio.wait_for(handle.result(), CEILING_S) == 4
    attempts = await handle.attempts()

    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    assert [a.outcome for a in attempts] == [
        AttemptOutcome.FAILED,
        AttemptOutcome.TIMED_OUT,
        AttemptOutcome.WORKER_LOST,
        AttemptOutcome.COMPLETED,
    ]
    failures = [a.failure for a in attempts]
    assert isinstance(failures[0], exceptions.ApplicationError) and failures[0].type == "First"
    assert isinstance(failures[1], exceptions.TimeoutError)
    assert failures[1].type is exceptions.TimeoutType.HEARTBEAT
    assert isinstance(failures[2], exceptions.ApplicationError)
    assert failures[2].type == "WorkerLost" and not failures[2].non_retryable
    assert failures[3] is None
    identities = [a.worker_identity or "" for a in attempts]
    assert [i.split("@")[0] for i in identities] == [str(first.pid)] * 3 + [str(second.pid)]
    counts = [a.heartbeat_count for a in attempts]
    assert counts[0] == counts[1] == counts[3] == 1 and counts[2] >= 2
    assert sum(counts) == (await handle.describe()).total_heartbeat_count
    for a in attempts:
        assert a.closed_time is not None and a.closed_time >= a.started_time
        assert a.last_heartbeat_time is not None
        assert a.started_time <= a.last_heartbeat_time <= a.closed_time
    for before, after in itertools.pairwise(attempts):
        assert before.closed_time is not None and before.closed_time <= after.started_time


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
