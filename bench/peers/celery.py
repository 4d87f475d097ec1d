"""Celery 5 as two peers, both with the local RabbitMQ as the broker: rpc
results (sent back as AMQP messages; not durable), and acks_late with
results in PostgreSQL (database bench_peers, a fresh schema per run;
durable).

Configuration, from Celery's optimizing guide: for many short tasks a large
prefetch, ``worker_prefetch_multiplier`` 128 (the guide: "Say 64, or 128");
the prefork pool at its default concurrency (one child per core, 2);
persistent queues (the default; transient ones would lose tasks); a broker
connection pool of BROKER_POOL (the guide sizes it by the threads that
publish; 500 lanes would pass RabbitMQ's socket limit here, 832, beside
the result consumers). Results: ``AsyncResult.get``; on PostgreSQL each
look opens a connection of its own in a process that is not a worker (Celery's
database backend uses NullPool there), so the producer polls every POLL_S
with at most POLL_CONNECTIONS looks at once (the server allows 100
connections, shared). Bulk enqueue: a ``group`` (one publish per task on one
producer connection: Celery has no bulk publish)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.peers import Run, Unavailable, WorkerProcess
from bench.peers import _servers as servers
from bench.peers._run import python_module

PREFETCH_MULTIPLIER = 128
CONCURRENCY = 2
BROKER_POOL = 100
POLL_S = 0.001
POLL_CONNECTIONS = 16
RESULT_TIMEOUT_S = 120.0
TASK = "noop"


def _noop(i: int) -> int:
    """The trivial task."""
    return i


def _app(run: Run, on_postgres: bool) -> Any:
    import celery

    app = celery.Celery("bench", broker=servers.RABBITMQ_URL, set_as_current=False)
    backend = "rpc://"
    if on_postgres:
        url = servers.database_url(run.postgres).replace("postgresql://", "postgresql+psycopg://")
        backend = f"db+{url}"
    app.conf.update(
        result_backend=backend,
        task_default_queue=run.namespace,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        broker_pool_limit=BROKER_POOL,
        task_acks_late=on_postgres,
        database_table_schemas={"task": run.namespace, "group": run.namespace},
        database_engine_options={
            "connect_args": {"application_name": servers.application(run.namespace)}
        },
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=TASK)(_noop)
    return app


class Producer:
    def __init__(self, app: Any, run: Run, on_postgres: bool) -> None:
        self.app = app
        self.task = app.tasks[TASK]
        self.run = run
        self.on_postgres = on_postgres
        self.looks = threading.BoundedSemaphore(POLL_CONNECTIONS)

    async def enqueue(self, i: int) -> tuple[Any, int]:
        return self.task.apply_async((i,)), i

    async def enqueue_many(self, items: Sequence[int]) -> list[tuple[Any, int]]:
        import celery

        if not items:
            return []
        started = celery.group(self.task.s(i) for i in items).apply_async()
        return list(zip(started.results, items, strict=True))

    async def result(self, started: tuple[Any, int]) -> Any:
        handle, _ = started
        if self.on_postgres:
            deadline = time.monotonic() + RESULT_TIMEOUT_S
            while True:
                with self.looks:
                    if handle.ready():  # one query (and connection); the meta is then cached
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"task {handle.id} did not complete")
                time.sleep(POLL_S)
        return handle.get(timeout=RESULT_TIMEOUT_S)

    async def results(self, handles: Sequence[tuple[Any, int]]) -> list[Any] | None:
        """None with rpc results: the backend keeps at most 8,192 results
        nobody awaited yet in memory (MESSAGE_BUFFER_MAX), so the earlier ones
        of a large run are gone once the last was awaited."""
        return self._look_all(handles) if self.on_postgres else None

    def _look_all(self, handles: Sequence[tuple[Any, int]]) -> list[int]:
        """One query for every task's state (the results are the tasks'
        arguments once all succeeded: the check is that they did)."""
        import psycopg

        ids = [h.id for h, _ in handles]
        with psycopg.connect(servers.database_url(self.run.postgres)) as conn:
            rows = conn.execute(
                f'SELECT status, count(*) FROM "{self.run.namespace}".celery_taskmeta '
                "WHERE task_id = ANY(%s) GROUP BY status",
                (ids,),
            ).fetchall()
        counts = dict(rows)
        if counts.get("SUCCESS") != len(ids):
            raise RuntimeError(f"celery tasks did not all succeed: {counts}")
        return [i for _, i in handles]

    async def close(self) -> None:
        self.app.close()


@dataclass(frozen=True)
class CeleryPeer:
    on_postgres: bool
    config: str
    blocking: bool = True

    def check(self, run: Run) -> None:
        try:
            import celery  # noqa: F401

            if self.on_postgres:
                import sqlalchemy  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"not installed ({e}; pip install -e '.[bench]')") from e
        servers.reachable(servers.RABBITMQ, "RabbitMQ")
        if self.on_postgres:
            servers.ensure_database(run.postgres)

    def setup(self, run: Run) -> None:
        if self.on_postgres:
            servers.create_schema(run.postgres, run.namespace)

    def teardown(self, run: Run) -> None:
        _delete_queue(run.namespace)
        if self.on_postgres:
            servers.drop_schema(run.postgres, run.namespace)

    def workers(self, run: Run) -> list[WorkerProcess]:
        system = "celery-pg" if self.on_postgres else "celery-rpc"
        argv = python_module("bench.peers", "worker", system, run.to_json())
        return [WorkerProcess(argv, "ready")]

    def server_pids(self, run: Run) -> list[int]:
        pids = servers.listener_pids(servers.RABBITMQ[1])
        if self.on_postgres:
            pids += servers.backends(run.postgres, run.namespace)
        return pids

    async def producer(self, run: Run) -> Producer:
        return Producer(_app(run, self.on_postgres), run, self.on_postgres)


RPC = CeleryPeer(
    False,
    f"prefork x{CONCURRENCY}, prefetch multiplier {PREFETCH_MULTIPLIER}, persistent queue, "
    "rpc:// results",
)
POSTGRES = CeleryPeer(
    True,
    f"prefork x{CONCURRENCY}, prefetch multiplier {PREFETCH_MULTIPLIER}, persistent queue, "
    f"task_acks_late, db+postgresql results polled every {POLL_S * 1000:g} ms",
)


def _delete_queue(name: str) -> None:
    """Remove the run's queue from RabbitMQ."""
    import kombu

    with kombu.Connection(servers.RABBITMQ_URL) as conn:
        conn.default_channel.queue_delete(name)


def serve(system: str, run: Run) -> None:
    """A worker process (python -m bench.peers worker celery-rpc|celery-pg RUN):
    Celery's worker, which forks its prefork children; says "ready" on worker_ready."""
    from celery.signals import worker_ready

    app = _app(run, system == "celery-pg")

    @worker_ready.connect  # type: ignore[untyped-decorator,misc]
    def ready(**_: Any) -> None:
        print("ready", flush=True)

    app.worker_main(
        ["worker", "--loglevel=WARNING", f"--concurrency={CONCURRENCY}", "--pool=prefork",
         f"--hostname=bench-{run.namespace}@%h"]
    )  # fmt: skip
