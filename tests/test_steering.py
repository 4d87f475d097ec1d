"""Steering an execution (DESIGN §6): retry_now."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from errands import activity, exceptions
from errands.client import ActivityExecutionStatus, Client, PendingActivityState
from errands.common import RetryPolicy
from errands.worker import Worker
from tests.support import describe_until

BACKOFF = RetryPolicy(initial_interval=timedelta(seconds=120))
"""A backoff no test waits out: what runs sooner was made to by retry_now."""

SOONER_S = 20.0

SOONER = timedelta(seconds=SOONER_S)
"""Well within the backoff or delay being skipped."""


@activity.defn
async def fails_once() -> int:
    attempt = activity.info().attempt
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return attempt


@activity.defn
async def waits_a_minute() -> str:
    activity.heartbeat()
    await asyncio.sleep(60)
    return "late"


async def test_retry_now_runs_the_next_attempt_without_waiting_out_the_backoff(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[fails_once]):
        handle = await client.start_activity(
            fails_once,
            id="backoff",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BACKOFF,
        )
        waiting = await describe_until(
            handle,
            lambda d: d.attempt == 2 and d.run_state is PendingActivityState.SCHEDULED,
            "the first attempt failed and a retry waits",
        )
        assert waiting.next_attempt_schedule_time is not None
        assert await handle.retry_now() is True
        # The attempt count goes on: the second attempt runs, and returns 2.
        assert await asyncio.wait_for(handle.result(), SOONER_S) == 2
    assert [a.attempt for a in await handle.attempts()] == [1, 2]


async def test_retry_now_starts_a_delayed_execution_at_once(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[fails_once]):
        handle = await client.start_activity(
            fails_once,
            id="delayed",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=30),
            start_delay=timedelta(seconds=120),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10)),
        )
        assert await handle.retry_now() is True
        assert await asyncio.wait_for(handle.result(), SOONER_S) == 2


async def test_retry_now_changes_nothing_while_an_attempt_runs_and_refuses_a_closed_one(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[waits_a_minute]):
        handle = await client.start_activity(
            waits_a_minute,
            id="running",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=90),
        )
        before = await describe_until(
            handle,
            lambda d: d.run_state is PendingActivityState.STARTED,
            "the attempt runs",
        )
        assert await handle.retry_now() is False
        after = await handle.describe()
        assert (after.attempt, after.run_state) == (before.attempt, before.run_state)
        await handle.terminate()
    assert (await handle.describe()).status is ActivityExecutionStatus.TERMINATED
    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await handle.retry_now()


@activity.defn
async def echo_twice(text: str) -> str:
    return text * 2


@activity.defn
async def refuses(text: str) -> str:
    raise exceptions.ApplicationError(f"refused {text}", type="Refused", non_retryable=True)


async def test_describe_fills_the_payload_fields_only_when_asked_for(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[echo_twice, refuses]):
        done = await client.start_activity(
            echo_twice, "ab", id="done", task_queue=task_queue, start_to_close_timeout=SOONER
        )
        failed = await client.start_activity(
            refuses, "x", id="failed", task_queue=task_queue, start_to_close_timeout=SOONER
        )
        assert await done.result() == "abab"
        with pytest.raises(exceptions.ActivityFailedError):
            await failed.result()

    bare = await done.describe()
    full = await done.describe(include_input=True, include_outcome=True)
    failed_bare = await failed.describe()
    failed_full = await failed.describe(include_outcome=True, include_last_failure=True)

    assert (bare.input, bare.has_result, bare.result, bare.failure) == ((), False, None, None)
    assert (list(full.input), full.has_result, full.result) == (["ab"], True, "abab")
    assert full.failure is None
    assert (failed_bare.failure, failed_bare.last_failure) == (None, None)
    assert isinstance(failed_full.failure, exceptions.ApplicationError)
    assert failed_full.failure.type == "Refused"
    assert isinstance(failed_full.last_failure, exceptions.ApplicationError)
    assert failed_full.has_result is False
