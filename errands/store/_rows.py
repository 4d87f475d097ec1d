"""Execution rows as both dialects keep them, and how a row becomes an
ExecutionRecord or a ClaimedTask: by column name, never by position."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from errands._lifecycle import RunState, Status
from errands.common import (
    RetryPolicy,
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
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
    "ScheduleTime": "schedule_time",
    "CloseTime": "close_time",
    "Attempt": "(attempt - attempt_base)",  # the number users see (attempt is its serial)
    "RunState": "run_state",
}
"""Visibility query fields and the columns (or expressions) they name."""

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
        search_attributes=attributes(row["search_attributes"]),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
IVT = SearchAttributeIndexedValueType

VALUE_COLUMNS = {
    IVT.KEYWORD: "text_value",
    IVT.TEXT: "text_value",
    IVT.KEYWORD_LIST: "text_value",  # a row per distinct element
    IVT.INT: "int_value",
    IVT.BOOL: "int_value",  # 0 or 1
    IVT.DATETIME: "int_value",  # microseconds since the epoch
    IVT.DOUBLE: "float_value",
}
"""The column of the search_attributes table that holds a type's values."""


def attributes_text(typed: TypedSearchAttributes) -> str | None:
    """Search attributes as the JSON an execution's row keeps (None if
    none): ``{"name": ["KEYWORD", value]}``, a datetime in microseconds since
    the epoch."""
    if not typed:
        return None
    out: dict[str, list[Any]] = {}
    for key, value in typed:
        kind = key.indexed_value_type
        if kind is IVT.DATETIME:
            value = (value - _EPOCH) // _MICROSECOND
        elif kind is IVT.KEYWORD_LIST:
            value = list(value)
        out[key.name] = [kind.name, value]
    return json.dumps(out, separators=(",", ":"))


def attributes(text: str | None) -> TypedSearchAttributes:
    """The search attributes ``attributes_text`` wrote."""
    if not text:
        return TypedSearchAttributes.empty
    pairs: list[SearchAttributePair[Any]] = []
    for name, (kind_name, value) in json.loads(text).items():
        kind = IVT.__members__[kind_name]
        if kind is IVT.DATETIME:
            value = _EPOCH + value * _MICROSECOND
        pairs.append(SearchAttributePair(SearchAttributeKey(name, kind), value))
    return TypedSearchAttributes(pairs)


def attribute_rows(run_id: str, typed: TypedSearchAttributes) -> list[dict[str, Any]]:
    """The rows of the search_attributes table that index these values of a
    run: one per name, or per distinct element of a keyword list."""
    rows: list[dict[str, Any]] = []
    for key, value in typed:
        kind = key.indexed_value_type
        elements = dict.fromkeys(value) if kind is IVT.KEYWORD_LIST else [value]
        for position, element in enumerate(elements):
            row: dict[str, Any] = {
                "slot": f"{run_id}/{key.name}/{position}",  # unique: a bulk round's key
                "run_id": run_id,
                "name": key.name,
                "position": position,
                **dict.fromkeys(set(VALUE_COLUMNS.values())),
            }
            if kind is IVT.DATETIME:
                element = (element - _EPOCH) // _MICROSECOND
            row[VALUE_COLUMNS[kind]] = int(element) if kind is IVT.BOOL else element
            rows.append(row)
    return rows


def task(row: Row) -> ClaimedTask:
    """A ClaimedTask from a row a claim returned."""
    return ClaimedTask(**_shared(row), headers=optional_bytes(row["headers"]))


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
        timeout_type=None if row["timeout_type"] is None else TimeoutType(row["timeout_type"]),
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
