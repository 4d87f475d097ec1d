"""Temporal as a peer: the dev server bench.compare started (its CPU and
memory count), a temporalio worker in another process with its defaults
but ``max_concurrent_activities`` = the lanes, and the activities started
as standalone activities (or one workflow each: bench.compare's
--temporal-mode). Temporal has no bulk start: its batch cell is n/a."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.peers import NoBulkEnqueue, Run, Unavailable, WorkerProcess
from bench.peers._run import python_module
from bench.workloads import TIMEOUT


class Producer:
    def __init__(self, calls: Any, run: Run) -> None:
        from bench.compare import _temporal_activities as acts

        self.calls = calls
        self.noop = acts.noop
        self.task_queue = run.namespace

    async def enqueue(self, i: int) -> Any:
        return await self.calls.start_activity(
            self.noop,
            i,
            id=f"{self.task_queue}-{i}",
            task_queue=self.task_queue,
            start_to_close_timeout=TIMEOUT,
        )

    async def enqueue_many(self, items: Sequence[int]) -> list[Any]:
        raise NoBulkEnqueue("Temporal has no bulk start")

    async def result(self, handle: Any) -> Any:
        return await handle.result()

    async def results(self, handles: Sequence[Any]) -> list[Any]:
        return list(await asyncio.gather(*(h.result() for h in handles)))

    async def close(self) -> None:
        """Nothing: a temporalio Client has nothing to close."""


@dataclass(frozen=True)
class TemporalPeer:
    config: str = (
        "dev server (temporal server start-dev, SQLite file), worker defaults but "
        "max_concurrent_activities = the lanes"
    )
    blocking: bool = False

    def check(self, run: Run) -> None:
        try:
            import temporalio  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"not installed ({e}; pip install -e '.[bench]')") from e
        if not run.target:
            raise Unavailable("the Temporal dev server is not running")

    def setup(self, run: Run) -> None:
        """Nothing: the task queue is made by use."""

    def teardown(self, run: Run) -> None:
        """Nothing: the dev server and its file go at the comparison's end."""

    def workers(self, run: Run) -> list[WorkerProcess]:
        return [WorkerProcess(python_module("bench.peers", "worker", "temporal", run.to_json()),
                              "ready")]  # fmt: skip

    def server_pids(self, run: Run) -> list[int]:
        return []  # the dev server's pid comes from bench.compare, which started it

    async def producer(self, run: Run) -> Producer:
        from bench.compare import _temporal

        client = await _temporal.connect(run.target)
        return Producer(_temporal.client_for(client, run.mode), run)


PEER = TemporalPeer()


async def _serve(run: Run) -> None:
    from bench.compare import _temporal
    from bench.compare import _temporal_activities as acts

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await _temporal.connect(run.target)
    async with _temporal.running_worker(
        client, run.namespace, mode=run.mode, slots=run.in_flight, pool=None,
        activities=[acts.noop],
    ):  # fmt: skip
        print("ready", flush=True)
        await stop.wait()


def serve(system: str, run: Run) -> None:
    """A worker process (python -m bench.peers worker temporal RUN); it ends
    without interpreter finalization, as bench.compare's processes do
    (temporalio's threads can abort it there)."""
    asyncio.run(_serve(run))
    sys.stdout.flush()
    os._exit(0)
