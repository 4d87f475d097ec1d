"""Authoring beyond Temporal (DESIGN §6 "Authoring"): start options carried
by the activity's definition, on both stores."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import timedelta

import pydantic
import pytest

from errands import activity, exceptions
from errands.client import Client
from errands.common import Priority, RetryPolicy
from errands.testing import ActivityEnvironment
from errands.worker import Worker
from tests.support import CEILING_S, describe_until

LONG = timedelta(seconds=60)

POLICY = RetryPolicy(initial_interval=timedelta(seconds=3), maximum_attempts=4)


@activity.defn(
    task_queue="defaults-queue",
    start_to_close_timeout=timedelta(seconds=42),
    schedule_to_start_timeout=timedelta(minutes=5),
    heartbeat_timeout=timedelta(seconds=9),
    retry_policy=POLICY,
    priority=Priority(priority_key=2),
)
async def configured(word: str) -> str:
    return word.upper()


async def test_a_start_takes_what_its_call_leaves_out_from_the_definition(
    client: Client,
) -> None:
    async with Worker(client, task_queue="defaults-queue", activities=[configured]):
        handle = await client.start_activity(configured, "hi", id="defaults")
        result = await asyncio.wait_for(handle.result(), CEILING_S)
    used = await handle.describe()

    assert result == "HI"
    assert used.task_queue == "defaults-queue"
    assert used.start_to_close_timeout == timedelta(seconds=42)
    assert used.schedule_to_start_timeout == timedelta(minutes=5)
    assert used.heartbeat_timeout == timedelta(seconds=9)
    assert used.schedule_to_close_timeout is None
    assert used.retry_policy == POLICY
    assert used.priority.priority_key == 2


async def test_the_call_s_own_options_win_and_a_start_by_name_assumes_nothing(
    client: Client, task_queue: str
) -> None:
    own = await client.start_activity(
        configured,
        "x",
        id="own",
        task_queue=task_queue,
        start_to_close_timeout=timedelta(seconds=7),
        retry_policy=RetryPolicy(maximum_attempts=1),
        priority=Priority(priority_key=1),
    )
    used = await own.describe()

    assert (used.task_queue, used.start_to_close_timeout) == (task_queue, timedelta(seconds=7))
    assert used.retry_policy == RetryPolicy(maximum_attempts=1)
    assert used.priority.priority_key == 1
    assert used.heartbeat_timeout == timedelta(seconds=9)  # left out: the definition's
    with pytest.raises(ValueError, match="task_queue"):
        await client.start_activity("configured", "x", id="by-name")
    with pytest.raises(ValueError, match="start_to_close_timeout"):
        await client.start_activity("configured", "x", id="by-name", task_queue=task_queue)


def test_bad_defaults_are_refused_when_the_activity_is_defined() -> None:
    with pytest.raises(TypeError, match="start_to_close_timeout must be a timedelta"):
        activity.defn(start_to_close_timeout=30)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="heartbeat_timeout must be positive"):
        activity.defn(heartbeat_timeout=timedelta(0))
    with pytest.raises(ValueError, match="task_queue"):
        activity.defn(task_queue="")
    with pytest.raises(TypeError, match="retry_policy must be a RetryPolicy"):
        activity.defn(retry_policy={"maximum_attempts": 3})  # type: ignore[call-overload]


# ---------------------------------------------------------------- typed heartbeat details


@dataclasses.dataclass(frozen=True)
class Progress:
    done: int
    last: str


class ProgressModel(pydantic.BaseModel):
    done: int
    last: str


@activity.defn
async def resumes_from_progress() -> list[object]:
    if activity.info().attempt == 1:
        activity.heartbeat(Progress(3, "c"), "ignored")
        raise RuntimeError("fails after its heartbeat")
    return [activity.heartbeat_details(Progress), activity.heartbeat_details()]


async def test_a_retry_reads_the_last_heartbeat_details_by_type(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[resumes_from_progress]):
        handle = await client.start_activity(
            resumes_from_progress,
            id="typed",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10)),
        )
        typed, plain = await asyncio.wait_for(handle.result(), CEILING_S)

    # The result travels as JSON: the typed value was a Progress in the activity.
    assert typed == {"done": 3, "last": "c"}
    assert plain == {"done": 3, "last": "c"}


def test_heartbeat_details_by_type_none_and_a_mismatch() -> None:
    env = ActivityEnvironment()

    def read(hint: object) -> object:
        return activity.heartbeat_details(hint)

    assert env.run(read, Progress) is None  # no heartbeat before this attempt
    env.info = dataclasses.replace(
        env.info, heartbeat_details=[[{"done": 1, "last": "a"}, {"done": 2, "last": "b"}]]
    )
    assert env.run(read, list[Progress]) == [Progress(1, "a"), Progress(2, "b")]
    env.info = dataclasses.replace(env.info, heartbeat_details=[{"done": 4, "last": "d"}])
    assert env.run(read, ProgressModel) == ProgressModel(done=4, last="d")
    env.info = dataclasses.replace(env.info, heartbeat_details=[{"done": "many"}])
    with pytest.raises(TypeError):
        env.run(read, Progress)
    with pytest.raises(RuntimeError):
        activity.heartbeat_details(Progress)


async def test_a_start_with_large_arguments_is_logged_with_their_size_and_the_activity(
    client: Client, task_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.payload_warning_bytes = 1_000
    with caplog.at_level(logging.WARNING, logger="errands.client"):
        await client.start_activity(configured, "x" * 10, id="small", task_queue=task_queue)
        quiet = list(caplog.records)
        await client.start_activity(configured, "x" * 2_000, id="large", task_queue=task_queue)

    assert quiet == []
    (record,) = caplog.records
    assert "'configured'" in record.getMessage() and "'large'" in record.getMessage()
    size = len(await client.data_converter.encode(["x" * 2_000]))
    assert f"{size} bytes" in record.getMessage()


# --------------------------------------------------------------------------- auto-heartbeat


@activity.defn(auto_heartbeat=True)
async def awaits_without_heartbeats(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


@activity.defn
async def heartbeats_in_a_block() -> list[int]:
    activity.heartbeat(7)
    with activity.heartbeating(timedelta(milliseconds=50)):
        await asyncio.sleep(0.5)
    return list(activity.info().heartbeat_details)


async def test_an_auto_heartbeating_async_activity_lives_past_its_heartbeat_timeout_and_cancels(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[awaits_without_heartbeats]):
        lives = await client.start_activity(
            awaits_without_heartbeats,
            1.5,
            id="lives",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(milliseconds=500),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        cancelled = await client.start_activity(
            awaits_without_heartbeats,
            120.0,
            id="cancelled",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=180),
        )
        await describe_until(cancelled, lambda d: d.total_heartbeat_count >= 1, "it beats")
        await cancelled.cancel()
        assert await asyncio.wait_for(lives.result(), CEILING_S) == "finished"
        with pytest.raises(exceptions.ActivityFailedError) as failed:
            await asyncio.wait_for(cancelled.result(), CEILING_S)
    assert isinstance(failed.value.cause, exceptions.CancelledError)


async def test_heartbeating_repeats_the_latest_details_while_its_block_runs(
    client: Client, task_queue: str
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[heartbeats_in_a_block],
        max_heartbeat_throttle_interval=timedelta(milliseconds=20),
        default_heartbeat_throttle_interval=timedelta(milliseconds=20),
    ):
        handle = await client.start_activity(
            heartbeats_in_a_block, id="block", task_queue=task_queue, start_to_close_timeout=LONG
        )
        await asyncio.wait_for(handle.result(), CEILING_S)
    desc = await handle.describe(include_heartbeat_details=True)
    assert list(await desc.heartbeat_details()) == [7]  # the beats kept the activity's details
    assert desc.total_heartbeat_count >= 3


# --------------------------------------------------------------------------- a blocked event loop


@activity.defn
async def blocks_the_loop(seconds: float) -> str:
    time.sleep(seconds)  # the mistake being reported: a blocking call in async code
    return "blocked"


@activity.defn
async def awaits_politely(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "polite"


@pytest.mark.blocks_loop
async def test_an_async_activity_holding_the_loop_is_reported_with_its_stack(
    client: Client, task_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[blocks_the_loop, awaits_politely],
        blocked_loop_threshold=timedelta(milliseconds=300),
    ):
        polite = await client.start_activity(
            awaits_politely, 1.0, id="polite", task_queue=task_queue, start_to_close_timeout=LONG
        )
        assert await asyncio.wait_for(polite.result(), CEILING_S) == "polite"
        quiet = [r for r in caplog.records if "event loop" in r.getMessage()]
        blocking = await client.start_activity(
            blocks_the_loop, 1.5, id="blocking", task_queue=task_queue, start_to_close_timeout=LONG
        )
        assert await asyncio.wait_for(blocking.result(), CEILING_S) == "blocked"
    reports = [r for r in caplog.records if "event loop" in r.getMessage()]

    assert quiet == []
    (report,) = reports  # one per episode
    message = report.getMessage()
    assert "'blocks_the_loop'" in message and "time.sleep(seconds)" in message
    assert report.levelno == logging.WARNING


def test_a_non_positive_blocked_loop_threshold_is_refused(client: Client) -> None:
    with pytest.raises(ValueError, match="blocked_loop_threshold"):
        Worker(
            client,
            task_queue="q",
            activities=[awaits_politely],
            blocked_loop_threshold=timedelta(0),
        )
