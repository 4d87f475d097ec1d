"""Counts by status, task queue and activity type come from the counts the
store keeps (schema 8's execution_counts, kept by triggers), and always
agree with counting the executions themselves, whatever happened to them.

Given executions taken through every transition (completed, failed and
retried, cancelled, terminated, paused, unpaused, moved to another queue,
pruned) by a worker in another process and by this one, when they are
counted by a query over status, queue and type only, then the counts equal
those of the same query with a condition the kept counts cannot answer
(which counts the rows).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from errands._query import parse_query
from errands.client import ActivityOptionsKeys, Client
from errands.common import RetryPolicy
from errands.store._where import counted
from tests import procs
from tests.support import describe_until

ALWAYS = "Attempt > -1"
"""True of every execution, and not a field the kept counts know."""


async def both(client: Client, query: str, group: str) -> tuple[dict[str, int], dict[str, int]]:
    """(kept counts, counted rows) of ``query`` grouped by ``group``."""
    where = f"({query}) AND " if query else ""
    kept = await client.count_activities(f"{query} GROUP BY {group}")
    rows = await client.count_activities(f"{where}{ALWAYS} GROUP BY {group}")
    assert kept.count == sum(g.count for g in kept.groups)
    return (
        {str(g.group_values[0]): g.count for g in kept.groups},
        {str(g.group_values[0]): g.count for g in rows.groups},
    )


async def agree(client: Client, *queries: str) -> dict[str, int]:
    """Assert the kept counts agree with the rows for every query and
    grouping; the counts by status of the first query."""
    first: dict[str, int] = {}
    for i, query in enumerate(queries):
        for group in ("ExecutionStatus", "TaskQueue", "ActivityType"):
            kept, rows = await both(client, query, group)
            assert kept == rows, (query, group)
            if i == 0 and group == "ExecutionStatus":
                first = kept
    return first


def test_only_queries_over_status_queue_and_type_read_the_kept_counts() -> None:
    assert counted(parse_query(None))
    assert counted(
        parse_query(
            "TaskQueue = 'a' AND (ExecutionStatus IN ('Failed') OR NOT ActivityType != 'x')"
        )
    )
    assert not counted(parse_query("TaskQueue = 'a' AND Attempt > 1"))
    assert not counted(parse_query("ActivityId = 'a'"))


async def test_kept_counts_agree_with_the_rows_through_every_transition(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    other = task_queue + "-other"
    retry = RetryPolicy(initial_interval=timedelta(milliseconds=50))
    with procs.Children(tmp_path) as children:
        await children.worker("worker", db_url, task_queue)
        # completed, and completed after two failures
        for i in range(5):
            assert await client.execute_activity(
                procs.echo,
                str(i),
                id=f"echo-{i}",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=30),
            ) == str(i)
        flaky = await client.start_activity(
            procs.fail_twice_then_wait,
            args=[str(tmp_path / "go"), "x"],
            id="flaky",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=retry,
        )
        await describe_until(flaky, lambda d: d.attempt == 3, "attempt 3")
        await agree(client, "", f"TaskQueue = '{task_queue}'")
        (tmp_path / "go").touch()
        await flaky.result()
    # waiting ones, on a queue no worker serves: paused, unpaused, cancelled,
    # terminated, moved to another queue
    for i in range(6):
        await client.start_activity(
            "idle",
            [i],
            id=f"idle-{i}",
            task_queue=other,
            start_to_close_timeout=timedelta(seconds=30),
        )
    await client.get_activity_handle("idle-0").pause()
    await client.get_activity_handle("idle-1").pause()
    await client.get_activity_handle("idle-1").unpause()
    await client.get_activity_handle("idle-2").cancel()
    await client.get_activity_handle("idle-3").terminate()
    await client.get_activity_handle("idle-4").update_options(
        [ActivityOptionsKeys.task_queue.value_set(task_queue + "-moved")]
    )
    assert await client.pause_activities(f"TaskQueue = '{other}' AND ActivityId = 'idle-5'") == 1
    by_status = await agree(
        client,
        "",
        f"TaskQueue = '{other}'",
        "ExecutionStatus = 'Paused'",
        f"NOT TaskQueue = '{task_queue}' AND ExecutionStatus IN ('Running', 'Canceled')",
    )
    assert by_status == {
        "Running": 2,
        "Completed": 6,
        "Canceled": 1,
        "Terminated": 1,
        "Paused": 2,
    }
    # pruned: the closed ones go, and so do their counts (and the rows of
    # the worker's connection, gone, are folded)
    assert await client.store.prune(client.namespace, time.time() + 60) == 8
    assert await agree(client, "") == {"Running": 2, "Paused": 2}
