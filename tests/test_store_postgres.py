"""The PostgreSQL store on a real server (DESIGN.md section 5, "PostgreSQL").

Every test gets its own schema (``?schema=`` in the URL), dropped at the end.
The server is $ERRANDS_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test);
when it cannot be reached the tests skip, unless ERRANDS_REQUIRE_PG=1 (CI), where
they fail.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from errands import activity
from errands.client import ActivityExecutionStatus, ActivityFailedError, Client
from errands.common import Priority, RetryPolicy
from errands.exceptions import (
    ActivityAlreadyStartedError,
    ApplicationError,
    CancelledError,
    StoreError,
    TerminatedError,
    TimeoutError,
    TimeoutType,
)
from errands.store import NewExecution, Store, open_store
from errands.store._changes import Started
from errands.store._migrations import migrations
from errands.worker import Worker
from tests import procs
from tests.conftest import admin, psycopg, with_params
from tests.support import CEILING_S, eventually

_schemas = itertools.count()


def terminate_backends(schema: str) -> int:
    """pg_terminate_backend every connection the stores of ``schema`` hold (the
    store names them ``errands:<schema>``); how many there were."""
    rows = admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        (f"errands:{schema}",),
    )
    return len(rows)


# --------------------------------------------------------------------------- activities

_calls: Counter[str] = Counter()
_seen: dict[str, list[tuple[int, float]]] = {}


@activity.defn
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@activity.defn
async def fail_twice(key: str) -> int:
    """Fails attempts 1 and 2 (noting when each ran), returns the attempt number."""
    info = activity.info()
    _seen.setdefault(key, []).append((info.attempt, time.time()))
    if info.attempt < 3:
        raise ApplicationError(f"attempt {info.attempt} fails")
    return info.attempt


@activity.defn
async def hang_unless_retried() -> int:
    """Attempt 1 sleeps for an hour without heartbeating; later attempts return."""
    info = activity.info()
    if info.attempt == 1:
        await asyncio.sleep(3600)
    return info.attempt


_stopped: dict[str, activity.ActivityCancellationDetails | None] = {}


@activity.defn
async def heartbeat_forever() -> None:
    """Heartbeats every 50 ms until it is cancelled; notes why it was."""
    try:
        while True:
            activity.heartbeat("alive")
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        _stopped[activity.info().activity_id] = activity.cancellation_details()
        raise


@activity.defn
async def count_and_sleep(key: str, seconds: float) -> str:
    """Counts its runs per key, sleeps, returns the key."""
    _calls[key] += 1
    await asyncio.sleep(seconds)
    return key


# --------------------------------------------------------------------------- connect and migrate


async def test_connecting_twice_migrates_once_and_keeps_the_executions(
    pg_url: str, pg_schema: str, task_queue: str
) -> None:
    first = await Client.connect(pg_url)
    try:
        handle = await first.start_activity(
            greet, "x", id="kept", task_queue=task_queue, start_to_close_timeout=timedelta(1)
        )
    finally:
        await first.close()
    second = await Client.connect(pg_url)
    try:
        desc = await second.get_activity_handle("kept").describe()
    finally:
        await second.close()

    assert desc.activity_run_id == handle.run_id
    assert desc.status is ActivityExecutionStatus.RUNNING
    versions = admin(f'SELECT version, name FROM "{pg_schema}".errands_schema ORDER BY version')
    assert versions == [(version, name) for version, name, _ in migrations("postgres")]
    tables = {
        name
        for (name,) in admin(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (pg_schema,),
        )
    }
    assert tables == {
        "errands_schema",
        "executions",
        "queue_rates",
        "attempts",
        "owners",
        "workers",
        "search_attribute_names",
        "search_attributes",
        "execution_counts",
    }


async def test_many_processes_connecting_to_a_new_schema_at_once_all_succeed(
    pg_url: str, pg_schema: str, tmp_path: Path, task_queue: str
) -> None:
    go = tmp_path / "go"
    with procs.Children(tmp_path) as children:
        kids = [children.connector(f"connect-{i}", pg_url, task_queue, go) for i in range(6)]
        await procs.all_ready(kids)
        assert admin("SELECT 1 FROM pg_namespace WHERE nspname = %s", (pg_schema,)) == []
        go.touch()
        lines = [(await kid.wait_for_line("ok"))[0] for kid in kids]

    assert len({line.split()[1] for line in lines}) == 6, lines
    assert admin(f'SELECT version FROM "{pg_schema}".errands_schema ORDER BY version') == [
        (version,) for version, _, _ in migrations("postgres")
    ]
    assert admin(f'SELECT count(*) FROM "{pg_schema}".executions') == [(6,)]


async def test_a_schema_newer_than_the_code_is_a_store_error(pg_url: str, pg_schema: str) -> None:
    client = await Client.connect(pg_url)
    await client.close()
    admin(
        f'INSERT INTO "{pg_schema}".errands_schema (version, name, applied) '
        "VALUES (99, '0099_future.sql', 0)"
    )

    with pytest.raises(StoreError, match="schema version 99, newer than this errands"):
        await Client.connect(pg_url)


async def test_a_missing_database_is_a_store_error(pg_server: str) -> None:
    parts = urllib.parse.urlsplit(pg_server)
    missing = urllib.parse.urlunsplit(parts._replace(path=f"/errands_missing_{uuid.uuid4().hex}"))

    with pytest.raises(StoreError, match="does not exist") as raised:
        await Client.connect(missing)
    assert isinstance(raised.value.__cause__, psycopg.Error)


async def test_a_schema_name_that_is_not_a_plain_identifier_is_refused(pg_server: str) -> None:
    with pytest.raises(ValueError, match="not a lower-case identifier"):
        await Client.connect(with_params(pg_server, schema='x"; DROP TABLE y; --'))


async def test_the_url_selects_the_schema_and_stores_in_two_schemas_do_not_see_each_other(
    pg_server: str, task_queue: str
) -> None:
    names = [f"errands_t{os.getpid()}_{next(_schemas)}_{uuid.uuid4().hex[:6]}" for _ in "ab"]
    clients: list[Client] = []
    try:
        for name in names:
            clients.append(await Client.connect(with_params(pg_server, schema=name)))
        await clients[0].start_activity(
            greet, "a", id="only-in-a", task_queue=task_queue, start_to_close_timeout=timedelta(1)
        )
        counts = [(await c.count_activities()).count for c in clients]
    finally:
        for c in clients:
            await c.close()
        for name in names:
            admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    assert counts == [1, 0]


# --------------------------------------------------------------------------- the lifecycle


async def test_an_activity_runs_end_to_end_through_client_and_worker(
    pg_client: Client, task_queue: str
) -> None:
    async with Worker(pg_client, task_queue=task_queue, activities=[greet], identity="w-1"):
        result = await asyncio.wait_for(
            pg_client.execute_activity(
                greet,
                "World",
                id="greet-1",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=10),
            ),
            CEILING_S,
        )
    desc = await pg_client.get_activity_handle("greet-1").describe()

    assert result == "Hello, World!"
    assert desc.status is ActivityExecutionStatus.COMPLETED
    assert desc.attempt == 1
    assert desc.last_worker_identity == "w-1"
    assert desc.close_time is not None and desc.last_started_time is not None
    assert desc.schedule_time <= desc.last_started_time <= desc.close_time


async def test_a_failing_activity_is_retried_with_backoff_until_it_succeeds(
    pg_client: Client, task_queue: str
) -> None:
    key = f"retry-{uuid.uuid4().hex}"
    policy = RetryPolicy(initial_interval=timedelta(seconds=0.2), backoff_coefficient=2.0)
    async with Worker(pg_client, task_queue=task_queue, activities=[fail_twice]):
        result = await asyncio.wait_for(
            pg_client.execute_activity(
                fail_twice,
                key,
                id=key,
                task_queue=task_queue,
                retry_policy=policy,
                start_to_close_timeout=timedelta(seconds=10),
            ),
            CEILING_S,
        )
    desc = await pg_client.get_activity_handle(key).describe(include_last_failure=True)

    assert result == 3
    runs = _seen[key]
    assert [attempt for attempt, _ in runs] == [1, 2, 3]
    # Backoff 0.2 s then 0.4 s, measured between the attempts' starts.
    assert runs[1][1] - runs[0][1] >= 0.2
    assert runs[2][1] - runs[1][1] >= 0.4
    assert desc.attempt == 3
    assert desc.current_retry_interval == timedelta(seconds=0.4)
    assert isinstance(desc.last_failure, ApplicationError)


async def test_a_start_to_close_timeout_ends_the_attempt_and_the_retry_completes(
    pg_client: Client, task_queue: str
) -> None:
    async with Worker(pg_client, task_queue=task_queue, activities=[hang_unless_retried]):
        result = await asyncio.wait_for(
            pg_client.execute_activity(
                hang_unless_retried,
                id="hang",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=0.5),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.1)),
            ),
            CEILING_S,
        )
    desc = await pg_client.get_activity_handle("hang").describe()

    assert result == 2
    assert desc.attempt == 2
    assert desc.last_started_time is not None
    # Attempt 2 started after attempt 1's 0.5 s ran out and the 0.1 s backoff.
    assert (desc.last_started_time - desc.schedule_time).total_seconds() >= 0.6


async def test_deadlines_follow_the_database_clock_not_the_clients(
    pg_client: Client, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a client whose clock runs an hour ahead (and no worker at all)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600.0)
    (db_before,) = admin("SELECT extract(epoch FROM clock_timestamp())::float8")[0]
    # When it starts an activity with a 0.5 s schedule_to_close timeout
    handle = await pg_client.start_activity(
        greet,
        "late",
        id="s2c",
        task_queue=task_queue,
        schedule_to_close_timeout=timedelta(seconds=0.5),
    )
    (db_after,) = admin("SELECT extract(epoch FROM clock_timestamp())::float8")[0]
    # Then result() (which fires its execution's due timers) sees it time out
    # 0.5 s after a schedule time stamped by the database
    with pytest.raises(ActivityFailedError) as failed:
        await asyncio.wait_for(handle.result(), CEILING_S)
    desc = await handle.describe()

    assert isinstance(failed.value.cause, TimeoutError)
    assert failed.value.cause.type is TimeoutType.SCHEDULE_TO_CLOSE
    assert db_before <= desc.schedule_time.timestamp() <= db_after
    assert desc.close_time is not None
    assert 0.5 <= (desc.close_time - desc.schedule_time).total_seconds() < 5.0


async def test_a_cancel_reaches_a_heartbeating_activity_in_another_process_promptly(
    pg_client: Client, pg_url: str, task_queue: str, tmp_path: Path
) -> None:
    # The worker is another process: only NOTIFY (or a 1 s poll) can tell it.
    delays = []
    with procs.Children(tmp_path) as children:
        await children.worker("worker", pg_url, task_queue)
        for i in range(5):
            handle = await pg_client.start_activity(
                procs.heartbeat_then_sleep,
                60.0,
                id=f"cancel-{i}",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=120),
            )

            async def heartbeated(handle: Any = handle) -> bool:
                return (await handle.describe()).total_heartbeat_count >= 1

            await eventually(heartbeated, "the activity heartbeated")
            began = time.monotonic()
            await handle.cancel()
            with pytest.raises(ActivityFailedError) as failed:
                await asyncio.wait_for(handle.result(), CEILING_S)
            delays.append(time.monotonic() - began)
            assert isinstance(failed.value.cause, CancelledError)
            assert (await handle.describe()).status is ActivityExecutionStatus.CANCELED

    # A 1 s poll would make some of five deliveries take over half a second.
    assert max(delays) < 0.5, delays


async def test_terminate_closes_a_running_activity_and_stops_it(
    pg_client: Client, task_queue: str
) -> None:
    activity_id = f"term-{uuid.uuid4().hex}"
    async with Worker(pg_client, task_queue=task_queue, activities=[heartbeat_forever]):
        handle = await pg_client.start_activity(
            heartbeat_forever,
            id=activity_id,
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=60),
        )

        async def started() -> bool:
            return (await handle.describe()).total_heartbeat_count >= 1

        async def stopped() -> bool:
            return activity_id in _stopped

        await eventually(started, "the activity heartbeated")
        await handle.terminate("enough")
        with pytest.raises(ActivityFailedError) as failed:
            await asyncio.wait_for(handle.result(), CEILING_S)
        # The worker learns of it (from the interrupt log) and stops the attempt.
        await eventually(stopped, "the activity was cancelled")
    desc = await handle.describe()

    assert isinstance(failed.value.cause, TerminatedError)
    assert desc.status is ActivityExecutionStatus.TERMINATED
    assert desc.canceled_reason == "enough"
    details = _stopped[activity_id]
    assert details is not None and details.not_found


async def test_two_processes_starting_the_same_ids_create_each_exactly_once(
    pg_client: Client, pg_url: str, task_queue: str, tmp_path: Path
) -> None:
    n = 60
    go = tmp_path / "go"
    with procs.Children(tmp_path) as children:
        kids = [
            children.starter(
                f"starter-{seed}", pg_url, task_queue, prefix="same", count=n, seed=seed, go=go
            )
            for seed in (1, 2)
        ]
        await procs.all_ready(kids)
        go.touch()
        reports = [json.loads((await kid.wait_for_line("{"))[0]) for kid in kids]

    created: dict[str, str] = {}
    for report in reports:
        for activity_id, run_id in report["created"].items():
            assert activity_id not in created, f"{activity_id} was created twice"
            created[activity_id] = run_id
    assert set(created) == {f"same-{i}" for i in range(n)}
    for report in reports:
        for activity_id, run_id in report["refused"].items():
            assert run_id == created[activity_id]
    assert (await pg_client.count_activities(f"TaskQueue = '{task_queue}'")).count == n


async def test_a_start_with_a_running_id_fails_or_returns_the_running_one(
    pg_client: Client, task_queue: str
) -> None:
    first = await pg_client.start_activity(
        greet, "a", id="dup", task_queue=task_queue, start_to_close_timeout=timedelta(1)
    )
    with pytest.raises(ActivityAlreadyStartedError) as refused:
        await pg_client.start_activity(
            greet, "b", id="dup", task_queue=task_queue, start_to_close_timeout=timedelta(1)
        )
    from errands.common import ActivityIDConflictPolicy

    existing = await pg_client.start_activity(
        greet,
        "c",
        id="dup",
        task_queue=task_queue,
        start_to_close_timeout=timedelta(1),
        id_conflict_policy=ActivityIDConflictPolicy.USE_EXISTING,
    )
    assert refused.value.run_id == first.run_id
    assert existing.run_id == first.run_id


# --------------------------------------------------------------------------- visibility


async def test_list_and_count_filter_by_id_type_queue_and_status(
    pg_client: Client, task_queue: str
) -> None:
    other_queue = f"{task_queue}-other"
    for i in range(3):
        await pg_client.start_activity(
            greet,
            str(i),
            id=f"greet-{i}",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(1),
        )
    await pg_client.start_activity(
        "other-type", id="odd-1", task_queue=other_queue, start_to_close_timeout=timedelta(1)
    )
    await pg_client.get_activity_handle("greet-0").terminate()
    await pg_client.get_activity_handle("greet-1").cancel()

    ids = [e.activity_id async for e in pg_client.list_activities()]
    greets = [
        e.activity_id async for e in pg_client.list_activities("ActivityId STARTS_WITH 'greet-'")
    ]
    running = [
        e.activity_id
        async for e in pg_client.list_activities(
            f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
        )
    ]
    not_greet = [e.activity_id async for e in pg_client.list_activities("ActivityType != 'greet'")]
    newest_two = [e.activity_id async for e in pg_client.list_activities(limit=2)]
    grouped = await pg_client.count_activities("GROUP BY ExecutionStatus")
    in_queue = await pg_client.count_activities(f"TaskQueue = '{task_queue}'")

    assert ids == ["odd-1", "greet-2", "greet-1", "greet-0"]  # newest first
    assert greets == ["greet-2", "greet-1", "greet-0"]
    assert running == ["greet-2"]
    assert not_greet == ["odd-1"]
    assert newest_two == ["odd-1", "greet-2"]
    assert grouped.count == 4
    assert {g.group_values[0]: g.count for g in grouped.groups} == {
        "Running": 2,
        "Canceled": 1,
        "Terminated": 1,
    }
    assert in_queue.count == 3 and in_queue.groups == []


async def test_prune_deletes_closed_executions_in_batches_and_keeps_running_ones(
    pg_client: Client, task_queue: str
) -> None:
    for i in range(25):
        handle = await pg_client.start_activity(
            greet, str(i), id=f"p-{i}", task_queue=task_queue, start_to_close_timeout=timedelta(1)
        )
        if i < 20:
            await handle.terminate()

    pruned = await pg_client.store.prune(pg_client.namespace, time.time() + 3600, batch=7)

    assert pruned == 20
    assert (await pg_client.count_activities()).count == 5
    assert (await pg_client.count_activities("ExecutionStatus = 'Running'")).count == 5


# --------------------------------------------------------------------------- claims


def _new(task_queue: str, i: int, priority_key: int = 3) -> NewExecution:
    return NewExecution(
        namespace="default",
        activity_id=f"c-{i}",
        run_id=str(uuid.uuid4()),
        activity_type="greet",
        task_queue=task_queue,
        input=b"[]",
        schedule_to_close_s=None,
        schedule_to_start_s=None,
        start_to_close_s=60.0,
        heartbeat_s=None,
        retry_policy=RetryPolicy(),
        priority_key=priority_key,
    )


async def test_claims_take_the_smallest_priority_key_first_then_in_start_order(
    pg_client: Client, task_queue: str
) -> None:
    store = pg_client.store
    for i, key in enumerate([3, 3, 1, 5, 1]):
        await store.start(_new(task_queue, i, key))

    first = await store.claim_batch("default", task_queue, max_tasks=3, identity="w")
    rest = await store.claim_batch("default", task_queue, max_tasks=10, identity="w")

    assert [t.activity_id for t in first.tasks] == ["c-2", "c-4", "c-0"]
    assert first.next_ready_at is None  # the claim filled its slots
    assert [t.activity_id for t in rest.tasks] == ["c-1", "c-3"]
    assert all(t.attempt == 1 for t in first.tasks + rest.tasks)


async def test_two_stores_claiming_concurrently_never_hand_out_a_task_twice(
    pg_client: Client, pg_url: str, task_queue: str
) -> None:
    n = 600
    for at in range(0, n, 100):
        await asyncio.gather(
            *(pg_client.store.start(_new(task_queue, i)) for i in range(at, at + 100))
        )
    stores: list[Store] = [await open_store(pg_url) for _ in range(2)]
    claimed: list[list[str]] = [[], []]

    async def claim_all(k: int) -> None:
        idle = 0
        while idle < 3:
            result = await stores[k].claim_batch(
                "default", task_queue, max_tasks=7, identity=str(k)
            )
            claimed[k].extend(t.activity_id for t in result.tasks)
            idle = 0 if result.tasks else idle + 1

    try:
        await asyncio.wait_for(asyncio.gather(claim_all(0), claim_all(1)), CEILING_S)
    finally:
        for store in stores:
            await store.close()

    everything = claimed[0] + claimed[1]
    assert len(everything) == len(set(everything)) == n
    assert claimed[0] and claimed[1], "one store took every task: no concurrency was tested"


async def test_a_queue_rate_limit_is_shared_by_every_store(
    pg_client: Client, pg_url: str, task_queue: str
) -> None:
    for i in range(20):
        await pg_client.store.start(_new(task_queue, i))
    other = await open_store(pg_url)
    try:
        results = await asyncio.gather(
            *(
                store.claim_batch(
                    "default", task_queue, max_tasks=10, identity="w", queue_rate_per_s=4.0
                )
                for store in (pg_client.store, other, pg_client.store, other)
            )
        )
    finally:
        await other.close()

    # The bucket holds 4 tokens: four claims at once take 4 tasks between them.
    assert sum(len(r.tasks) for r in results) == 4


# --------------------------------------------------------------------------- wake-ups


async def test_a_start_committed_by_another_store_reaches_its_queue_subscribers_through_notify(
    pg_client: Client, pg_url: str, task_queue: str
) -> None:
    other = await open_store(pg_url)
    namespace = pg_client.namespace
    try:
        mine = other.feed.subscribe(Started, keys=[(namespace, task_queue)])
        others = other.feed.subscribe(Started, keys=[(namespace, task_queue + "-other")])
        for i in range(5):
            await pg_client.store.start(_new(task_queue, i))
            changes = await mine.wait(CEILING_S)
            assert Started((namespace, task_queue)) in changes
        assert others.take() == []
    finally:
        await other.close()


# --------------------------------------------------------------------------- connection loss


async def test_a_worker_recovers_when_its_connections_are_terminated(
    pg_client: Client, pg_schema: str, task_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="errands.store.postgres")
    key = f"kill-{uuid.uuid4().hex}"
    n = 200
    async with Worker(
        pg_client,
        task_queue=task_queue,
        activities=[count_and_sleep, heartbeat_forever],
        max_concurrent_activities=20,
    ):
        handles = [
            await pg_client.start_activity(
                count_and_sleep,
                args=[f"{key}-{i}", 0.05],
                id=f"{key}-{i}",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=2),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.1)),
            )
            for i in range(n)
        ]

        async def some_done() -> bool:
            return (await pg_client.count_activities("ExecutionStatus = 'Completed'")).count >= 20

        await eventually(some_done, "the worker completed some activities")
        killed = terminate_backends(pg_schema)
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), CEILING_S)

        # The listener came back too: a cancel still reaches an activity at once.
        handle = await pg_client.start_activity(
            heartbeat_forever,
            id=f"{key}-cancel",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=60),
        )

        async def heartbeated() -> bool:
            return (await handle.describe()).total_heartbeat_count >= 1

        await eventually(heartbeated, "the activity heartbeated")
        await handle.cancel()
        with pytest.raises(ActivityFailedError) as failed:
            await asyncio.wait_for(handle.result(), CEILING_S)

    assert killed >= 2  # at least the writer's and the listener's connections
    assert results == [f"{key}-{i}" for i in range(n)]
    assert all(_calls[f"{key}-{i}"] >= 1 for i in range(n))
    assert isinstance(failed.value.cause, CancelledError)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "LISTEN connection lost" in messages and "LISTEN connection restored" in messages


async def test_an_idle_store_reconnects_after_its_connections_are_terminated(
    pg_client: Client, pg_schema: str, task_queue: str
) -> None:
    await pg_client.start_activity(
        greet, "a", id="before", task_queue=task_queue, start_to_close_timeout=timedelta(1)
    )
    assert terminate_backends(pg_schema) >= 2

    # No error: the store notices the dead connections and takes new ones.
    await pg_client.start_activity(
        greet, "b", id="after", task_queue=task_queue, start_to_close_timeout=timedelta(1)
    )
    desc = await pg_client.get_activity_handle("before").describe()
    assert (await pg_client.count_activities()).count == 2
    assert desc.status is ActivityExecutionStatus.RUNNING


@pytest.fixture
def scratch_database(pg_server: str) -> Iterator[str]:
    """A database of its own (so connections to it can be refused), dropped afterwards."""
    name = f"errands_db{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(pg_server)
    yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_while_the_database_refuses_connections_operations_are_store_errors_then_recover(
    scratch_database: str, task_queue: str
) -> None:
    name = urllib.parse.urlsplit(scratch_database).path.lstrip("/")
    client = await Client.connect(with_params(scratch_database, connect_timeout="1"))
    try:
        await client.start_activity(
            greet, "a", id="before", task_queue=task_queue, start_to_close_timeout=timedelta(1)
        )
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )
        with pytest.raises(StoreError) as write_failed:
            await client.start_activity(
                greet,
                "b",
                id="during",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(1),
            )
        with pytest.raises(StoreError):
            await client.get_activity_handle("before").describe()
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

        async def back() -> bool:
            try:
                await client.start_activity(
                    greet,
                    "c",
                    id="after",
                    task_queue=task_queue,
                    start_to_close_timeout=timedelta(1),
                )
            except StoreError:
                return False
            return True

        await eventually(back, "the store reconnected")
        ids = sorted([e.activity_id async for e in client.list_activities()])
    finally:
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await client.close()

    assert write_failed.value.__cause__ is not None
    assert ids == ["after", "before"]


async def test_a_closed_store_refuses_operations(pg_url: str) -> None:
    store = await open_store(pg_url)
    await store.close()

    with pytest.raises(StoreError, match="closed"):
        await store.describe("default", "x")


async def test_priority_orders_the_work_of_a_worker(pg_client: Client, task_queue: str) -> None:
    # Started before any worker runs, so one claim sees them all.
    handles = [
        await pg_client.start_activity(
            greet,
            str(key),
            id=f"prio-{i}",
            task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=10),
            priority=Priority(key),
        )
        for i, key in enumerate([5, 1, 3])
    ]
    async with Worker(
        pg_client, task_queue=task_queue, activities=[greet], max_concurrent_activities=1
    ):
        await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), CEILING_S)
    started = {}
    for h in handles:
        desc = await h.describe()
        started[h.id] = desc.last_started_time

    assert sorted(started, key=lambda k: started[k]) == ["prio-1", "prio-2", "prio-0"]


@activity.defn
async def heartbeat_then_return(seconds: float) -> str:
    """Heartbeats every 50 ms for ``seconds``, then returns."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        activity.heartbeat()
        await asyncio.sleep(0.05)
    return "done"


async def test_a_worker_whose_clock_runs_ahead_of_the_database_still_completes_its_activities(
    pg_client: Client, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker machine whose clock is a minute ahead of the database's
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 60.0)
    async with Worker(pg_client, task_queue=task_queue, activities=[heartbeat_then_return]):
        # When it runs an activity well within its timeouts
        result = await asyncio.wait_for(
            pg_client.execute_activity(
                heartbeat_then_return,
                0.3,
                id="skewed",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=5),
                heartbeat_timeout=timedelta(seconds=2),
                retry_policy=RetryPolicy(maximum_attempts=1),
            ),
            CEILING_S,
        )
    # Then the attempt is not timed out by the worker's own clock
    assert result == "done"
    assert (await pg_client.get_activity_handle("skewed").describe()).attempt == 1


async def test_heartbeats_of_one_attempt_in_one_group_commit_all_count_and_the_last_wins(
    pg_client: Client, task_queue: str
) -> None:
    store = pg_client.store
    await store.start(_new(task_queue, 0))
    (task,) = (await store.claim_batch("default", task_queue, max_tasks=1, identity="w")).tasks

    # Submitted together, they share one transaction (and one bulk statement
    # could change the row only once).
    results = await asyncio.gather(
        *(store.heartbeat(task.run_id, task.attempt, f"beat-{k}".encode()) for k in range(3))
    )
    record = await store.describe("default", task.activity_id)

    assert all(r.accepted and not r.cancel_requested for r in results)
    assert record.heartbeat_count == 3
    assert record.heartbeat_details == b"beat-2"


async def test_starts_and_completions_bigger_than_one_bulk_statement_are_all_recorded(
    pg_client: Client, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errands.store.postgres as pg

    # Given a bulk statement that carries at most 1000 payload bytes
    monkeypatch.setattr(pg, "BULK_BYTES", 1000)
    async with Worker(pg_client, task_queue=task_queue, activities=[greet]):
        # When 20 starts of about 400 bytes each and their completions are
        # group-committed together
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    pg_client.execute_activity(
                        greet,
                        f"{k:03d}" + "x" * 400,
                        id=f"big-{k}",
                        task_queue=task_queue,
                        start_to_close_timeout=timedelta(seconds=10),
                    )
                    for k in range(20)
                )
            ),
            CEILING_S,
        )

    # Then every one ran, with its own argument
    assert results == [f"Hello, {k:03d}{'x' * 400}!" for k in range(20)]
    assert (await pg_client.count_activities("ExecutionStatus = 'Completed'")).count == 20


async def test_a_pending_result_survives_a_database_outage_and_returns_the_value_after_it(
    scratch_database: str, task_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a result() pending while nobody runs the activity yet
    caplog.set_level(logging.WARNING, logger="errands.client")
    name = urllib.parse.urlsplit(scratch_database).path.lstrip("/")
    client = await Client.connect(with_params(scratch_database, connect_timeout="1"))
    try:
        handle = await client.start_activity(
            greet, "a", id="waited", task_queue=task_queue, start_to_close_timeout=timedelta(10)
        )
        pending = asyncio.ensure_future(handle.result())
        # When the database refuses connections and drops the ones it had
        # (the listener's loss makes the waiter read the store again: it fails)
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

        async def failed_once() -> bool:
            return any("the store failed" in r.getMessage() for r in caplog.records)

        await eventually(failed_once, "the waiter met the outage")
        # Then the pending result() has not failed
        assert not pending.done()
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        # And once the database is back, a worker runs it and the value arrives
        async with Worker(client, task_queue=task_queue, activities=[greet]):
            assert await asyncio.wait_for(pending, CEILING_S) == "Hello, a!"
    finally:
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await client.close()
    warnings = [r.getMessage() for r in caplog.records if "the store failed" in r.getMessage()]
    assert len(warnings) == 1, warnings


async def test_the_listener_goes_on_hearing_other_processes_after_it_unlistens_a_channel(
    pg_url: str, task_queue: str, tmp_path: Path
) -> None:
    # Given a worker in another process, and a client that awaited a result
    # there (so it LISTENed to the outcome channel, which then lingers),
    client = await Client.connect(pg_url)
    try:
        with procs.Children(tmp_path) as children:
            await children.worker("w", pg_url, task_queue)

            async def echo(value: str) -> str:
                return await asyncio.wait_for(
                    client.execute_activity(
                        procs.echo,
                        value,
                        id=value,
                        task_queue=task_queue,
                        start_to_close_timeout=timedelta(seconds=10),
                    ),
                    CEILING_S,
                )

            assert await echo("first") == "first"
            listener = client.store._dialect._listener  # type: ignore[attr-defined]
            # when the listener UNLISTENs it, nobody awaiting an outcome any more
            # (it used to block then, reading its wake-up socket: deaf to every
            # process until something else woke it, and never stopping),
            await eventually(lambda: not listener._linger, "the channel UNLISTENed", 30.0)
            # then a result from the other process still arrives,
            assert await echo("second") == "second"
    finally:
        # and the client closes.
        await asyncio.wait_for(client.close(), CEILING_S)
