"""The output layer of the ``errands`` command: the one place in errands that
writes to stdout (library code only logs).

Humans get aligned tables and ``Field  value`` blocks; scripts (``--json``) get
one JSON document: times as ISO 8601 UTC strings, durations as seconds, enums
by name, failures as ``{"type", "message", ...}``, search attributes as
``{"name": value}``.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from errands.client import (
    ActivityAttempt,
    ActivityExecution,
    ActivityExecutionCount,
    ActivityExecutionDescription,
    ActivityExecutionOptions,
    WorkerInfo,
)
from errands.common import Priority, RetryPolicy, TypedSearchAttributes
from errands.exceptions import ApplicationError, FailureError, TimeoutError

# --------------------------------------------------------------------------- writing


def line(text: str = "") -> None:
    """Write one line to stdout."""
    click.echo(text)


def as_json(value: Any) -> None:
    """Write a value as one indented JSON document."""
    click.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Write rows under upper-case headers, each column as wide as its widest cell."""
    cells = [[h.upper() for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields(pairs: Iterable[tuple[str, str | None]]) -> None:
    """Write ``name  value`` lines, names aligned; pairs whose value is None are left out."""
    shown = [(name, value) for name, value in pairs if value is not None]
    width = max(len(name) for name, _ in shown)
    for name, value in shown:
        click.echo(f"{name.ljust(width)}  {value}")


# --------------------------------------------------------------------------- JSON


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (see the module docstring for the mapping)."""
    if isinstance(value, enum.Enum):  # before int: IntEnum is an int
        return value.name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, FailureError):
        return failure_json(value)
    if isinstance(value, TypedSearchAttributes):
        return {key.name: jsonable(v) for key, v in value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return str(value)


def failure_json(error: FailureError) -> dict[str, Any]:
    """A failure as ``{"type", "message", ...}`` with its kind's own fields."""
    out: dict[str, Any] = {"type": type(error).__name__, "message": error.message}
    if isinstance(error, ApplicationError):
        out["error_type"] = error.type
        out["non_retryable"] = error.non_retryable
    elif isinstance(error, TimeoutError):
        out["timeout_type"] = None if error.type is None else error.type.name
    if error.details:
        out["details"] = jsonable(list(error.details))
    return out


def description_json(
    desc: ActivityExecutionDescription, heartbeat_details: Sequence[Any]
) -> dict[str, Any]:
    """A description with its decoded heartbeat details."""
    out: dict[str, Any] = jsonable(desc)
    out["heartbeat_details"] = jsonable(list(heartbeat_details))
    return out


def count_json(counted: ActivityExecutionCount) -> dict[str, Any]:
    """A count as ``{"count": n, "groups": {"Running": n, ...}}`` (groups only if grouped)."""
    out: dict[str, Any] = {"count": counted.count}
    if counted.groups:
        out["groups"] = {str(g.group_values[0]): g.count for g in counted.groups}
    return out


# --------------------------------------------------------------------------- human text


def when(value: datetime | None) -> str:
    """``2025-06-01 12:00:03.250Z`` (UTC, milliseconds), or ``-``."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def duration(value: timedelta | None) -> str:
    """A duration in the syntax the options take: ``250ms``, ``1.5s``, ``2h5m``, ``7d``."""
    if value is None:
        return "-"
    ms = round(value.total_seconds() * 1000)
    if ms < 1000:
        return f"{ms}ms"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    if ms:
        seconds = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
        parts.append(f"{seconds}s")
    return "".join(parts)


def failure(error: FailureError) -> str:
    """One line for a failure: ``ValueError: bad input (non-retryable)``."""
    if isinstance(error, ApplicationError):
        kind = error.type or "ApplicationError"
        suffix = " (non-retryable)" if error.non_retryable else ""
        return f"{kind}: {error.message}{suffix}"
    if isinstance(error, TimeoutError) and error.type is not None:
        return f"TimeoutError ({error.type.name}): {error.message}"
    return f"{type(error).__name__}: {error.message}"


def attempts(found: Sequence[ActivityAttempt]) -> None:
    """The ``errands attempts`` table."""
    table(
        ["ATTEMPT", "OUTCOME", "STARTED", "CLOSED", "WORKER", "HEARTBEATS", "FAILURE"],
        [
            [
                str(a.attempt),
                a.outcome.name,
                when(a.started_time),
                when(a.closed_time),
                a.worker_identity or "-",
                str(a.heartbeat_count),
                "-" if a.failure is None else failure(a.failure),
            ]
            for a in found
        ],
    )


def workers(found: Sequence[WorkerInfo]) -> None:
    """The ``errands workers`` table."""
    if not found:
        line("No workers.")
        return
    table(
        [
            "identity",
            "host",
            "pid",
            "task queue",
            "slots used",
            "executor",
            "started (utc)",
            "last seen (utc)",
        ],
        (
            [
                w.identity,
                w.host,
                str(w.pid),
                ", ".join(w.task_queues),
                f"{w.slots_used}/{w.slots}",
                w.executor,
                when(w.started_time)[:-1],
                when(w.last_seen_time)[:-1],
            ]
            for w in found
        ),
    )


def executions(found: Sequence[ActivityExecution], more: bool) -> None:
    """The ``errands list`` table."""
    if not found:
        line("No activities.")
        return
    table(
        ["activity id", "type", "status", "task queue", "scheduled (utc)", "duration"],
        (
            [
                e.activity_id,
                e.activity_type,
                e.status.name,
                e.task_queue,
                when(e.schedule_time)[:-1],
                duration(e.execution_duration),
            ]
            for e in found
        ),
    )
    if more:
        click.echo(f"(the newest {len(found)} shown; raise --limit for more)", err=True)


def description(desc: ActivityExecutionDescription, heartbeat_details: Sequence[Any]) -> None:
    """The ``errands describe`` block."""
    status = desc.status.name
    if desc.run_state is not None:
        status += f" ({desc.run_state.name})"
    fields(
        [
            ("Activity ID", desc.activity_id),
            ("Run ID", desc.activity_run_id),
            ("Type", desc.activity_type),
            ("Status", status),
            ("Task queue", desc.task_queue),
            ("Namespace", desc.namespace),
            ("Attempt", str(desc.attempt)),
            ("Scheduled", when(desc.schedule_time)),
            ("Started", _opt(when, desc.last_started_time)),
            ("Next attempt", _opt(when, desc.next_attempt_schedule_time)),
            ("Closed", _opt(when, desc.close_time)),
            ("Duration", _opt(duration, desc.execution_duration)),
            ("Worker", desc.last_worker_identity),
            ("Heartbeats", str(desc.total_heartbeat_count)),
            ("Last heartbeat", _opt(when, desc.last_heartbeat_time)),
            (
                "Heartbeat details",
                json.dumps(jsonable(list(heartbeat_details)), ensure_ascii=False)
                if heartbeat_details
                else None,
            ),
            ("Timeouts", _timeouts(desc)),
            ("Retry policy", _opt(retry_policy, desc.retry_policy)),
            ("Retry interval", _opt(duration, desc.current_retry_interval)),
            ("Expires", _opt(when, desc.expiration_time)),
            ("Priority", _priority(desc.priority)),
            ("Cancel reason", desc.canceled_reason),
            ("Last failure", _opt(failure, desc.last_failure)),
            (
                "Search attributes",
                json.dumps(jsonable(desc.typed_search_attributes), ensure_ascii=False)
                if desc.typed_search_attributes
                else None,
            ),
        ]
    )


def options(opts: ActivityExecutionOptions) -> None:
    """The ``errands update-options`` block: the options after."""
    fields(
        [
            ("Task queue", opts.task_queue),
            ("Timeouts", _timeouts(opts)),
            ("Start delay", _opt(duration, opts.start_delay)),
            ("Retry policy", retry_policy(opts.retry_policy)),
            ("Priority", _priority(opts.priority)),
        ]
    )


def _timeouts(of: ActivityExecutionDescription | ActivityExecutionOptions) -> str | None:
    """``schedule_to_close 1m, start_to_close 30s``: the timeouts that are set."""
    text = ", ".join(
        f"{name} {duration(value)}"
        for name, value in (
            ("schedule_to_close", of.schedule_to_close_timeout),
            ("schedule_to_start", of.schedule_to_start_timeout),
            ("start_to_close", of.start_to_close_timeout),
            ("heartbeat", of.heartbeat_timeout),
        )
        if value is not None
    )
    return text or None


def retry_policy(policy: RetryPolicy) -> str:
    """``initial 1s, backoff 2.0, max interval 1m40s, max attempts unlimited``."""
    maximum = policy.maximum_interval or policy.initial_interval * 100
    attempts = str(policy.maximum_attempts) if policy.maximum_attempts else "unlimited"
    text = (
        f"initial {duration(policy.initial_interval)}, backoff {policy.backoff_coefficient}, "
        f"max interval {duration(maximum)}, max attempts {attempts}"
    )
    if policy.non_retryable_error_types:
        text += f", non-retryable {', '.join(policy.non_retryable_error_types)}"
    return text


def count(counted: ActivityExecutionCount) -> None:
    """The ``errands count`` output: the number, or a table per status."""
    if not counted.groups:
        line(str(counted.count))
        return
    table(
        ["status", "count"],
        [
            *([str(g.group_values[0]), str(g.count)] for g in counted.groups),
            ["total", str(counted.count)],
        ],
    )


def _priority(priority: Priority) -> str | None:
    return None if priority.priority_key is None else str(priority.priority_key)


def _opt(render: Any, value: Any) -> str | None:
    return None if value is None else str(render(value))
