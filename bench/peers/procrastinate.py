"""procrastinate as a peer, on the given PostgreSQL (database bench_peers, a
fresh schema per run, chosen by search_path as its schema guide shows).

Configuration, from procrastinate's production guides: the psycopg
connector with a pool of up to 10 connections (the size its connections
guide names), async tasks, workers with ``concurrency=30`` (its concurrency
guide's example) and LISTEN/NOTIFY on (the default), two worker processes,
one per core (the guide: "launch multiple workers, each using their own
process"). procrastinate keeps no return value and sends no completion
notice: a task's result is its job's status, polled every POLL_S
(``get_job_status_async``), and a bulk wait polls the queue's counts
(``list_queues_async``) every BULK_POLL_S. Bulk enqueue:
``batch_defer_async`` (one INSERT)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.peers import Run, Unavailable, WorkerProcess
from bench.peers import _servers as servers
from bench.peers._run import python_module

CONCURRENCY = 30
WORKER_PROCESSES = 2
POOL_MIN, POOL_MAX = 4, 10
POLL_S = 0.001
BULK_POLL_S = 0.01
TASK = "noop"


def _app(run: Run) -> Any:
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=servers.database_url(run.postgres),
        kwargs={
            "options": f"-c search_path={run.namespace}",
            "application_name": servers.application(run.namespace),
        },
        min_size=POOL_MIN,
        max_size=POOL_MAX,
    )
    app = procrastinate.App(connector=connector)

    @app.task(name=TASK, queue=run.namespace)
    async def noop(i: int) -> int:
        """The trivial task (procrastinate keeps no result)."""
        return i

    return app


class Producer:
    def __init__(self, app: Any, run: Run) -> None:
        self.app = app
        self.task = app.tasks[TASK]
        self.queue = run.namespace

    async def enqueue(self, i: int) -> tuple[int, int]:
        return await self.task.defer_async(i=i), i

    async def enqueue_many(self, items: Sequence[int]) -> list[tuple[int, int]]:
        if not items:
            return []
        ids = await self.task.batch_defer_async(*({"i": i} for i in items))
        return list(zip(ids, items, strict=True))

    async def result(self, handle: tuple[int, int]) -> int:
        from procrastinate.jobs import Status

        job_id, i = handle
        while (status := await self.app.job_manager.get_job_status_async(job_id)) in (
            Status.TODO,
            Status.DOING,
        ):
            await asyncio.sleep(POLL_S)
        if status != Status.SUCCEEDED:
            raise RuntimeError(f"procrastinate job {job_id} ended {status}")
        return i

    async def results(self, handles: Sequence[tuple[int, int]]) -> list[int]:
        while True:
            (counts,) = await self.app.job_manager.list_queues_async(queue=self.queue)
            if counts["todo"] == 0 and counts["doing"] == 0:
                break
            await asyncio.sleep(BULK_POLL_S)
        if counts["succeeded"] != counts["jobs_count"]:
            raise RuntimeError(f"procrastinate jobs did not all succeed: {counts}")
        return [i for _, i in handles]

    async def close(self) -> None:
        await self.app.close_async()


@dataclass(frozen=True)
class ProcrastinatePeer:
    config: str = (
        f"psycopg connector (pool up to {POOL_MAX}), async task, concurrency={CONCURRENCY}, "
        f"LISTEN/NOTIFY, {WORKER_PROCESSES} worker processes; results polled "
        f"every {POLL_S * 1000:g} ms"
    )
    blocking: bool = False

    def check(self, run: Run) -> None:
        try:
            import procrastinate  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"not installed ({e}; pip install -e '.[bench]')") from e
        servers.ensure_database(run.postgres)

    def setup(self, run: Run) -> None:
        servers.create_schema(run.postgres, run.namespace)

        async def apply() -> None:
            app = _app(run)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(apply())

    def teardown(self, run: Run) -> None:
        servers.drop_schema(run.postgres, run.namespace)

    def workers(self, run: Run) -> list[WorkerProcess]:
        argv = python_module("bench.peers", "worker", "procrastinate", run.to_json())
        return [WorkerProcess(argv, "ready") for _ in range(WORKER_PROCESSES)]

    def server_pids(self, run: Run) -> list[int]:
        return servers.backends(run.postgres, run.namespace)

    async def producer(self, run: Run) -> Producer:
        app = _app(run)
        await app.open_async()
        return Producer(app, run)


PEER = ProcrastinatePeer()


async def _serve(run: Run) -> None:
    app = _app(run)
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[run.namespace], concurrency=CONCURRENCY, install_signal_handlers=False
            )
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


def serve(system: str, run: Run) -> None:
    """A worker process (python -m bench.peers worker procrastinate RUN)."""
    asyncio.run(_serve(run))
