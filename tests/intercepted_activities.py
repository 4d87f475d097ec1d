"""Activities of the interceptor and tracing tests, module level so that
process-pool children (and worker processes) import them by name. They report
through their results and heartbeats: a child cannot reach the test's memory."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from errands import activity
from errands.exceptions import ApplicationError


def _report(fail_first: bool) -> dict[str, Any]:
    info = activity.info()
    activity.heartbeat("progress", info.attempt)
    if fail_first and info.attempt == 1:
        raise ApplicationError("the first attempt fails", type="FirstAttempt")
    return {
        "activity_id": info.activity_id,
        "attempt": info.attempt,
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
    }


@activity.defn
async def report_async(fail_first: bool) -> dict[str, Any]:
    """Heartbeat ``("progress", attempt)``; attempt 1 fails if ``fail_first``;
    else return what ``activity.info()`` said, and where it ran."""
    return _report(fail_first)


@activity.defn
def report_sync(fail_first: bool) -> dict[str, Any]:
    """``report_async``, for the pools."""
    return _report(fail_first)


@activity.defn
async def wait_for_cancel_async() -> str:
    """Heartbeat (so a cancel reaches it at once), then wait to be cancelled."""
    activity.heartbeat("waiting")
    await asyncio.sleep(3600)
    return "never cancelled"


@activity.defn
def wait_for_cancel_sync() -> str:
    """Heartbeat, then spin in Python until the cancel lands (the pools raise
    ``errands.exceptions.CancelledError`` into the call)."""
    activity.heartbeat("waiting")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pass
    return "never cancelled"


@activity.defn
async def fail_then_succeed(failures: int) -> int:
    """Fail (retryably) while the attempt number is at most ``failures``;
    then return the attempt number."""
    attempt = activity.info().attempt
    if attempt <= failures:
        raise ApplicationError(f"attempt {attempt} fails", type="Flaky")
    return attempt
