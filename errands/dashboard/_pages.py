"""What each page shows, read through the client's public API: plain data
for the templates. A query the user typed that the language refuses is
shown as an error on the page, never raised."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from errands._query import STATUS_NAMES, quote_string, without_order
from errands.client import (
    ActivityAttempt,
    ActivityExecution,
    ActivityExecutionDescription,
    ActivityExecutionStatus,
    Client,
    WorkerInfo,
)
from errands.exceptions import ActivityNotFoundError, FailureError

PAGE_SIZE = 50
"""Activities per page of the list."""

FACET_LIMIT = 12
"""Most values a facet (types, queues) lists."""

STATUS_ORDER = ["Running", "Paused", "Completed", "Failed", "Canceled", "Terminated", "TimedOut"]
"""The statuses in the order the count bar shows them (the query language's names)."""

STATUS_OF = {name: ActivityExecutionStatus[status.name] for name, status in STATUS_NAMES.items()}

OPEN = "ExecutionStatus IN ('Running', 'Paused')"

COMPLETIONS_WINDOW = timedelta(minutes=1)
"""Completions per minute are counted over this window."""


def narrowed(query: str | None, condition: str) -> str:
    """``query``'s condition (without its ORDER BY) AND ``condition``."""
    where = without_order(query)
    return condition if where is None else f"({where}) AND {condition}"


def with_term(query: str | None, field_name: str, value: str) -> str:
    """The query with ``field = 'value'`` added (a facet's link)."""
    term = f"{field_name} = {quote_string(value)}"
    where = without_order(query)
    if where is not None and term in where:
        return where
    return term if where is None else f"{where} AND {term}"


@dataclass
class Facet:
    """Values of a field among the matching activities, with their counts."""

    label: str
    values: list[tuple[str, int, str]]
    """(value, count, the query narrowed to it)."""


@dataclass
class ActivitiesPage:
    query: str
    page: int
    error: str | None = None
    total: int = 0
    counts: list[tuple[str, int, str]] = field(default_factory=list)
    """(status, count, the query narrowed to it) for every status."""
    rows: list[ActivityExecution] = field(default_factory=list)
    more: bool = False
    facets: list[Facet] = field(default_factory=list)


async def activities(client: Client, query: str, page: int) -> ActivitiesPage:
    """The list page: counts by status, facets and one page of the matching
    activities, newest first (or in the query's ORDER BY)."""
    shown = ActivitiesPage(query=query, page=page)
    text = query.strip() or None
    where = without_order(text)
    try:
        listed, by_status, by_type, by_queue = await asyncio.gather(
            _page(client, text, page),
            client.count_activities(f"{where or ''} GROUP BY ExecutionStatus"),
            client.count_activities(f"{where or ''} GROUP BY ActivityType"),
            client.count_activities(f"{where or ''} GROUP BY TaskQueue"),
        )
    except ValueError as e:
        shown.error = str(e)
        return shown
    shown.rows, shown.more = listed
    found = {str(g.group_values[0]): g.count for g in by_status.groups}
    shown.total = by_status.count
    shown.counts = [
        (name, found.get(name, 0), narrowed(text, f"ExecutionStatus = '{name}'"))
        for name in STATUS_ORDER
    ]
    shown.facets = [
        Facet(
            label,
            [
                (str(g.group_values[0]), g.count, with_term(text, name, str(g.group_values[0])))
                for g in counted.groups[:FACET_LIMIT]
            ],
        )
        for name, label, counted in (
            ("ActivityType", "Type", by_type),
            ("TaskQueue", "Task queue", by_queue),
        )
    ]
    return shown


async def _page(
    client: Client, query: str | None, page: int
) -> tuple[list[ActivityExecution], bool]:
    # Pages by offset: the listing API has no cursor, and the first pages,
    # which are what people look at, cost a few rows more each.
    wanted = (page + 1) * PAGE_SIZE + 1
    found = [e async for e in client.list_activities(query, limit=wanted)]
    return found[page * PAGE_SIZE : (page + 1) * PAGE_SIZE], len(found) == wanted


@dataclass
class ActivityPage:
    activity_id: str
    run_id: str | None
    description: ActivityExecutionDescription | None = None
    heartbeat_details: Sequence[Any] = ()
    attempts: list[ActivityAttempt] = field(default_factory=list)
    unreadable: str | None = None
    """Why the payloads could not be decoded, if they could not."""
    missing: bool = False

    @property
    def is_open(self) -> bool:
        d = self.description
        return d is not None and d.status in (
            ActivityExecutionStatus.RUNNING,
            ActivityExecutionStatus.PAUSED,
        )

    @property
    def outcome(self) -> FailureError | None:
        d = self.description
        return None if d is None else d.failure


async def activity(client: Client, activity_id: str, run_id: str | None) -> ActivityPage:
    """The detail page: the description with its payloads decoded, the
    heartbeat details and every kept attempt."""
    shown = ActivityPage(activity_id, run_id)
    handle = client.get_activity_handle(activity_id, run_id=run_id)
    try:
        try:
            desc = await handle.describe(
                include_input=True,
                include_outcome=True,
                include_heartbeat_details=True,
                include_last_failure=True,
            )
        except (ValueError, TypeError) as e:  # a payload the converter cannot read
            shown.unreadable = str(e)
            desc = await handle.describe()
        shown.description = desc
        shown.heartbeat_details = await desc.heartbeat_details()
        try:
            shown.attempts = await handle.attempts()
        except (ValueError, TypeError) as e:
            shown.unreadable = shown.unreadable or str(e)
    except ActivityNotFoundError:
        shown.missing = True
    return shown


@dataclass
class QueueRow:
    name: str
    backlog: int = 0
    """Claimable now, waiting for a worker."""
    oldest_ready: datetime | None = None
    """When the longest-waiting of those became claimable."""
    scheduled: int = 0
    """Waiting: claimable now, or waiting out a retry backoff or start delay."""
    running: int = 0
    paused: int = 0
    completed_last_minute: int = 0
    failed_last_minute: int = 0
    workers: int = 0
    slots_free: int = 0


async def queues(client: Client) -> list[QueueRow]:
    """Every task queue with open executions, recent closes or a worker: the
    counts come from the query language, the backlog from the store's read of
    its claim index (what the metrics report)."""
    since = (datetime.now(timezone.utc) - COMPLETIONS_WINDOW).isoformat()
    recent = f"CloseTime > {quote_string(since)}"
    counts = await asyncio.gather(
        client.count_activities("RunState = 'Scheduled' GROUP BY TaskQueue"),
        client.count_activities(
            "RunState IN ('Started', 'CancelRequested', 'PauseRequested') GROUP BY TaskQueue"
        ),
        client.count_activities("ExecutionStatus = 'Paused' GROUP BY TaskQueue"),
        client.count_activities(f"ExecutionStatus = 'Completed' AND {recent} GROUP BY TaskQueue"),
        client.count_activities(
            f"ExecutionStatus IN ('Failed', 'TimedOut') AND {recent} GROUP BY TaskQueue"
        ),
    )
    rows: dict[str, QueueRow] = {}
    for attribute, counted in zip(
        ("scheduled", "running", "paused", "completed_last_minute", "failed_last_minute"),
        counts,
        strict=True,
    ):
        for group in counted.groups:
            name = str(group.group_values[0])
            setattr(rows.setdefault(name, QueueRow(name)), attribute, group.count)
    for worker in await client.list_workers():
        for name in worker.task_queues:
            row = rows.setdefault(name, QueueRow(name))
            row.workers += 1
            row.slots_free += worker.slots_free

    now = datetime.now(timezone.utc)
    for found in await client.store.queue_backlog(client.namespace):
        row = rows.setdefault(found.task_queue, QueueRow(found.task_queue))
        row.backlog = found.backlog
        row.oldest_ready = now - timedelta(seconds=found.oldest_age_s)
    return sorted(rows.values(), key=lambda r: r.name)


async def workers(client: Client) -> list[WorkerInfo]:
    """The running workers, oldest first."""
    return await client.list_workers()
