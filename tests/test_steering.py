"""Steering an execution (DESIGN §6): retry_now, describe's payload fields,
pause and unpause, on both stores."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from errands import activity, exceptions
from errands.activity import ActivityCancellationDetails
from errands.client import (
    ActivityExecutionStatus,
    ActivityOptionsKeys,
    AttemptOutcome,
    Client,
    PendingActivityState,
)
from errands.common import Priority, RetryPolicy
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


# --------------------------------------------------------------------------- pause / unpause

_gates: dict[str, asyncio.Event] = {}
_seen: dict[str, list[ActivityCancellationDetails | None]] = {}


def _gate(name: str) -> asyncio.Event:
    return _gates.setdefault(name, asyncio.Event())


@activity.defn
async def heartbeats_until_stopped(name: str) -> int:
    attempt = activity.info().attempt
    if attempt > 1:
        return attempt
    activity.heartbeat()
    try:
        await asyncio.sleep(120)
    except asyncio.CancelledError:
        _seen.setdefault(name, []).append(activity.cancellation_details())
        raise
    return attempt


@activity.defn
async def silent_until_gate(name: str, fail: bool) -> int:
    attempt = activity.info().attempt
    if attempt == 1:
        await _gate(name).wait()
        if fail:
            raise RuntimeError("failed while being paused")
    return attempt


async def _claimable(client: Client, task_queue: str) -> int:
    """How many tasks a claim on the queue takes now (they are then started)."""
    result = await client.store.claim_batch(
        client.namespace, task_queue, max_tasks=10, identity="probe"
    )
    return len(result.tasks)


async def test_a_waiting_execution_paused_is_not_claimed_until_unpaused(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_activity(
        "anything", id="waiting", task_queue=task_queue, start_to_close_timeout=SOONER
    )
    await handle.pause(reason="maintenance")
    paused = await handle.describe()
    listed = [e.activity_id async for e in client.list_activities("ExecutionStatus = 'Paused'")]
    counted = await client.count_activities("GROUP BY ExecutionStatus")
    unclaimed = await _claimable(client, task_queue)
    await handle.pause()  # a paused one: nothing changes
    await handle.unpause()
    unpaused = await handle.describe()
    claimed = await _claimable(client, task_queue)

    assert (paused.status, paused.run_state) == (
        ActivityExecutionStatus.PAUSED,
        PendingActivityState.PAUSED,
    )
    assert listed == ["waiting"]
    assert [(g.group_values[0], g.count) for g in counted.groups] == [("Paused", 1)]
    assert unclaimed == 0
    assert (unpaused.status, unpaused.run_state) == (
        ActivityExecutionStatus.RUNNING,
        PendingActivityState.SCHEDULED,
    )
    assert claimed == 1


async def test_a_running_attempt_paused_stops_with_paused_details_and_its_retry_waits_for_unpause(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[heartbeats_until_stopped]):
        handle = await client.start_activity(
            heartbeats_until_stopped,
            task_queue,
            id="p1",
            task_queue=task_queue,
            start_to_close_timeout=SOONER * 6,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10)),
        )
        await describe_until(handle, lambda d: d.total_heartbeat_count >= 1, "it heartbeated")
        await handle.pause()
        held = await describe_until(
            handle,
            lambda d: d.status is ActivityExecutionStatus.PAUSED,
            "the attempt stopped and the execution is paused",
        )
        (first,) = await handle.attempts()
        await handle.unpause()
        result = await asyncio.wait_for(handle.result(), SOONER_S)

    (details,) = _seen[task_queue]
    assert details is not None and details.paused and not details.cancel_requested
    assert (held.attempt, held.run_state) == (2, PendingActivityState.PAUSED)
    assert first.outcome is AttemptOutcome.PAUSED
    assert isinstance(first.failure, exceptions.ApplicationError)
    assert first.failure.type == "ActivityPause" and not first.failure.non_retryable
    assert result == 2


async def test_a_pause_racing_the_completion_of_an_attempt_that_never_heartbeats_lets_it_complete(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[silent_until_gate]):
        handle = await client.start_activity(
            silent_until_gate,
            args=[task_queue, False],
            id="c1",
            task_queue=task_queue,
            start_to_close_timeout=SOONER * 6,
        )
        await describe_until(
            handle, lambda d: d.run_state is PendingActivityState.STARTED, "it runs"
        )
        await handle.pause()
        requested = await handle.describe()
        _gate(task_queue).set()
        assert await asyncio.wait_for(handle.result(), SOONER_S) == 1

    assert requested.status is ActivityExecutionStatus.RUNNING
    assert requested.run_state is PendingActivityState.PAUSE_REQUESTED
    assert (await handle.describe()).status is ActivityExecutionStatus.COMPLETED


async def test_a_pause_racing_the_failure_of_its_attempt_holds_the_retry_until_unpause(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[silent_until_gate]):
        handle = await client.start_activity(
            silent_until_gate,
            args=[task_queue, True],
            id="f1",
            task_queue=task_queue,
            start_to_close_timeout=SOONER * 6,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10)),
        )
        await describe_until(
            handle, lambda d: d.run_state is PendingActivityState.STARTED, "it runs"
        )
        await handle.pause()
        _gate(task_queue).set()
        held = await describe_until(
            handle,
            lambda d: d.status is ActivityExecutionStatus.PAUSED,
            "the failed attempt's retry is held",
        )
        unclaimed = await _claimable(client, task_queue)
        await handle.unpause()
        result = await asyncio.wait_for(handle.result(), SOONER_S)

    assert (held.attempt, unclaimed) == (2, 0)
    assert result == 2


async def test_unpause_keeps_a_pending_delay_and_adds_at_most_its_jitter(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_activity(
        "anything",
        id="delayed",
        task_queue=task_queue,
        start_to_close_timeout=SOONER,
        start_delay=timedelta(seconds=60),
    )
    before = await handle.describe()
    await handle.pause()
    await handle.unpause(jitter=timedelta(seconds=2))
    after = await handle.describe()

    assert before.next_attempt_schedule_time is not None
    assert after.next_attempt_schedule_time is not None
    waited = after.next_attempt_schedule_time - before.next_attempt_schedule_time
    assert timedelta(0) <= waited <= timedelta(seconds=2)
    with pytest.raises(ValueError, match="jitter"):
        await handle.unpause(jitter=timedelta(seconds=-1))


async def test_schedule_to_close_runs_out_while_paused(client: Client, task_queue: str) -> None:
    handle = await client.start_activity(
        "anything",
        id="expires",
        task_queue=task_queue,
        schedule_to_close_timeout=timedelta(milliseconds=500),
    )
    await handle.pause()
    with pytest.raises(exceptions.ActivityFailedError) as failed:
        await asyncio.wait_for(handle.result(), SOONER_S)
    assert isinstance(failed.value.cause, exceptions.TimeoutError)
    assert failed.value.cause.type is exceptions.TimeoutType.SCHEDULE_TO_CLOSE


async def test_pause_and_unpause_refuse_a_closed_execution_and_a_paused_one_cancels_at_once(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_activity(
        "anything", id="closing", task_queue=task_queue, start_to_close_timeout=SOONER
    )
    await handle.pause()
    await handle.cancel()
    assert (await handle.describe()).status is ActivityExecutionStatus.CANCELED
    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await handle.pause()
    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await handle.unpause()


# --------------------------------------------------------------------------- bulk actions


async def test_bulk_actions_change_every_open_match_in_batches_and_count_what_changed(
    client: Client, task_queue: str
) -> None:
    other = task_queue + "-other"

    async def start(activity_id: str, queue: str) -> None:
        await client.start_activity(
            "anything", id=activity_id, task_queue=queue, start_to_close_timeout=SOONER
        )

    await asyncio.gather(*(start(f"a-{i}", task_queue) for i in range(2_500)))
    await asyncio.gather(*(start(f"b-{i}", other) for i in range(3)))
    mine = f"TaskQueue = '{task_queue}'"

    paused = await client.pause_activities(mine, reason="bulk")
    paused_again = await client.pause_activities(mine)
    counted = await client.count_activities(f"{mine} AND ExecutionStatus = 'Paused'")
    unpaused = await client.unpause_activities(mine, jitter=timedelta(seconds=1))
    cancelled = await client.cancel_activities(f"{mine} AND ActivityId STARTS_WITH 'a-1'")
    terminated = await client.terminate_activities(f"TaskQueue = '{other}'")
    left = await client.count_activities(f"{mine} AND ExecutionStatus = 'Running'")

    assert (paused, paused_again, counted.count, unpaused) == (2_500, 0, 2_500, 2_500)
    assert cancelled == 1 + 10 + 100 + 1_000  # a-1, a-1x, a-1xx, a-1xxx
    assert terminated == 3
    assert left.count == 2_500 - cancelled
    with pytest.raises(ValueError):
        await client.cancel_activities("GROUP BY ExecutionStatus")


async def test_bulk_retry_now_and_update_options_change_the_matching_open_ones(
    client: Client, task_queue: str
) -> None:
    moved = task_queue + "-moved"
    hour = timedelta(hours=1)
    for i in range(3):  # waiting out a start delay
        await client.start_activity(
            "anything",
            id=f"late-{i}",
            task_queue=task_queue,
            start_delay=hour,
            start_to_close_timeout=SOONER,
        )
    await client.start_activity(  # ready now, with both timeouts
        "anything",
        id="ready",
        task_queue=task_queue,
        start_to_close_timeout=SOONER,
        schedule_to_close_timeout=hour,
    )
    await (
        await client.start_activity(
            "anything", id="closed", task_queue=task_queue, start_to_close_timeout=SOONER
        )
    ).terminate()
    mine = f"TaskQueue = '{task_queue}'"

    # retry now: only those that wait change, and they are claimable at once
    assert await client.retry_activities_now(mine) == 3
    late = await client.get_activity_handle("late-0").describe()
    assert late.next_attempt_schedule_time is not None
    assert late.next_attempt_schedule_time < late.schedule_time + hour / 2
    assert await client.retry_activities_now(mine) == 0

    # update options: every open match, on another queue now; one the
    # update would leave without a timeout is left as it is
    keys = ActivityOptionsKeys
    changed = await client.update_activities_options(
        mine, [keys.task_queue.value_set(moved), keys.priority.value_set(Priority(1))]
    )
    assert changed == 4
    counted = await client.count_activities("GROUP BY TaskQueue")
    assert {g.group_values[0]: g.count for g in counted.groups} == {moved: 4, task_queue: 1}
    assert (await client.get_activity_handle("late-1").describe()).priority == Priority(1)
    unset = [keys.start_to_close_timeout.value_unset()]
    assert await client.update_activities_options(f"TaskQueue = '{moved}'", unset) == 1
    assert (await client.get_activity_handle("ready").describe()).start_to_close_timeout is None
    kept = await client.get_activity_handle("late-2").describe()
    assert kept.start_to_close_timeout == SOONER
    with pytest.raises(ValueError, match="at least one"):
        await client.update_activities_options(mine, [])


@activity.defn
async def heartbeats_until_interrupted() -> str:
    while True:
        activity.heartbeat()
        await asyncio.sleep(0.01)


@activity.defn
async def returns_at_once() -> str:
    return "done"


@pytest.mark.parametrize(
    ("verb", "status"),
    [
        ("cancel", ActivityExecutionStatus.CANCELED),
        ("terminate", ActivityExecutionStatus.TERMINATED),
    ],
)
async def test_a_bulk_cancel_or_terminate_closes_waiting_ones_at_once_and_interrupts_running_ones(
    client: Client, task_queue: str, verb: str, status: ActivityExecutionStatus
) -> None:
    # Given, under one ActivityId prefix: a running attempt, three scheduled
    # executions (one awaited), a paused one and a completed one,
    idle = task_queue + "-idle"
    async with Worker(
        client, task_queue=task_queue, activities=[heartbeats_until_interrupted, returns_at_once]
    ):
        done = await client.start_activity(
            returns_at_once, id="mix-done", task_queue=task_queue, start_to_close_timeout=SOONER
        )
        assert await done.result() == "done"
        running = await client.start_activity(
            heartbeats_until_interrupted,
            id="mix-running",
            task_queue=task_queue,
            start_to_close_timeout=SOONER,
        )
        await describe_until(running, lambda d: d.last_heartbeat_time is not None, "heartbeat")
        waiting = [
            await client.start_activity(
                "anything", id=f"mix-waiting-{i}", task_queue=idle, start_to_close_timeout=SOONER
            )
            for i in range(3)
        ]
        paused = await client.start_activity(
            "anything", id="mix-paused", task_queue=idle, start_to_close_timeout=SOONER
        )
        await paused.pause()
        awaited = asyncio.ensure_future(waiting[0].result())

        # when one bulk call cancels (or terminates) them all,
        bulk = client.cancel_activities if verb == "cancel" else client.terminate_activities
        changed = await bulk("ActivityId STARTS_WITH 'mix-'", reason="mixed")

        # then the five open ones changed, the waiter woke and every one ended
        # with the verb's status; the running attempt was interrupted.
        assert changed == 5
        with pytest.raises(exceptions.ActivityFailedError):
            await asyncio.wait_for(awaited, 10)
        with pytest.raises(exceptions.ActivityFailedError):
            await asyncio.wait_for(running.result(), 10)
    for handle in [running, *waiting, paused]:
        desc = await handle.describe()
        assert (desc.status, desc.canceled_reason) == (status, "mixed"), handle.id
    assert [a.outcome for a in await running.attempts()] == [AttemptOutcome.CANCELED]
    assert (await done.describe()).status is ActivityExecutionStatus.COMPLETED
    assert await bulk("ActivityId STARTS_WITH 'mix-'") == 0
