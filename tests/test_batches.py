"""Batch starts (DESIGN §6 "Batches"): ``client.start_activities``, one
transaction per call, all or nothing, on both stores."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from errands import activity, exceptions
from errands.client import ActivityStart, Client
from errands.common import ActivityIDConflictPolicy
from errands.worker import Worker
from tests.support import CEILING_S

TIMEOUT = timedelta(seconds=30)


@activity.defn
async def double(n: int) -> int:
    return 2 * n


async def test_a_batch_starts_every_execution_and_returns_their_handles_in_order(
    client: Client, task_queue: str
) -> None:
    starts = [
        ActivityStart(
            double, [i], id=f"b-{i}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        for i in range(2_000)
    ]
    starts.append(
        ActivityStart("double", [7], id="by-name", task_queue=task_queue, result_type=int,
                      start_to_close_timeout=TIMEOUT)
    )  # fmt: skip
    handles = await client.start_activities(starts)
    assert [h.id for h in handles] == [s.id for s in starts]
    async with Worker(client, task_queue=task_queue, activities=[double]):
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), CEILING_S)

    assert results == [2 * i for i in range(2_000)] + [14]


async def test_an_id_in_use_fails_the_whole_batch_naming_it_and_writes_nothing(
    client: Client, task_queue: str
) -> None:
    await client.start_activity(
        double, 1, id="taken", task_queue=task_queue, start_to_close_timeout=TIMEOUT
    )

    def start(activity_id: str, **options: object) -> ActivityStart:
        return ActivityStart(
            double,
            [1],
            id=activity_id,
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            **options,  # type: ignore[arg-type]
        )

    with pytest.raises(exceptions.ActivityAlreadyStartedError, match="'taken'") as taken:
        await client.start_activities([start("new-1"), start("taken"), start("new-2")])
    with pytest.raises(exceptions.ActivityAlreadyStartedError, match="'twice'"):
        await client.start_activities([start("twice"), start("new-3"), start("twice")])
    after_refusals = (await client.count_activities()).count
    joined = await client.start_activities(
        [start("new-4"), start("taken", id_conflict_policy=ActivityIDConflictPolicy.USE_EXISTING)]
    )
    existing = await client.get_activity_handle("taken").describe()

    assert "nothing was started" in str(taken.value)
    assert after_refusals == 1  # only the first start
    assert [h.id for h in joined] == ["new-4", "taken"]
    assert joined[1].run_id == existing.activity_run_id
    assert (await client.count_activities()).count == 2


async def test_a_bad_start_is_named_by_its_place_and_too_many_are_refused(
    client: Client, task_queue: str
) -> None:
    good = ActivityStart(
        double, [1], id="ok", task_queue=task_queue, start_to_close_timeout=TIMEOUT
    )
    with pytest.raises(ValueError, match=r"start 1 \(id 'no-timeout'\)"):
        await client.start_activities(
            [good, ActivityStart(double, [1], id="no-timeout", task_queue=task_queue)]
        )
    with pytest.raises(TypeError, match=r"start 0 \(id 'too-many'\).*argument"):
        await client.start_activities(
            [ActivityStart(double, [1, 2], id="too-many", task_queue=task_queue,
                           start_to_close_timeout=TIMEOUT)]
        )  # fmt: skip
    with pytest.raises(ValueError, match="at most 10,000"):
        await client.start_activities(
            [ActivityStart(double, [i], id=f"m-{i}", task_queue=task_queue,
                           start_to_close_timeout=TIMEOUT) for i in range(10_001)]
        )  # fmt: skip
    assert (await client.count_activities()).count == 0
