"""Workers and their liveness (DESIGN §6 "Liveness and failover"), on both
stores: the registry, a SIGKILLed worker failed over as WorkerLost without any
timeout, a stopped (SIGSTOP) worker and one whose connection dropped kept."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta
from pathlib import Path

import psycopg

from errands import activity, exceptions
from errands.client import (
    ActivityExecutionDescription,
    ActivityHandle,
    AttemptOutcome,
    Client,
    PendingActivityState,
)
from errands.worker import Worker
from tests import procs
from tests.support import FAST_RETRY, describe_until, eventually

LONG = timedelta(minutes=10)
"""A start_to_close no test waits out: what fails over does so without it."""


@activity.defn
async def waits_for_cancel() -> str:
    activity.heartbeat()
    await asyncio.sleep(3600)
    return "never"


async def test_a_worker_is_listed_with_its_slots_in_use_until_it_stops(
    client: Client, task_queue: str
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[waits_for_cancel],
        identity="listed",
        max_concurrent_activities=7,
    ):
        handle = await client.start_activity(
            waits_for_cancel, id="busy", task_queue=task_queue, start_to_close_timeout=LONG
        )
        await describe_until(
            handle, lambda d: d.run_state is PendingActivityState.STARTED, "it runs"
        )
        (listed,) = await client.list_workers()
        await handle.terminate()
    after = await client.list_workers()

    assert (listed.identity, list(listed.task_queues), listed.pid) == (
        "listed",
        [task_queue],
        os.getpid(),
    )
    assert (listed.slots, listed.slots_used, listed.slots_free) == (7, 1, 6)
    assert listed.executor == "async"
    assert listed.started_time <= listed.last_seen_time
    assert after == []


async def _running(handle: ActivityHandle[object], log: Path) -> None:
    async def started(desc: ActivityExecutionDescription) -> bool:
        return desc.run_state is PendingActivityState.STARTED and log.exists()

    await describe_until(handle, started, f"{handle.id} runs")


async def _start_hanging(
    client: Client, name: str, task_queue: str, log: Path
) -> ActivityHandle[object]:
    handle = await client.start_activity(
        procs.hang_first_attempt,
        str(log),
        id=name,
        task_queue=task_queue,
        start_to_close_timeout=LONG,
        retry_policy=FAST_RETRY,
    )
    await _running(handle, log)
    return handle


async def test_a_stopped_worker_keeps_its_attempt_while_a_killed_one_is_failed_over(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    await client._watch_liveness()  # this client fails the attempts of dead workers
    with procs.Children(tmp_path) as children:
        stopped = await children.worker("stopped", db_url, task_queue + "-s")
        killed = await children.worker("killed", db_url, task_queue + "-k")
        kept = await _start_hanging(client, "kept", task_queue + "-s", tmp_path / "s.log")
        lost = await _start_hanging(client, "lost", task_queue + "-k", tmp_path / "k.log")
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            killed.kill()
            # Found gone with no timeout at all; the stopped one was stopped
            # first, so its token was looked at as long.
            failed_over = await describe_until(
                lost, lambda d: d.attempt == 2, "the killed worker's attempt failed over"
            )
            still = await kept.describe()
            listed = {w.pid for w in await client.list_workers()}
        finally:
            os.kill(stopped.pid, signal.SIGCONT)

    assert failed_over.run_state is PendingActivityState.SCHEDULED  # no worker of its queue
    assert isinstance(failed_over.last_failure, exceptions.ApplicationError)
    assert failed_over.last_failure.type == "WorkerLost"
    assert (still.attempt, still.run_state) == (1, PendingActivityState.STARTED)
    assert stopped.pid in listed and killed.pid not in listed
    (first,) = await lost.attempts()
    assert first.outcome is AttemptOutcome.WORKER_LOST


async def test_check_liveness_finds_a_killed_worker_and_not_a_living_one(
    client: Client, db_url: str, task_queue: str, tmp_path: Path
) -> None:
    await client._watch_liveness()
    with procs.Children(tmp_path) as children:
        living = await children.worker("living", db_url, task_queue)
        dying = await children.worker("dying", db_url, task_queue + "-d")
        handle = await _start_hanging(client, "h", task_queue + "-d", tmp_path / "d.log")
        dying.kill()
        found: list[str] = []

        async def found_one() -> bool:
            found.extend(await client.store.check_liveness())
            return bool(found) or (await handle.describe()).attempt == 2

        await eventually(found_one, "the killed worker's token is found gone")
        await describe_until(handle, lambda d: d.attempt == 2, "its attempt failed over")
        workers = await client.list_workers()

    assert [w.pid for w in workers] == [living.pid]


async def test_a_worker_whose_postgresql_connection_drops_and_comes_back_keeps_its_attempt(
    pg_client: Client, pg_url: str, pg_server: str, task_queue: str, tmp_path: Path
) -> None:
    client = pg_client
    await client._watch_liveness()
    with procs.Children(tmp_path) as children:
        dropped = await children.worker("dropped", pg_url, task_queue + "-x")
        killed = await children.worker("killed", pg_url, task_queue + "-k")
        kept = await _start_hanging(client, "kept", task_queue + "-x", tmp_path / "x.log")
        lost = await _start_hanging(client, "lost", task_queue + "-k", tmp_path / "k.log")
        with psycopg.connect(pg_server, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"errands-owner:{dropped.pid}",),
            ).fetchall()
        # Its lock is gone until it reconnects; a watcher must not take that
        # for death. The kill after it is found within the same looks.
        killed.kill()
        await describe_until(lost, lambda d: d.attempt == 2, "the killed one failed over")
        still = await kept.describe()
        await kept.terminate()

    assert cut == [(True,)]
    assert (still.attempt, still.run_state) == (1, PendingActivityState.STARTED)
