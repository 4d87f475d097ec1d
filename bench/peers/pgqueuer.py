"""pgqueuer as a peer, on the given PostgreSQL (database bench_peers, a
fresh schema per run, chosen by search_path).

Configuration, from pgqueuer's performance-tuning guide and its benchmark
tool: the asyncpg driver (the guide: about 1.7x psycopg's throughput), one
dedicated asyncpg connection per QueueManager and an asyncpg pool
(min 5, max 20, the guide's example) for the producer, uvloop (as its
benchmark tool runs), ``batch_size`` 10 (the default and its benchmark's
dequeue batch), tables ``durable`` (the default: a completion survives a
crash, like errands'), and two worker processes, one per core (its
deployment guide, for CPU-bound work: a trivial task is all queue overhead).
pgqueuer keeps no return value: a task's result is its completion, awaited
with pgqueuer's CompletionWatcher (LISTEN/NOTIFY plus its defaults: 50 ms
debounce, 5 s safety poll); a worker logs completions in batches of
``batch_size`` or every 0.1 s. Bulk enqueue: ``Queries.enqueue`` with lists
(one INSERT)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bench.peers import Run, Unavailable, WorkerProcess
from bench.peers import _servers as servers
from bench.peers._run import python_module

BATCH_SIZE = 10
LATENCY_BATCH_SIZE = 1
"""pgqueuer-b1, a variant beside the throughput configuration: a batch of one
(each completion is logged at once, not after 10 or 0.1 s) and no debounce
in the CompletionWatcher: what a caller awaiting one job at a time would pick."""
WORKER_PROCESSES = 2
POOL_MIN, POOL_MAX = 5, 20
ENTRYPOINT = "noop"


async def _connect(run: Run) -> Any:
    import asyncpg

    url = servers.database_url(run.postgres)
    return await asyncpg.connect(url, server_settings=_settings(run))


def _settings(run: Run) -> dict[str, str]:
    return {"search_path": run.namespace, "application_name": servers.application(run.namespace)}


async def _install(run: Run) -> None:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await _connect(run)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


class Producer:
    def __init__(self, pool: Any, listener: Any, watcher: Any) -> None:
        from pgqueuer.db import AsyncpgPoolDriver
        from pgqueuer.queries import Queries

        self.pool = pool
        self.listener = listener
        self.watcher = watcher
        self.queries = Queries(AsyncpgPoolDriver(pool))

    @classmethod
    async def open(cls, run: Run, debounce: timedelta | None) -> Producer:
        import asyncpg
        from pgqueuer.core.completion import CompletionWatcher
        from pgqueuer.db import AsyncpgDriver, AsyncpgPoolDriver
        from pgqueuer.queries import Queries

        pool = await asyncpg.create_pool(
            servers.database_url(run.postgres),
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            server_settings=_settings(run),
        )
        listener = await _connect(run)
        queries = Queries(AsyncpgPoolDriver(pool))
        watcher = (
            CompletionWatcher(AsyncpgDriver(listener), queries=queries)
            if debounce is None
            else CompletionWatcher(AsyncpgDriver(listener), queries=queries, debounce=debounce)
        )
        await watcher.__aenter__()
        return cls(pool, listener, watcher)

    async def enqueue(self, i: int) -> tuple[int, int]:
        (job_id,) = await self.queries.enqueue(ENTRYPOINT, str(i).encode())
        return job_id, i

    async def enqueue_many(self, items: Sequence[int]) -> list[tuple[int, int]]:
        if not items:
            return []
        payloads: list[bytes | None] = [str(i).encode() for i in items]
        ids = await self.queries.enqueue([ENTRYPOINT] * len(items), payloads, [0] * len(items))
        return list(zip(ids, items, strict=True))

    async def result(self, handle: tuple[int, int]) -> int:
        job_id, i = handle
        status = await self.watcher.wait_for(job_id)
        if status != "successful":
            raise RuntimeError(f"pgqueuer job {job_id} ended {status}")
        return i

    async def results(self, handles: Sequence[tuple[int, int]]) -> list[int]:
        return list(await asyncio.gather(*(self.result(h) for h in handles)))

    async def close(self) -> None:
        await self.watcher.__aexit__(None, None, None)
        await self.listener.close()
        await self.pool.close()


@dataclass(frozen=True)
class PgQueuerPeer:
    system: str
    batch_size: int
    debounce: timedelta | None  # None: the CompletionWatcher's default (50 ms)
    config: str
    blocking: bool = False

    def check(self, run: Run) -> None:
        try:
            import asyncpg  # noqa: F401
            import pgqueuer  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"not installed ({e}; pip install -e '.[bench]')") from e
        servers.ensure_database(run.postgres)

    def setup(self, run: Run) -> None:
        servers.create_schema(run.postgres, run.namespace)
        asyncio.run(_install(run))

    def teardown(self, run: Run) -> None:
        servers.drop_schema(run.postgres, run.namespace)

    def workers(self, run: Run) -> list[WorkerProcess]:
        argv = python_module("bench.peers", "worker", self.system, run.to_json())
        return [WorkerProcess(argv, "ready") for _ in range(WORKER_PROCESSES)]

    def server_pids(self, run: Run) -> list[int]:
        return servers.backends(run.postgres, run.namespace)

    async def producer(self, run: Run) -> Producer:
        return await Producer.open(run, self.debounce)


PEER = PgQueuerPeer(
    "pgqueuer",
    BATCH_SIZE,
    None,
    f"asyncpg driver, uvloop, batch_size {BATCH_SIZE}, durable tables, "
    f"{WORKER_PROCESSES} worker processes; completions awaited with CompletionWatcher "
    "(its defaults)",
)
LATENCY = PgQueuerPeer(
    "pgqueuer-b1",
    LATENCY_BATCH_SIZE,
    timedelta(0),
    f"as pgqueuer, but batch_size {LATENCY_BATCH_SIZE} and the CompletionWatcher's debounce 0",
)


async def _serve(run: Run, batch_size: int) -> None:
    from pgqueuer import PgQueuer
    from pgqueuer.models import Job

    conn = await _connect(run)
    pgq = PgQueuer.from_asyncpg_connection(conn)

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        """The trivial task: pgqueuer keeps no result."""

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    print("ready", flush=True)
    try:
        await pgq.run(batch_size=batch_size)
    finally:
        await conn.close()


def serve(system: str, run: Run) -> None:
    """A worker process (python -m bench.peers worker pgqueuer|pgqueuer-b1 RUN)."""
    import uvloop

    peer = LATENCY if system == LATENCY.system else PEER
    uvloop.run(_serve(run, peer.batch_size))
