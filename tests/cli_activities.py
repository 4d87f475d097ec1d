"""Activities for the command-line tests, run by ``errands worker
tests.cli_activities:ACTIVITIES`` (or ``tests.cli_activities``, the whole
module) in a worker process the test starts.

The tests see what happens inside a worker through what crosses the process
boundary anyway: results, heartbeats, the worker's log, and lines appended to
a file named by an argument.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from errands import activity
from errands.exceptions import ApplicationError
from tests.procs import append_line


@activity.defn
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@activity.defn
async def add_up(numbers: list[int], label: str) -> dict[str, Any]:
    return {"label": label, "sum": sum(numbers)}


@activity.defn
async def refuse(message: str) -> None:
    """Fail at once, for good."""
    raise ApplicationError(message, type="Refused", non_retryable=True)


@activity.defn
async def heartbeat_forever() -> None:
    """Heartbeat every 20 ms until cancelled."""
    i = 0
    while True:
        activity.heartbeat(i)
        i += 1
        await asyncio.sleep(0.02)


@activity.defn
async def finish_after(seconds: float, log_path: str) -> dict[str, Any]:
    """Note its start, sleep ``seconds`` (shutdown or not), return attempt and pid."""
    info = activity.info()
    append_line(log_path, f"start {info.activity_id} {info.attempt} {os.getpid()}")
    await asyncio.sleep(seconds)
    return {"attempt": info.attempt, "pid": os.getpid()}


@activity.defn
async def hang_on_first_attempt(log_path: str) -> dict[str, Any]:
    """Attempt 1 notes its start and sleeps until it is cancelled; later attempts
    return their attempt number and pid."""
    info = activity.info()
    append_line(log_path, f"start {info.activity_id} {info.attempt} {os.getpid()}")
    if info.attempt == 1:
        await asyncio.sleep(3600)
    return {"attempt": info.attempt, "pid": os.getpid()}


@activity.defn
def multiply(a: int, b: int) -> dict[str, Any]:
    """A plain def: needs --threads or --processes. Says where it ran."""
    return {"product": a * b, "pid": os.getpid(), "in_activity": activity.in_activity()}


ACTIVITIES = [greet, add_up, refuse, heartbeat_forever, finish_after, hang_on_first_attempt]
"""The async activities (what ``--threads`` / ``--processes`` are not needed for)."""

ALL_ACTIVITIES = [*ACTIVITIES, multiply]
