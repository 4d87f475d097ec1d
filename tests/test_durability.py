"""Nothing acknowledged is lost (DESIGN.md section 4): SIGKILLed workers and
clients are real OS processes on the test's SQLite file."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from errands.client import (
    ActivityExecutionDescription,
    ActivityExecutionStatus,
    AttemptOutcome,
    Client,
    PendingActivityState,
)
from errands.exceptions import ApplicationError
from errands.worker import Worker
from tests import procs
from tests.support import CEILING_S, FAST_RETRY, describe_until, eventually


async def assert_one_outcome(client: Client, activity_ids: list[str]) -> None:
    """Every execution is closed COMPLETED, and the counts say the same."""
    for activity_id in activity_ids:
        desc = await client.get_activity_handle(activity_id).describe()
        assert desc.status is ActivityExecutionStatus.COMPLETED, activity_id
        assert desc.run_state is None
        assert desc.close_time is not None
    total = await client.count_activities()
    assert total.count == len(activity_ids)
    grouped = await client.count_activities("GROUP BY ExecutionStatus")
    assert [(g.group_values, g.count) for g in grouped.groups] == [
        (["Completed"], len(activity_ids))
    ]
    assert (await client.count_activities("ExecutionStatus = 'Running'")).count == 0


def log_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def test_a_sigkilled_heartbeating_worker_is_retried_elsewhere_from_its_last_details(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    with procs.Children(tmp_path) as children:
        first = await children.worker("worker-1", db_url, task_queue)
        handle = await client.start_activity(
            procs.count_until_retried,
            str(log),
            id="counter",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=3),  # longer than a failover takes
            retry_policy=FAST_RETRY,
        )

        async def progressed(desc: ActivityExecutionDescription) -> bool:
            # The first heartbeat goes out at once, the next after the 2.4 s throttle.
            details = await desc.heartbeat_details()
            return bool(details) and details[0] >= 1

        seen = await describe_until(
            handle, progressed, "heartbeated twice", include_heartbeat_details=True
        )
        assert seen.last_worker_identity is not None
        assert seen.last_worker_identity.startswith(f"{first.pid}@")
        assert seen.attempt == 1

        first.kill()
        # The process is gone: what its heartbeats stored is now final.
        stored = await (await handle.describe(include_heartbeat_details=True)).heartbeat_details()
        assert stored and stored[0] >= (await seen.heartbeat_details())[0]

        second = await children.worker("worker-2", db_url, task_queue)
        result = await asyncio.wait_for(handle.result(), CEILING_S)

    assert result == {"attempt": 2, "pid": second.pid, "resumed_from": list(stored)}
    assert log_lines(log) == [
        ["start", "counter", "1", str(first.pid)],
        ["start", "counter", "2", str(second.pid)],
        ["done", "counter", "2", str(second.pid)],
    ]
    desc = await handle.describe()
    assert desc.attempt == 2
    assert desc.last_worker_identity is not None
    assert desc.last_worker_identity.startswith(f"{second.pid}@")
    # The first worker's process was seen gone: its attempt failed as WorkerLost.
    lost, done = await handle.attempts()
    assert (lost.outcome, done.outcome) == (AttemptOutcome.WORKER_LOST, AttemptOutcome.COMPLETED)
    assert isinstance(lost.failure, ApplicationError) and lost.failure.type == "WorkerLost"
    await assert_one_outcome(client, ["counter"])


async def test_a_sigkilled_worker_without_heartbeats_is_failed_over_without_waiting_for_a_timeout(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    with procs.Children(tmp_path) as children:
        first = await children.worker("worker-1", db_url, task_queue)
        second = await children.worker("worker-2", db_url, task_queue + "-other")
        handle = await client.start_activity(
            procs.hang_first_attempt,
            str(log),
            id="hanger",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=FAST_RETRY,
        )

        async def started(desc: ActivityExecutionDescription) -> bool:
            return desc.run_state is PendingActivityState.STARTED and log.exists()

        await describe_until(handle, started, "started")
        first.kill()
        # The second worker (of another queue) sees the first one's process
        # gone and fails its attempt; the retry waits for a worker of the queue.
        lost = await describe_until(
            handle, lambda d: d.attempt == 2, "attempt 1 failed as WorkerLost", ceiling_s=10
        )
        third = await children.worker("worker-3", db_url, task_queue)
        result = await asyncio.wait_for(handle.result(), CEILING_S)
        second.stop()

    assert lost.last_failure is not None and "gone" in str(lost.last_failure)
    assert result == {"attempt": 2, "pid": third.pid}
    history = await handle.attempts()
    assert [a.outcome for a in history] == [AttemptOutcome.WORKER_LOST, AttemptOutcome.COMPLETED]
    assert history[0].worker_identity is not None
    assert history[0].worker_identity.startswith(f"{first.pid}@")
    assert log_lines(log) == [
        ["start", "hanger", "1", str(first.pid)],
        ["start", "hanger", "2", str(third.pid)],
        ["done", "hanger", "2", str(third.pid)],
    ]
    await assert_one_outcome(client, ["hanger"])


async def test_activities_started_by_a_client_killed_right_after_start_all_complete(
    db_url: str, task_queue: str, tmp_path: Path
) -> None:
    with procs.Children(tmp_path) as children:
        starter = children.spawn(
            "starter", "start-loop", "--url", db_url, "--queue", task_queue, "--prefix", "job"
        )
        printed = await starter.wait_for_line("started", count=10)
        starter.kill()
    # Every start that returned to the client is in the store; starts that were
    # committed but not yet printed are there too and must complete as well.
    acknowledged = {line.split()[1]: line.split()[2] for line in printed}

    client = await Client.connect(db_url)
    try:
        async with Worker(client, task_queue=task_queue, activities=[procs.echo]):
            for activity_id, run_id in acknowledged.items():
                handle = client.get_activity_handle(activity_id)
                assert await asyncio.wait_for(handle.result(), CEILING_S) == activity_id
                assert handle.run_id == run_id
            stored = [e.activity_id async for e in client.list_activities()]
            for activity_id in stored:
                result = client.get_activity_handle(activity_id).result()
                assert await asyncio.wait_for(result, CEILING_S) == activity_id
        assert set(acknowledged) <= set(stored)
        assert len(stored) == len(set(stored))
        await assert_one_outcome(client, stored)
    finally:
        await client.close()


async def test_every_attempt_in_flight_on_a_sigkilled_worker_reaches_one_outcome(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    ids = [f"batch-{i}" for i in range(20)]
    with procs.Children(tmp_path) as children:
        first = await children.worker("worker-1", db_url, task_queue)
        handles = await asyncio.gather(
            *(
                client.start_activity(
                    procs.hang_first_attempt,
                    str(log),
                    id=activity_id,
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(seconds=1),
                    retry_policy=FAST_RETRY,
                )
                for activity_id in ids
            )
        )
        await eventually(lambda: len(log_lines(log)) >= len(ids), "every attempt started")
        first.kill()
        second = await children.worker("worker-2", db_url, task_queue)
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), CEILING_S)

    assert results == [{"attempt": 2, "pid": second.pid}] * len(ids)
    lines = log_lines(log)
    assert sorted(line[1] for line in lines if line[:1] == ["start"] and line[2] == "1") == sorted(
        ids
    )
    assert {line[3] for line in lines if line[2] == "1"} == {str(first.pid)}
    assert sorted(line[1] for line in lines if line[0] == "done") == sorted(ids)
    await assert_one_outcome(client, ids)
