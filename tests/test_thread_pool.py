"""What only a thread pool does with plain ``def`` activities, on a real
ThreadPoolExecutor (DESIGN.md §2 "Executors" and "Cancellation", §5
"Executors"; issue 4 points 1, 2, 5, 6, 7) and a real Worker over each store.
What both pool kinds do is tested once for both in test_pools.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from errands import activity, exceptions
from errands.client import (
    ActivityExecutionDescription,
    ActivityExecutionStatus,
    Client,
    PendingActivityState,
)
from errands.common import RetryPolicy
from errands.worker import Worker
from tests.pool_activities import spin_for, spin_until_cancel_lands
from tests.support import (
    CANCEL_CEILING_S,
    CEILING_S,
    FAST_RETRY,
    POOL_PREFIX,
    TIMEOUT,
    Probe,
    describe_until,
    eventually,
    my_probe,
    wait_event,
)

BUSY_LOOP_S = 0.01
"""How long the race test holds the event loop while an activity ends."""


# --------------------------------------------------------------------------- activities


@activity.defn
def sync_identity(value: int) -> int:
    return value


@activity.defn
def heartbeat_then_spin() -> str:
    probe = my_probe()
    activity.heartbeat("spinning")
    probe.started.set()
    try:
        spin_until_cancel_lands()
    except exceptions.CancelledError as e:
        probe.seen.update(
            caught=type(e),
            is_cancelled=activity.is_cancelled(),
            details=activity.cancellation_details(),
            waited=activity.wait_for_cancelled_sync(0),
        )
        raise
    return "unreachable"


@activity.defn(no_thread_cancel_exception=True)
def ignore_the_cancel() -> str:
    """Heartbeats, so the cancel is delivered, but never looks at it."""
    probe = my_probe()
    activity.heartbeat("working")
    probe.started.set()
    probe.release.wait_sync(CEILING_S)
    spin_for(0.05)
    return "finished anyway"


@activity.defn
def never_heartbeat() -> str:
    probe = my_probe()
    probe.started.set()
    probe.release.wait_sync(CEILING_S)
    spin_for(0.05)
    return f"finished, is_cancelled={activity.is_cancelled()}"


@activity.defn
def end_as_the_cancel_arrives() -> str:
    """Heartbeats, then spins in pure Python until the test's chosen moment
    (``probe.seen["end_at"]``, set as it sends the cancel) and returns: the end
    of the call races the cancel's delivery."""
    probe = my_probe()
    probe.seen["thread"] = threading.get_ident()
    activity.heartbeat("about to end")
    probe.started.set()
    deadline = time.monotonic() + CEILING_S
    while time.monotonic() < min(probe.seen.get("end_at", deadline), deadline):
        pass
    return "ended"


@activity.defn
def run_after_the_race() -> int:
    """Pure-Python work on the thread the racing activity used: a leaked cancel
    exception would land here."""
    probe = my_probe()
    probe.seen["next_thread"] = threading.get_ident()
    return spin_for(0.003)


@activity.defn
def block_until_released(n: int) -> int:
    """Blocks until the test sets its own gate (``probe.seen["gates"][n]``)."""
    probe = my_probe()
    probe.enter()
    try:
        gate: threading.Event = probe.seen["gates"][n]
        if not gate.wait(CEILING_S):
            raise RuntimeError(f"gate {n} was not opened")
    finally:
        probe.leave()
    return n


# --------------------------------------------------------------------------- worker checks


async def test_a_worker_with_a_sync_activity_and_no_executor_is_refused_naming_it(
    client: Client, task_queue: str
) -> None:
    with pytest.raises(ValueError, match=r"'sync_identity'.*activity_executor"):
        Worker(client, task_queue=task_queue, activities=[sync_identity])


async def test_a_thread_pool_needs_no_shared_state_manager(
    client: Client, task_queue: str, thread_pool: ThreadPoolExecutor
) -> None:
    async with Worker(
        client, task_queue=task_queue, activities=[sync_identity], activity_executor=thread_pool
    ):
        assert (
            await client.execute_activity(
                sync_identity,
                41,
                id="identity",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            == 41
        )


# --------------------------------------------------------------------------- cancellation


async def test_a_thread_that_ignores_a_delivered_cancel_completes(
    client: Client, task_queue: str, thread_pool: ThreadPoolExecutor, probe: Probe
) -> None:
    async with Worker(
        client, task_queue=task_queue, activities=[ignore_the_cancel], activity_executor=thread_pool
    ):
        handle = await client.start_activity(
            ignore_the_cancel, id="ignore", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await wait_event(probe.started, "the activity heartbeats")
        await describe_until(
            handle, lambda d: d.last_heartbeat_time is not None, "the heartbeat is stored"
        )
        await handle.cancel()
        await describe_until(
            handle,
            lambda d: d.run_state is PendingActivityState.CANCEL_REQUESTED,
            "the cancel request is recorded",
        )
        probe.release.set()
        assert await handle.result() == "finished anyway"
        assert (await handle.describe()).status is ActivityExecutionStatus.COMPLETED


async def test_a_thread_that_never_heartbeats_runs_to_its_end_and_completes(
    client: Client, task_queue: str, thread_pool: ThreadPoolExecutor, probe: Probe
) -> None:
    async with Worker(
        client, task_queue=task_queue, activities=[never_heartbeat], activity_executor=thread_pool
    ):
        handle = await client.start_activity(
            never_heartbeat, id="quiet", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await wait_event(probe.started, "the activity runs")
        await handle.cancel()
        await describe_until(
            handle,
            lambda d: d.run_state is PendingActivityState.CANCEL_REQUESTED,
            "the cancel request is recorded",
        )
        probe.release.set()
        assert await handle.result() == "finished, is_cancelled=False"
        assert (await handle.describe()).status is ActivityExecutionStatus.COMPLETED


async def test_a_cancel_racing_the_end_of_an_activity_never_lands_in_the_next_task_of_the_thread(
    client: Client, task_queue: str, probe: Probe
) -> None:
    """Given one pool thread, many rounds of: an activity that heartbeats and
    ends just as its cancel arrives, then another activity on the same thread.
    The first may end either way; the second must always complete.

    Even rounds: the racer ends while the test holds the event loop, so the
    call's end and the cancel's delivery reach the loop together (the attempt
    still looks RUNNING when the cancel is delivered). Odd rounds: the racer
    ends ``offset_s`` after the test sends the cancel; the offset follows the
    delivery time (shorter after a CANCELED round, longer after a COMPLETED
    one), so those rounds end around the moment of delivery."""
    rounds = 60
    offset_s, step_s = 0.02, 0.0005
    outcomes: dict[ActivityExecutionStatus, int] = {}
    failures: list[str] = []
    single = ThreadPoolExecutor(1, thread_name_prefix=POOL_PREFIX)

    async def play_rounds() -> None:
        nonlocal offset_s
        for i in range(rounds):
            probe.started.clear()
            probe.seen.pop("end_at", None)
            racer = await client.start_activity(
                end_as_the_cancel_arrives,
                id=f"racer-{i}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            await wait_event(probe.started, f"round {i}: the racer heartbeats")
            tracking = i % 2 == 1
            if tracking:
                probe.seen["end_at"] = time.monotonic() + offset_s
                # It may end first; the follower still checks the thread.
                with contextlib.suppress(exceptions.ActivityAlreadyClosedError):
                    await racer.cancel()
            else:
                await racer.cancel()
                probe.seen["end_at"] = time.monotonic()
                time.sleep(BUSY_LOOP_S)  # hold the loop while the racer ends
            follower = await client.start_activity(
                run_after_the_race,
                id=f"follower-{i}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            try:
                await asyncio.wait_for(follower.result(), 10)
            except asyncio.TimeoutError:
                failures.append(f"round {i}: the next task on the thread never ended")
                return
            except exceptions.ActivityFailedError as e:
                failures.append(f"round {i}: the next task on the thread failed: {e.cause!r}")
                return
            assert probe.seen["next_thread"] == probe.seen["thread"]
            try:
                await racer.result()
            except exceptions.ActivityFailedError as e:
                assert isinstance(e.cause, exceptions.CancelledError), e.cause
            status = (await racer.describe()).status
            outcomes[status] = outcomes.get(status, 0) + 1
            if tracking:
                step = -step_s if status is ActivityExecutionStatus.CANCELED else step_s
                offset_s = max(0.0, offset_s + step)

    async def with_worker() -> None:
        async with Worker(
            client,
            task_queue=task_queue,
            activities=[end_as_the_cancel_arrives, run_after_the_race],
            activity_executor=single,
        ):
            await play_rounds()

    try:
        # A cancel that killed the pool thread would also hang the worker's shutdown.
        await asyncio.wait_for(with_worker(), 60)
    except asyncio.TimeoutError:
        failures.append("the worker did not shut down")
    finally:
        single.shutdown(wait=False, cancel_futures=True)
    assert not failures, failures
    assert sum(outcomes.values()) == rounds
    assert set(outcomes) <= {ActivityExecutionStatus.CANCELED, ActivityExecutionStatus.COMPLETED}


# --------------------------------------------------------------------------- slots


async def test_the_worker_never_claims_more_sync_activities_than_the_pool_can_start(
    client: Client, task_queue: str, probe: Probe
) -> None:
    """Given ThreadPoolExecutor(2) and max_concurrent_activities=10, six
    activities that block until released: in each of three waves exactly two
    are STARTED and the others stay SCHEDULED (so no start_to_close clock burns
    in the executor's queue); releasing the two lets the next two start."""
    size, count = 2, 6
    gates = {n: threading.Event() for n in range(count)}
    probe.seen["gates"] = gates
    two = ThreadPoolExecutor(size, thread_name_prefix=POOL_PREFIX)
    try:
        async with Worker(
            client,
            task_queue=task_queue,
            activities=[block_until_released],
            activity_executor=two,
            max_concurrent_activities=10,
        ):
            handles = [
                await client.start_activity(
                    block_until_released,
                    n,
                    id=f"blocked-{n}",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                )
                for n in range(count)
            ]
            descs: list[ActivityExecutionDescription] = []
            released: set[int] = set()

            def in_state(state: PendingActivityState) -> list[int]:
                return [n for n, d in enumerate(descs) if d.run_state is state]

            async def wave_started(done: int) -> bool:
                descs[:] = [await h.describe() for h in handles]
                # A released activity may read STARTED until its completion
                # commits; one still blocked has been claimed, and never more
                # of those than the pool has threads.
                blocked = [n for n in in_state(PendingActivityState.STARTED) if n not in released]
                assert len(blocked) <= size, [d.run_state for d in descs]
                closed = [d for d in descs if d.status is ActivityExecutionStatus.COMPLETED]
                return len(closed) == len(released) == done and len(blocked) == size

            for wave in range(count // size):
                done = wave * size
                await eventually(functools.partial(wave_started, done), f"wave {wave}: two start")
                # Nothing returns now: the others must stay SCHEDULED.
                watch_until = time.monotonic() + 0.3
                while time.monotonic() < watch_until:
                    descs[:] = [await h.describe() for h in handles]
                    assert len(in_state(PendingActivityState.SCHEDULED)) == count - done - size, [
                        d.run_state for d in descs
                    ]
                    await asyncio.sleep(0.02)
                for n in in_state(PendingActivityState.STARTED):
                    released.add(n)
                    gates[n].set()
            assert [await h.result() for h in handles] == list(range(count))
    finally:
        for gate in gates.values():
            gate.set()
        two.shutdown(wait=True, cancel_futures=True)
    assert probe.most_running == size


# --------------------------------------------------------------------------- shutdown


async def test_a_cancel_delivered_while_the_call_waits_for_a_pool_thread_is_not_lost(
    client: Client, task_queue: str, probe: Probe
) -> None:
    """Given a pool shared with other work (its one thread busy), an attempt
    whose call still waits in the executor's queue when the worker's shutdown
    cancels it: the cancel is not lost when the call gets its thread (the
    activity does not run on unaware, holding up shutdown); the attempt fails
    retryably."""
    shared = ThreadPoolExecutor(1, thread_name_prefix=POOL_PREFIX)
    unblock = threading.Event()
    busy = shared.submit(unblock.wait, CEILING_S)  # someone else's work on the only thread
    worker = Worker(
        client, task_queue=task_queue, activities=[heartbeat_then_spin], activity_executor=shared
    )
    try:
        async with worker:
            handle = await client.start_activity(
                heartbeat_then_spin,
                id="queued",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                retry_policy=FAST_RETRY,
            )
            await describe_until(
                handle, lambda d: d.run_state is PendingActivityState.STARTED, "it is claimed"
            )
            shutting_down = asyncio.ensure_future(worker.shutdown())

            async def cancel_delivered() -> bool:  # a peek inside: nothing outside shows it
                attempts = list(worker._running.values())
                return bool(attempts) and all(
                    a.context is not None and a.context.details is not None for a in attempts
                )

            await eventually(cancel_delivered, "shutdown delivers the cancel to the queued call")
            unblock.set()
            done, _ = await asyncio.wait({shutting_down}, timeout=CANCEL_CEILING_S)
            assert done, "shutdown hangs: the activity runs on without the cancel exception"
        # Either the function never started, or the exception landed in it at once.
        if probe.started.is_set():
            assert probe.seen.get("caught") is exceptions.CancelledError
        desc = await handle.describe(include_last_failure=True)
        assert (desc.status, desc.attempt) == (ActivityExecutionStatus.RUNNING, 2)
        assert isinstance(desc.last_failure, exceptions.ApplicationError)
        assert desc.last_failure.type == "WorkerShutdown"
    finally:
        unblock.set()
        busy.result()
        shared.shutdown(wait=True, cancel_futures=True)
