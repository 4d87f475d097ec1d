"""The systems compared, behind one face: how to connect, which activities
(each system's own ``@activity.defn`` of the same bodies), how to run a
worker, and which exception a cancel ends in. Each system is imported only
when a run uses it, so an errands run never loads temporalio."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.compare._pool import Pool
from bench.peers import SYSTEMS

ERRANDS_SQLITE = "errands-sqlite"
ERRANDS_POSTGRES = "errands-postgres"
TEMPORAL = "temporal"

LABELS = {name: system.label for name, system in SYSTEMS.items()}
"""Every system's name in tables: errands' two stores, Temporal, and the
peers (bench.peers), which run the peer workloads only."""


@dataclass
class Side:
    """One system, as a run child uses it. ``target`` is the store URL
    (errands) or the server's host:port (Temporal); ``mode`` is Temporal's
    "standalone" or "workflow"."""

    system: str
    target: str
    mode: str
    noop: Callable[..., Any]
    spin: Callable[..., Any]
    noop_sync: Callable[..., Any]
    spin_sync: Callable[..., Any]
    crash: Callable[..., Any]
    cancel_seen_at: dict[str, float]
    cancelled_error: type[BaseException]
    spin_arg: Callable[[str], str]
    """The argument ``spin`` gets for the activity id given (its cancel_seen_at key)."""

    async def connect(self) -> tuple[Any, Any]:
        """(the client, what the workloads call start_activity on)."""
        if self.system == TEMPORAL:
            from bench.compare import _temporal

            client = await _temporal.connect(self.target)
            return client, _temporal.client_for(client, self.mode)
        from errands.client import Client

        errands_client = await Client.connect(self.target)
        return errands_client, errands_client

    async def close(self, client: Any) -> None:
        if self.system != TEMPORAL:  # a temporalio Client has nothing to close
            await client.close()

    @contextlib.asynccontextmanager
    async def worker(
        self,
        client: Any,
        task_queue: str,
        *,
        slots: int,
        pool: Pool | None,
        activities: Sequence[Callable[..., Any]] | None = None,
    ) -> AsyncIterator[None]:
        """A worker on ``task_queue`` in this process; ``activities`` default
        to the async ones, plus the sync ones when there is a pool."""
        if self.system == TEMPORAL:
            from bench.compare import _temporal

            async with _temporal.running_worker(
                client, task_queue, mode=self.mode, slots=slots, pool=pool, activities=activities
            ):
                yield
            return
        from bench import workloads as w
        from errands.worker import SharedStateManager, Worker

        if activities is not None:
            async with Worker(
                client,
                task_queue=task_queue,
                activities=activities,
                max_concurrent_activities=slots,
            ):
                yield
            return
        bench_pool = None
        if pool is not None:
            shared = None
            if pool.manager is not None:
                shared = SharedStateManager.create_from_multiprocessing(pool.manager)
            bench_pool = w.Pool(pool.executor, pool.manager, shared)
        async with w.running_worker(
            client, self.target, task_queue, child=False, slots=slots, pool=bench_pool
        ):
            yield

    def is_cancel(self, error: BaseException) -> bool:
        """Whether ``error`` (a failed result) was caused by a cancel."""
        seen: BaseException | None = error
        while seen is not None:
            if isinstance(seen, self.cancelled_error):
                return True
            seen = seen.__cause__
        return False


def split_schema(url: str) -> tuple[str, str]:
    """A PostgreSQL store URL as (the URL without ``?schema=``, the schema)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), "")
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), schema


def postgres_backends(url: str) -> Callable[[], list[int]]:
    """A function naming the PostgreSQL backends that serve errands on
    ``url``'s schema (errands names its connections ``errands:<schema>``)."""
    conninfo, schema = split_schema(url)

    def pids() -> list[int]:
        import psycopg

        with psycopg.connect(conninfo, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (f"errands:{schema}",),
            ).fetchall()
        return [int(row[0]) for row in rows]

    return pids


def side_for(system: str, target: str, mode: str = "") -> Side:
    if system == TEMPORAL:
        from temporalio import exceptions as temporal_exceptions

        from bench.compare import _temporal_activities as t

        return Side(
            system,
            target,
            mode,
            t.noop,
            t.spin,
            t.noop_sync,
            t.spin_sync,
            t.crash,
            t.cancel_seen_at,
            temporal_exceptions.CancelledError,
            lambda activity_id: activity_id,
        )
    from bench import activities as e
    from bench.compare import _errands_activities
    from errands import exceptions as errands_exceptions

    return Side(
        system,
        target,
        "",
        e.noop,
        e.spin,
        e.noop_sync,
        e.spin_sync,
        _errands_activities.crash,
        e.cancel_seen_at,
        errands_exceptions.CancelledError,
        lambda activity_id: "",  # bench.activities.spin keys by activity id; "" = no file
    )
