"""Temporal's side: connecting a temporalio Client to the dev server, its
worker, whether the server takes standalone activities, and — when it does
not — a client that runs each activity as one workflow, with the methods the
workloads call (``start_activity``, ``execute_activity``, and on the handle
``result``, ``cancel``, ``describe().last_heartbeat_time``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import exceptions
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.worker import SharedStateManager, Worker

from bench.compare import _temporal_activities as acts
from bench.compare._pool import Pool
from bench.compare._temporal_workflow import Call, RunActivity

STANDALONE = "standalone"
WORKFLOW = "workflow"
PROBE_TIMEOUT = timedelta(seconds=10)

ASYNC_ACTIVITIES = [acts.noop, acts.spin]
SYNC_ACTIVITIES = [acts.noop_sync, acts.spin_sync]
CancelledError = exceptions.CancelledError


async def connect(address: str) -> Client:
    return await Client.connect(address, namespace="default")


async def standalone_refusal(client: Client) -> str | None:
    """Start (and terminate) a standalone activity no worker serves: None if
    the server took it, else the server's refusal."""
    key = uuid.uuid4().hex[:8]
    try:
        handle = await client.start_activity(
            "bench-probe",
            id=f"probe-{key}",
            task_queue=f"probe-{key}",
            start_to_close_timeout=PROBE_TIMEOUT,
        )
    except RPCError as e:
        return f"{e.status.name}: {e.message}"
    await handle.terminate(reason="bench.compare probe")
    return None


@dataclass
class _Description:
    last_heartbeat_time: datetime | None


class WorkflowActivityHandle:
    """The handle of an activity run by its own workflow."""

    def __init__(self, handle: WorkflowHandle[Any, Any]) -> None:
        self._handle = handle
        self.id = handle.id

    async def result(self) -> Any:
        return await self._handle.result()

    async def cancel(self) -> None:
        await self._handle.cancel()

    async def describe(self) -> _Description:
        """The activity's last heartbeat time, from the workflow's pending activity."""
        pending = (await self._handle.describe()).raw_description.pending_activities
        if not pending or not pending[0].HasField("last_heartbeat_time"):
            return _Description(None)
        return _Description(pending[0].last_heartbeat_time.ToDatetime(tzinfo=timezone.utc))


class WorkflowPerActivity:
    """``start_activity`` / ``execute_activity`` as one workflow per activity."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def start_activity(
        self,
        activity: Callable[..., Any],
        arg: Any,
        *,
        id: str,
        task_queue: str,
        start_to_close_timeout: timedelta,
        heartbeat_timeout: timedelta | None = None,
    ) -> WorkflowActivityHandle:
        call = Call(
            activity.__name__,  # the bench's activities are named after their functions
            arg,
            start_to_close_timeout.total_seconds(),
            None if heartbeat_timeout is None else heartbeat_timeout.total_seconds(),
        )
        handle = await self.client.start_workflow(
            RunActivity.run, call, id=id, task_queue=task_queue
        )
        return WorkflowActivityHandle(handle)

    async def execute_activity(self, activity: Callable[..., Any], arg: Any, **options: Any) -> Any:
        return await (await self.start_activity(activity, arg, **options)).result()


def client_for(client: Client, mode: str) -> Any:
    """What the workloads call start_activity on, for ``mode``."""
    return client if mode == STANDALONE else WorkflowPerActivity(client)


@contextlib.asynccontextmanager
async def running_worker(
    client: Client,
    task_queue: str,
    *,
    mode: str,
    slots: int,
    pool: Pool | None,
    activities: Sequence[Callable[..., Any]] | None = None,
) -> AsyncIterator[None]:
    """A temporalio Worker on ``task_queue``, with temporalio's defaults but
    ``max_concurrent_activities``: ``slots``, or the pool's size when sync
    activities run on ``pool`` (errands' sync slots are min(slots, pool size)
    on their own). ``activities`` default to bench's async ones, plus the
    sync ones when there is a pool."""
    if activities is None:
        activities = ASYNC_ACTIVITIES if pool is None else [*ASYNC_ACTIVITIES, *SYNC_ACTIVITIES]
    shared = None
    if pool is not None and pool.manager is not None:
        shared = SharedStateManager.create_from_multiprocessing(pool.manager)
    worker = Worker(
        client,
        task_queue=task_queue,
        activities=activities,
        workflows=[RunActivity] if mode == WORKFLOW else [],
        activity_executor=None if pool is None else pool.executor,
        shared_state_manager=shared,
        max_concurrent_activities=slots if pool is None else min(slots, pool.size),
    )
    async with worker:
        yield
