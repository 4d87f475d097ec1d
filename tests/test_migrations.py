"""A store written by the first release (schema 1), with live executions in
every state, opens under this code and carries on: migrations apply once,
waiting executions run, a dead worker's attempts time out and retry (or end,
when a cancel was requested), and closed ones keep their outcomes.

The first release's rows are written by hand with its own schema file, as its
code left them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import timedelta
from importlib import resources
from typing import Any

import pytest

from errands import exceptions
from errands.client import ActivityExecutionStatus, Client
from errands.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
from errands.converter import DataConverter
from errands.store import open_store
from errands.worker import Worker
from tests import procs
from tests.conftest import psycopg
from tests.support import CEILING_S

FAR = 1e15
COLUMNS = [
    "namespace",
    "activity_id",
    "run_id",
    "activity_type",
    "task_queue",
    "status",
    "run_state",
    "attempt",
    "input",
    "result",
    "failure",
    "timeout_type",
    "heartbeat_details",
    "heartbeat_count",
    "last_heartbeat_time",
    "schedule_time",
    "ready_at",
    "started_time",
    "close_time",
    "s2c_deadline",
    "attempt_deadline",
    "deadline",
    "start_to_close_s",
    "retry_policy",
    "priority_key",
    "identity",
    "retry_interval_s",
    "cancel_requested",
    "canceled_reason",
]


def _first_schema(dialect: str) -> str:
    folder = resources.files("errands.store").joinpath("migrations").joinpath(dialect)
    return folder.joinpath("0001_initial.sql").read_text()


async def _rows(task_queue: str) -> list[dict[str, Any]]:
    """Executions in every state the first release knew."""
    now = time.time()
    encode = DataConverter().encode
    fast = json.dumps(RetryPolicy(initial_interval=timedelta(milliseconds=10)).to_dict())
    base = {
        "namespace": "default",
        "activity_type": "echo",
        "task_queue": task_queue,
        "status": "RUNNING",
        "run_state": "SCHEDULED",
        "attempt": 1,
        "result": None,
        "failure": None,
        "timeout_type": None,
        "heartbeat_details": None,
        "heartbeat_count": 0,
        "last_heartbeat_time": None,
        "schedule_time": now - 120,
        "ready_at": now - 120,
        "started_time": None,
        "close_time": None,
        "s2c_deadline": FAR,
        "attempt_deadline": FAR,
        "deadline": FAR,
        "start_to_close_s": 30.0,
        "retry_policy": fast,
        "priority_key": 3,
        "identity": None,
        "retry_interval_s": None,
        "cancel_requested": False,
        "canceled_reason": None,
    }
    dead = {
        "run_state": "STARTED",
        "started_time": now - 60,
        "attempt_deadline": now - 30,
        "deadline": now - 30,
        "identity": "first-release-worker",
        "heartbeat_count": 2,
        "last_heartbeat_time": now - 55,
        "heartbeat_details": await encode(["halfway"]),
    }
    closed = {"status": "COMPLETED", "run_state": None, "close_time": now - 100}
    rows = [
        {"activity_id": "waiting"},
        {"activity_id": "backing-off", "attempt": 2, "ready_at": now + 3600},
        {"activity_id": "dead-worker", **dead},
        {"activity_id": "dead-cancelled", **dead, "run_state": "CANCEL_REQUESTED"},
        {"activity_id": "completed", **closed, "result": await encode(["kept"])},
        {"activity_id": "failed", **closed, "status": "FAILED"},
        {"activity_id": "canceled", **closed, "status": "CANCELED"},
        {"activity_id": "terminated", **closed, "status": "TERMINATED"},
        {"activity_id": "timed-out", **closed, "status": "TIMED_OUT", "timeout_type": 2},
    ]
    out = []
    for row in rows:
        full = {**base, **row, "run_id": f"first-{row['activity_id']}"}
        full["input"] = await encode([full["activity_id"]])
        full["cancel_requested"] = full["run_state"] == "CANCEL_REQUESTED"
        out.append(full)
    return out


def _write_sqlite(path: str, rows: list[dict[str, Any]]) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(_first_schema("sqlite"))
        conn.execute(
            "CREATE TABLE errands_schema "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
        )
        conn.execute("INSERT INTO errands_schema VALUES (1, '0001_initial.sql', ?)", (time.time(),))
        marks = ", ".join("?" * len(COLUMNS))
        for row in rows:
            conn.execute(
                f"INSERT INTO executions ({', '.join(COLUMNS)}) VALUES ({marks})",
                [row[c] for c in COLUMNS],
            )
        conn.execute(
            "INSERT INTO interrupts (namespace, run_id, attempt, kind, created) "
            "VALUES ('default', 'first-dead-cancelled', 1, 'cancel', ?)",
            (time.time() - 40,),
        )
        conn.commit()
    finally:
        conn.close()


def _write_postgres(url: str, schema: str, rows: list[dict[str, Any]]) -> None:
    assert psycopg is not None
    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(_first_schema("postgres"))  # type: ignore[call-overload]
        conn.execute(
            "CREATE TABLE errands_schema "
            "(version integer PRIMARY KEY, name text NOT NULL, applied float8 NOT NULL)"
        )
        conn.execute(
            "INSERT INTO errands_schema VALUES (1, '0001_initial.sql', %s)", (time.time(),)
        )
        marks = ", ".join(["%s"] * len(COLUMNS))
        for row in rows:
            conn.execute(
                f"INSERT INTO executions ({', '.join(COLUMNS)}) VALUES ({marks})",  # type: ignore[arg-type]
                [row[c] for c in COLUMNS],
            )
        conn.execute(
            "INSERT INTO interrupts (namespace, run_id, attempt, kind, created) "
            "VALUES ('default', 'first-dead-cancelled', 1, 'cancel', %s)",
            (time.time() - 40,),
        )


async def _first_release(
    store_kind: str, db_url: str, task_queue: str, request: pytest.FixtureRequest
) -> list[dict[str, Any]]:
    """Write a first-release store with executions in every state; its rows."""
    rows = await _rows(task_queue)
    if store_kind == "sqlite":
        _write_sqlite(str(request.getfixturevalue("db_path")), rows)
    else:
        _write_postgres(db_url, request.getfixturevalue("pg_schema"), rows)
    return rows


async def test_a_first_release_store_with_executions_in_every_state_carries_on(
    store_kind: str, db_url: str, task_queue: str, request: pytest.FixtureRequest
) -> None:
    await _first_release(store_kind, db_url, task_queue, request)

    client = await Client.connect(db_url)
    try:
        handle = client.get_activity_handle
        async with Worker(client, task_queue=task_queue, activities=[procs.echo]):
            assert await asyncio.wait_for(handle("waiting").result(), CEILING_S) == "waiting"
            assert await handle("backing-off").retry_now() is True
            backed = await asyncio.wait_for(handle("backing-off").result(), CEILING_S)
            # A dead worker's attempt times out and the retry completes.
            dead = await asyncio.wait_for(handle("dead-worker").result(), CEILING_S)
            # One whose cancel was requested is not retried.
            with pytest.raises(exceptions.ActivityFailedError) as cancelled:
                await asyncio.wait_for(handle("dead-cancelled").result(), CEILING_S)
        retried = await handle("dead-worker").describe(include_heartbeat_details=True)
        attempts = await handle("dead-worker").attempts()
        kept = await handle("completed").result()
        statuses = {e.activity_id: e.status async for e in client.list_activities()}
    finally:
        await client.close()

    assert (backed, dead, kept) == ("backing-off", "dead-worker", "kept")
    assert isinstance(cancelled.value.cause, exceptions.TimeoutError)
    assert retried.attempt == 2
    assert list(await retried.heartbeat_details()) == ["halfway"]
    assert [a.attempt for a in attempts] == [2]  # the first release kept no history
    assert statuses == {
        "waiting": ActivityExecutionStatus.COMPLETED,
        "backing-off": ActivityExecutionStatus.COMPLETED,
        "dead-worker": ActivityExecutionStatus.COMPLETED,
        "dead-cancelled": ActivityExecutionStatus.TIMED_OUT,
        "completed": ActivityExecutionStatus.COMPLETED,
        "failed": ActivityExecutionStatus.FAILED,
        "canceled": ActivityExecutionStatus.CANCELED,
        "terminated": ActivityExecutionStatus.TERMINATED,
        "timed-out": ActivityExecutionStatus.TIMED_OUT,
    }
    store = await open_store(db_url)  # a second open applies nothing again
    await store.close()


async def test_a_first_release_store_takes_search_attributes_after_migrating(
    store_kind: str, db_url: str, task_queue: str, request: pytest.FixtureRequest
) -> None:
    rows = await _first_release(store_kind, db_url, task_queue, request)
    customer = SearchAttributeKey.for_keyword("Customer")

    client = await Client.connect(db_url)
    try:
        await client.start_activity(
            "echo", id="tagged", task_queue=task_queue,
            start_to_close_timeout=timedelta(seconds=CEILING_S),
            search_attributes=TypedSearchAttributes([SearchAttributePair(customer, "acme")]),
        )  # fmt: skip
        tagged = [e.activity_id async for e in client.list_activities("Customer = 'acme'")]
        untagged = [e.activity_id async for e in client.list_activities("Customer IS NULL")]
        old = await client.get_activity_handle("completed").describe()
    finally:
        await client.close()

    assert tagged == ["tagged"]
    assert sorted(untagged) == sorted(row["activity_id"] for row in rows)
    assert old.typed_search_attributes == TypedSearchAttributes.empty


async def test_a_store_without_an_earlier_version_than_its_newest_is_given_it(
    db_url: str, store_kind: str, db_path: Any, request: pytest.FixtureRequest
) -> None:
    # Given a store at the newest schema but for version 7 (as a build that
    # had a later version, and not yet 7, would have left it)
    client = await Client.connect(db_url)
    await client.close()
    drop = [
        "ALTER TABLE {t}executions DROP COLUMN headers",
        "DELETE FROM {t}errands_schema WHERE version = 7",
    ]
    if store_kind == "sqlite":
        conn = sqlite3.connect(db_path, isolation_level=None)
        for sql in drop:
            conn.execute(sql.format(t=""))
        conn.close()
    else:
        from tests.conftest import admin

        schema = request.getfixturevalue("pg_schema")
        for sql in drop:
            admin(sql.format(t=f'"{schema}".'))
    # When it is opened again
    client = await Client.connect(db_url)
    try:
        # Then version 7 is applied: a start keeps its headers again
        await client.start_activity(
            "kept", id="kept", task_queue="q", start_to_close_timeout=timedelta(seconds=30)
        )
        claimed = await client.store.claim_batch(
            client.namespace, "q", max_tasks=1, identity="test"
        )
        assert [task.headers for task in claimed.tasks] == [None]
    finally:
        await client.close()
