"""Reset, update_options and restore_original_options (DESIGN §6), on both
stores, with their races: a late outcome of a reset attempt, an options
change while an attempt runs or a retry waits."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from errands import activity, exceptions
from errands.activity import ActivityCancellationDetails
from errands.client import (
    ActivityExecutionDescription,
    ActivityExecutionStatus,
    ActivityOptionsKeys,
    AttemptOutcome,
    Client,
    PendingActivityState,
)
from errands.common import Priority, RetryPolicy
from errands.worker import Worker
from tests import procs
from tests.support import describe_until, eventually, failure_of

CEILING_S = 20.0

LONG = timedelta(seconds=120)
"""A timeout, delay or backoff no test waits out."""

_calls: Counter[str] = Counter()
_seen: dict[str, list[ActivityCancellationDetails | None]] = {}
_gates: dict[str, asyncio.Event] = {}


def _gate(name: str) -> asyncio.Event:
    return _gates.setdefault(name, asyncio.Event())


async def _claim(client: Client, task_queue: str, n: int = 10) -> list[tuple[int, int]]:
    """Claim what the queue has ready now: (attempt, serial) of each task."""
    result = await client.store.claim_batch(
        client.namespace, task_queue, max_tasks=n, identity="probe"
    )
    return [(t.attempt, t.serial) for t in result.tasks]


# --------------------------------------------------------------------------- reset


async def test_reset_racing_a_late_completion_refuses_it_as_stale_and_attempt_1_runs(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_activity(
        "anything", id="r", task_queue=task_queue, start_to_close_timeout=LONG
    )
    ((attempt, old),) = await _claim(client, task_queue)
    await handle.reset()
    reset = await handle.describe()
    ((again, new),) = await _claim(client, task_queue)
    store = client.store
    run_id = reset.activity_run_id
    late_completion = await store.complete(run_id, old, b"late")
    late_heartbeat = await store.heartbeat(run_id, old, None)
    running = await handle.describe()
    done = await store.complete(run_id, new, await client.data_converter.encode(["on time"]))

    assert (attempt, again) == (1, 1)  # the same number, yet
    assert new != old  # another attempt
    assert (reset.attempt, reset.run_state) == (1, PendingActivityState.SCHEDULED)
    assert late_completion is False and late_heartbeat.accepted is False
    assert running.status is ActivityExecutionStatus.RUNNING
    assert done is True and await handle.result() == "on time"
    assert [(a.attempt, a.outcome) for a in await handle.attempts()] == [
        (1, AttemptOutcome.RESET),
        (1, AttemptOutcome.COMPLETED),
    ]


@activity.defn
async def heartbeats_until_reset(name: str) -> str:
    _calls[name] += 1
    if _calls[name] > 1:
        return f"attempt {activity.info().attempt}, run {_calls[name]}"
    activity.heartbeat("progress")
    try:
        await asyncio.sleep(120)
    except asyncio.CancelledError:
        _seen.setdefault(name, []).append(activity.cancellation_details())
        raise
    return "never"


async def test_reset_interrupts_a_running_attempt_with_reset_details_and_runs_attempt_1_again(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[heartbeats_until_reset]):
        handle = await client.start_activity(
            heartbeats_until_reset,
            task_queue,
            id="r2",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
        )
        await describe_until(handle, lambda d: d.total_heartbeat_count >= 1, "it heartbeated")
        await handle.reset(reset_heartbeat=True)
        result = await asyncio.wait_for(handle.result(), CEILING_S)
    history = await handle.attempts()
    closed = await handle.describe(include_heartbeat_details=True)

    (details,) = _seen[task_queue]
    assert details is not None and details.reset and not details.cancel_requested
    assert result == "attempt 1, run 2"
    assert [(a.attempt, a.outcome) for a in history] == [
        (1, AttemptOutcome.RESET),
        (1, AttemptOutcome.COMPLETED),
    ]
    assert history[0].heartbeat_count == 1
    assert list(await closed.heartbeat_details()) == []  # reset_heartbeat dropped them


@activity.defn
async def fails_until_reset(name: str) -> int:
    _calls[name] += 1
    if _calls[name] <= 2:
        raise RuntimeError(f"call {_calls[name]} fails")
    return activity.info().attempt


async def test_reset_of_a_retry_waiting_out_its_backoff_runs_attempt_1_at_once(
    client: Client, task_queue: str
) -> None:
    name = task_queue
    async with Worker(client, task_queue=task_queue, activities=[fails_until_reset]):
        handle = await client.start_activity(
            fails_until_reset,
            name,
            id="r3",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            # 10 ms before attempt 2, 120 s before attempt 3
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=10), backoff_coefficient=12_000
            ),
        )
        waiting = await describe_until(
            handle,
            lambda d: d.attempt == 3 and d.run_state is PendingActivityState.SCHEDULED,
            "attempt 2 failed and attempt 3 waits out a long backoff",
        )
        await handle.reset()
        result = await asyncio.wait_for(handle.result(), CEILING_S)

    assert waiting.next_attempt_schedule_time is not None
    assert result == 1  # the attempt count started over
    assert [a.attempt for a in await handle.attempts()] == [1, 2, 1]
    # Queries see the number too, not the attempt's serial (4).
    assert (await client.count_activities("ActivityId = 'r3' AND Attempt = 1")).count == 1


async def test_reset_unpauses_unless_kept_paused_and_a_requested_cancel_wins(
    client: Client, task_queue: str
) -> None:
    kept = await client.start_activity(
        "anything", id="kept", task_queue=task_queue, start_to_close_timeout=LONG
    )
    unpaused = await client.start_activity(
        "anything", id="unpaused", task_queue=task_queue, start_to_close_timeout=LONG
    )
    cancelling = await client.start_activity(
        "anything", id="cancelling", task_queue=task_queue + "-c", start_to_close_timeout=LONG
    )
    await kept.pause()
    await unpaused.pause()
    await kept.reset(keep_paused=True)
    await unpaused.reset(jitter=timedelta(seconds=1))
    await _claim(client, task_queue + "-c")
    await cancelling.cancel()
    await cancelling.reset()

    kept_d, unpaused_d, cancelling_d = [await h.describe() for h in (kept, unpaused, cancelling)]
    assert (kept_d.status, kept_d.attempt) == (ActivityExecutionStatus.PAUSED, 1)
    assert unpaused_d.run_state is PendingActivityState.SCHEDULED
    assert unpaused_d.next_attempt_schedule_time is not None
    assert unpaused_d.next_attempt_schedule_time - unpaused_d.schedule_time <= timedelta(
        seconds=CEILING_S
    )
    assert cancelling_d.run_state is PendingActivityState.CANCEL_REQUESTED
    with pytest.raises(ValueError, match="jitter"):
        await kept.reset(jitter=timedelta(seconds=-1))
    await kept.terminate()
    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await kept.reset()


async def test_reset_activities_resets_every_open_match_and_counts_them(
    client: Client, task_queue: str
) -> None:
    handles = [
        await client.start_activity(
            "anything", id=f"b-{i}", task_queue=task_queue, start_to_close_timeout=LONG
        )
        for i in range(5)
    ]
    claimed = await _claim(client, task_queue, n=3)
    await handles[4].terminate()
    changed = await client.reset_activities(f"TaskQueue = '{task_queue}'")
    again = await _claim(client, task_queue)

    assert len(claimed) == 3
    assert changed == 4
    assert sorted(attempt for attempt, _ in again) == [1, 1, 1, 1]


# --------------------------------------------------------------------------- update_options


@activity.defn
async def reports_its_queue() -> str:
    return activity.info().task_queue


async def test_update_options_moves_a_scheduled_execution_to_another_queue(
    client: Client, task_queue: str
) -> None:
    old, new = task_queue + "-old", task_queue + "-new"
    handle = await client.start_activity(
        reports_its_queue,
        id="moving",
        task_queue=old,
        start_to_close_timeout=LONG,
        start_delay=LONG,
    )
    options = await handle.update_options(
        [
            ActivityOptionsKeys.task_queue.value_set(new),
            ActivityOptionsKeys.start_delay.value_unset(),
        ]
    )
    async with (
        Worker(client, task_queue=old, activities=[reports_its_queue], identity="old"),
        Worker(client, task_queue=new, activities=[reports_its_queue], identity="new"),
    ):
        result = await asyncio.wait_for(handle.result(), CEILING_S)
    (ran,) = await handle.attempts()

    assert (options.task_queue, options.start_delay) == (new, None)
    assert options.start_to_close_timeout == LONG
    assert result == new and ran.worker_identity == "new"
    assert (await handle.describe()).task_queue == new


@activity.defn
async def fails_once_quickly() -> int:
    if activity.info().attempt == 1:
        raise RuntimeError("the first attempt fails")
    return activity.info().attempt


async def test_a_new_retry_policy_recomputes_a_pending_backoff(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[fails_once_quickly]):
        handle = await client.start_activity(
            fails_once_quickly,
            id="backoff",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            retry_policy=RetryPolicy(initial_interval=LONG),
        )
        waiting = await describe_until(
            handle,
            lambda d: d.attempt == 2 and d.run_state is PendingActivityState.SCHEDULED,
            "a retry waits out the long backoff",
        )
        short = RetryPolicy(initial_interval=timedelta(milliseconds=50))
        options = await handle.update_options([ActivityOptionsKeys.retry_policy.value_set(short)])
        after = await handle.describe()
        result = await asyncio.wait_for(handle.result(), CEILING_S)

    assert waiting.next_attempt_schedule_time is not None
    assert after.next_attempt_schedule_time is not None
    moved_by = waiting.next_attempt_schedule_time - after.next_attempt_schedule_time
    assert abs(moved_by - (LONG - timedelta(milliseconds=50))) < timedelta(milliseconds=5)
    assert after.current_retry_interval == timedelta(milliseconds=50)
    assert options.retry_policy == short
    assert result == 2


@activity.defn
async def silent_for_a_while(name: str) -> int:
    attempt = activity.info().attempt
    if attempt == 1:
        await _gate(name).wait()
        raise RuntimeError("attempt 1 fails on its own")
    await asyncio.sleep(120)  # no heartbeat: the new heartbeat timeout ends it
    return attempt


async def test_a_running_attempt_keeps_its_own_timeouts_and_the_next_takes_the_new_ones(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[silent_for_a_while]):
        handle = await client.start_activity(
            silent_for_a_while,
            task_queue,
            id="timeouts",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=10), maximum_attempts=2
            ),
        )
        await describe_until(
            handle, lambda d: d.run_state is PendingActivityState.STARTED, "attempt 1 runs"
        )
        await handle.update_options(
            [ActivityOptionsKeys.heartbeat_timeout.value_set(timedelta(milliseconds=300))]
        )
        # Attempt 1 goes on past the new heartbeat timeout: it never heartbeats,
        # yet it ends by its own error. Let it run until well past it.
        await describe_until(
            handle,
            lambda d: d.last_started_time is not None and _elapsed_s(d) > 1.0,
            "attempt 1 ran a second",
        )
        _gate(task_queue).set()
        cause = await failure_of(handle)
    history = await handle.attempts()

    assert [a.outcome for a in history] == [AttemptOutcome.FAILED, AttemptOutcome.TIMED_OUT]
    assert isinstance(cause, exceptions.TimeoutError)
    assert cause.type is exceptions.TimeoutType.HEARTBEAT


def _elapsed_s(d: ActivityExecutionDescription) -> float:
    """Seconds since the description's attempt started."""
    assert d.last_started_time is not None
    return time.time() - d.last_started_time.timestamp()


async def test_schedule_to_close_shortened_applies_at_once_to_a_waiting_execution(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_activity(
        "anything", id="s2c", task_queue=task_queue, schedule_to_close_timeout=LONG
    )
    await handle.update_options(
        [ActivityOptionsKeys.schedule_to_close_timeout.value_set(timedelta(milliseconds=300))]
    )
    cause = await failure_of(handle)
    assert isinstance(cause, exceptions.TimeoutError)
    assert cause.type is exceptions.TimeoutType.SCHEDULE_TO_CLOSE


async def test_restore_original_options_undoes_every_update_also_through_reset(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_activity(
        "anything",
        id="restore",
        task_queue=task_queue,
        start_to_close_timeout=timedelta(seconds=45),
        start_delay=LONG,
    )
    unchanged = await handle.restore_original_options()
    changed = await handle.update_options(
        [
            ActivityOptionsKeys.task_queue.value_set("elsewhere"),
            ActivityOptionsKeys.start_to_close_timeout.value_set(timedelta(seconds=90)),
            ActivityOptionsKeys.priority.value_set(Priority(priority_key=1)),
        ]
    )
    await handle.update_options([ActivityOptionsKeys.heartbeat_timeout.value_set(LONG)])
    restored = await handle.restore_original_options()
    await handle.update_options([ActivityOptionsKeys.task_queue.value_set("elsewhere")])
    await handle.reset(restore_original_options=True)
    after_reset = await handle.describe()

    assert unchanged == restored
    assert (changed.task_queue, changed.start_to_close_timeout) == (
        "elsewhere",
        timedelta(seconds=90),
    )
    assert changed.priority.priority_key == 1
    assert (restored.task_queue, restored.start_to_close_timeout) == (
        task_queue,
        timedelta(seconds=45),
    )
    assert (restored.heartbeat_timeout, restored.start_delay) == (None, LONG)
    assert after_reset.task_queue == task_queue
    assert after_reset.run_state is PendingActivityState.SCHEDULED  # reset: ready at once


async def test_update_options_refuses_bad_updates_and_a_closed_execution(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_activity(
        "anything", id="bad", task_queue=task_queue, start_to_close_timeout=LONG
    )
    keys = ActivityOptionsKeys
    with pytest.raises(ValueError, match="task_queue cannot be unset"):
        keys.task_queue.value_unset()
    with pytest.raises(TypeError, match="timedelta"):
        keys.heartbeat_timeout.value_set(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        keys.start_to_close_timeout.value_set(timedelta(0))
    with pytest.raises(ValueError, match="at least one"):
        await handle.update_options([])
    with pytest.raises(ValueError, match="twice"):
        await handle.update_options(
            [keys.task_queue.value_set("a"), keys.task_queue.value_set("b")]
        )
    with pytest.raises(ValueError, match="neither"):
        await handle.update_options([keys.start_to_close_timeout.value_unset()])
    unchanged = await handle.describe()
    await handle.terminate()
    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await handle.update_options([keys.task_queue.value_set("a")])
    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await handle.restore_original_options()

    assert (unchanged.task_queue, unchanged.start_to_close_timeout) == (task_queue, LONG)


async def test_a_reset_reaches_an_attempt_running_in_another_process(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "interrupts.log"
    with procs.Children(tmp_path) as children:
        await children.worker("worker", db_url, task_queue)
        handle = await client.start_activity(
            procs.note_interruption,
            str(log),
            id="far",
            task_queue=task_queue,
            start_to_close_timeout=LONG,
        )
        await describe_until(handle, lambda d: d.total_heartbeat_count >= 1, "it heartbeated")
        await handle.reset()
        result = await asyncio.wait_for(handle.result(), CEILING_S)
        await eventually(log.exists, "the reset attempt noted its interruption")

    assert log.read_text().split() == ["interrupted", "far", "1", "reset"]
    assert result == 1
