"""Faults of the SQLite store's file: another program holding the write lock,
and a full disk. Clients and workers wait and go on; what cannot wait fails
with a StoreError that names the cause; nothing acknowledged is lost; the file
stays intact."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from errands.client import ActivityExecutionStatus, Client
from errands.exceptions import StoreError
from tests import procs
from tests.support import TIMEOUT, describe_until


@pytest.fixture
def store_kind() -> str:
    """These faults are the SQLite file's."""
    return "sqlite"


LOCK_S = 5.0
"""How long the other program holds its write transaction."""


def integrity(path: Path) -> list[tuple[str]]:
    """``PRAGMA integrity_check`` of the file, on a connection of its own."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


async def ids_in(client: Client) -> set[str]:
    return {e.activity_id async for e in client.list_activities()}


# --------------------------------------------------------------------------- a lock held


async def test_a_write_lock_held_5_s_by_another_program_is_waited_out_by_clients_and_workers(
    client: Client, db_url: str, db_path: Path, task_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    with procs.Children(tmp_path) as children:
        await children.worker("worker", db_url, task_queue)
        # Attempts that end while the lock is held: their completions must wait.
        sleepers = [
            await client.start_activity(
                procs.sleep_then_return,
                args=[str(log), 1.0],
                id=f"sleeper-{i}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            for i in range(5)
        ]
        for handle in sleepers:
            await describe_until(
                handle, lambda d: d.last_started_time is not None, f"{handle.id} started"
            )
        holder = children.spawn(
            "holder", "hold-lock", "--path", str(db_path), "--seconds", str(LOCK_S)
        )
        await holder.wait_for_line("locked")
        locked_at = time.monotonic()

        # Readers are not blocked in WAL mode.
        desc = await sleepers[0].describe()
        assert desc.status is ActivityExecutionStatus.RUNNING
        assert time.monotonic() - locked_at < 1.0, "a read waited for the writer's lock"

        # A start waits for the lock, then goes through.
        during = await client.start_activity(
            procs.echo, "during", id="during", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        waited = time.monotonic() - locked_at
        assert waited >= LOCK_S - 1.0, f"the start returned after {waited:.2f} s, under the lock"
        assert await holder.wait_exit() == 0
        assert holder.lines() == ["locked", "released"]

        # The worker waited too, and goes on: every result arrives.
        assert await during.result() == "during"
        for handle in sleepers:
            assert await handle.result() == 1.0
        after = await client.start_activity(
            procs.echo, "after", id="after", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        assert await after.result() == "after"
        assert await ids_in(client) == {f"sleeper-{i}" for i in range(5)} | {"during", "after"}
        assert len(log.read_text().splitlines()) == 5  # each sleeper ran once
    assert integrity(db_path) == [("ok",)]


async def test_a_lock_past_the_busy_timeout_is_a_store_error_naming_the_lock_and_work_goes_on(
    db_url: str, db_path: Path, task_queue: str, tmp_path: Path
) -> None:
    url = f"{db_url}?busy_timeout_ms=1000"
    client = await Client.connect(url)
    try:
        with procs.Children(tmp_path) as children:
            # One slot: the task queued behind the sleeper is claimed by the
            # sleeper's completion (its follow-up claim), which has to retry.
            await children.worker("worker", url, task_queue, max_concurrent=1)
            first = await client.start_activity(
                procs.echo,
                "first",
                id="first",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            assert await first.result() == "first"

            # An attempt that ends while the lock is held, longer than the busy timeout.
            log = tmp_path / "runs.log"
            sleeper = await client.start_activity(
                procs.sleep_then_return,
                args=[str(log), 1.5],
                id="sleeper",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            await describe_until(sleeper, lambda d: d.last_started_time is not None, "started")
            queued = await client.start_activity(
                procs.echo,
                "queued",
                id="queued",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            holder = children.spawn("holder", "hold-lock", "--path", str(db_path), "--seconds", "4")
            await holder.wait_for_line("locked")
            began = time.monotonic()
            with pytest.raises(StoreError, match="is locked") as raised:
                await client.start_activity(
                    procs.echo,
                    "refused",
                    id="refused",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                )
            waited = time.monotonic() - began
            assert 0.9 <= waited < 3.0, f"gave up after {waited:.2f} s (busy timeout 1 s)"
            assert str(db_path) in str(raised.value)
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
            assert holder.lines() == ["locked"], "the lock was not held while the start failed"
            assert await holder.wait_exit() == 0

            # The same client, and the worker, carry on.
            again = await client.start_activity(
                procs.echo,
                "again",
                id="again",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            assert await again.result() == "again"
            began = time.monotonic()
            assert await sleeper.result() == 1.5  # its completion was not lost
            assert time.monotonic() - began < 5.0, "the completion waited for a timeout"
            assert len(log.read_text().splitlines()) == 1  # and it ran once
            assert await queued.result() == "queued"  # the freed slot was handed on
            # The refused start left nothing.
            assert await ids_in(client) == {"first", "again", "sleeper", "queued"}
    finally:
        await client.close()
    assert integrity(db_path) == [("ok",)]


def test_a_sqlite_url_takes_a_busy_timeout_and_refuses_unknown_options() -> None:
    from errands.store.sqlite import options_from_url, path_from_url

    assert path_from_url("sqlite:////tmp/x.db?busy_timeout_ms=250") == "/tmp/x.db"
    assert options_from_url("sqlite:////tmp/x.db?busy_timeout_ms=250") == {"busy_timeout_ms": 250}
    assert options_from_url("sqlite:////tmp/x.db") == {}
    with pytest.raises(ValueError, match="unknown SQLite URL option 'timeout'"):
        options_from_url("sqlite:////tmp/x.db?timeout=3")
    with pytest.raises(ValueError, match="whole number"):
        options_from_url("sqlite:////tmp/x.db?busy_timeout_ms=soon")


# --------------------------------------------------------------------------- a full disk

DISK_SIZE = "4m"
"""The size of the small filesystem the store lives on."""

SLACK = 600_000
"""Bytes left free once the disk is filled: some starts fit, then they do not."""

PADDING = "x" * 4000
"""An argument big enough that a few starts need a new page."""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_SIZE mounted on a folder of its own (root only), unmounted after."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {made.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem has no room left; the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9):
            block = b"\0" * chunk
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


async def test_on_a_full_disk_a_start_fails_naming_the_cause_loses_nothing_and_work_goes_on(
    small_disk: Path, task_queue: str, tmp_path: Path
) -> None:
    db_path = small_disk / "errands.db"
    url = f"sqlite:///{db_path}"
    log = tmp_path / "runs.log"  # off the small disk
    acknowledged: list[str] = []
    client = await Client.connect(url)
    try:
        with procs.Children(tmp_path) as children:
            await children.worker("worker", url, task_queue)
            for i in range(3):
                handle = await client.start_activity(
                    procs.echo,
                    f"early-{i}",
                    id=f"early-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                )
                assert await handle.result() == f"early-{i}"
                acknowledged.append(handle.id)

            filler = small_disk / "filler"
            size = fill(filler)
            os.truncate(filler, size - SLACK)  # room for a few more starts
            full: StoreError | None = None
            for i in range(10_000):
                try:
                    handle = await client.start_activity(
                        procs.sleep_then_return,
                        args=[str(log), 0.0],
                        id=f"pile-{i}",
                        task_queue=task_queue,
                        start_to_close_timeout=TIMEOUT,
                        summary=PADDING,
                    )
                except StoreError as e:
                    full = e
                    break
                acknowledged.append(handle.id)
            assert full is not None, "10,000 starts fitted on a full disk"
            assert "the disk is full" in str(full), str(full)
            assert len(acknowledged) > 3, "no start fitted in the slack"
            assert str(db_path) in str(full)
            # The file is intact, and every start that returned is in it.
            assert integrity(db_path) == [("ok",)]
            assert set(acknowledged) <= await ids_in(client)

            # Space is freed: the same client, the worker (whose claims and
            # reports failed meanwhile) and a new worker carry on.
            filler.unlink()
            handle = await client.start_activity(
                procs.echo,
                "after",
                id="after",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            acknowledged.append(handle.id)
            await children.worker("worker-2", url, task_queue)
            assert await handle.result() == "after"
            for activity_id in acknowledged:
                desc = await client.get_activity_handle(activity_id).describe()
                if desc.status is ActivityExecutionStatus.RUNNING:
                    await client.get_activity_handle(activity_id).result()
            assert await ids_in(client) >= set(acknowledged)
            piled = [a for a in acknowledged if a.startswith("pile-")]
            assert len(log.read_text().splitlines()) == len(piled)  # each ran once
    finally:
        await client.close()
    assert integrity(db_path) == [("ok",)]
