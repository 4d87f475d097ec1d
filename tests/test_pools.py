"""Plain ``def`` activities on either pool kind (DESIGN.md §2 "Executors" and
"Cancellation", §5 "Executors"; issue 4 points 1 to 7): each test runs on a
real ThreadPoolExecutor and on a real ProcessPoolExecutor with ``spawn``
children and a real multiprocessing manager, on a real Worker over each store.
What only one kind does is tested in test_thread_pool.py and
test_process_pool.py. The activities live in tests/pool_activities.py so that
the children can import them by name."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing.managers
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from errands import activity, exceptions
from errands.client import ActivityExecutionStatus, Client, PendingActivityState
from errands.common import RetryPolicy
from errands.worker import Worker
from tests import pool_activities as acts
from tests.support import (
    CANCEL_CEILING_S,
    CEILING_S,
    FAST_RETRY,
    POOL_PREFIX,
    TIMEOUT,
    Probe,
    cancel_and_time,
    describe_until,
    eventually,
    heartbeat_stored,
    my_probe,
    pool_worker,
)


@dataclass
class Pool:
    """One pool kind as a test sees it."""

    kind: str
    """Either "thread" or "process"."""
    executor: Executor
    manager: multiprocessing.managers.SyncManager | None
    """A process pool's workers each need a SharedStateManager on it; a thread pool's none."""

    def worker(
        self,
        client: Client,
        task_queue: str,
        activities: Sequence[Callable[..., Any]],
        **options: Any,
    ) -> Worker:
        """A Worker running ``activities`` on this pool."""
        return pool_worker(client, task_queue, activities, self.executor, self.manager, **options)

    def ran_in_it(self, where: Sequence[Any]) -> bool:
        """Whether ``[pid, thread name]`` (what an activity reports) is in this
        pool: a thread of it, or a child process."""
        pid, thread = where
        if self.kind == "thread":
            return pid == os.getpid() and thread.startswith(POOL_PREFIX)
        return pid != os.getpid()

    @property
    def interrupts_a_sleep(self) -> bool:
        """A process's cancel signal interrupts ``time.sleep``; an exception
        raised into a thread cannot interrupt a blocking call."""
        return self.kind == "process"


@pytest.fixture(params=["thread", "process"])
def pool(request: pytest.FixtureRequest) -> Pool:
    """This test's thread pool, or the module's process pool (conftest.py)."""
    if request.param == "thread":
        return Pool("thread", request.getfixturevalue("thread_pool"), None)
    return Pool(
        "process", request.getfixturevalue("process_pool"), request.getfixturevalue("mp_manager")
    )


@activity.defn
async def report_the_loop() -> str:
    probe = my_probe()
    probe.seen.update(
        thread=threading.current_thread(),
        loop=asyncio.get_running_loop(),
        client=activity.client(),
    )
    await asyncio.sleep(0)
    return "async ran"


# --------------------------------------------------------------------------- context in the pool


async def test_the_activity_context_works_inside_the_pool(
    client: Client, task_queue: str, pool: Pool, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    async with pool.worker(client, task_queue, [acts.report_the_context]):
        handle = await client.start_activity(
            acts.report_the_context,
            str(gate),
            id="context",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            heartbeat_timeout=timedelta(seconds=20),
        )
        desc = await heartbeat_stored(handle)
        heartbeat = list(await desc.heartbeat_details())
        assert desc.run_state is PendingActivityState.STARTED
        gate.touch()
        seen = await asyncio.wait_for(handle.result(), CEILING_S)

    assert pool.ran_in_it(seen["where"]), seen["where"]
    assert heartbeat == ["running", *seen["where"]]
    assert (seen["activity_id"], seen["activity_type"], seen["attempt"], seen["task_queue"]) == (
        "context",
        "report_the_context",
        1,
        task_queue,
    )
    assert seen["activity_run_id"] == handle.run_id
    assert seen["heartbeat_timeout_s"] == 20
    assert len(bytes.fromhex(seen["task_token"])) > 0
    assert seen["in_activity"] is True
    assert seen["is_cancelled"] is False
    assert seen["cancellation_details"] is None
    assert seen["is_worker_shutdown"] is False
    assert seen["waited_for_cancel"] is False
    assert seen["waited_for_shutdown"] is False
    assert "async activities only" in seen["client_error"]


async def test_the_activity_logger_in_the_pool_reaches_the_workers_logging(
    client: Client, task_queue: str, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="errands.activity")

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "hello from the pool: kiwi" in r.getMessage()]

    async with pool.worker(client, task_queue, [acts.log_a_line]):
        where = await client.execute_activity(
            acts.log_a_line,
            "kiwi",
            id="logger",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await eventually(lambda: bool(logged()), "the activity's log record reaches the worker")

    assert pool.ran_in_it(where), where
    (record,) = logged()
    assert record.name == "errands.activity"
    assert record.levelno == logging.INFO
    assert [record.process, record.threadName] == where
    assert "logger" in record.getMessage()  # the activity id the adapter adds
    assert getattr(record, "activity_id", None) == "logger"


# --------------------------------------------------------------------------- cancellation


async def test_a_heartbeating_activity_spinning_in_python_ends_canceled_within_5_s(
    client: Client, task_queue: str, pool: Pool
) -> None:
    async with pool.worker(client, task_queue, [acts.heartbeat_then_spin]):
        handle = await client.start_activity(
            acts.heartbeat_then_spin,
            id="spin",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await heartbeat_stored(handle)
        cause, took = await cancel_and_time(handle, "stop spinning")
        assert isinstance(cause, exceptions.CancelledError)
        assert took < CANCEL_CEILING_S
        desc = await handle.describe()
        assert desc.status is ActivityExecutionStatus.CANCELED
        assert desc.canceled_reason == "stop spinning"


async def test_the_cancel_exception_and_cancellation_details_reach_the_activity(
    client: Client, task_queue: str, pool: Pool
) -> None:
    async with pool.worker(client, task_queue, [acts.catch_the_cancel_and_report]):
        handle = await client.start_activity(
            acts.catch_the_cancel_and_report,
            id="details",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await heartbeat_stored(handle)
        await handle.cancel()
        seen = await asyncio.wait_for(handle.result(), CANCEL_CEILING_S)
        # It caught the exception and returned a value: COMPLETED.
        assert (await handle.describe()).status is ActivityExecutionStatus.COMPLETED

    assert seen["caught"] == "errands.exceptions.CancelledError"
    assert seen["is_cancelled"] is True
    assert seen["waited"] is True
    assert seen["details"] == {
        "not_found": False,
        "cancel_requested": True,
        "paused": False,
        "timed_out": False,
        "worker_shutdown": False,
        "reset": False,
    }


async def test_a_pause_reaches_the_activity_in_the_pool_as_a_cancel_with_paused_details(
    client: Client, task_queue: str, pool: Pool
) -> None:
    async with pool.worker(client, task_queue, [acts.catch_the_cancel_and_report]):
        handle = await client.start_activity(
            acts.catch_the_cancel_and_report,
            id="paused",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await heartbeat_stored(handle)
        await handle.pause()
        seen = await asyncio.wait_for(handle.result(), CANCEL_CEILING_S)
        # It caught the exception and returned a value: a paused attempt completes.
        assert (await handle.describe()).status is ActivityExecutionStatus.COMPLETED

    assert seen["caught"] == "errands.exceptions.CancelledError"
    assert seen["details"]["paused"] is True
    assert seen["details"]["cancel_requested"] is False


async def test_with_no_thread_cancel_exception_the_activity_sees_the_cancel_and_completes(
    client: Client, task_queue: str, pool: Pool
) -> None:
    async with pool.worker(client, task_queue, [acts.poll_for_the_cancel]):
        handle = await client.start_activity(
            acts.poll_for_the_cancel,
            id="poll",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await heartbeat_stored(handle)
        await handle.cancel()
        seen = await asyncio.wait_for(handle.result(), CEILING_S)
        assert (await handle.describe()).status is ActivityExecutionStatus.COMPLETED

    assert seen["waited"] is True
    assert seen["is_cancelled"] is True
    assert seen["details"]["cancel_requested"] is True


async def test_nested_shields_defer_the_cancel_exception_until_the_outermost_block_exits(
    client: Client, task_queue: str, pool: Pool
) -> None:
    async with pool.worker(client, task_queue, [acts.shielded_steps]):
        handle = await client.start_activity(
            acts.shielded_steps,
            id="shielded",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await heartbeat_stored(handle)
        await handle.cancel()
        steps = await asyncio.wait_for(handle.result(), CEILING_S)
    assert steps == [
        "inner waited=True",
        "inner block ends",
        "outer block ends, is_cancelled=True",
        "CancelledError",
    ]


# --------------------------------------------------------------------------- executors side by side


async def test_async_activities_still_run_on_the_event_loop_when_an_executor_is_set(
    client: Client, task_queue: str, pool: Pool, probe: Probe
) -> None:
    async with pool.worker(client, task_queue, [report_the_loop, acts.where_it_runs]):
        assert (
            await client.execute_activity(
                report_the_loop, id="async", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            == "async ran"
        )
        where = await client.execute_activity(
            acts.where_it_runs, id="sync", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )

    assert probe.seen["thread"] is threading.current_thread()
    assert probe.seen["loop"] is asyncio.get_running_loop()
    assert probe.seen["client"] is client
    assert pool.ran_in_it(where), where


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_waits_for_an_activity_that_notices_it_within_the_grace_period(
    client: Client, task_queue: str, pool: Pool
) -> None:
    worker = pool.worker(
        client,
        task_queue,
        [acts.finish_on_worker_shutdown],
        graceful_shutdown_timeout=timedelta(seconds=20),
    )
    async with worker:
        handle = await client.start_activity(
            acts.finish_on_worker_shutdown,
            id="graceful",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await heartbeat_stored(handle)
        began = time.monotonic()
    took = time.monotonic() - began
    assert await handle.result() == {"before": False, "noticed": True, "after": True}
    assert (await handle.describe()).status is ActivityExecutionStatus.COMPLETED
    assert took < 10, "shutdown waited for the whole grace period"


async def test_an_activity_running_past_the_grace_period_is_cancelled_and_another_worker_retries_it(
    client: Client, task_queue: str, pool: Pool, tmp_path: Path
) -> None:
    """Attempt 1 is busy the way its pool can interrupt: a child sleeps (in C),
    a thread spins in Python."""
    grace_s = 0.3
    report = tmp_path / "details.json"
    first = pool.worker(
        client,
        task_queue,
        [acts.outlast_the_grace_period],
        graceful_shutdown_timeout=timedelta(seconds=grace_s),
    )
    async with first:
        handle = await client.start_activity(
            acts.outlast_the_grace_period,
            args=[str(report), pool.interrupts_a_sleep],
            id="outlast",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            retry_policy=FAST_RETRY,
        )
        await heartbeat_stored(handle)
        began = time.monotonic()
    took = time.monotonic() - began
    assert grace_s <= took < grace_s + CANCEL_CEILING_S
    details = json.loads(report.read_text())
    assert details["worker_shutdown"] and not details["cancel_requested"]

    desc = await handle.describe(include_last_failure=True)
    assert (desc.status, desc.attempt) == (ActivityExecutionStatus.RUNNING, 2)
    assert desc.run_state is PendingActivityState.SCHEDULED
    assert isinstance(desc.last_failure, exceptions.ApplicationError)
    assert desc.last_failure.type == "WorkerShutdown"
    assert not desc.last_failure.non_retryable

    async with pool.worker(client, task_queue, [acts.outlast_the_grace_period]):
        assert await asyncio.wait_for(handle.result(), CEILING_S) == "attempt 2 finished"


# --------------------------------------------------------------------------- auto-heartbeat


async def test_an_auto_heartbeating_activity_outlives_a_short_heartbeat_timeout(
    client: Client, task_queue: str, pool: Pool
) -> None:
    async with pool.worker(client, task_queue, [acts.busy_without_heartbeats]):
        handle = await client.start_activity(
            acts.busy_without_heartbeats,
            args=[2.0, pool.interrupts_a_sleep],
            id="long-call",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(milliseconds=500),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        assert await asyncio.wait_for(handle.result(), CEILING_S) == "finished"
    assert (await handle.describe()).total_heartbeat_count >= 2


async def test_an_auto_heartbeating_activity_in_a_long_call_is_cancelled(
    client: Client, task_queue: str, pool: Pool
) -> None:
    async with pool.worker(client, task_queue, [acts.busy_without_heartbeats]):
        handle = await client.start_activity(
            acts.busy_without_heartbeats,
            # A thread is interrupted in pure-Python work; a child even in time.sleep.
            args=[120.0, pool.interrupts_a_sleep],
            id="cancel-me",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=180),
        )
        await describe_until(handle, lambda d: d.total_heartbeat_count >= 1, "it beats")
        await handle.cancel()
        with pytest.raises(exceptions.ActivityFailedError) as failed:
            await asyncio.wait_for(handle.result(), CEILING_S)
    assert isinstance(failed.value.cause, exceptions.CancelledError)
