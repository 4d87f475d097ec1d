"""The actions the dashboard takes: on one activity through its handle, on
every activity a query matches through the client's bulk calls."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from errands.cli import parse_duration
from errands.client import (
    ActivityHandle,
    ActivityOptionsKeys,
    ActivityOptionsUpdate,
    Client,
)
from errands.common import Priority, RetryPolicy
from errands.dashboard._pages import OPEN, narrowed

BULK = {
    "cancel": "Cancel",
    "terminate": "Terminate",
    "pause": "Pause",
    "unpause": "Unpause",
    "reset": "Reset",
    "retry_now": "Retry now",
    "options": "Update options of",
}
"""The bulk actions, by form value, and how a button names them."""

AFFECTED = {
    "cancel": OPEN,
    "terminate": OPEN,
    "pause": "ExecutionStatus = 'Running' AND RunState != 'PauseRequested'",
    "unpause": "(ExecutionStatus = 'Paused' OR RunState = 'PauseRequested')",
    "reset": f"{OPEN} AND RunState != 'CancelRequested'",
    # Of these, those waiting out a backoff or a start delay (the query
    # language cannot tell them from those ready now).
    "retry_now": "RunState = 'Scheduled'",
    "options": OPEN,
}
"""Which matching activities each bulk action changes (for its confirmation)."""

TIMEOUT_FIELDS = {
    "schedule_to_close": ActivityOptionsKeys.schedule_to_close_timeout,
    "schedule_to_start": ActivityOptionsKeys.schedule_to_start_timeout,
    "start_to_close": ActivityOptionsKeys.start_to_close_timeout,
    "heartbeat": ActivityOptionsKeys.heartbeat_timeout,
    "start_delay": ActivityOptionsKeys.start_delay,
}

RETRY_FIELDS = {
    "retry_initial_interval": "initial_interval",
    "retry_backoff": "backoff_coefficient",
    "retry_maximum_interval": "maximum_interval",
    "retry_maximum_attempts": "maximum_attempts",
}


def _flag(form: Mapping[str, str], name: str) -> bool:
    return form.get(name, "") in ("1", "on", "true")


async def act(handle: ActivityHandle[Any], action: str, form: Mapping[str, str]) -> str:
    """Take ``action`` on one activity; the notice to show after.

    Raises ValueError for an unknown action, and what the handle raises
    (ActivityNotFoundError, ActivityAlreadyClosedError, ...).
    """
    reason = form.get("reason", "").strip() or None
    if action == "cancel":
        await handle.cancel(reason)
    elif action == "terminate":
        await handle.terminate(reason)
    elif action == "pause":
        await handle.pause(reason=reason)
    elif action == "unpause":
        await handle.unpause(reason=reason)
    elif action == "reset":
        await handle.reset(
            reason=reason,
            keep_paused=_flag(form, "keep_paused"),
            reset_heartbeat=_flag(form, "reset_heartbeat"),
            restore_original_options=_flag(form, "restore_original_options"),
        )
    elif action == "retry_now":
        if not await handle.retry_now():
            return "retry_now_idle"
    else:
        raise ValueError(f"unknown action {action!r}")
    return action


async def update_options(handle: ActivityHandle[Any], form: Mapping[str, str]) -> None:
    """Apply the options form: a field left empty is kept, ``none`` clears a
    timeout or the start delay; ``restore`` goes back to the start's options.

    Raises ValueError for a bad value or nothing to change, and what the
    handle raises.
    """
    if _flag(form, "restore"):
        await handle.restore_original_options()
        return
    updates = option_updates(form)
    retry: dict[str, Any] = {}
    for name, policy_field in RETRY_FIELDS.items():
        value = form.get(name, "").strip()
        if not value:
            continue
        if policy_field == "backoff_coefficient":
            retry[policy_field] = _float(value, "backoff coefficient")
        elif policy_field == "maximum_attempts":
            retry[policy_field] = _int(value, "maximum attempts")
        else:
            retry[policy_field] = parse_duration(value)
    if retry:
        policy = (await handle.describe()).retry_policy or RetryPolicy()
        updates.append(
            ActivityOptionsKeys.retry_policy.value_set(dataclasses.replace(policy, **retry))
        )
    if not updates:
        raise ValueError("nothing to change: fill in an option, or tick restore")
    await handle.update_options(updates)


def option_updates(form: Mapping[str, str]) -> list[ActivityOptionsUpdate[Any]]:
    """The updates of the form's task queue, timeouts, start delay and
    priority (empty fields: none; ``none``: clear).

    Raises ValueError for a value that is not a duration or a number.
    """
    updates: list[ActivityOptionsUpdate[Any]] = []
    queue = form.get("task_queue", "").strip()
    if queue:
        updates.append(ActivityOptionsKeys.task_queue.value_set(queue))
    for name, key in TIMEOUT_FIELDS.items():
        value = form.get(name, "").strip()
        if value.lower() == "none":
            updates.append(key.value_unset())
        elif value:
            updates.append(key.value_set(parse_duration(value)))
    priority = form.get("priority", "").strip()
    if priority:
        updates.append(ActivityOptionsKeys.priority.value_set(Priority(_int(priority, "priority"))))
    return updates


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, not {value!r}") from None


def _float(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number, not {value!r}") from None


async def affected(client: Client, query: str | None, action: str) -> int:
    """How many activities a bulk action on ``query`` would change now.

    Raises ValueError for an unknown action or a malformed query.
    """
    if action not in BULK:
        raise ValueError(f"unknown bulk action {action!r}")
    return (await client.count_activities(narrowed(query, AFFECTED[action]))).count


async def bulk(client: Client, query: str | None, action: str, form: Mapping[str, str]) -> int:
    """Take a bulk action on every open activity the query matches; how many
    it changed.

    Raises ValueError for an unknown action or a malformed query.
    """
    reason = form.get("reason", "").strip() or None
    if action == "cancel":
        return await client.cancel_activities(query, reason=reason)
    if action == "terminate":
        return await client.terminate_activities(query, reason=reason)
    if action == "pause":
        return await client.pause_activities(query, reason=reason)
    if action == "unpause":
        return await client.unpause_activities(query, reason=reason)
    if action == "reset":
        return await client.reset_activities(
            query,
            reason=reason,
            keep_paused=_flag(form, "keep_paused"),
            reset_heartbeat=_flag(form, "reset_heartbeat"),
            restore_original_options=_flag(form, "restore_original_options"),
        )
    if action == "retry_now":
        return await client.retry_activities_now(query)
    if action == "options":
        updates = option_updates(form)
        if not updates:
            raise ValueError("nothing to change: fill in an option")
        return await client.update_activities_options(query, updates)
    raise ValueError(f"unknown bulk action {action!r}")
