"""Rows whose payload bytes were corrupted in the database, behind errands'
back (a disk error, a hand-made UPDATE): the execution they belong to fails
with a clear non-retryable decode error, the others run, and a client
reading a corrupt result, failure or heartbeat details gets a clear error
while its other results still arrive. Both stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from errands import _lifecycle as lc
from errands import activity, exceptions
from errands.client import ActivityExecutionStatus, ActivityHandle, Client
from errands.converter import Payload, serialize_payloads
from errands.worker import Worker
from tests.conftest import admin
from tests.support import TIMEOUT, describe_until

BROKEN_FRAMING = b"\x01\x00\x00\x00\x09garbage"
"""Says nine payloads follow, and holds seven bytes."""

BROKEN_JSON = serialize_payloads([Payload({"encoding": b"json/plain"}, b"{not json")])
"""Well framed, but the one payload is not JSON."""


@activity.defn
async def shout(word: str) -> str:
    return word.upper()


@activity.defn
async def refuse(word: str) -> str:
    raise exceptions.ApplicationError(f"no {word}", non_retryable=True)


@pytest.fixture
def corrupt(store_kind: str, db_path: Path, request: pytest.FixtureRequest) -> Corrupter:
    """Overwrite a column of an execution (by activity id) in this test's store."""
    if store_kind == "sqlite":
        return Corrupter(sqlite_path=db_path)
    return Corrupter(pg_schema=request.getfixturevalue("pg_schema"))


class Corrupter:
    """Writes bytes straight into the executions table, as another program would."""

    def __init__(self, *, sqlite_path: Path | None = None, pg_schema: str | None = None) -> None:
        self._path = sqlite_path
        self._schema = pg_schema

    def __call__(self, activity_id: str, column: str, data: bytes) -> None:
        assert column in ("input", "result", "failure", "heartbeat_details")
        if self._path is not None:
            conn = sqlite3.connect(self._path, timeout=30)
            try:
                with conn:
                    count = conn.execute(
                        f"UPDATE executions SET {column} = ? WHERE activity_id = ?",
                        (data, activity_id),
                    ).rowcount
            finally:
                conn.close()
        else:
            rows = admin(
                f'UPDATE "{self._schema}".executions SET {column} = %s '
                "WHERE activity_id = %s RETURNING 1",
                (data, activity_id),
            )
            count = len(rows)
        assert count == 1, f"no execution {activity_id!r} to corrupt"


async def test_an_execution_with_corrupt_input_fails_non_retryably_and_the_others_run(
    client: Client, task_queue: str, corrupt: Corrupter
) -> None:
    handles = {
        name: await client.start_activity(
            shout, name, id=name, task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        for name in ("before", "framing", "json", "after")
    }
    corrupt("framing", "input", BROKEN_FRAMING)
    corrupt("json", "input", BROKEN_JSON)

    async with Worker(client, task_queue=task_queue, activities=[shout]):
        assert await handles["before"].result() == "BEFORE"
        assert await handles["after"].result() == "AFTER"
        for name in ("framing", "json"):
            with pytest.raises(exceptions.ActivityFailedError) as failed:
                await handles[name].result()
            cause = failed.value.cause
            assert isinstance(cause, exceptions.ApplicationError)
            assert cause.type == lc.PAYLOAD_DECODE_ERROR_TYPE
            assert cause.non_retryable
            assert "input" in cause.message and "cannot be decoded" in cause.message
            assert name in cause.message
            desc = await handles[name].describe()
            assert desc.status is ActivityExecutionStatus.FAILED
            assert desc.attempt == 1  # not retried: the next attempt would read the same bytes

        # The worker goes on taking work.
        later = await client.start_activity(
            shout, "later", id="later", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert await later.result() == "LATER"


async def test_corrupt_heartbeat_details_fail_the_next_attempt_with_a_decode_error(
    client: Client, task_queue: str, corrupt: Corrupter
) -> None:
    handle = await client.start_activity(
        shout, "hb", id="hb", task_queue=task_queue, start_to_close_timeout=TIMEOUT
    )
    corrupt("hb", "heartbeat_details", BROKEN_FRAMING)
    async with Worker(client, task_queue=task_queue, activities=[shout]):
        with pytest.raises(exceptions.ActivityFailedError) as failed:
            await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, exceptions.ApplicationError)
    assert cause.type == lc.PAYLOAD_DECODE_ERROR_TYPE and cause.non_retryable
    assert "heartbeat details" in cause.message


async def test_a_corrupt_result_failure_or_heartbeat_gives_a_clear_error_and_others_still_arrive(
    client: Client, task_queue: str, corrupt: Corrupter
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[shout, refuse]):
        done = await client.start_activity(
            shout, "a", id="done", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        failed = await client.start_activity(
            refuse, "b", id="failed", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert await done.result() == "A"
        with pytest.raises(exceptions.ActivityFailedError):
            await failed.result()

        corrupt("done", "result", BROKEN_FRAMING)
        corrupt("done", "heartbeat_details", BROKEN_JSON)
        corrupt("failed", "failure", b"\xff not json")

        # A fresh handle reads the result through the client's outcome watcher.
        fresh: ActivityHandle[str] = client.get_activity_handle("done")
        with pytest.raises(ValueError, match=r"'done'.*result cannot be read: undecodable"):
            await fresh.result()
        with pytest.raises(ValueError, match=r"'done'.*result cannot be read"):
            await fresh.describe(include_outcome=True)
        with pytest.raises(ValueError, match=r"'done'.*heartbeat details cannot be read"):
            await fresh.describe(include_heartbeat_details=True)
        with pytest.raises(ValueError, match=r"'failed'.*failure cannot be read: undecodable"):
            await client.get_activity_handle("failed").result()
        with pytest.raises(ValueError, match=r"'failed'.*failure cannot be read"):
            await client.get_activity_handle("failed").describe(include_outcome=True)

        # The rest of the row is still readable, and the watcher still delivers.
        desc = await fresh.describe()
        assert desc.status is ActivityExecutionStatus.COMPLETED
        after = await client.start_activity(
            shout, "c", id="after", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert await after.result() == "C"
        await describe_until(
            after, lambda d: d.status is ActivityExecutionStatus.COMPLETED, "after completed"
        )
