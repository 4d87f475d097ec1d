"""The store interface, for backend authors: users never need it.

A store holds executions and speaks the lifecycle of one activity execution
in a few verbs; ``errands.store.sqlite`` is the embedded backend.
"""

from errands.store._base import (
    ClaimedTask,
    ClaimResult,
    ClosedRun,
    Condition,
    ExecutionRecord,
    FailureReport,
    HeartbeatResult,
    Interrupt,
    NewExecution,
    Query,
    StartResult,
    Store,
)

__all__ = [
    "ClaimResult",
    "ClaimedTask",
    "ClosedRun",
    "Condition",
    "ExecutionRecord",
    "FailureReport",
    "HeartbeatResult",
    "Interrupt",
    "NewExecution",
    "Query",
    "StartResult",
    "Store",
]


async def open_store(url: str) -> Store:
    """Open the store a URL names: ``sqlite:///relative.db``, ``sqlite:////absolute.db``.

    Raises ValueError for an unknown scheme and StoreError if the store cannot
    be opened.
    """
    if url.startswith("sqlite:"):
        from errands.store.sqlite import SQLiteStore, path_from_url

        return await SQLiteStore.open(path_from_url(url))
    if url.startswith(("postgresql:", "postgres:")):
        raise ValueError(f"PostgreSQL store is not available in this version of errands: {url!r}")
    raise ValueError(f"unknown store URL {url!r}: expected sqlite:///path.db")
