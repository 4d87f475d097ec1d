"""Security: namespaces keep their executions apart (a client of one cannot
see, start over, steer or complete another's, on both stores), and a new
SQLite store is readable by its owner only."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from errands import activity, exceptions
from errands.client import ActivityExecutionStatus, ActivityOptionsKeys, Client
from errands.worker import Worker
from tests.support import TIMEOUT, eventually

tokens: dict[str, bytes] = {}
"""Task tokens handed out by the activities, by activity id."""


@pytest.fixture(autouse=True)
def _fresh_tokens() -> Iterator[None]:
    tokens.clear()
    yield
    tokens.clear()


@activity.defn
async def hand_off() -> str:
    """Leave the attempt open for a completer, handing out its token."""
    info = activity.info()
    tokens[info.activity_id] = info.task_token
    activity.raise_complete_async()


@activity.defn
async def namespace_of() -> str:
    return activity.info().namespace


@pytest.fixture
async def alpha(db_url: str) -> AsyncIterator[Client]:
    client = await Client.connect(db_url, namespace="alpha")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def beta(db_url: str) -> AsyncIterator[Client]:
    client = await Client.connect(db_url, namespace="beta")
    try:
        yield client
    finally:
        await client.close()


async def refused(call: Callable[[], Awaitable[Any]], what: str) -> None:
    try:
        await call()
    except exceptions.ActivityNotFoundError:
        return
    raise AssertionError(f"another namespace's client could {what}")


async def test_a_client_of_another_namespace_cannot_see_steer_or_complete_an_execution(
    alpha: Client, beta: Client, task_queue: str
) -> None:
    async with Worker(alpha, task_queue=task_queue, activities=[hand_off]):
        mine = await alpha.start_activity(
            hand_off, id="secret", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await eventually(lambda: "secret" in tokens, "the attempt handed out its token")
        token = tokens["secret"]
        run_id = mine.run_id
        assert run_id is not None

        # Not seen.
        assert [e async for e in beta.list_activities()] == []
        assert [e async for e in beta.list_activities("ActivityId = 'secret'")] == []
        assert (await beta.count_activities()).count == 0
        for handle in (
            beta.get_activity_handle("secret"),
            beta.get_activity_handle("secret", run_id=run_id),
        ):
            await refused(handle.describe, "describe it")
            await refused(handle.result, "await its result")
            await refused(handle.attempts, "read its attempts")
            # Not steered.
            await refused(handle.cancel, "cancel it")
            await refused(handle.terminate, "terminate it")
            await refused(handle.pause, "pause it")
            await refused(handle.unpause, "unpause it")
            await refused(handle.reset, "reset it")
            await refused(handle.retry_now, "retry it now")
            await refused(
                lambda h=handle: h.update_options(  # type: ignore[misc]
                    [ActivityOptionsKeys.start_to_close_timeout.value_set(timedelta(seconds=1))]
                ),
                "update its options",
            )
            await refused(handle.restore_original_options, "restore its options")
        assert await beta.cancel_activities(None) == 0
        assert await beta.pause_activities(None) == 0
        assert await beta.unpause_activities(None) == 0
        assert await beta.reset_activities(None) == 0
        assert await beta.terminate_activities(None) == 0

        # Not completed, by token or by id.
        for completer in (
            beta.get_async_activity_handle(task_token=token),
            beta.get_async_activity_handle(activity_id="secret"),
            beta.get_async_activity_handle(activity_id="secret", run_id=run_id),
        ):
            await refused(lambda c=completer: c.complete("forged"), "complete it")
            await refused(lambda c=completer: c.heartbeat("forged"), "heartbeat it")
            await refused(
                lambda c=completer: c.fail(exceptions.ApplicationError("forged")), "fail it"
            )
            await refused(completer.report_cancellation, "report it cancelled")

        # The same id started in the other namespace is another execution.
        theirs = await beta.start_activity(
            namespace_of, id="secret", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert theirs.run_id != run_id
        assert [e.activity_id async for e in beta.list_activities()] == ["secret"]

        # Untouched: still running its first attempt, then completed by its own token.
        desc = await mine.describe(include_heartbeat_details=True)
        assert desc.status is ActivityExecutionStatus.RUNNING
        assert desc.attempt == 1 and desc.canceled_reason is None
        assert desc.total_heartbeat_count == 0
        assert not await desc.heartbeat_details()
        await alpha.get_async_activity_handle(task_token=token).complete("done")
        assert await mine.result() == "done"
        assert [e.activity_id async for e in alpha.list_activities()] == ["secret"]

    # A worker of the other namespace on the same queue runs only its own.
    waiting = await alpha.start_activity(
        namespace_of, id="waiting", task_queue=task_queue, start_to_close_timeout=TIMEOUT
    )
    async with Worker(beta, task_queue=task_queue, activities=[namespace_of]):
        assert await theirs.result() == "beta"
        assert (await waiting.describe()).last_started_time is None
    async with Worker(alpha, task_queue=task_queue, activities=[namespace_of]):
        assert await waiting.result() == "alpha"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """No umask, so the modes seen are those errands asks for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_a_new_sqlite_store_and_the_files_beside_it_are_its_owners_only(
    db_path: Path, db_url: str, task_queue: str, umask_zero: None
) -> None:
    client = await Client.connect(db_url)
    try:
        async with Worker(client, task_queue=task_queue, activities=[namespace_of]):
            handle = await client.start_activity(
                namespace_of, id="one", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            assert await handle.result() == "default"
            beside = [
                Path(f"{db_path}-wal"),
                Path(f"{db_path}-shm"),
                Path(f"{db_path}-doorbell"),
                Path(f"{db_path}-owners"),
            ]
            made = [db_path, *beside]
            for folder in beside[2:]:
                made.extend(folder.iterdir())
            modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in made if p.exists()}
    finally:
        await client.close()
    assert len(modes) >= 6, modes  # the file, -wal, -shm, both folders, some files in them
    for path, mode in modes.items():
        expected = 0o700 if os.path.isdir(path) else 0o600
        assert mode == expected, f"{path} has mode {mode:o}, not {expected:o}"


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_an_existing_sqlite_store_keeps_the_mode_its_owner_gave_it(
    db_path: Path, db_url: str, umask_zero: None
) -> None:
    db_path.touch(mode=0o640)  # shared with a group on purpose
    client = await Client.connect(db_url)
    await client.close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o640


# --------------------------------------------------------------------------- PostgreSQL grants

APP_GRANTS = [
    'GRANT USAGE ON SCHEMA "{schema}" TO {role}',
    'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO {role}',
    'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}',
]
"""What a worker and a client need once the schema is made (README, "Store URLs")."""


@pytest.fixture
def app_role(pg_server: str) -> Iterator[str]:
    """A login role with no grants of its own; dropped afterwards."""
    role = f"errands_app_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        yield role
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


@activity.defn
async def echoes(text: str) -> str:
    return text


async def test_a_role_with_only_the_readme_grants_runs_workers_and_clients(
    pg_url: str, pg_server: str, pg_schema: str, app_role: str, task_queue: str
) -> None:
    owner = await Client.connect(pg_url)  # makes the schema, as its owner
    await owner.close()
    app_url = pg_url.replace("postgresql://postgres@", f"postgresql://{app_role}@")
    with pytest.raises(exceptions.StoreError, match="may not use schema"):
        client = await Client.connect(app_url)
        await client.count_activities()
    with psycopg.connect(pg_server, autocommit=True) as admin:
        for grant in APP_GRANTS:
            admin.execute(grant.format(schema=pg_schema, role=app_role))

    client = await Client.connect(app_url)
    try:
        async with Worker(client, task_queue=task_queue, activities=[echoes]):
            result = await client.execute_activity(
                echoes, "granted", id="g", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            workers = await client.list_workers()
            held = await client.start_activity(
                echoes, "x", id="p", task_queue=task_queue + "-none", start_to_close_timeout=TIMEOUT
            )
            await held.pause()
            await held.reset(keep_paused=True)
            await held.terminate()
    finally:
        await client.close()

    assert result == "granted"
    assert [w.task_queues for w in workers] == [[task_queue]]
