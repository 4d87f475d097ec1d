"""The Client and its handles (DESIGN.md §2 "Client", §5): starting, finding and
describing executions, id policies, start delay, priority, argument checks,
worker limits, several workers and namespaces on one store, and store errors.
Everything runs on a real Worker over a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from errands import activity, exceptions
from errands.client import (
    ActivityExecutionStatus,
    ActivityHandle,
    Client,
    PendingActivityState,
)
from errands.common import (
    ActivityIDConflictPolicy,
    ActivityIDReusePolicy,
    Priority,
    RetryPolicy,
)
from errands.store.sqlite import SQLiteStore, _connect
from errands.worker import Worker
from tests.support import TIMEOUT, Probe, describe_until, eventually, failure_of, my_probe


@dataclass
class Greeting:
    text: str
    times: int


# --------------------------------------------------------------------------- activities


@activity.defn
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@activity.defn
async def make_greeting(name: str, times: int) -> Greeting:
    return Greeting(f"Hello, {name}!", times)


@activity.defn(name="untyped-greeting")
async def untyped_greeting(name: str):  # no return annotation: the result stays plain
    return Greeting(f"Hi, {name}!", 2)


@activity.defn
async def echo(value: int) -> int:
    return value


@activity.defn
async def fail_for_good() -> None:
    raise exceptions.ApplicationError("this one fails", non_retryable=True)


@activity.defn
async def heartbeat_then_wait() -> str:
    activity.heartbeat("halfway")
    await my_probe().release.wait()
    return "released"


@activity.defn
async def wait_for_release() -> str:
    await my_probe().release.wait()
    return "released"


@activity.defn
async def record_order(label: str) -> str:
    my_probe().order.append(label)
    return label


@activity.defn
async def record_start() -> float:
    started = time.monotonic()
    my_probe().start_times.append(started)
    return started


@activity.defn
async def count_concurrency() -> None:
    probe = my_probe()
    probe.enter()
    try:
        await asyncio.sleep(0.05)
    finally:
        probe.leave()


@activity.defn
async def add_one(number: int) -> int:
    return number + 1


@activity.defn
async def make_text(size: int) -> str:
    return "y" * size


# --------------------------------------------------------------------------- round trips


async def test_execute_activity_returns_the_result(client: Client, task_queue: str) -> None:
    async with Worker(client, task_queue=task_queue, activities=[greet]):
        result = await client.execute_activity(
            greet, "World", id="greet-1", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert result == "Hello, World!"


async def test_results_are_typed_by_return_annotation_or_result_type(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[make_greeting, untyped_greeting]):
        typed = await client.execute_activity(
            make_greeting,
            args=["Ada", 3],
            id="typed",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        by_name = await client.execute_activity(
            "untyped-greeting",
            "Bo",
            id="by-name",
            task_queue=task_queue,
            result_type=Greeting,
            start_to_close_timeout=TIMEOUT,
        )
        plain = await client.execute_activity(
            "untyped-greeting",
            "Cy",
            id="plain",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        handle_typed = await client.get_activity_handle("by-name", result_type=Greeting).result()

    assert type(typed) is Greeting
    assert typed == Greeting("Hello, Ada!", 3)
    assert type(by_name) is Greeting
    assert by_name == Greeting("Hi, Bo!", 2)
    assert plain == {"text": "Hi, Cy!", "times": 2}
    assert type(handle_typed) is Greeting


async def test_a_handle_by_id_follows_the_latest_run_and_by_run_id_a_given_one(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[echo]):
        first = await client.start_activity(
            echo, 1, id="twice", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert await first.result() == 1
        second = await client.start_activity(
            echo, 2, id="twice", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert await second.result() == 2

    assert first.run_id != second.run_id
    latest = client.get_activity_handle("twice")
    assert latest.id == "twice"
    assert await latest.result() == 2
    assert latest.run_id == second.run_id
    assert (await client.get_activity_handle("twice").describe()).activity_run_id == second.run_id
    earlier = client.get_activity_handle("twice", run_id=first.run_id)
    assert await earlier.result() == 1
    assert (await earlier.describe()).activity_run_id == first.run_id
    with pytest.raises(exceptions.ActivityNotFoundError):
        await client.get_activity_handle("never-started").describe()
    with pytest.raises(exceptions.ActivityNotFoundError):
        await client.get_activity_handle("never-started").result()


async def test_describe_reports_the_execution_while_it_runs_and_after_it_closes(
    client: Client, task_queue: str, probe: Probe
) -> None:
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[heartbeat_then_wait],
        identity="describe-worker",
    ):
        before_start = datetime.now(timezone.utc)
        handle = await client.start_activity(
            heartbeat_then_wait,
            id="described",
            task_queue=task_queue,
            schedule_to_close_timeout=timedelta(seconds=40),
            schedule_to_start_timeout=timedelta(seconds=20),
            start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=timedelta(seconds=25),
            retry_policy=policy,
            priority=Priority(2),
        )
        running = await describe_until(
            handle, lambda d: d.total_heartbeat_count >= 1, "the first heartbeat is stored"
        )
        with_details = await handle.describe(include_heartbeat_details=True)
        probe.release.set()
        assert await handle.result() == "released"

    assert running.activity_id == "described"
    assert running.activity_run_id == handle.run_id
    assert running.activity_type == "heartbeat_then_wait"
    assert running.task_queue == task_queue
    assert running.namespace == "default"
    assert running.status is ActivityExecutionStatus.RUNNING
    assert running.run_state is PendingActivityState.STARTED
    assert running.attempt == 1
    assert running.last_worker_identity == "describe-worker"
    assert running.last_started_time is not None
    assert running.last_started_time >= running.schedule_time >= before_start
    assert running.last_heartbeat_time is not None
    assert running.close_time is None
    assert running.execution_duration is None
    assert running.next_attempt_schedule_time is None
    assert running.schedule_to_close_timeout == timedelta(seconds=40)
    assert running.schedule_to_start_timeout == timedelta(seconds=20)
    assert running.start_to_close_timeout == timedelta(seconds=30)
    assert running.heartbeat_timeout == timedelta(seconds=25)
    assert running.expiration_time == running.schedule_time + timedelta(seconds=40)
    assert running.retry_policy == policy
    assert running.priority == Priority(2)
    assert running.start_delay is None
    assert running.canceled_reason is None
    assert await running.heartbeat_details() == ()
    assert await with_details.heartbeat_details() == ["halfway"]

    closed = await handle.describe()
    assert closed.status is ActivityExecutionStatus.COMPLETED
    assert closed.run_state is None
    assert closed.close_time is not None
    assert abs(closed.execution_duration - (closed.close_time - closed.schedule_time)) < timedelta(
        milliseconds=1
    )
    assert closed.execution_duration > timedelta(0)
    assert closed.last_failure is None


async def test_describe_defaults_start_to_close_to_schedule_to_close(client: Client) -> None:
    handle = await client.start_activity(
        echo, 1, id="defaults", task_queue="unserved", schedule_to_close_timeout=TIMEOUT
    )
    desc = await handle.describe()
    assert desc.start_to_close_timeout == TIMEOUT
    assert desc.schedule_to_close_timeout == TIMEOUT
    assert desc.heartbeat_timeout is None
    assert desc.priority == Priority()
    assert desc.retry_policy == RetryPolicy()
    assert desc.run_state is PendingActivityState.SCHEDULED


# --------------------------------------------------------------------------- id policies


async def test_starting_a_running_id_fails_or_returns_the_running_run(client: Client) -> None:
    first = await client.start_activity(
        echo, 1, id="taken", task_queue="unserved", start_to_close_timeout=TIMEOUT
    )

    with pytest.raises(exceptions.ActivityAlreadyStartedError) as caught:
        await client.start_activity(
            echo, 2, id="taken", task_queue="unserved", start_to_close_timeout=TIMEOUT
        )
    assert caught.value.activity_id == "taken"
    assert caught.value.run_id == first.run_id

    existing = await client.start_activity(
        echo,
        3,
        id="taken",
        task_queue="unserved",
        start_to_close_timeout=TIMEOUT,
        id_conflict_policy=ActivityIDConflictPolicy.USE_EXISTING,
    )
    assert existing.run_id == first.run_id
    assert (await client.count_activities("ActivityId = 'taken'")).count == 1


async def test_the_use_existing_policy_returns_a_started_run_whose_result_it_awaits(
    client: Client, task_queue: str, probe: Probe
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[wait_for_release]):
        first = await client.start_activity(
            wait_for_release, id="started", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await describe_until(
            first, lambda d: d.run_state is PendingActivityState.STARTED, "the run starts"
        )
        again = await client.start_activity(
            wait_for_release,
            id="started",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            id_conflict_policy=ActivityIDConflictPolicy.USE_EXISTING,
        )
        assert again.run_id == first.run_id
        probe.release.set()
        assert await again.result() == "released"


async def _closed_run(client: Client, task_queue: str, activity_id: str, *, fail: bool) -> str:
    if fail:
        handle = await client.start_activity(
            fail_for_good, id=activity_id, task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await failure_of(handle)
    else:
        handle = await client.start_activity(
            echo, 0, id=activity_id, task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await handle.result()
    assert handle.run_id is not None
    return handle.run_id


async def test_id_reuse_policies_decide_whether_a_closed_id_can_start_again(
    client: Client, task_queue: str
) -> None:
    async def start(activity_id: str, policy: ActivityIDReusePolicy) -> ActivityHandle[Any]:
        return await client.start_activity(
            echo,
            1,
            id=activity_id,
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            id_reuse_policy=policy,
        )

    async with Worker(client, task_queue=task_queue, activities=[echo, fail_for_good]):
        completed = await _closed_run(client, task_queue, "completed", fail=False)
        failed = await _closed_run(client, task_queue, "failed", fail=True)

        reused = await start("completed", ActivityIDReusePolicy.ALLOW_DUPLICATE)
        assert reused.run_id != completed
        assert await reused.result() == 1

        completed_again = await _closed_run(client, task_queue, "completed-2", fail=False)
        with pytest.raises(exceptions.ActivityAlreadyStartedError) as caught:
            await start("completed-2", ActivityIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY)
        assert caught.value.run_id == completed_again
        after_failure = await start("failed", ActivityIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY)
        assert after_failure.run_id != failed
        assert await after_failure.result() == 1

        rejected_ids = {
            "completed-3": await _closed_run(client, task_queue, "completed-3", fail=False),
            "failed-3": await _closed_run(client, task_queue, "failed-3", fail=True),
        }
        for activity_id, run_id in rejected_ids.items():
            with pytest.raises(exceptions.ActivityAlreadyStartedError) as caught:
                await start(activity_id, ActivityIDReusePolicy.REJECT_DUPLICATE)
            assert caught.value.run_id == run_id

    counts = {
        activity_id: (await client.count_activities(f"ActivityId = '{activity_id}'")).count
        for activity_id in ("completed", "completed-2", "failed", "completed-3", "failed-3")
    }
    assert counts == {
        "completed": 2,
        "completed-2": 1,
        "failed": 2,
        "completed-3": 1,
        "failed-3": 1,
    }


# --------------------------------------------------------------------------- start delay, priority


async def test_a_start_delay_holds_the_execution_back_until_it_passes(
    client: Client, task_queue: str
) -> None:
    delay = timedelta(milliseconds=700)
    async with Worker(client, task_queue=task_queue, activities=[echo]):
        handle = await client.start_activity(
            echo,
            5,
            id="delayed",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            start_delay=delay,
        )
        waiting = await handle.describe()
        seen_at = datetime.now(timezone.utc)
        assert await handle.result() == 5

    assert waiting.status is ActivityExecutionStatus.RUNNING
    assert waiting.run_state is PendingActivityState.SCHEDULED
    assert waiting.start_delay == delay
    assert waiting.next_attempt_schedule_time is not None
    assert waiting.next_attempt_schedule_time > seen_at
    expected_ready = waiting.schedule_time + delay
    assert abs(waiting.next_attempt_schedule_time - expected_ready) < timedelta(milliseconds=1)
    assert waiting.last_started_time is None
    done = await handle.describe()
    assert done.last_started_time is not None
    assert done.last_started_time >= done.schedule_time + delay - timedelta(milliseconds=1)


async def test_a_smaller_priority_key_runs_first_and_one_key_runs_in_order(
    client: Client, task_queue: str, probe: Probe
) -> None:
    keys = [5, None, 1, 3, 1, 2, 5, None, 2, 1]
    handles = []
    for n, key in enumerate(keys):
        handles.append(
            await client.start_activity(
                record_order,
                f"{key}-{n}",
                id=f"prio-{n}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                priority=Priority(key),
            )
        )
    async with Worker(
        client, task_queue=task_queue, activities=[record_order], max_concurrent_activities=1
    ):
        for handle in handles:
            await handle.result()

    effective = [Priority.DEFAULT_KEY if key is None else key for key in keys]
    expected = [f"{keys[n]}-{n}" for n in sorted(range(len(keys)), key=lambda n: effective[n])]
    assert probe.order == expected


# --------------------------------------------------------------------------- validation


async def test_a_start_without_timeouts_is_refused(client: Client) -> None:
    with pytest.raises(ValueError, match="timeout"):
        await client.start_activity(echo, 1, id="no-timeouts", task_queue="q")
    assert (await client.count_activities()).count == 0


async def test_the_wrong_number_of_arguments_is_refused_at_start(client: Client) -> None:
    with pytest.raises(TypeError, match="greet"):
        await client.start_activity(
            greet, args=["a", "b"], id="too-many", task_queue="q", start_to_close_timeout=TIMEOUT
        )
    with pytest.raises(TypeError, match="greet"):
        await client.start_activity(
            greet, id="too-few", task_queue="q", start_to_close_timeout=TIMEOUT
        )
    assert (await client.count_activities()).count == 0


async def test_an_argument_of_the_wrong_type_fails_the_attempt_for_good(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[add_one]):
        handle = await client.start_activity(
            add_one,
            "not a number",
            id="wrong-type",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)),
        )
        failure = await failure_of(handle)

    assert isinstance(failure, exceptions.ApplicationError)
    assert failure.non_retryable
    assert "add_one" in failure.message
    assert "number" in failure.message
    desc = await handle.describe()
    assert desc.status is ActivityExecutionStatus.FAILED
    assert desc.attempt == 1


async def test_an_argument_that_cannot_be_converted_is_refused_at_start(client: Client) -> None:
    with pytest.raises(TypeError, match="echo"):
        await client.start_activity(
            echo, object(), id="unconvertible", task_queue="q", start_to_close_timeout=TIMEOUT
        )
    assert (await client.count_activities()).count == 0


async def test_arguments_over_the_payload_limit_are_refused_and_nothing_is_stored(
    db_url: str,
) -> None:
    async with await Client.connect(db_url, max_payload_bytes=1000) as small:
        with pytest.raises(ValueError, match="1000"):
            await small.start_activity(
                greet, "x" * 2000, id="too-big", task_queue="q", start_to_close_timeout=TIMEOUT
            )
        assert (await small.count_activities()).count == 0
        fits = await small.start_activity(
            greet, "x" * 500, id="fits", task_queue="q", start_to_close_timeout=TIMEOUT
        )
        assert (await fits.describe()).run_state is PendingActivityState.SCHEDULED


async def test_a_result_over_the_payload_limit_fails_the_attempt_for_good(
    db_url: str, task_queue: str
) -> None:
    async with await Client.connect(db_url, max_payload_bytes=1000) as small:
        async with Worker(small, task_queue=task_queue, activities=[make_text]):
            fine = await small.execute_activity(
                make_text, 10, id="small", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            handle = await small.start_activity(
                make_text,
                5000,
                id="huge",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)),
            )
            failure = await failure_of(handle)
        desc = await handle.describe()

    assert fine == "y" * 10
    assert isinstance(failure, exceptions.ApplicationError)
    assert failure.non_retryable
    assert "1000" in failure.message
    assert desc.status is ActivityExecutionStatus.FAILED
    assert desc.attempt == 1


# --------------------------------------------------------------------------- worker limits


async def test_max_concurrent_activities_is_never_exceeded(
    client: Client, task_queue: str, probe: Probe
) -> None:
    handles = [
        await client.start_activity(
            count_concurrency, id=f"slot-{n}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        for n in range(12)
    ]
    async with Worker(
        client, task_queue=task_queue, activities=[count_concurrency], max_concurrent_activities=3
    ):
        for handle in handles:
            await handle.result()
    assert probe.most_running == 3


def assert_rate_limited(starts: list[float], rate: float, burst: float) -> None:
    """No more starts by any moment than the bucket allows (with 0.15 s slack),
    and not absurdly slower than the rate either."""
    starts = sorted(starts)
    for n, started in enumerate(starts, start=1):
        earliest = (n - burst) / rate
        assert started - starts[0] >= earliest - 0.15, (n, started - starts[0], earliest)
    assert starts[-1] - starts[0] < 10 * (len(starts) - burst) / rate + 2.0


async def test_max_activities_per_second_limits_the_start_rate(
    client: Client, task_queue: str, probe: Probe
) -> None:
    rate, count = 10.0, 17
    handles = [
        await client.start_activity(
            record_start, id=f"rate-{n}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        for n in range(count)
    ]
    async with Worker(
        client, task_queue=task_queue, activities=[record_start], max_activities_per_second=rate
    ):
        for handle in handles:
            await handle.result()
    assert len(probe.start_times) == count
    assert_rate_limited(probe.start_times, rate, burst=rate)
    assert max(probe.start_times) - min(probe.start_times) >= 0.5


async def test_the_task_queue_rate_is_shared_by_all_its_workers(
    db_url: str, task_queue: str, probe: Probe
) -> None:
    rate, count = 10.0, 17
    async with await Client.connect(db_url) as one, await Client.connect(db_url) as two:
        handles = [
            await one.start_activity(
                record_start, id=f"qrate-{n}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            for n in range(count)
        ]
        async with (
            Worker(
                one,
                task_queue=task_queue,
                activities=[record_start],
                max_task_queue_activities_per_second=rate,
            ),
            Worker(
                two,
                task_queue=task_queue,
                activities=[record_start],
                max_task_queue_activities_per_second=rate,
            ),
        ):
            for handle in handles:
                await handle.result()
    assert len(probe.start_times) == count
    assert_rate_limited(probe.start_times, rate, burst=rate)
    assert max(probe.start_times) - min(probe.start_times) >= 0.5


# --------------------------------------------------------------------------- sharing a store


async def test_two_workers_on_one_store_both_take_work(
    db_url: str, task_queue: str, probe: Probe
) -> None:
    async with await Client.connect(db_url) as one, await Client.connect(db_url) as two:
        handles = [
            await one.start_activity(
                wait_for_release,
                id=f"shared-{n}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            for n in range(4)
        ]
        async with (
            Worker(
                one,
                task_queue=task_queue,
                activities=[wait_for_release],
                max_concurrent_activities=2,
                identity="worker-one",
            ),
            Worker(
                two,
                task_queue=task_queue,
                activities=[wait_for_release],
                max_concurrent_activities=2,
                identity="worker-two",
            ),
        ):

            async def all_started() -> bool:
                descs = [await h.describe() for h in handles]
                return all(d.run_state is PendingActivityState.STARTED for d in descs)

            await eventually(all_started, "each worker takes two activities")
            probe.release.set()
            for handle in handles:
                assert await handle.result() == "released"
        identities = [(await h.describe()).last_worker_identity for h in handles]

    assert sorted(identities) == ["worker-one", "worker-one", "worker-two", "worker-two"]


async def test_namespaces_keep_ids_lists_and_claims_apart(db_url: str, task_queue: str) -> None:
    async with (
        await Client.connect(db_url, namespace="alpha") as alpha,
        await Client.connect(db_url, namespace="beta") as beta,
    ):
        a = await alpha.start_activity(
            echo, 1, id="same-id", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        b = await beta.start_activity(
            echo, 2, id="same-id", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert a.run_id != b.run_id
        await beta.start_activity(
            echo, 3, id="beta-only", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )

        async with Worker(alpha, task_queue=task_queue, activities=[echo]):
            assert await a.result() == 1
        in_beta = await b.describe()
        assert in_beta.namespace == "beta"
        assert in_beta.run_state is PendingActivityState.SCHEDULED

        assert [e.activity_run_id async for e in alpha.list_activities()] == [a.run_id]
        assert {e.activity_id async for e in beta.list_activities()} == {"same-id", "beta-only"}
        assert (await alpha.count_activities()).count == 1
        assert (await beta.count_activities()).count == 2
        with pytest.raises(exceptions.ActivityNotFoundError):
            await alpha.get_activity_handle("beta-only").describe()
        with pytest.raises(exceptions.ActivityNotFoundError):
            await alpha.get_activity_handle("same-id", run_id=b.run_id).describe()


# --------------------------------------------------------------------------- store errors


async def test_a_store_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(exceptions.StoreError):
        await Client.connect(f"sqlite:///{tmp_path / 'missing' / 'errands.db'}")
    assert not (tmp_path / "missing").exists()


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not an SQLite file, just some text\n" * 200)
    with pytest.raises(exceptions.StoreError) as caught:
        await Client.connect(f"sqlite:///{path}")
    assert isinstance(caught.value.__cause__, sqlite3.Error)


async def test_an_unknown_url_scheme_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="mysql"):
        await Client.connect("mysql://localhost/errands")


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_every_store_connection_uses_synchronous_full(client: Client, db_path: Path) -> None:
    # Note: SQLite builds compiled with DEFAULT_SYNCHRONOUS=2 (FULL) already
    # default to it, so there this catches only a store that lowers it.
    store = client.store
    assert isinstance(store, SQLiteStore)
    full = 2

    def pragma(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    # The writer's and the reader's own connections, each on its own thread.
    assert await store._op(lambda tx: pragma(tx.cursor)) == full
    assert await store._read(lambda tx: pragma(tx.cursor)) == full
    # Every connection the store opens later (a reader thread's, say) comes from
    # the same function: a fresh one is FULL too.
    fresh = _connect(str(db_path))
    try:
        assert pragma(fresh) == full
    finally:
        fresh.close()
