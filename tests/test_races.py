"""Races across OS processes on one SQLite file (DESIGN.md section 5): several
worker or client processes, many executions each, exactly one outcome per
execution."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from errands.client import (
    ActivityExecutionStatus,
    ActivityFailedError,
    ActivityHandle,
    Client,
)
from errands.common import RetryPolicy
from errands.exceptions import ActivityAlreadyClosedError, CancelledError, TimeoutError, TimeoutType
from errands.store import Compare, Field, Query
from tests import procs
from tests.support import CEILING_S

ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)


async def outcome(handle: ActivityHandle[object]) -> tuple[str, object]:
    """("completed", value) or ("failed", the cause)."""
    try:
        return "completed", await asyncio.wait_for(handle.result(), CEILING_S)
    except ActivityFailedError as e:
        return "failed", e.cause


async def status_counts(client: Client, task_queue: str) -> dict[str, int]:
    grouped = await client.count_activities(f"TaskQueue = '{task_queue}' GROUP BY ExecutionStatus")
    return {g.group_values[0]: g.count for g in grouped.groups}


async def test_two_worker_processes_run_each_of_300_activities_exactly_once(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    n = 300
    with procs.Children(tmp_path) as children:
        # Few slots and a short sleep per activity: no worker can take all the work.
        workers = [
            await children.worker(f"worker-{i}", db_url, task_queue, max_concurrent=5)
            for i in range(2)
        ]
        handles = await asyncio.gather(
            *(
                client.start_activity(
                    procs.record_run,
                    args=[str(log), 0.01],
                    id=f"job-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(seconds=30),
                )
                for i in range(n)
            )
        )
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), CEILING_S)

    assert results == [f"job-{i}" for i in range(n)]
    lines = [line.split() for line in log.read_text().splitlines()]
    runs = Counter(activity_id for activity_id, _, _ in lines)
    assert runs == Counter({f"job-{i}": 1 for i in range(n)}), "an activity ran twice or never"
    assert {attempt for _, attempt, _ in lines} == {"1"}
    per_worker = Counter(pid for _, _, pid in lines)
    assert set(per_worker) == {str(w.pid) for w in workers}, f"work per pid: {per_worker}"
    assert await status_counts(client, task_queue) == {"Completed": n}
    for handle in handles[:: n // 10]:
        desc = await handle.describe()
        assert desc.status is ActivityExecutionStatus.COMPLETED
        assert desc.attempt == 1


async def test_a_completion_racing_a_timeout_across_processes_has_one_outcome(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "returns.log"
    timeout_s = 1.0
    # Most sleeps end near the start_to_close timeout (their completions race
    # it), a few end at once (they must complete) or far beyond it (they must
    # time out). The timeout is fired by other processes than the one that
    # completes: a timer process fires due timers every 10 ms.
    sleeps = [0.0] * 5 + [3.0] * 5 + [0.8 + 0.3 * i / 69 for i in range(70)]
    random.Random(7).shuffle(sleeps)
    with procs.Children(tmp_path) as children:
        timers = children.spawn("timers", "fire-timers", "--url", db_url, "--interval", "0.01")
        await timers.wait_for_line("ready")
        workers = [await children.worker(f"worker-{i}", db_url, task_queue) for i in range(2)]
        handles = await asyncio.gather(
            *(
                client.start_activity(
                    procs.sleep_then_return,
                    args=[str(log), seconds],
                    id=f"race-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(seconds=timeout_s),
                    retry_policy=ONE_ATTEMPT,
                )
                for i, seconds in enumerate(sleeps)
            )
        )
        outcomes = await asyncio.gather(*(outcome(h) for h in handles))
        first_looks = [await h.describe() for h in handles]
        # Stop everything that could still report (a refused late completion).
        for child in [*workers, timers]:
            child.stop()

    returned = {line.split()[1] for line in log.read_text().splitlines()} if log.exists() else set()
    seen: Counter[str] = Counter()
    for handle, seconds, (kind, value), desc in zip(
        handles, sleeps, outcomes, first_looks, strict=True
    ):
        assert desc.attempt == 1
        assert desc.run_state is None
        assert desc.close_time is not None
        if kind == "completed":
            assert value == seconds
            assert desc.status is ActivityExecutionStatus.COMPLETED
            assert handle.id in returned, "COMPLETED but the activity never returned"
        else:
            assert isinstance(value, TimeoutError), value
            assert value.type is TimeoutType.START_TO_CLOSE
            assert desc.status is ActivityExecutionStatus.TIMED_OUT
        seen[desc.status.name] += 1
        # The outcome was final: a look after every process stopped agrees.
        again = await handle.describe()
        assert (again.status, again.close_time) == (desc.status, desc.close_time)
    assert set(seen) == {"COMPLETED", "TIMED_OUT"}, f"the race was never run both ways: {seen}"
    assert await status_counts(client, task_queue) == {
        "Completed": seen["COMPLETED"],
        "TimedOut": seen["TIMED_OUT"],
    }


async def test_a_cancel_racing_a_completion_across_processes_has_one_outcome(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    # Most activities return within about as long after their first heartbeat
    # as a cancel takes to reach them. A few return at once (their first
    # heartbeat is stored only after they returned: they must complete) or run
    # long enough to be cancelled for sure.
    sleeps = [0.0] * 5 + [3.0] * 5 + [0.15 * i / 49 for i in range(50)]
    n = len(sleeps)
    random.Random(11).shuffle(sleeps)
    by_id = {f"cancel-race-{i}": seconds for i, seconds in enumerate(sleeps)}
    cancel_refused: dict[str, bool] = {}

    async def cancel(handle: ActivityHandle[object]) -> None:
        try:
            await handle.cancel("raced")
        except ActivityAlreadyClosedError:
            cancel_refused[handle.id] = True
        else:
            cancel_refused[handle.id] = False

    with procs.Children(tmp_path) as children:
        for i in range(2):
            await children.worker(f"worker-{i}", db_url, task_queue)
        handles = {
            h.id: h
            for h in await asyncio.gather(
                *(
                    client.start_activity(
                        procs.heartbeat_then_sleep,
                        seconds,
                        id=activity_id,
                        task_queue=task_queue,
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=ONE_ATTEMPT,
                    )
                    for activity_id, seconds in by_id.items()
                )
            )
        }
        # Cancel each execution as soon as this process sees its first heartbeat
        # (or sees it closed): the cancel then races the activity's return.
        query = Query(Compare(Field("TaskQueue"), "=", task_queue))
        cancels: dict[str, asyncio.Task[None]] = {}
        deadline = time.monotonic() + CEILING_S
        while len(cancels) < n:
            assert time.monotonic() < deadline, f"only {len(cancels)} of {n} started"
            for record in await client.store.list(client.namespace, query):
                if record.activity_id not in cancels and (
                    record.heartbeat_count >= 1 or not record.is_open
                ):
                    cancels[record.activity_id] = asyncio.ensure_future(
                        cancel(handles[record.activity_id])
                    )
            await asyncio.sleep(0.002)
        await asyncio.gather(*cancels.values())
        outcomes = await asyncio.gather(*(outcome(h) for h in handles.values()))

    seen: Counter[str] = Counter()
    for handle, (kind, value) in zip(handles.values(), outcomes, strict=True):
        desc = await handle.describe()
        assert desc.attempt == 1
        assert desc.run_state is None
        if cancel_refused[handle.id]:
            # The cancel found it closed: nobody else could close it but its return.
            assert kind == "completed"
        if kind == "completed":
            assert value == by_id[handle.id]
            assert desc.status is ActivityExecutionStatus.COMPLETED
        else:
            assert isinstance(value, CancelledError), value
            assert desc.status is ActivityExecutionStatus.CANCELED
            assert desc.canceled_reason == "raced"
        seen[desc.status.name] += 1
    assert set(seen) == {"COMPLETED", "CANCELED"}, f"the race was never run both ways: {seen}"
    assert await status_counts(client, task_queue) == {
        "Completed": seen["COMPLETED"],
        "Canceled": seen["CANCELED"],
    }


async def test_a_bulk_cancel_racing_two_worker_processes_ends_each_execution_once_canceled(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    # Given two worker processes claiming from the queue as their slots free
    # up, each activity running until it is cancelled,
    log = tmp_path / "runs.log"
    n = 600
    with procs.Children(tmp_path) as children:
        for i in range(2):
            await children.worker(f"worker-{i}", db_url, task_queue, max_concurrent=30)
        handles = await asyncio.gather(
            *(
                client.start_activity(
                    procs.heartbeat_until_cancelled,
                    str(log),
                    id=f"bulk-race-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=ONE_ATTEMPT,
                )
                for i in range(n)
            )
        )
        deadline = time.monotonic() + CEILING_S
        while not log.exists() or len(log.read_text().splitlines()) < 30:
            assert time.monotonic() < deadline, "the workers claimed nothing"
            await asyncio.sleep(0.01)
        # when a bulk cancel of the queue runs in small batches (the
        # cancelled attempts free slots, so the workers claim while it runs),
        query = Query(Compare(Field("TaskQueue"), "=", task_queue))
        changed = await client.store.bulk(
            client.namespace, query, "cancel", reason="bulk race", batch=20
        )
        outcomes = await asyncio.gather(*(outcome(h) for h in handles))

    # then every execution was changed once and ended CANCELED: closed at once
    # if still scheduled, or its running attempt interrupted, never run twice.
    assert changed == n
    assert all(kind == "failed" and isinstance(v, CancelledError) for kind, v in outcomes)
    assert await status_counts(client, task_queue) == {"Canceled": n}
    lines = [line.split() for line in log.read_text().splitlines()]
    starts = Counter(activity_id for what, activity_id, _, _ in lines if what == "start")
    cancelled = Counter(activity_id for what, activity_id, _, _ in lines if what == "cancelled")
    assert starts and max(starts.values()) == 1
    assert cancelled == starts
    assert {attempt for _, _, attempt, _ in lines} == {"1"}
    for handle in handles:
        desc = await handle.describe()
        assert desc.canceled_reason == "bulk race"
        attempts = await handle.attempts()
        ran = handle.id in starts
        assert [a.outcome.name for a in attempts] == (["CANCELED"] if ran else [])


@pytest.mark.parametrize("clients", [2, 3])
async def test_the_same_ids_started_from_several_client_processes_run_once_each(
    client: Client, db_url: str, task_queue: str, tmp_path: Path, clients: int
) -> None:
    n = 200
    go = tmp_path / "go"
    with procs.Children(tmp_path) as children:
        starters = [
            children.starter(
                f"starter-{i}", db_url, task_queue, prefix="same", count=n, seed=i, go=go
            )
            for i in range(clients)
        ]
        await procs.all_ready(starters)
        go.touch()
        reports = [json.loads((await s.wait_for_line("{"))[0]) for s in starters]
        for starter in starters:
            assert await starter.wait_exit() == 0, starter.stderr()

    ids = {f"same-{i}" for i in range(n)}
    created: dict[str, str] = {}
    for report in reports:
        assert set(report["created"]) | set(report["refused"]) == ids
        assert not set(report["created"]) & set(report["refused"])
        for activity_id, run_id in report["created"].items():
            assert activity_id not in created, f"{activity_id} was created twice"
            created[activity_id] = run_id
    assert set(created) == ids
    for report in reports:
        for activity_id, run_id in report["refused"].items():
            assert run_id == created[activity_id], "the refusal named another run"
    total_refused = sum(len(r["refused"]) for r in reports)
    assert total_refused == (clients - 1) * n
    assert (await client.count_activities(f"TaskQueue = '{task_queue}'")).count == n
    runs = {e.activity_id: e.activity_run_id async for e in client.list_activities()}
    assert runs == created
