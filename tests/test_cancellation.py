"""Cancellation, termination and worker shutdown of async activities (DESIGN.md
§2 "Cancellation", §5), on a real Worker over a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

import pytest

from errands import activity, exceptions
from errands.client import (
    ActivityExecutionStatus,
    Client,
    PendingActivityState,
)
from errands.common import RetryPolicy
from errands.store.sqlite import SQLiteStore
from errands.worker import Worker
from tests.support import (
    CANCEL_CEILING_S,
    TIMEOUT,
    Probe,
    describe_until,
    failure_of,
    my_probe,
    wait_event,
)

# --------------------------------------------------------------------------- activities


@activity.defn
async def heartbeat_until_cancelled() -> str:
    probe = my_probe()
    probe.seen["details_before"] = activity.cancellation_details()
    probe.seen["is_cancelled_before"] = activity.is_cancelled()
    try:
        while True:
            activity.heartbeat("tick")
            probe.started.set()
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        probe.seen["cancel_seen_at"] = time.monotonic()
        probe.seen["details"] = activity.cancellation_details()
        probe.seen["is_cancelled"] = activity.is_cancelled()
        await asyncio.wait_for(activity.wait_for_cancelled(), CANCEL_CEILING_S)
        probe.seen["wait_for_cancelled_returned"] = True
        probe.cancel_seen.set()
        raise


@activity.defn
async def run_to_end_without_heartbeat() -> str:
    probe = my_probe()
    probe.started.set()
    await probe.release.wait()
    return f"finished, is_cancelled={activity.is_cancelled()}"


@activity.defn
async def return_a_value_when_cancelled() -> str:
    probe = my_probe()
    try:
        while True:
            activity.heartbeat()
            probe.started.set()
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        return "cleaned up and returned"


@activity.defn
async def always_fail() -> str:
    my_probe().attempts += 1
    raise RuntimeError("this attempt fails")


@activity.defn
async def fail_when_released() -> str:
    probe = my_probe()
    probe.attempts += 1
    probe.started.set()
    await probe.release.wait()
    raise RuntimeError("failed after the cancel request")


@activity.defn
async def quick(value: int) -> int:
    return value


@activity.defn
async def outlive_termination() -> str:
    probe = my_probe()
    probe.started.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        probe.seen["details"] = activity.cancellation_details()
        probe.seen["is_cancelled"] = activity.is_cancelled()
        probe.cancel_seen.set()
        return "a late result"
    return "slept an hour"


@activity.defn
async def heartbeat_briefly(steps: int) -> int:
    for step in range(steps):
        activity.heartbeat(step)
        await asyncio.sleep(0.002)
    return steps


@activity.defn
async def finish_on_worker_shutdown() -> str:
    probe = my_probe()
    before = activity.is_worker_shutdown()
    probe.started.set()
    await activity.wait_for_worker_shutdown()
    return f"before={before} after={activity.is_worker_shutdown()}"


@activity.defn
async def outlast_the_grace_period() -> str:
    probe = my_probe()
    attempt = activity.info().attempt
    if attempt == 1:
        probe.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            probe.seen["details"] = activity.cancellation_details()
            probe.seen["is_worker_shutdown"] = activity.is_worker_shutdown()
            raise
    return f"attempt {attempt}"


# --------------------------------------------------------------------------- cancel delivery


async def test_a_heartbeating_activity_is_cancelled_promptly_and_ends_canceled(
    client: Client, task_queue: str, probe: Probe
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[heartbeat_until_cancelled]):
        handle = await client.start_activity(
            heartbeat_until_cancelled,
            id="cancel-me",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await wait_event(probe.started, "the activity heartbeats")
        requested_at = time.monotonic()
        await handle.cancel(reason="no longer needed")
        await wait_event(probe.cancel_seen, "the activity sees the cancel")
        failure = await failure_of(handle)

    assert probe.seen["cancel_seen_at"] - requested_at < CANCEL_CEILING_S
    assert probe.seen["details_before"] is None
    assert probe.seen["is_cancelled_before"] is False
    details = probe.seen["details"]
    assert isinstance(details, activity.ActivityCancellationDetails)
    assert details.cancel_requested
    assert not (details.not_found or details.timed_out or details.worker_shutdown)
    assert probe.seen["is_cancelled"] is True
    assert probe.seen["wait_for_cancelled_returned"] is True
    assert isinstance(failure, exceptions.CancelledError)
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.CANCELED
    assert desc.run_state is None
    assert desc.canceled_reason == "no longer needed"
    assert desc.close_time is not None
    assert desc.attempt == 1


async def test_an_activity_that_never_heartbeats_is_not_interrupted_and_completes(
    client: Client, task_queue: str, probe: Probe
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[run_to_end_without_heartbeat, heartbeat_until_cancelled],
    ):
        silent = await client.start_activity(
            run_to_end_without_heartbeat,
            id="silent",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await wait_event(probe.started, "the silent activity runs")
        await silent.cancel(reason="please stop")
        desc = await silent.describe()
        assert desc.status is ActivityExecutionStatus.RUNNING
        assert desc.run_state is PendingActivityState.CANCEL_REQUESTED
        assert desc.canceled_reason == "please stop"

        # A second, heartbeating activity cancelled after the first: once it has
        # seen its cancel, the worker has read the earlier request too.
        probe.started.clear()
        noisy = await client.start_activity(
            heartbeat_until_cancelled,
            id="noisy",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await wait_event(probe.started, "the heartbeating activity runs")
        await noisy.cancel()
        await wait_event(probe.cancel_seen, "the heartbeating activity sees its cancel")
        assert (await silent.describe()).run_state is PendingActivityState.CANCEL_REQUESTED

        probe.release.set()
        assert await silent.result() == "finished, is_cancelled=False"
        await failure_of(noisy)

    desc = await silent.describe()
    assert desc.status is ActivityExecutionStatus.COMPLETED
    assert desc.run_state is None


async def test_an_activity_that_catches_the_cancel_and_returns_ends_completed(
    client: Client, task_queue: str, probe: Probe
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[return_a_value_when_cancelled]):
        handle = await client.start_activity(
            return_a_value_when_cancelled,
            id="swallow",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await wait_event(probe.started, "the activity heartbeats")
        await handle.cancel()
        assert await handle.result() == "cleaned up and returned"

    assert (await handle.describe()).status is ActivityExecutionStatus.COMPLETED


async def test_cancel_of_a_scheduled_execution_cancels_it_at_once(client: Client) -> None:
    handle = await client.start_activity(
        quick,
        1,
        id="never-started",
        task_queue="nobody-serves-this",
        start_to_close_timeout=TIMEOUT,
    )
    assert (await handle.describe()).run_state is PendingActivityState.SCHEDULED

    await handle.cancel(reason="changed my mind")

    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.CANCELED
    assert desc.run_state is None
    assert desc.canceled_reason == "changed my mind"
    assert desc.close_time is not None
    assert desc.last_started_time is None
    assert isinstance(await failure_of(handle), exceptions.CancelledError)


async def test_cancel_during_retry_backoff_cancels_at_once(
    client: Client, task_queue: str, probe: Probe
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[always_fail]):
        handle = await client.start_activity(
            always_fail,
            id="backing-off",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=60)),
        )
        waiting = await describe_until(
            handle,
            lambda d: d.attempt == 2 and d.run_state is PendingActivityState.SCHEDULED,
            "the first attempt fails and the retry waits",
        )
        assert waiting.next_attempt_schedule_time is not None
        assert waiting.last_failure is not None

        await handle.cancel(reason="stop retrying")

        desc = await handle.describe()
        assert desc.status is ActivityExecutionStatus.CANCELED
        assert desc.canceled_reason == "stop retrying"
        assert isinstance(await failure_of(handle), exceptions.CancelledError)
    assert probe.attempts == 1


async def test_a_failing_attempt_after_a_cancel_request_ends_failed_without_retry(
    client: Client, task_queue: str, probe: Probe
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[fail_when_released]):
        handle = await client.start_activity(
            fail_when_released,
            id="fails-after-cancel",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)),
        )
        await wait_event(probe.started, "the activity runs")
        await handle.cancel()
        assert (await handle.describe()).run_state is PendingActivityState.CANCEL_REQUESTED
        probe.release.set()
        failure = await failure_of(handle)

    assert isinstance(failure, exceptions.ApplicationError)
    assert failure.type == "RuntimeError"
    assert "failed after the cancel request" in failure.message
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.FAILED
    assert desc.attempt == 1
    assert probe.attempts == 1


# --------------------------------------------------------------------------- closed and unknown


async def test_cancel_and_terminate_of_a_closed_execution_are_refused_and_change_nothing(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[quick]):
        handle = await client.start_activity(
            quick, 7, id="done", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert await handle.result() == 7
    before = await handle.describe()

    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await handle.cancel(reason="too late")
    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await handle.terminate(reason="too late")
    with pytest.raises(exceptions.ActivityAlreadyClosedError):
        await client.get_activity_handle("done", run_id=handle.run_id).cancel()

    after = await handle.describe()
    assert after == before
    assert after.status is ActivityExecutionStatus.COMPLETED
    assert after.canceled_reason is None
    assert await handle.result() == 7


async def test_cancel_and_terminate_of_an_unknown_id_raise_not_found(client: Client) -> None:
    with pytest.raises(exceptions.ActivityNotFoundError):
        await client.get_activity_handle("no-such-id").cancel()
    with pytest.raises(exceptions.ActivityNotFoundError):
        await client.get_activity_handle("no-such-id").terminate()

    known = await client.start_activity(
        quick, 1, id="known", task_queue="unserved", start_to_close_timeout=TIMEOUT
    )
    with pytest.raises(exceptions.ActivityNotFoundError):
        await client.get_activity_handle("known", run_id="no-such-run").cancel()
    with pytest.raises(exceptions.ActivityNotFoundError):
        await client.get_activity_handle("known", run_id="no-such-run").terminate()
    assert (await known.describe()).run_state is PendingActivityState.SCHEDULED


# --------------------------------------------------------------------------- terminate


async def test_terminate_interrupts_a_running_activity_and_refuses_its_late_result(
    client: Client, task_queue: str, probe: Probe
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[outlive_termination]):
        handle = await client.start_activity(
            outlive_termination,
            id="terminate-me",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await wait_event(probe.started, "the activity runs")

        await handle.terminate(reason="operator said so")

        assert (await handle.describe()).status is ActivityExecutionStatus.TERMINATED
        await wait_event(probe.cancel_seen, "the activity is interrupted", CANCEL_CEILING_S)
    # The worker has stopped, so the activity's late return has been reported.

    details = probe.seen["details"]
    assert isinstance(details, activity.ActivityCancellationDetails)
    assert details.not_found
    assert not details.cancel_requested
    assert probe.seen["is_cancelled"] is True
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.TERMINATED
    assert desc.canceled_reason == "operator said so"
    failure = await failure_of(handle)
    assert isinstance(failure, exceptions.TerminatedError)


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_a_request_made_while_the_worker_starts_up_still_reaches_the_activity(
    client: Client, task_queue: str, probe: Probe
) -> None:
    store = client.store
    assert isinstance(store, SQLiteStore)
    handle = await client.start_activity(
        outlive_termination, id="early", task_queue=task_queue, start_to_close_timeout=TIMEOUT
    )
    # Keep the store's reader thread busy while the worker starts, so its first
    # look at the request log comes late: the claim must wait for that look, or
    # a terminate made in between would be missed.
    busy_reader = asyncio.ensure_future(store._read(lambda _conn: time.sleep(0.5)))
    async with Worker(client, task_queue=task_queue, activities=[outlive_termination]):
        await wait_event(probe.started, "the activity runs")
        await handle.terminate()
        await wait_event(probe.cancel_seen, "the activity is interrupted", CANCEL_CEILING_S)
    await busy_reader
    assert probe.seen["details"].not_found


async def test_terminate_of_a_scheduled_execution_closes_it(client: Client) -> None:
    handle = await client.start_activity(
        quick, 1, id="terminate-waiting", task_queue="unserved", start_to_close_timeout=TIMEOUT
    )
    await handle.terminate()
    assert (await handle.describe()).status is ActivityExecutionStatus.TERMINATED
    assert isinstance(await failure_of(handle), exceptions.TerminatedError)


# --------------------------------------------------------------------------- races


async def test_cancel_racing_completion_gives_each_execution_exactly_one_outcome(
    client: Client, task_queue: str
) -> None:
    rounds = 30
    outcomes: dict[ActivityExecutionStatus, int] = {}
    async with Worker(client, task_queue=task_queue, activities=[heartbeat_briefly]):
        for n in range(rounds):
            handle = await client.start_activity(
                heartbeat_briefly,
                5,
                id=f"race-{n}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            # Spread the cancel over the activity's short life: early, mid, late.
            await asyncio.sleep((n % 10) * 0.003)
            with contextlib.suppress(exceptions.ActivityAlreadyClosedError):
                await handle.cancel()
            try:
                value = await handle.result()
            except exceptions.ActivityFailedError as e:
                assert isinstance(e.cause, exceptions.CancelledError), e.cause
                expected = ActivityExecutionStatus.CANCELED
            else:
                assert value == 5
                expected = ActivityExecutionStatus.COMPLETED
            desc = await handle.describe()
            assert desc.status is expected, f"round {n}"
            assert desc.run_state is None
            assert desc.close_time is not None
            assert desc.attempt == 1
            outcomes[expected] = outcomes.get(expected, 0) + 1

    assert sum(outcomes.values()) == rounds
    assert (await client.count_activities()).count == rounds
    for status, n in outcomes.items():
        query = f"ExecutionStatus = '{status.name.capitalize()}'"
        assert (await client.count_activities(query)).count == n


# --------------------------------------------------------------------------- worker shutdown


async def test_an_activity_that_watches_for_shutdown_finishes_within_the_grace_period(
    client: Client, task_queue: str, probe: Probe
) -> None:
    worker = Worker(
        client,
        task_queue=task_queue,
        activities=[finish_on_worker_shutdown],
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
    async with worker:
        handle = await client.start_activity(
            finish_on_worker_shutdown,
            id="graceful",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await wait_event(probe.started, "the activity runs")
        began = time.monotonic()
        await worker.shutdown()
        took = time.monotonic() - began

    assert took < 10.0, "shutdown waited for the whole grace period"
    assert await handle.result() == "before=False after=True"
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.COMPLETED
    assert desc.attempt == 1


async def test_an_activity_past_the_grace_period_is_cancelled_and_retried_elsewhere(
    client: Client, task_queue: str, probe: Probe
) -> None:
    grace = timedelta(milliseconds=300)
    first = Worker(
        client,
        task_queue=task_queue,
        activities=[outlast_the_grace_period],
        graceful_shutdown_timeout=grace,
        identity="first-worker",
    )
    async with first:
        handle = await client.start_activity(
            outlast_the_grace_period,
            id="outlasts",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )
        await wait_event(probe.started, "the first attempt runs")
        began = time.monotonic()
        await first.shutdown()
        took = time.monotonic() - began

    assert took >= grace.total_seconds() * 0.9
    details = probe.seen["details"]
    assert isinstance(details, activity.ActivityCancellationDetails)
    assert details.worker_shutdown
    assert not details.cancel_requested
    assert probe.seen["is_worker_shutdown"] is True
    pending = await handle.describe(include_last_failure=True)
    assert pending.status is ActivityExecutionStatus.RUNNING
    assert pending.run_state is PendingActivityState.SCHEDULED
    assert pending.attempt == 2
    assert pending.last_worker_identity == "first-worker"
    assert isinstance(pending.last_failure, exceptions.ApplicationError)
    assert not pending.last_failure.non_retryable

    async with Worker(
        client,
        task_queue=task_queue,
        activities=[outlast_the_grace_period],
        identity="second-worker",
    ):
        assert await handle.result() == "attempt 2"
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.COMPLETED
    assert desc.last_worker_identity == "second-worker"
