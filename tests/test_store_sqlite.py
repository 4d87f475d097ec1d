"""The SQLite store: schema migrations, bad files, pragmas, a locked store, and
claims (DESIGN.md section 5, "Store")."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest

import errands.store.sqlite as sqlite_store
from errands.client import ActivityExecutionStatus, Client
from errands.common import Priority, RetryPolicy
from errands.converter import DataConverter
from errands.exceptions import StoreError
from errands.store import ClaimedTask, _migrations
from errands.worker import Worker
from tests import procs


@pytest.fixture
def store_kind() -> str:
    """This module is about the SQLite store only."""
    return "sqlite"


CEILING_S = 30.0
KNOWN_VERSIONS = [version for version, _, _ in _migrations.migrations("sqlite")]
"""Every migration's version (numbers may skip: each is applied once, in order)."""


def first_schema_sql() -> str:
    folder = resources.files("errands.store").joinpath("migrations").joinpath("sqlite")
    return folder.joinpath("0001_initial.sql").read_text()


def schema_versions(db_path: Path) -> list[tuple[int, float]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(
            "SELECT version, applied FROM errands_schema ORDER BY version"
        ).fetchall()
    finally:
        conn.close()


def make_first_schema_file(db_path: Path) -> float:
    """Build the file as the first errands release left it, by hand; the time
    its schema row says it was applied."""
    applied = time.time() - 3600
    conn = sqlite3.connect(db_path)
    try:
        conn.executescript(first_schema_sql())
        conn.execute(
            "CREATE TABLE errands_schema "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
        )
        conn.execute(
            "INSERT INTO errands_schema (version, name, applied) VALUES (1, '0001_initial.sql', ?)",
            (applied,),
        )
        conn.commit()
    finally:
        conn.close()
    return applied


async def start(client: Client, activity_id: str, task_queue: str, **options: object) -> str:
    handle = await client.start_activity(
        procs.echo,
        activity_id,
        id=activity_id,
        task_queue=task_queue,
        start_to_close_timeout=timedelta(seconds=30),
        **options,  # type: ignore[arg-type]
    )
    assert handle.run_id is not None
    return handle.run_id


# --------------------------------------------------------------------------- migrations


async def test_a_file_made_by_the_first_schema_opens_and_keeps_its_executions(
    db_path: Path, db_url: str, task_queue: str
) -> None:
    applied = make_first_schema_file(db_path)
    # An execution the first schema's code left scheduled, written by hand.
    now = time.time()
    conn = sqlite3.connect(db_path)
    try:
        conn.execute(
            "INSERT INTO executions (namespace, activity_id, run_id, activity_type, task_queue, "
            "status, run_state, attempt, input, schedule_time, ready_at, s2c_deadline, "
            "attempt_deadline, deadline, start_to_close_s, retry_policy, priority_key) VALUES "
            "('default', 'old', 'old-run', 'echo', ?, 'RUNNING', 'SCHEDULED', 1, ?, ?, ?, "
            "1e15, 1e15, 1e15, 30, ?, 3)",
            (
                task_queue,
                await DataConverter().encode(["from schema 1"]),
                now,
                now,
                json.dumps(RetryPolicy().to_dict()),
            ),
        )
        conn.commit()
    finally:
        conn.close()

    client = await Client.connect(db_url)
    try:
        await start(client, "new", task_queue)
        async with Worker(client, task_queue=task_queue, activities=[procs.echo]):
            old = client.get_activity_handle("old")
            assert await asyncio.wait_for(old.result(), CEILING_S) == "from schema 1"
            new = client.get_activity_handle("new")
            assert await asyncio.wait_for(new.result(), CEILING_S) == "new"
        assert old.run_id == "old-run"
        grouped = await client.count_activities("GROUP BY ExecutionStatus")
        assert [(g.group_values, g.count) for g in grouped.groups] == [(["Completed"], 2)]
    finally:
        await client.close()
    versions = schema_versions(db_path)
    assert [v for v, _ in versions] == KNOWN_VERSIONS
    assert versions[0] == (1, applied), "the first migration was applied again"


async def test_a_schema_newer_than_the_code_is_a_store_error(db_path: Path, db_url: str) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(
        "CREATE TABLE errands_schema "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
    )
    conn.execute("INSERT INTO errands_schema VALUES (999, '0999_future.sql', 0)")
    conn.commit()
    conn.close()

    with pytest.raises(StoreError, match="newer"):
        await Client.connect(db_url)
    conn = sqlite3.connect(db_path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert tables == {"errands_schema"}, "an older errands touched a newer schema"
    assert [v for v, _ in schema_versions(db_path)] == [999]


async def test_many_processes_connecting_to_a_new_file_at_once_all_succeed(
    db_path: Path, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    n = 8
    with procs.Children(tmp_path) as children:
        connectors = [children.connector(f"connect-{i}", db_url, task_queue, go) for i in range(n)]
        await procs.all_ready(connectors)
        assert not db_path.exists()
        go.touch()
        for child in connectors:
            assert await child.wait_exit() == 0, child.stderr()
            assert len(await child.wait_for_line("ok ")) == 1

    versions = schema_versions(db_path)
    assert [v for v, _ in versions] == KNOWN_VERSIONS
    client = await Client.connect(db_url)
    try:
        assert (await client.count_activities()).count == n
        ids = {e.activity_id async for e in client.list_activities()}
        assert ids == {f"connect-{child.pid}" for child in connectors}
    finally:
        await client.close()


# --------------------------------------------------------------------------- bad files


async def test_a_file_that_is_not_a_database_is_a_store_error_and_is_left_alone(
    db_path: Path, db_url: str
) -> None:
    garbage = b"this is not a database, it is a shopping list\n" * 200
    db_path.write_bytes(garbage)
    with pytest.raises(StoreError) as raised:
        await Client.connect(db_url)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    assert db_path.read_bytes() == garbage


async def test_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(StoreError, match="does not exist"):
        await Client.connect(f"sqlite:///{missing}/errands.db")
    assert not missing.exists()


async def test_a_missing_file_in_an_existing_directory_is_created(
    db_path: Path, db_url: str
) -> None:
    assert not db_path.exists()
    client = await Client.connect(db_url)
    try:
        assert (await client.count_activities()).count == 0
    finally:
        await client.close()
    assert db_path.exists()


# --------------------------------------------------------------------------- pragmas


async def test_the_store_connections_use_wal_full_sync_and_the_busy_timeout(
    client: Client, db_path: Path
) -> None:
    store = client.store
    assert isinstance(store, sqlite_store.SQLiteStore)

    def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int, object]:
        return (
            conn.execute("PRAGMA journal_mode").fetchone()[0],
            conn.execute("PRAGMA synchronous").fetchone()[0],
            conn.execute("PRAGMA busy_timeout").fetchone()[0],
            conn.isolation_level,
        )

    expected = ("wal", 2, sqlite_store.BUSY_TIMEOUT_MS, None)  # synchronous 2 is FULL
    # The writer waits for its write lock itself, up to the busy timeout
    # (the locked-store tests below): SQLite's busy handler never waits for it.
    assert await store._op(lambda tx: pragmas(tx.cursor)) == ("wal", 2, 0, None)
    assert await store._read(lambda tx: pragmas(tx.cursor)) == expected
    conn = sqlite_store._connect(str(db_path))
    try:
        assert pragmas(conn) == expected
    finally:
        conn.close()


# --------------------------------------------------------------------------- a locked store


async def test_a_store_locked_longer_than_the_busy_timeout_is_a_store_error_and_recovers(
    monkeypatch: pytest.MonkeyPatch, db_path: Path, db_url: str, task_queue: str
) -> None:
    # Connections read the timeout when they are made: lower it before connecting.
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 200)
    client = await Client.connect(db_url)
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        await start(client, "before", task_queue)
        holder.execute("BEGIN IMMEDIATE")  # another connection takes the write lock
        try:
            began = time.monotonic()
            with pytest.raises(StoreError, match="locked") as raised:
                await start(client, "while-locked", task_queue)
            assert time.monotonic() - began >= 0.15, "the busy timeout was not waited out"
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
            with pytest.raises(StoreError, match="locked"):
                # Migrations need the write lock too. A new store: a client of
                # this URL would share the one already open, and not migrate.
                await sqlite_store.SQLiteStore.open(str(db_path))
            # Readers are not blocked by a writer in WAL mode.
            desc = await client.get_activity_handle("before").describe()
            assert desc.status is ActivityExecutionStatus.RUNNING
        finally:
            holder.execute("ROLLBACK")

        await start(client, "after", task_queue)
        ids = sorted([e.activity_id async for e in client.list_activities()])
        assert ids == ["after", "before"]
    finally:
        holder.close()
        await client.close()
    check = sqlite3.connect(db_path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        check.close()


# --------------------------------------------------------------------------- claims


async def claim_all(
    client: Client, task_queue: str, max_tasks: int, pause_s: float = 0.0
) -> list[list[ClaimedTask]]:
    """Claim batches until the queue is empty, pausing between claims as a
    worker does while it starts what it claimed."""
    batches = []
    while True:
        result = await client.store.claim_batch(
            client.namespace, task_queue, max_tasks=max_tasks, identity="test"
        )
        if not result.tasks:
            return batches
        batches.append(result.tasks)
        if pause_s:
            await asyncio.sleep(pause_s)


async def test_claims_take_at_most_max_tasks_by_priority_then_in_start_order(
    client: Client, task_queue: str
) -> None:
    keys = [5, None, 1, 5, 2, None, 1, 2, 5, None, 1]
    for i, key in enumerate(keys):
        await start(client, f"task-{i}", task_queue, priority=Priority(key))
    await start(client, "delayed", task_queue, start_delay=timedelta(seconds=60))
    await start(client, "elsewhere", task_queue + "-other")

    batches = await claim_all(client, task_queue, max_tasks=3)

    assert [len(b) for b in batches] == [3, 3, 3, 2]
    claimed = [task.activity_id for batch in batches for task in batch]
    effective = [3 if key is None else key for key in keys]
    expected = sorted(range(len(keys)), key=lambda i: (effective[i], i))
    assert claimed == [f"task-{i}" for i in expected]
    assert [t.priority_key for b in batches for t in b] == sorted(effective)
    # The delayed one is not ready; the claim says when it will be.
    result = await client.store.claim_batch(
        client.namespace, task_queue, max_tasks=3, identity="test"
    )
    assert result.tasks == []
    assert result.next_ready_at is not None
    assert 50 < result.next_ready_at - time.time() <= 60


async def test_two_stores_claiming_concurrently_never_hand_out_a_task_twice(
    client: Client, db_path: Path, task_queue: str
) -> None:
    n = 300
    await asyncio.gather(*(start(client, f"task-{i}", task_queue) for i in range(n)))
    # A store of its own, as in another process: a client of the same URL would
    # share the first one.
    other = Client(await sqlite_store.SQLiteStore.open(str(db_path)))
    try:
        # Without a pause, one store could take every claim in a row while the
        # other sleeps in SQLite's busy handler.
        mine, theirs = await asyncio.gather(
            claim_all(client, task_queue, max_tasks=7, pause_s=0.005),
            claim_all(other, task_queue, max_tasks=7, pause_s=0.005),
        )
    finally:
        await other.close()
    assert all(len(batch) <= 7 for batch in [*mine, *theirs])
    run_ids = [task.run_id for batch in [*mine, *theirs] for task in batch]
    assert len(run_ids) == n
    assert len(set(run_ids)) == n, "a task was claimed twice"
    assert mine and theirs, "one store never claimed: no concurrency was tested"
    assert (await client.count_activities("ExecutionStatus = 'Running'")).count == n
