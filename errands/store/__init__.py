"""The store interface, for backend authors: users never need it.

A store holds executions and speaks the lifecycle of one activity execution
in a few verbs; ``errands.store.sqlite`` is the embedded backend,
``errands.store.postgres`` the one for fleets of machines.
"""

from errands.store._base import (
    And,
    AttemptRecord,
    Between,
    ClaimedTask,
    ClaimResult,
    ClosedRun,
    Compare,
    ExecutionOptions,
    ExecutionRecord,
    Expr,
    FailureReport,
    Field,
    HeartbeatResult,
    In,
    IsNull,
    NewExecution,
    Not,
    Or,
    Query,
    QueueBacklog,
    StartResult,
    Store,
    WorkerRecord,
)

__all__ = [
    "And",
    "AttemptRecord",
    "Between",
    "ClaimResult",
    "ClaimedTask",
    "ClosedRun",
    "Compare",
    "ExecutionOptions",
    "ExecutionRecord",
    "Expr",
    "FailureReport",
    "Field",
    "HeartbeatResult",
    "In",
    "IsNull",
    "NewExecution",
    "Not",
    "Or",
    "Query",
    "QueueBacklog",
    "StartResult",
    "Store",
    "WorkerRecord",
]


async def open_store(url: str) -> Store:
    """Open the store a URL names: ``sqlite:///relative.db``, ``sqlite:////absolute.db``
    (``?busy_timeout_ms=N``: how long to wait for another process's write lock),
    or ``postgresql://user@host:5432/dbname?schema=errands`` (also ``postgres://``;
    ``schema`` picks the PostgreSQL schema, default ``errands``).

    Raises ValueError for an unknown scheme, StoreError if the store cannot be
    opened, and ImportError naming the extra to install when psycopg is missing.
    """
    if url.startswith("sqlite:"):
        from errands.store.sqlite import SQLiteStore, options_from_url, path_from_url

        return await SQLiteStore.open(path_from_url(url), **options_from_url(url))
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from errands.store.postgres import PostgresStore
        except ImportError as e:
            raise ImportError(
                f"the PostgreSQL store needs psycopg 3 and psycopg_pool ({e}): "
                "pip install 'errands[postgres]'"
            ) from e
        return await PostgresStore.open(url)
    raise ValueError(
        f"unknown store URL {url!r}: expected sqlite:///path.db or postgresql://host/dbname"
    )
