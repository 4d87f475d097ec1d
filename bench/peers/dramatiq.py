"""Dramatiq as a peer: RabbitMQ as the broker, results in Redis (the
Results middleware's RedisBackend; Redis keeps nothing on disk here, so
results are not durable).

Configuration, from Dramatiq's guide: its worker command's defaults, one
process per core (2) with 8 worker threads each, and prefetch twice the
threads (``dramatiq_queue_prefetch``'s default); the RabbitMQ broker with
``confirm_delivery`` off (its default). The worker command imports this
module, which builds the broker and the actor for the run named in the
environment (RUN_ENV). Results: ``Message.get_result(block=True)`` (a
blocking Redis pop: no polling; each waiting lane holds a connection, so the
Redis pool allows the lanes and 100 more, where redis-py's default is 100,
and reads without redis-py 8's 5 s socket timeout, which would end a
blocking pop that waits longer than that).
Bulk enqueue: a ``group`` (one publish per message: Dramatiq has no bulk
publish)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.peers import Run, Unavailable, WorkerProcess
from bench.peers import _servers as servers
from bench.peers._run import python_module

PROCESSES = 2
THREADS = 8
RESULT_TIMEOUT_MS = 120_000
RUN_ENV = "BENCH_PEERS_DRAMATIQ_RUN"
READY = "Worker process is ready for action."


def _noop(i: int) -> int:
    """The trivial task."""
    return i


def _actor(run: Run) -> Any:
    """The broker for ``run`` (set as Dramatiq's global broker, as the worker
    command wants) and the run's actor on it."""
    import dramatiq
    import redis
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.results import Results
    from dramatiq.results.backends.redis import RedisBackend

    broker = RabbitmqBroker(url=servers.RABBITMQ_URL)
    pool = redis.ConnectionPool.from_url(
        servers.REDIS_URL, max_connections=run.in_flight + 100, socket_timeout=None
    )
    client = redis.Redis(connection_pool=pool)
    broker.add_middleware(
        Results(backend=RedisBackend(client=client, namespace=_results_namespace(run)))
    )
    dramatiq.set_broker(broker)
    return dramatiq.actor(
        _noop, actor_name="noop", queue_name=run.namespace, store_results=True, broker=broker
    )


def _results_namespace(run: Run) -> str:
    return f"bench-peers-{run.namespace}"


ACTOR = _actor(Run.from_json(os.environ[RUN_ENV])) if RUN_ENV in os.environ else None
"""The actor, in the worker processes (which import this module by name)."""


class Producer:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def enqueue(self, i: int) -> Any:
        return self.actor.send(i)

    async def enqueue_many(self, items: Sequence[int]) -> list[Any]:
        import dramatiq

        messages = [self.actor.message(i) for i in items]
        if messages:
            dramatiq.group(messages).run()
        return messages

    async def result(self, message: Any) -> Any:
        return message.get_result(block=True, timeout=RESULT_TIMEOUT_MS)

    async def results(self, messages: Sequence[Any]) -> list[Any]:
        return [m.get_result(block=True, timeout=RESULT_TIMEOUT_MS) for m in messages]

    async def close(self) -> None:
        self.actor.broker.close()


@dataclass(frozen=True)
class DramatiqPeer:
    config: str = (
        f"{PROCESSES} processes x {THREADS} threads (the worker command's defaults), "
        "prefetch 2 x threads, RabbitMQ without publisher confirms, Redis results"
    )
    blocking: bool = True

    def check(self, run: Run) -> None:
        try:
            import dramatiq  # noqa: F401
            import pika  # noqa: F401
            import redis  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"not installed ({e}; pip install -e '.[bench]')") from e
        servers.reachable(servers.RABBITMQ, "RabbitMQ")
        servers.reachable(servers.REDIS, "Redis")

    def setup(self, run: Run) -> None:
        """Nothing: the broker declares the run's queue."""

    def teardown(self, run: Run) -> None:
        import kombu
        import redis

        with kombu.Connection(servers.RABBITMQ_URL) as conn:
            for suffix in ("", ".DQ", ".XQ"):  # the queue, its delay and dead-letter queues
                conn.default_channel.queue_delete(run.namespace + suffix)
        client = redis.Redis.from_url(servers.REDIS_URL)
        keys = list(client.scan_iter(f"{_results_namespace(run)}*"))
        if keys:
            client.delete(*keys)
        client.close()

    def workers(self, run: Run) -> list[WorkerProcess]:
        argv = python_module(
            "dramatiq", "bench.peers.dramatiq", "--processes", str(PROCESSES),
            "--threads", str(THREADS), "--queues", run.namespace,
        )  # fmt: skip
        return [WorkerProcess(argv, READY, PROCESSES, {RUN_ENV: run.to_json()})]

    def server_pids(self, run: Run) -> list[int]:
        return [
            *servers.listener_pids(servers.RABBITMQ[1]),
            *servers.listener_pids(servers.REDIS[1]),
        ]

    async def producer(self, run: Run) -> Producer:
        return Producer(_actor(run))


PEER = DramatiqPeer()
