"""Activities of the interceptor and tracing tests, module level so that
process-pool children (and worker processes) import them by name. They report
through their results and heartbeats: a child cannot reach the test's memory.
``Kind`` is an executor kind those tests run them on (the ``executor_kind``
fixture of conftest.py)."""

from __future__ import annotations

import asyncio
import multiprocessing.managers
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from errands import activity
from errands.client import Client
from errands.exceptions import ApplicationError
from errands.worker import Worker
from tests.support import pool_worker


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


@dataclass
class Kind:
    """One executor kind as a test sees it."""

    name: str
    """"async", "thread" or "process"."""
    executor: Executor | None
    manager: multiprocessing.managers.SyncManager | None

    @property
    def report(self) -> Callable[..., Any]:
        """``report_async`` or ``report_sync``, as this kind runs."""
        return report_async if self.name == "async" else report_sync

    @property
    def wait_for_cancel(self) -> Callable[..., Any]:
        """``wait_for_cancel_async`` or ``wait_for_cancel_sync``, as this kind runs."""
        return wait_for_cancel_async if self.name == "async" else wait_for_cancel_sync

    def worker(
        self,
        client: Client,
        task_queue: str,
        activities: Sequence[Callable[..., Any]],
        **options: Any,
    ) -> Worker:
        """A Worker running ``activities`` on this kind's executor."""
        return pool_worker(client, task_queue, activities, self.executor, self.manager, **options)
