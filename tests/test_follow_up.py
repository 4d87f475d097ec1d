"""A worker whose slots are all taken claims the next task for the slot an
attempt frees inside that attempt's completion: one transaction for both
instead of a completion and then a claim (the store's follow-up claim).

Given a backlog on a queue and a worker with one slot, when it works through
the backlog, then each completion's transaction also claims the next task,
every task runs once, and a completion that is refused as stale still hands
its slot on.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from errands import activity
from errands.client import ActivityExecutionStatus, ActivityStart, Client
from errands.worker import Worker
from tests.support import CEILING_S

pytestmark = pytest.mark.timeout(120)

TIMEOUT = timedelta(seconds=60)
BACKLOG = 20

ran: list[int] = []


@activity.defn
async def count(i: int) -> int:
    ran.append(i)
    return i


def _claim_transactions(before: dict[str, int], after: dict[str, int]) -> int:
    """Writer transactions, between two readings of round_trip_kinds, that
    claimed without completing anything."""
    return sum(
        n - before.get(kind, 0)
        for kind, n in after.items()
        if "claim" in kind.split("+") and "complete" not in kind.split("+")
    )


async def test_a_full_worker_claims_each_next_task_in_the_completion_that_frees_its_slot(
    db_url: str, task_queue: str
) -> None:
    ran.clear()
    client = await Client.connect(db_url)
    try:
        handles = await client.start_activities(
            [
                ActivityStart(count, [i], id=f"backlog-{i}", task_queue=task_queue,
                              start_to_close_timeout=TIMEOUT)
                for i in range(BACKLOG)
            ]
        )  # fmt: skip
        store = client.store
        before = dict(store.round_trip_kinds)
        async with Worker(
            client, task_queue=task_queue, activities=[count], max_concurrent_activities=1
        ):
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), CEILING_S
            )
        after = dict(store.round_trip_kinds)
    finally:
        await client.close()
    assert results == list(range(BACKLOG))
    assert sorted(ran) == list(range(BACKLOG)), "a task ran twice, or not at all"
    # The first task needs a claim of its own, and the worker may look once
    # more as the backlog runs out; every other task came with a completion.
    claims = _claim_transactions(before, after)
    assert claims <= 3, f"{claims} transactions claimed alone: {after}"


async def test_a_completion_refused_as_stale_still_hands_its_slot_to_the_next_task(
    db_url: str, task_queue: str
) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    @activity.defn(name="held")
    async def held() -> str:
        started.set()
        await gate.wait()
        return "late"

    @activity.defn(name="next")
    async def next_one() -> str:
        return "next"

    client = await Client.connect(db_url)
    try:
        async with Worker(
            client, task_queue=task_queue, activities=[held, next_one], max_concurrent_activities=1
        ):
            first = await client.start_activity(
                held, id="held", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            await asyncio.wait_for(started.wait(), CEILING_S)
            queued = await client.start_activity(
                next_one, id="next", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            # The held attempt is terminated: its completion will be stale.
            await first.terminate("to make its completion stale")
            gate.set()
            assert await asyncio.wait_for(queued.result(), CEILING_S) == "next"
            desc = await first.describe()
            assert desc.status is ActivityExecutionStatus.TERMINATED
    finally:
        await client.close()
