"""Execution rows as both dialects keep them, and how a row becomes an
ExecutionRecord or a ClaimedTask: by column name, never by position."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from errands._lifecycle import RunState, Status
from errands.common import RetryPolicy
from errands.exceptions import TimeoutType
from errands.store._base import (
    OPTION_FIELDS,
    AttemptRecord,
    ClaimedTask,
    ClosedRun,
    ExecutionOptions,
    ExecutionRecord,
    WorkerRecord,
)

Row = Mapping[str, Any]
"""A row as both dialects return it: values by column name."""

QUERY_FIELDS = {
    "ActivityId": "activity_id",
    "ActivityType": "activity_type",
    "TaskQueue": "task_queue",
    # Paused executions are RUNNING rows whose run state is PAUSED.
    "ExecutionStatus": "(CASE WHEN run_state = 'PAUSED' THEN 'PAUSED' ELSE status END)",
}
"""Visibility query fields and the columns they name."""

_policy_cache: dict[str, RetryPolicy] = {}


def policy(text: str) -> RetryPolicy:
    """The policy ``policy_text`` wrote (cached: policies repeat)."""
    found = _policy_cache.get(text)
    if found is None:
        if len(_policy_cache) > 1000:
            _policy_cache.clear()
        found = _policy_cache[text] = RetryPolicy.from_dict(json.loads(text))
    return found


_policy_text_cache: dict[RetryPolicy, str] = {}


def policy_text(retry_policy: RetryPolicy) -> str:
    """The policy as the JSON text the stores keep (cached: policies repeat)."""
    text = _policy_text_cache.get(retry_policy)
    if text is None:
        if len(_policy_text_cache) > 1000:
            _policy_text_cache.clear()
        text = json.dumps(retry_policy.to_dict(), separators=(",", ":"))
        _policy_text_cache[retry_policy] = text
    return text


_SAME = (
    "namespace",
    "activity_id",
    "run_id",
    "activity_type",
    "task_queue",
    "schedule_time",
    "started_time",
    "schedule_to_close_s",
    "schedule_to_start_s",
    "start_to_close_s",
    "heartbeat_s",
    "priority_key",
)
"""Columns a record and a task take as they are, under the column's name."""


def _shared(row: Row) -> dict[str, Any]:
    """The fields an ExecutionRecord and a ClaimedTask decode alike."""
    fields = {name: row[name] for name in _SAME}
    fields["attempt"] = row["attempt"] - row["attempt_base"]
    fields["serial"] = row["attempt"]
    fields["input"] = bytes(row["input"])
    fields["heartbeat_details"] = optional_bytes(row["heartbeat_details"])
    fields["current_attempt_scheduled_time"] = row["ready_at"]
    fields["retry_policy"] = policy(row["retry_policy"])
    return fields


def record(row: Row) -> ExecutionRecord:
    """An ExecutionRecord from a row of the ``executions`` table."""
    timeout_type = row["timeout_type"]
    return ExecutionRecord(
        **_shared(row),
        status=Status(row["status"]),
        run_state=None if row["run_state"] is None else RunState(row["run_state"]),
        result=optional_bytes(row["result"]),
        failure=optional_bytes(row["failure"]),
        timeout_type=None if timeout_type is None else TimeoutType(timeout_type),
        heartbeat_count=row["heartbeat_count"],
        last_heartbeat_time=row["last_heartbeat_time"],
        close_time=row["close_time"],
        start_delay_s=row["start_delay_s"],
        canceled_reason=row["canceled_reason"],
        identity=row["identity"],
        summary=row["summary"],
        retry_interval_s=row["retry_interval_s"],
        cancel_requested=bool(row["cancel_requested"]),
    )


def task(row: Row) -> ClaimedTask:
    """A ClaimedTask from a row a claim returned."""
    return ClaimedTask(**_shared(row))


def attempt(row: Row) -> AttemptRecord:
    """An AttemptRecord from a row of the ``attempts`` table."""
    return AttemptRecord(
        run_id=row["run_id"],
        attempt=row["attempt_number"],
        serial=row["attempt"],
        started_time=row["started_time"],
        closed_time=row["closed_time"],
        identity=row["identity"],
        outcome=row["outcome"],
        failure=optional_bytes(row["failure"]),
        heartbeats_before=row["heartbeats_before"],
        heartbeat_count=row["heartbeat_count"],
        last_heartbeat_time=row["last_heartbeat_time"],
    )


def options(row: Row) -> ExecutionOptions:
    """An execution's options, from its row."""
    fields = {name: row[name] for name in OPTION_FIELDS}
    fields["retry_policy"] = policy(row["retry_policy"])
    return ExecutionOptions(**fields)


def options_text(opts: ExecutionOptions) -> str:
    """Options as the JSON text kept in ``original_options``."""
    fields = {name: getattr(opts, name) for name in OPTION_FIELDS}
    fields["retry_policy"] = policy_text(opts.retry_policy)
    return json.dumps(fields, separators=(",", ":"))


def options_from_text(text: str) -> ExecutionOptions:
    """The options ``options_text`` wrote."""
    return options(json.loads(text))


def worker(row: Row, namespace: str) -> WorkerRecord:
    """A WorkerRecord from a row of ``workers_of_namespace``."""
    return WorkerRecord(
        worker_id=row["worker_id"],
        namespace=namespace,
        identity=row["identity"],
        host=row["host"],
        pid=row["pid"],
        task_queue=row["task_queue"],
        slots=row["slots"],
        executor=row["executor"],
        started=row["started"],
        last_seen=row["last_seen"],
        used=int(row["used"]),
    )


def closed_run(row: Row) -> ClosedRun:
    """A ClosedRun from a row of run_id, status and result."""
    return ClosedRun(row["run_id"], Status(row["status"]), optional_bytes(row["result"]))


def optional_bytes(value: Any) -> bytes | None:
    """A nullable binary column as bytes (drivers may return memoryview)."""
    return None if value is None else bytes(value)


def not_found(namespace: str, activity_id: str, run_id: str | None) -> str:
    """The message of an ActivityNotFoundError for that id (and run)."""
    run = "" if run_id is None else f" run {run_id!r}"
    return f"no activity execution {activity_id!r}{run} in namespace {namespace!r}"
