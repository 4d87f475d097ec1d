"""errands as a peer: one worker process (``python -m bench worker``, the
worker of ``python -m bench``'s 2p workloads) with ``in_flight`` slots, on
the store bench.compare made for the run (a fresh SQLite file, or a fresh
schema on the given PostgreSQL). Bulk enqueue: ``client.start_activities``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from bench.activities import noop
from bench.compare._sides import postgres_backends
from bench.peers import Run, Unavailable, WorkerProcess
from bench.peers._run import python_module
from bench.workloads import TIMEOUT
from errands.client import ActivityHandle, ActivityStart, Client


class Producer:
    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    async def enqueue(self, i: int) -> ActivityHandle[int]:
        return await self.client.start_activity(
            noop, i, id=f"t-{i}", task_queue=self.task_queue, start_to_close_timeout=TIMEOUT
        )

    async def enqueue_many(self, items: Sequence[int]) -> list[ActivityHandle[int]]:
        starts = [
            ActivityStart(noop, [i], id=f"t-{i}", task_queue=self.task_queue,
                          start_to_close_timeout=TIMEOUT)
            for i in items
        ]  # fmt: skip
        return await self.client.start_activities(starts) if starts else []

    async def result(self, handle: ActivityHandle[int]) -> int:
        return await handle.result()

    async def results(self, handles: Sequence[ActivityHandle[int]]) -> list[int]:
        return list(await asyncio.gather(*(h.result() for h in handles)))

    async def close(self) -> None:
        await self.client.close()


@dataclass(frozen=True)
class Errands:
    kind: str  # "sqlite" or "postgresql"
    config: str = (
        "one worker process, max_concurrent_activities = the lanes (500); the store's "
        "defaults (SQLite: WAL, synchronous=FULL; PostgreSQL: synchronous_commit on)"
    )
    blocking: bool = False

    def check(self, run: Run) -> None:
        if not run.target.startswith(self.kind):
            raise Unavailable(f"no {self.kind} store given")
        if self.kind == "postgresql":
            try:
                import psycopg  # noqa: F401
            except ImportError as e:
                raise Unavailable(f"psycopg not installed ({e})") from e

    def setup(self, run: Run) -> None:
        """Nothing: bench.compare made the store for the run, and removes it."""

    def teardown(self, run: Run) -> None:
        """Nothing: see setup."""

    def workers(self, run: Run) -> list[WorkerProcess]:
        argv = ["bench", "worker", "--url", run.target, "--task-queue", run.namespace]
        return [WorkerProcess(python_module(*argv, "--slots", str(run.in_flight)), "ready")]

    def server_pids(self, run: Run) -> list[int]:
        return postgres_backends(run.target)() if self.kind == "postgresql" else []

    async def producer(self, run: Run) -> Producer:
        return Producer(await Client.connect(run.target), run.namespace)


SQLITE = Errands("sqlite")
POSTGRES = Errands("postgresql")
