"""What only a process pool does with plain ``def`` activities, on a real
ProcessPoolExecutor with ``spawn`` children and a real multiprocessing manager
(DESIGN.md §2 "Executors" and "Cancellation", §5 "Executors"; issue 4 points
1, 3, 4, 6, 7) and a real Worker over each store. What both pool kinds do is
tested once for both in test_pools.py. The activities live in
tests/pool_activities.py so that the children can import them by name."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.managers
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from errands import activity, exceptions
from errands.client import (
    ActivityExecutionStatus,
    ActivityHandle,
    Client,
)
from errands.common import RetryPolicy
from errands.worker import SharedStateManager, Worker
from tests import pool_activities as acts
from tests.support import (
    CANCEL_CEILING_S,
    CEILING_S,
    FAST_RETRY,
    SPAWN,
    TIMEOUT,
    cancel_and_time,
    failure_of,
    heartbeat_stored,
)


@pytest.fixture
def pool(process_pool: ProcessPoolExecutor) -> ProcessPoolExecutor:
    """The module's two spawn children (conftest.py)."""
    return process_pool


def pool_worker(
    client: Client,
    task_queue: str,
    pool: ProcessPoolExecutor,
    shared_state: SharedStateManager,
    activities: Sequence[Callable[..., Any]],
    **options: Any,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        activities=activities,
        activity_executor=pool,
        shared_state_manager=shared_state,
        **options,
    )


# --------------------------------------------------------------------------- worker checks


async def test_a_process_pool_without_a_shared_state_manager_is_refused_saying_what_to_pass(
    client: Client, task_queue: str, pool: ProcessPoolExecutor
) -> None:
    with pytest.raises(ValueError) as refused:
        Worker(client, task_queue=task_queue, activities=[acts.add], activity_executor=pool)
    message = str(refused.value)
    assert "ProcessPoolExecutor" in message
    assert "shared_state_manager=SharedStateManager.create_from_multiprocessing" in message


async def test_a_shared_state_manager_of_the_wrong_kind_is_refused(
    client: Client, task_queue: str, pool: ProcessPoolExecutor
) -> None:
    with pytest.raises(TypeError, match="SharedStateManager"):
        Worker(
            client,
            task_queue=task_queue,
            activities=[acts.add],
            activity_executor=pool,
            shared_state_manager=object(),  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------- heartbeats


async def test_child_heartbeats_are_throttled_and_the_latest_reaches_the_store_at_the_end(
    client: Client,
    task_queue: str,
    pool: ProcessPoolExecutor,
    shared_state: SharedStateManager,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    count = 500
    async with pool_worker(client, task_queue, pool, shared_state, [acts.heartbeat_many]):
        handle = await client.start_activity(
            acts.heartbeat_many,
            args=[count, str(gate)],
            id="many",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            heartbeat_timeout=timedelta(seconds=20),  # throttle window 16 s
        )
        running = await heartbeat_stored(handle)
        assert running.total_heartbeat_count == 1
        gate.touch()
        assert await asyncio.wait_for(handle.result(), CEILING_S) == count
    closed = await handle.describe(include_heartbeat_details=True)
    assert list(await closed.heartbeat_details()) == [count]
    assert closed.total_heartbeat_count <= 2


# --------------------------------------------------------------------------- cancellation


async def test_a_heartbeating_child_in_a_long_sleep_ends_canceled_within_5_s(
    client: Client, task_queue: str, pool: ProcessPoolExecutor, shared_state: SharedStateManager
) -> None:
    async with pool_worker(client, task_queue, pool, shared_state, [acts.heartbeat_then_sleep]):
        handle = await client.start_activity(
            acts.heartbeat_then_sleep,
            id="sleep",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await heartbeat_stored(handle)
        cause, took = await cancel_and_time(handle)
        assert isinstance(cause, exceptions.CancelledError)
        assert took < CANCEL_CEILING_S
        assert (await handle.describe()).status is ActivityExecutionStatus.CANCELED


# --------------------------------------------------------------------------- failures


async def test_an_unpicklable_result_fails_the_attempt_non_retryably_and_the_worker_goes_on(
    client: Client, task_queue: str, pool: ProcessPoolExecutor, shared_state: SharedStateManager
) -> None:
    async with pool_worker(
        client, task_queue, pool, shared_state, [acts.return_a_lambda, acts.add]
    ):
        handle = await client.start_activity(
            acts.return_a_lambda, id="lambda", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        cause = await failure_of(handle)
        assert isinstance(cause, exceptions.ApplicationError)
        assert cause.non_retryable
        assert "pickle" in str(cause).lower()
        assert "return_a_lambda" in str(cause)
        desc = await handle.describe()
        assert (desc.status, desc.attempt) == (ActivityExecutionStatus.FAILED, 1)
        assert (
            await client.execute_activity(
                acts.add,
                args=[2, 3],
                id="after",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            == 5
        )


async def test_an_unpicklable_argument_fails_the_attempt_non_retryably(
    client: Client, task_queue: str, pool: ProcessPoolExecutor, shared_state: SharedStateManager
) -> None:
    """The converter builds ``Sealed`` from JSON in the worker; it refuses to
    pickle on its way to the child."""
    async with pool_worker(
        client, task_queue, pool, shared_state, [acts.take_an_unpicklable_argument, acts.add]
    ):
        handle = await client.start_activity(
            acts.take_an_unpicklable_argument,
            acts.Sealed("secret"),
            id="sealed",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        cause = await failure_of(handle)
        assert isinstance(cause, exceptions.ApplicationError)
        assert cause.non_retryable
        assert "Sealed values do not pickle" in str(cause)
        assert "must pickle" in str(cause)
        assert (await handle.describe()).status is ActivityExecutionStatus.FAILED
        assert (
            await client.execute_activity(
                acts.add,
                args=[1, 1],
                id="after",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            == 2
        )


async def test_an_unpicklable_function_fails_the_attempt_non_retryably(
    client: Client, task_queue: str, pool: ProcessPoolExecutor, shared_state: SharedStateManager
) -> None:
    @activity.defn(name="local_function")
    def local_function() -> str:
        return "a local function cannot reach a child"

    async with pool_worker(client, task_queue, pool, shared_state, [local_function, acts.add]):
        handle = await client.start_activity(
            "local_function", id="local", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        cause = await failure_of(handle)
        assert isinstance(cause, exceptions.ApplicationError)
        assert cause.non_retryable
        assert "pickle" in str(cause).lower()
        assert (await handle.describe()).status is ActivityExecutionStatus.FAILED
        assert (
            await client.execute_activity(
                acts.add,
                args=[4, 4],
                id="after",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            == 8
        )


async def test_a_child_that_dies_fails_its_attempt_retryably_and_the_pool_is_replaced(
    client: Client, task_queue: str, shared_state: SharedStateManager
) -> None:
    own_pool = ProcessPoolExecutor(2, mp_context=SPAWN)  # this test breaks it
    try:
        async with pool_worker(
            client,
            task_queue,
            own_pool,
            shared_state,
            [acts.exit_abruptly_on_the_first_attempt, acts.child_pid],
        ):
            dead = await client.start_activity(
                acts.exit_abruptly_on_the_first_attempt,
                id="dies-once",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            cause = await failure_of(dead)
            assert isinstance(cause, exceptions.ApplicationError)
            assert cause.type == "BrokenProcessPool"
            assert not cause.non_retryable
            assert "exit_abruptly_on_the_first_attempt" in str(cause)

            # The worker goes on, on a new pool (the old one is broken for good).
            assert (
                await client.execute_activity(
                    acts.child_pid,
                    id="after",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                )
                != os.getpid()
            )

            # A retry policy that allows it: attempt 2 runs on the replacement.
            retried = await client.start_activity(
                acts.exit_abruptly_on_the_first_attempt,
                id="retried",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                retry_policy=FAST_RETRY,
            )
            assert (await asyncio.wait_for(retried.result(), CEILING_S)).startswith(
                "attempt 2 ran in child"
            )
    finally:
        own_pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- executors and races


async def test_a_thread_pool_is_not_mistaken_for_a_process_pool(
    client: Client, task_queue: str, shared_state: SharedStateManager
) -> None:
    """A ThreadPoolExecutor with a SharedStateManager still runs in this process."""
    with ThreadPoolExecutor(1) as threads:
        async with Worker(
            client,
            task_queue=task_queue,
            activities=[acts.child_pid],
            activity_executor=threads,
            shared_state_manager=shared_state,
        ):
            assert (
                await client.execute_activity(
                    acts.child_pid, id="pid", task_queue=task_queue, start_to_close_timeout=TIMEOUT
                )
                == os.getpid()
            )


async def test_a_cancel_racing_the_end_of_a_child_activity_never_lands_in_the_next_one(
    client: Client,
    task_queue: str,
    mp_manager: multiprocessing.managers.SyncManager,
    tmp_path: Path,
) -> None:
    """Given one child, rounds of: an activity that heartbeats and ends around
    the time its cancel arrives, then another activity in the same child, which
    must always complete."""
    rounds = 24
    one = ProcessPoolExecutor(1, mp_context=SPAWN)
    outcomes: dict[ActivityExecutionStatus, int] = {}
    try:
        async with pool_worker(
            client,
            task_queue,
            one,
            SharedStateManager.create_from_multiprocessing(mp_manager),
            [acts.end_after, acts.run_after_the_race],
        ):
            for i in range(rounds):
                racer = await client.start_activity(
                    acts.end_after,
                    # Ends 0-35 ms after the gate opens: around the cancel's delivery.
                    args=[str(tmp_path / f"gate-{i}"), (i % 8) * 0.005],
                    id=f"racer-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                )
                desc = await heartbeat_stored(racer)
                racer_pid = (await desc.heartbeat_details())[1]
                (tmp_path / f"gate-{i}").touch()
                with contextlib.suppress(exceptions.ActivityAlreadyClosedError):
                    await racer.cancel()  # it may have ended first
                follower = await client.start_activity(
                    acts.run_after_the_race,
                    id=f"follower-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
                try:
                    pid = await asyncio.wait_for(follower.result(), CEILING_S)
                except exceptions.ActivityFailedError as e:
                    raise AssertionError(f"round {i}: the next activity failed: {e.cause!r}") from e
                assert pid == racer_pid
                try:
                    await racer.result()
                except exceptions.ActivityFailedError as e:
                    assert isinstance(e.cause, exceptions.CancelledError), e.cause
                status = (await racer.describe()).status
                outcomes[status] = outcomes.get(status, 0) + 1
    finally:
        one.shutdown(wait=True, cancel_futures=True)
    assert sum(outcomes.values()) == rounds
    assert set(outcomes) <= {ActivityExecutionStatus.CANCELED, ActivityExecutionStatus.COMPLETED}


async def test_a_stuck_shared_state_manager_hangs_neither_the_activity_nor_the_worker(
    client: Client, task_queue: str
) -> None:
    """Issue 4 point 6: the manager process is frozen (SIGSTOP), so every
    heartbeat, log record and cancel request sent through it blocks. Results
    travel by the pool, so activities still complete, and the worker's shutdown
    (which tells children through the manager) still returns."""
    manager = SPAWN.Manager()
    executor = ProcessPoolExecutor(1, mp_context=SPAWN)
    frozen = manager._process.pid  # type: ignore[attr-defined]
    try:
        worker = pool_worker(
            client,
            task_queue,
            executor,
            SharedStateManager.create_from_multiprocessing(manager),
            [acts.heartbeat_log_and_return],
        )
        async with worker:
            os.kill(frozen, signal.SIGSTOP)
            for n in (3, 5):
                result = await asyncio.wait_for(
                    client.execute_activity(
                        acts.heartbeat_log_and_return,
                        n,
                        id=f"stuck-manager-{n}",
                        task_queue=task_queue,
                        start_to_close_timeout=TIMEOUT,
                    ),
                    CEILING_S,
                )
                assert result == n
            began = time.monotonic()
        # The shutdown waited at most the bound on one call to the manager.
        assert time.monotonic() - began < CEILING_S
    finally:
        os.kill(frozen, signal.SIGCONT)
        executor.shutdown(wait=True, cancel_futures=True)
        manager.shutdown()


# ------------------------------------------------------------ failures to reach the worker


async def test_a_child_whose_manager_is_gone_logs_each_kind_of_failure_once_and_its_result_arrives(
    client: Client, task_queue: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 5: a child's failures to reach its worker were swallowed.
    With the manager shut down mid-activity, every heartbeat and log record the
    child sends fails, and so does its watcher: the child says so once per kind
    on its stderr, and the result, which travels by the pool, still arrives."""
    manager = SPAWN.Manager()
    executor = ProcessPoolExecutor(1, mp_context=SPAWN)  # its child writes to the captured stderr
    gate = tmp_path / "gate"
    steps = 20
    try:
        async with pool_worker(
            client,
            task_queue,
            executor,
            SharedStateManager.create_from_multiprocessing(manager),
            [acts.heartbeat_and_log_past_the_gate],
        ):
            handle = await client.start_activity(
                acts.heartbeat_and_log_past_the_gate,
                args=[str(gate), steps],
                id="manager-gone",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            await heartbeat_stored(handle)
            manager.shutdown()
            gate.touch()
            assert await asyncio.wait_for(handle.result(), CEILING_S) == steps
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    err = capfd.readouterr().err
    for complaint in (
        "could not send a heartbeat",
        "could not send a log record",
        "cannot read its worker's requests",
    ):
        assert err.count(complaint) == 1, err


# ------------------------------------------------------------ waiting without polling

QUIET_SPAN_S = 2.5
"""How long the quiet tests watch a waiting child: longer than one wait of its
watcher on the manager's wake-up event."""

QUIET_MAX_SWITCHES = 25
"""Voluntary context switches allowed to a waiting child in QUIET_SPAN_S. Each
round trip to the manager costs at least one: asking every 10 ms costs 250."""


def voluntary_switches(pid: int) -> int:
    """The voluntary context switches of the process's threads so far (a thread
    makes one each time it blocks, as on a reply from the manager)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


async def switches_while_waiting(handle: ActivityHandle[Any]) -> int:
    """How many voluntary context switches the child running ``handle`` (which
    heartbeats its pid first) makes in QUIET_SPAN_S."""
    desc = await heartbeat_stored(handle)
    pid = (await desc.heartbeat_details())[0]
    await asyncio.sleep(0.3)  # the watcher's first read
    before = voluntary_switches(pid)
    await asyncio.sleep(QUIET_SPAN_S)
    return voluntary_switches(pid) - before


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="counts context switches in /proc (Linux)"
)


@needs_proc
async def test_a_child_sleeping_in_an_activity_asks_the_manager_nothing_and_still_gets_its_cancel(
    client: Client, task_queue: str, mp_manager: multiprocessing.managers.SyncManager
) -> None:
    """Issue 10 item 5: the child's watcher blocks on the manager's wake-up
    event instead of asking for a cancel request every 10 ms."""
    one = ProcessPoolExecutor(1, mp_context=SPAWN)  # no other test's watchers in it
    try:
        async with pool_worker(
            client,
            task_queue,
            one,
            SharedStateManager.create_from_multiprocessing(mp_manager),
            [acts.heartbeat_pid_then_sleep],
        ):
            handle = await client.start_activity(
                acts.heartbeat_pid_then_sleep,
                id="quiet-sleeper",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            switches = await switches_while_waiting(handle)
            failure, _ = await cancel_and_time(handle)
    finally:
        one.shutdown(wait=True, cancel_futures=True)
    assert switches < QUIET_MAX_SWITCHES
    assert isinstance(failure, exceptions.CancelledError)


@needs_proc
async def test_a_child_waiting_for_the_workers_shutdown_asks_the_manager_nothing_and_sees_it(
    client: Client, task_queue: str, mp_manager: multiprocessing.managers.SyncManager
) -> None:
    """Issue 10 item 5: wait_for_worker_shutdown_sync() in a child waits on a
    flag of its own that the watcher sets, instead of asking every 50 ms."""
    one = ProcessPoolExecutor(1, mp_context=SPAWN)
    try:
        async with pool_worker(
            client,
            task_queue,
            one,
            SharedStateManager.create_from_multiprocessing(mp_manager),
            [acts.heartbeat_pid_then_wait_for_shutdown],
            graceful_shutdown_timeout=timedelta(seconds=CEILING_S),
        ):
            handle = await client.start_activity(
                acts.heartbeat_pid_then_wait_for_shutdown,
                id="quiet-waiter",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            switches = await switches_while_waiting(handle)
            began = time.monotonic()
        # Leaving the block shut the worker down: the child noticed and returned.
        took = time.monotonic() - began
    finally:
        one.shutdown(wait=True, cancel_futures=True)
    assert switches < QUIET_MAX_SWITCHES
    assert await handle.result() is True
    assert took < CANCEL_CEILING_S


async def test_manager_calls_reuse_idle_threads_and_a_stuck_one_delays_no_other() -> None:
    """A thread keeps its connection to the manager (a new one costs a connect
    per call); a call stuck in a frozen manager must still not delay the next."""
    from errands.worker._process_runner import _off_loop

    idle = set(threading.enumerate())  # other tests may have left some
    used: set[threading.Thread] = set()
    for _ in range(20):
        await _off_loop(lambda: used.add(threading.current_thread()))
    assert len(used - idle) <= 1

    release = threading.Event()
    stuck = asyncio.ensure_future(_off_loop(release.wait))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(_off_loop(lambda: None), 1.0)
    release.set()
    await stuck
