"""errands in one file: a worker process and a client process sharing one SQLite file.

Run it with ``make demo`` (or ``.venv/bin/python examples/demo.py``). The store is
``errands-demo.db`` in the current directory; it is deleted at the start so every
run begins empty, and left behind afterwards so you can look at it.

The main process is the client. It starts a second Python process running this
same file with the argument ``worker``; that process runs a Worker until it gets
SIGTERM, then calls ``await worker.shutdown()``. Library logs go to ``logging``
(only errors are shown); everything printed comes from this file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from errands import activity
from errands.client import ActivityFailureError, ActivityHandle, Client
from errands.common import RetryPolicy
from errands.worker import Worker

DB_PATH = Path("errands-demo.db")
STORE_URL = f"sqlite:///{DB_PATH}"  # a relative path: sqlite:///relative.db
TASK_QUEUE = "demo"


# --------------------------------------------------------------------------- activities
# Plain module-level async functions. The worker process registers them; the
# client uses them only for their name and their argument / return types.


@activity.defn
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@activity.defn
async def flaky_fetch(url: str) -> str:
    """Fails on its first two attempts, as a flaky network would."""
    attempt = activity.info().attempt
    if attempt < 3:
        raise ConnectionError(f"{url} did not answer")
    return f"fetched {url} on attempt {attempt}"


@activity.defn
async def process_chunks(total: int) -> int:
    """Processes ``total`` chunks of 50 ms, reporting progress with heartbeats.

    Heartbeating is also what lets cancellation in: when the client cancels, the
    worker cancels this task, so ``asyncio.CancelledError`` is raised at the
    ``await`` below.
    """
    done = 0
    try:
        for done in range(total):
            activity.heartbeat(done)
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        details = activity.cancellation_details()
        print(
            f"    [worker] process_chunks stopped at chunk {done}: "
            f"cancel_requested={details is not None and details.cancel_requested}",
            flush=True,
        )
        raise
    return total


ACTIVITIES: list[Callable[..., Any]] = [greet, flaky_fetch, process_chunks]


# --------------------------------------------------------------------------- the worker process


async def run_worker() -> None:
    client = await Client.connect(STORE_URL)
    worker = Worker(
        client,
        task_queue=TASK_QUEUE,
        activities=ACTIVITIES,
        # Send heartbeats to the store at least every 200 ms, so the client sees
        # progress often (the default is 0.8 x heartbeat_timeout, at most 60 s).
        max_heartbeat_throttle_interval=timedelta(milliseconds=200),
    )
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        print(f"    [worker] {signal.Signals(signum).name}: worker.shutdown()", flush=True)
        stopping.append(asyncio.ensure_future(worker.shutdown()))

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await worker.run()  # returns once shutdown() has finished
    finally:
        await asyncio.gather(*stopping)
        await client.close()


# --------------------------------------------------------------------------- the client


def heading(text: str) -> None:
    print(f"\n== {text}")


async def show_greet(client: Client) -> None:
    heading("1. An activity that succeeds")
    started = time.monotonic()
    result = await client.execute_activity(
        greet,
        "World",
        id="greet-1",
        task_queue=TASK_QUEUE,
        start_to_close_timeout=timedelta(seconds=10),
    )
    print(
        f"greet('World') -> {result!r}  ({time.monotonic() - started:.2f} s, worker start included)"
    )


async def show_retries(client: Client) -> None:
    heading("2. An activity that fails twice, is retried with backoff, then succeeds")
    policy = RetryPolicy(initial_interval=timedelta(milliseconds=300), maximum_attempts=5)
    print(
        f"retry policy: initial_interval={policy.initial_interval.total_seconds()} s, "
        f"backoff_coefficient={policy.backoff_coefficient}, "
        f"maximum_attempts={policy.maximum_attempts}"
    )
    handle: ActivityHandle[str] = await client.start_activity(
        flaky_fetch,
        "https://example.com/data",
        id="flaky-1",
        task_queue=TASK_QUEUE,
        start_to_close_timeout=timedelta(seconds=10),
        retry_policy=policy,
    )
    # Watch the execution from the outside, as any other process could.
    seen_attempt = 1
    while True:
        desc = await handle.describe(include_last_failure=True)
        if desc.attempt > seen_attempt and desc.last_failure is not None:
            interval = desc.current_retry_interval
            wait = f"{interval.total_seconds():.1f} s" if interval is not None else "?"
            print(
                f"describe(): attempt {desc.attempt - 1} failed with "
                f"{type(desc.last_failure).__name__}({desc.last_failure.message!r}, "
                f"type={getattr(desc.last_failure, 'type', None)!r}); "
                f"attempt {desc.attempt} waits {wait}"
            )
            seen_attempt = desc.attempt
        if desc.run_state is None:  # closed
            break
        await asyncio.sleep(0.02)
    print(f"result() -> {await handle.result()!r}")
    print(f"describe(): status={desc.status.name}, attempt={desc.attempt}")


async def show_cancel(client: Client) -> None:
    heading("3. A heartbeating activity: watch its progress, then cancel it")
    handle: ActivityHandle[int] = await client.start_activity(
        process_chunks,
        100,
        id="chunks-1",
        task_queue=TASK_QUEUE,
        start_to_close_timeout=timedelta(seconds=30),
        heartbeat_timeout=timedelta(seconds=2),
    )
    progress = -1
    while progress < 30:
        desc = await handle.describe(include_heartbeat_details=True)
        details = await desc.heartbeat_details()
        if details and details[0] != progress:
            progress = details[0]
            print(
                f"describe(): {desc.run_state.name if desc.run_state else desc.status.name}, "
                f"chunk {progress}/100, heartbeats stored: {desc.total_heartbeat_count}"
            )
        await asyncio.sleep(0.25)
    print("handle.cancel(reason='the user pressed stop')")
    await handle.cancel(reason="the user pressed stop")
    try:
        await handle.result()
    except ActivityFailureError as e:
        print(f"result() raised {type(e).__name__}: {e.message}")
        print(f"  cause: {type(e.cause).__name__}({e.cause.message!r})")
    desc = await handle.describe(include_heartbeat_details=True)
    print(
        f"describe(): status={desc.status.name}, canceled_reason={desc.canceled_reason!r}, "
        f"last progress={list(await desc.heartbeat_details())}"
    )


async def show_visibility(client: Client) -> None:
    heading("4. Listing and counting")
    print("list_activities() (newest first):")
    async for ex in client.list_activities():
        took = ex.execution_duration.total_seconds() if ex.execution_duration else 0.0
        print(f"  {ex.activity_id:<10} {ex.activity_type:<15} {ex.status.name:<10} {took:.2f} s")
    query = "ExecutionStatus != 'Completed'"
    ids = [ex.activity_id async for ex in client.list_activities(query)]
    print(f'list_activities("{query}") -> {ids}')
    query = "ActivityId STARTS_WITH 'flaky-' AND ExecutionStatus = 'Completed'"
    print(f'count_activities("{query}") -> {(await client.count_activities(query)).count}')
    counted = await client.count_activities("GROUP BY ExecutionStatus")
    print(f'count_activities("GROUP BY ExecutionStatus") -> {counted.count} in all')
    for group in counted.groups:
        print(f"  {group.group_values[0]:<10} {group.count}")


async def run_client() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DB_PATH}{suffix}").unlink(missing_ok=True)
    print(f"store: {STORE_URL}  ({DB_PATH.resolve()}, deleted at start)")
    # Connecting creates the file and its schema before the worker opens it.
    client = await Client.connect(STORE_URL)
    worker = subprocess.Popen([sys.executable, __file__, "worker"])
    print(f"worker process started: pid {worker.pid}, task queue {TASK_QUEUE!r}")
    try:
        await show_greet(client)
        await show_retries(client)
        await show_cancel(client)
        await show_visibility(client)
        heading("Stopping the worker")
        print(f"SIGTERM -> worker pid {worker.pid}")
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 10)
        print(f"worker exited with code {code}")
        if code != 0:
            raise SystemExit(f"the worker process exited with code {code}")
    finally:
        await client.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def main() -> None:
    logging.basicConfig(level=logging.ERROR, format="%(processName)s %(name)s: %(message)s")
    if sys.argv[1:] == ["worker"]:
        asyncio.run(run_worker())
    else:
        started = time.monotonic()
        asyncio.run(run_client())
        print(f"\ndemo finished in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
