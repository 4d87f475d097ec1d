"""Async completion: an activity leaves its attempt open with
raise_complete_async(), and an AsyncActivityHandle finishes it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from errands import activity, exceptions
from errands.client import (
    ActivityExecutionStatus,
    ActivityHandle,
    AsyncActivityCancelledError,
    Client,
)
from errands.common import RetryPolicy
from errands.worker import Worker
from tests.support import TIMEOUT, eventually

tokens: dict[str, bytes] = {}
"""Task tokens the activities hand out, by activity id."""


@pytest.fixture(autouse=True)
def _fresh_tokens() -> None:
    tokens.clear()  # each variant of a test reuses the same activity ids


@activity.defn
async def hand_off() -> str:
    info = activity.info()
    tokens[f"{info.activity_id}/{info.attempt}"] = info.task_token
    activity.raise_complete_async()


@activity.defn
def hand_off_from_a_thread() -> str:
    info = activity.info()
    tokens[f"{info.activity_id}/{info.attempt}"] = info.task_token
    activity.raise_complete_async()


async def token_of(activity_id: str, attempt: int = 1) -> bytes:
    key = f"{activity_id}/{attempt}"

    async def handed_out() -> bool:
        return key in tokens

    await eventually(handed_out, f"{key} handed out its task token")
    return tokens[key]


async def start(
    client: Client, task_queue: str, activity_id: str, **options: Any
) -> ActivityHandle[Any]:
    options.setdefault("start_to_close_timeout", TIMEOUT)
    return await client.start_activity(hand_off, id=activity_id, task_queue=task_queue, **options)


async def test_an_activity_completed_by_token_returns_that_value(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[hand_off]):
        handle = await start(client, task_queue, "by-token")
        token = await token_of("by-token")
        assert (await handle.describe()).run_state is not None  # still open
        await client.get_async_activity_handle(task_token=token).complete("done elsewhere")
        assert await handle.result() == "done elsewhere"


async def test_an_activity_completed_by_id_returns_that_value(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[hand_off]):
        handle = await start(client, task_queue, "by-id")
        await token_of("by-id")
        await client.get_async_activity_handle(activity_id="by-id").complete("by id")
        assert await handle.result() == "by id"


async def test_a_thread_activity_can_complete_asynchronously(
    client: Client, task_queue: str
) -> None:
    with ThreadPoolExecutor(2) as pool:
        async with Worker(
            client,
            task_queue=task_queue,
            activities=[hand_off_from_a_thread],
            activity_executor=pool,
        ):
            handle = await client.start_activity(
                hand_off_from_a_thread,
                id="thread-hand-off",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            token = await token_of("thread-hand-off")
            await client.get_async_activity_handle(task_token=token).complete("from afar")
            assert await handle.result() == "from afar"


async def test_heartbeats_from_the_completer_reach_the_store_and_see_a_cancel_request(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[hand_off]):
        handle = await start(client, task_queue, "watched", heartbeat_timeout=TIMEOUT)
        completer = client.get_async_activity_handle(task_token=await token_of("watched"))
        await completer.heartbeat("halfway")
        described = await handle.describe(include_heartbeat_details=True)
        assert await described.heartbeat_details() == ["halfway"]
        await handle.cancel(reason="stop it")
        with pytest.raises(AsyncActivityCancelledError) as caught:
            await completer.heartbeat("still going")
        assert caught.value.details.cancel_requested
        await completer.report_cancellation("gave up")
        with pytest.raises(exceptions.ActivityFailedError) as failed:
            await handle.result()
        assert isinstance(failed.value.cause, exceptions.CancelledError)
        assert (await handle.describe()).status is ActivityExecutionStatus.CANCELED


async def test_a_failure_reported_by_the_completer_is_retried_by_the_policy(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=2)
    async with Worker(client, task_queue=task_queue, activities=[hand_off]):
        handle = await start(client, task_queue, "failing", retry_policy=policy)
        first = client.get_async_activity_handle(task_token=await token_of("failing", 1))
        await first.fail(ValueError("not this time"))
        second = client.get_async_activity_handle(task_token=await token_of("failing", 2))
        await second.fail(exceptions.ApplicationError("nor this", type="Nope"))
        with pytest.raises(exceptions.ActivityFailedError) as failed:
            await handle.result()
        cause = failed.value.cause
        assert isinstance(cause, exceptions.ApplicationError)
        assert (cause.type, cause.message) == ("Nope", "nor this")
        # The first attempt's token is stale now: nothing changes.
        with pytest.raises(exceptions.ActivityNotFoundError):
            await first.complete("too late")
        assert (await handle.describe()).status is ActivityExecutionStatus.FAILED


async def test_a_token_whose_attempt_timed_out_is_refused_and_changes_nothing(
    client: Client, task_queue: str
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=2)
    async with Worker(client, task_queue=task_queue, activities=[hand_off]):
        handle = await start(
            client,
            task_queue,
            "slow-completer",
            start_to_close_timeout=timedelta(milliseconds=300),
            retry_policy=policy,
        )
        stale = client.get_async_activity_handle(task_token=await token_of("slow-completer"))
        # The attempt times out while the completer dawdles; attempt 2 starts.
        await token_of("slow-completer", 2)
        with pytest.raises(exceptions.ActivityNotFoundError):
            await stale.complete("late")
        with pytest.raises(exceptions.ActivityNotFoundError):
            await stale.heartbeat("late")
        description = await handle.describe()
        assert description.attempt == 2
        assert description.status is ActivityExecutionStatus.RUNNING
        # Attempt 2 is never completed: it times out too, and the execution ends TIMED_OUT.
        with pytest.raises(exceptions.ActivityFailedError) as failed:
            await handle.result()
        assert isinstance(failed.value.cause, exceptions.TimeoutError)
        assert failed.value.cause.type is exceptions.TimeoutType.START_TO_CLOSE


async def test_a_terminated_execution_refuses_its_completer(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[hand_off]):
        handle = await start(client, task_queue, "terminated")
        completer = client.get_async_activity_handle(task_token=await token_of("terminated"))
        await handle.terminate(reason="no longer needed")
        with pytest.raises(exceptions.ActivityNotFoundError):
            await completer.complete("anyway")
        assert (await handle.describe()).status is ActivityExecutionStatus.TERMINATED


async def test_a_handle_needs_exactly_one_way_to_name_the_attempt(client: Client) -> None:
    with pytest.raises(ValueError):
        client.get_async_activity_handle()
    with pytest.raises(ValueError):
        client.get_async_activity_handle(task_token=b"x/1", activity_id="y")
    with pytest.raises(exceptions.ActivityNotFoundError):
        await client.get_async_activity_handle(task_token=b"not a token").complete(1)


def test_raise_complete_async_outside_an_activity_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        activity.raise_complete_async()
