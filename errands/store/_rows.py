"""Execution rows as both stores keep them: the columns they select, and how
a row becomes an ExecutionRecord or a ClaimedTask. The two backends store the
same columns, so they decode them with the same code."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from errands._lifecycle import RunState, Status
from errands.common import RetryPolicy
from errands.exceptions import TimeoutType
from errands.store._base import ClaimedTask, ExecutionRecord

RECORD_COLUMNS = (
    "namespace, activity_id, run_id, activity_type, task_queue, status, run_state, attempt, "
    "input, result, failure, timeout_type, heartbeat_details, heartbeat_count, "
    "last_heartbeat_time, schedule_time, ready_at, started_time, close_time, "
    "schedule_to_close_s, schedule_to_start_s, start_to_close_s, heartbeat_s, retry_policy, "
    "priority_key, start_delay_s, canceled_reason, identity, summary, retry_interval_s, "
    "cancel_requested"
)

TASK_COLUMNS = (
    "namespace, activity_id, run_id, activity_type, task_queue, attempt, input, "
    "heartbeat_details, schedule_time, ready_at, started_time, schedule_to_close_s, "
    "schedule_to_start_s, start_to_close_s, heartbeat_s, retry_policy, priority_key, id"
)

# The columns the lifecycle needs to decide a failure or a timeout.
DECIDE_COLUMNS = (
    "id, run_id, attempt, run_state, retry_policy, cancel_requested, s2c_deadline, ready_at, "
    "started_time, last_heartbeat_time, schedule_to_start_s, start_to_close_s, heartbeat_s, "
    "deadline"
)

QUERY_FIELDS = {
    "ActivityId": "activity_id",
    "ActivityType": "activity_type",
    "TaskQueue": "task_queue",
    "ExecutionStatus": "status",
}

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


def record(row: Sequence[Any]) -> ExecutionRecord:
    """An ExecutionRecord from a row of RECORD_COLUMNS."""
    return ExecutionRecord(
        namespace=row[0],
        activity_id=row[1],
        run_id=row[2],
        activity_type=row[3],
        task_queue=row[4],
        status=Status(row[5]),
        run_state=None if row[6] is None else RunState(row[6]),
        attempt=row[7],
        input=row[8],
        result=row[9],
        failure=row[10],
        timeout_type=None if row[11] is None else TimeoutType(row[11]),
        heartbeat_details=row[12],
        heartbeat_count=row[13],
        last_heartbeat_time=row[14],
        schedule_time=row[15],
        current_attempt_scheduled_time=row[16],
        started_time=row[17],
        close_time=row[18],
        schedule_to_close_s=row[19],
        schedule_to_start_s=row[20],
        start_to_close_s=row[21],
        heartbeat_s=row[22],
        retry_policy=policy(row[23]),
        priority_key=row[24],
        start_delay_s=row[25],
        canceled_reason=row[26],
        identity=row[27],
        summary=row[28],
        retry_interval_s=row[29],
        cancel_requested=bool(row[30]),
    )


def task(row: Sequence[Any]) -> ClaimedTask:
    """A ClaimedTask from a row of TASK_COLUMNS."""
    return ClaimedTask(
        namespace=row[0],
        activity_id=row[1],
        run_id=row[2],
        activity_type=row[3],
        task_queue=row[4],
        attempt=row[5],
        input=row[6],
        heartbeat_details=row[7],
        schedule_time=row[8],
        current_attempt_scheduled_time=row[9],
        started_time=row[10],
        schedule_to_close_s=row[11],
        schedule_to_start_s=row[12],
        start_to_close_s=row[13],
        heartbeat_s=row[14],
        retry_policy=policy(row[15]),
        priority_key=row[16],
    )


def not_found(namespace: str, activity_id: str, run_id: str | None) -> str:
    """The message of an ActivityNotFoundError for that id (and run)."""
    run = "" if run_id is None else f" run {run_id!r}"
    return f"no activity execution {activity_id!r}{run} in namespace {namespace!r}"
