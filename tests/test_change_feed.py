"""The change feed: a committed change reaches the waiters that asked for its
kind and key, in this process and in others, and nobody else; a
cross-process round trip costs the database four round trips.

Given two stores of one database (two connections, as two processes have)
or a worker in a real child process, when a change is committed, then only
the subscribers of its kind and key receive it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest

from errands.client import ActivityExecutionStatus, Client
from errands.common import RetryPolicy
from errands.store import NewExecution, open_store
from errands.store._changes import (
    Change,
    Closed,
    Deadline,
    Interrupted,
    Resync,
    Started,
    Touched,
    queue_bucket,
)
from tests import procs
from tests.support import CEILING_S, describe_until

pytestmark = pytest.mark.timeout(120)

ROUNDS = 12


def _new(task_queue: str, i: int, **kw: float) -> NewExecution:
    return NewExecution(
        namespace="default",
        activity_id=f"feed-{i}",
        run_id=f"feed-run-{task_queue}-{i}",
        activity_type="echo",
        task_queue=task_queue,
        input=b"[]",
        schedule_to_close_s=kw.get("schedule_to_close_s"),
        schedule_to_start_s=kw.get("schedule_to_start_s"),
        start_to_close_s=60.0,
        heartbeat_s=None,
        retry_policy=RetryPolicy(),
        priority_key=3,
    )


async def test_a_start_reaches_the_subscribers_of_its_queue_in_another_store_and_no_other(
    db_url: str, task_queue: str
) -> None:
    # Given two stores of one database, subscribed to two queues
    first, second = await open_store(db_url), await open_store(db_url)
    try:
        mine = second.feed.subscribe(Started, keys=[("default", task_queue)])
        other_queue = second.feed.subscribe(Started, keys=[("default", task_queue + "-b")])
        closes = second.feed.subscribe(Closed, keys=["some-run"])
        for i in range(5):
            # When the first store starts an execution on the queue
            await first.start(_new(task_queue, i))
            # Then the second store's subscriber of that queue hears of it
            changes = await mine.wait(CEILING_S)
            assert Started(("default", task_queue)) in changes
        # And the subscribers of another queue, or of runs, hear nothing: they
        # would have been handed it in the same publish.
        assert other_queue.take() == []
        assert closes.take() == []
    finally:
        await first.close()
        await second.close()


async def test_a_close_reaches_another_store_with_its_outcome_only_for_awaited_runs(
    db_url: str, task_queue: str
) -> None:
    first, second = await open_store(db_url), await open_store(db_url)
    try:
        await first.start(_new(task_queue, 1))
        await first.start(_new(task_queue, 2))
        awaited = second.feed.subscribe(Closed, keys=[f"feed-run-{task_queue}-1"])
        claimed = await first.claim_batch("default", task_queue, max_tasks=2, identity="t")
        assert len(claimed.tasks) == 2
        for task in claimed.tasks:
            await first.complete(task.run_id, task.attempt, b'["done"]')
        changes = await awaited.wait(CEILING_S)
        # Only the awaited run arrives, with its outcome read by the store.
        assert [c.run_id for c in changes if isinstance(c, Closed)] == [f"feed-run-{task_queue}-1"]
        (closed,) = [c for c in changes if isinstance(c, Closed)]
        assert closed.outcome is not None
        assert closed.outcome.result == b'["done"]'
    finally:
        await first.close()
        await second.close()


async def test_a_subscription_to_everything_hears_of_every_close_and_interrupt_elsewhere(
    db_url: str, task_queue: str
) -> None:
    # Given a store that awaits and holds no run, watching everything (as the
    # dashboard does), and a plain subscription to closes beside it
    first, second = await open_store(db_url), await open_store(db_url)
    try:
        everything = second.feed.subscribe(Closed, Interrupted, everything=True)
        plain = second.feed.subscribe(Closed, Interrupted)
        for i in range(3):
            await first.start(_new(task_queue, i))
        claimed = await first.claim_batch("default", task_queue, max_tasks=1, identity="t")
        (task,) = claimed.tasks
        # When another store completes one run and asks to cancel a running one
        await first.complete(task.run_id, task.attempt, b'["done"]')
        await first.start(_new(task_queue, 9))
        (running,) = (
            await first.claim_batch("default", task_queue, max_tasks=1, identity="t")
        ).tasks
        await first.request_cancel("default", running.activity_id, running.run_id, None)
        # Then the subscription to everything hears of both: by run id where the
        # database names it (PostgreSQL), by bucket where it does not (SQLite)
        heard: list[Change] = []

        def of(kind: type) -> bool:
            return any(
                isinstance(c, kind) or (isinstance(c, Touched) and c.kind is kind) for c in heard
            )

        deadline = asyncio.get_running_loop().time() + CEILING_S
        while not (of(Closed) and of(Interrupted)):
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"heard only {heard}"
            heard += await everything.wait(left)
        exact = [c.run_id for c in heard if isinstance(c, Closed)]
        assert exact in ([], [task.run_id])
        # and the plain subscription, which asked for this process's runs, of neither
        assert [c for c in plain.take() if not isinstance(c, Resync)] == []
    finally:
        await first.close()
        await second.close()


async def test_a_timer_in_another_process_fires_a_deadline_it_learnt_from_the_feed(
    db_url: str, client: Client, task_queue: str, tmp_path: Path
) -> None:
    # Given a worker process on another queue (its timers serve the namespace)
    # that would otherwise look for due timers only once a minute
    with procs.Children(tmp_path) as children:
        await children.worker("timers", db_url, task_queue + "-elsewhere")
        # When an execution nobody claims is started with a short
        # schedule_to_start timeout, and nobody here awaits it
        handle = await client.start_activity(
            "echo",
            "x",
            id="unclaimed",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_start_timeout=timedelta(milliseconds=300),
        )
        # Then the worker's timer fires it well before its next routine look
        desc = await describe_until(
            handle,
            lambda d: d.status is ActivityExecutionStatus.TIMED_OUT,
            "the unclaimed execution timed out",
            ceiling_s=20.0,
        )
        assert desc.status is ActivityExecutionStatus.TIMED_OUT


async def test_a_start_deadline_is_announced_to_timers(db_url: str, task_queue: str) -> None:
    first, second = await open_store(db_url), await open_store(db_url)
    try:
        deadlines = second.feed.subscribe(Deadline, keys=["default"])
        await first.start(_new(task_queue, 1, schedule_to_start_s=5.0))
        changes = await deadlines.wait(CEILING_S)
        assert any(isinstance(c, Deadline) for c in changes)
    finally:
        await first.close()
        await second.close()


async def _trips(worker: procs.Child) -> int:
    """The worker process's database round trips so far (it says on SIGUSR1)."""
    said = [line for line in worker.lines() if line.startswith("trips")]
    os.kill(worker.pid, signal.SIGUSR1)
    found = await worker.wait_for_line("trips", count=len(said) + 1)
    print(f"{worker.name}: {found[-1]}")  # what the trips were, should a count be off
    return int(found[-1].split()[1])


async def test_a_round_trip_with_the_worker_in_another_process_costs_four_round_trips(
    db_url: str, task_queue: str, tmp_path: Path
) -> None:
    """The start, the worker's claim, its completion and the client's read of
    the outcome: four transactions or queries, all processes together (the
    waking itself costs none: NOTIFY, or a doorbell and PRAGMA data_version).
    A watcher's routine safety look (every 30 s or more) may fall into one
    round; no other extra is allowed."""
    with procs.Children(tmp_path) as children:
        worker = await children.worker("worker", db_url, task_queue)
        client = await Client.connect(db_url)
        try:
            store = client.store
            for i in range(3):  # warm up both processes
                await client.execute_activity(
                    "echo",
                    "x",
                    id=f"warm-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(seconds=60),
                )
            costs = []
            for i in range(ROUNDS):
                before = store.round_trips + await _trips(worker)
                result = await client.execute_activity(
                    "echo",
                    f"v{i}",
                    id=f"rt-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(seconds=60),
                )
                assert result == f"v{i}"
                await asyncio.sleep(0)
                costs.append(store.round_trips + await _trips(worker) - before)
        finally:
            await client.close()
    assert sum(cost > 4 for cost in costs) <= 1, costs
    assert max(costs) <= 5, costs


async def test_work_on_one_queue_does_not_wake_a_worker_of_another_queue(
    db_url: str, client: Client, task_queue: str, tmp_path: Path
) -> None:
    """A worker process on queue B stays still (no claim, no read) while
    activities run on queue A next to it; only a routine safety look may
    fall into the window."""
    from errands.worker import Worker

    # Queues share a bell when their buckets collide (1 in 64): pick one that does not.
    ns = client.namespace
    other = next(
        f"{task_queue}-b{k}"
        for k in range(1000)
        if queue_bucket((ns, f"{task_queue}-b{k}")) != queue_bucket((ns, task_queue))
    )
    with procs.Children(tmp_path) as children:
        idle = await children.worker("idle", db_url, other)
        async with Worker(client, task_queue=task_queue, activities=[procs.echo]):
            await client.execute_activity(
                "echo",
                "warm",
                id="warm",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=60),
            )
            before = await _trips(idle)
            for i in range(10):
                await client.execute_activity(
                    "echo",
                    f"v{i}",
                    id=f"a-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(seconds=60),
                )
            after = await _trips(idle)
    assert after - before <= 1, (before, after)
