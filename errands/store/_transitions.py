"""The lifecycle over a dialect's statements: each function runs inside a
writer transaction (a ``Tx``), reads what a decision needs, asks
``errands._lifecycle`` for the decision, and applies it with one conditional
statement, noting the changes it made on ``tx.changes`` for the feed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from errands import _lifecycle as lc
from errands._lifecycle import FAR, RunState, Status
from errands.common import ActivityIDConflictPolicy, ActivityIDReusePolicy
from errands.exceptions import (
    ActivityAlreadyClosedError,
    ActivityAlreadyStartedError,
    ActivityNotFoundError,
    StoreError,
    TimeoutType,
)
from errands.store import _rows
from errands.store._armed import ClaimSpec
from errands.store._base import (
    OPTION_FIELDS,
    ClaimResult,
    ClosedRun,
    ExecutionOptions,
    NewExecution,
    StartResult,
)
from errands.store._changes import (
    Claimable,
    Closed,
    Deadline,
    Interrupted,
    OptionsChanged,
    Started,
)
from errands.store._dialect import Tx
from errands.store._rows import Row

Outcome = tuple[Any, BaseException | None]

START_RETRIES = 5
"""How often a start whose id conflict vanished (the running execution closed
meanwhile) inserts again before giving up."""


class Claim(ClaimSpec):
    """One claim: up to ``max_tasks`` ready attempts of a queue."""

    def params(self, tx: Tx, n: int) -> dict[str, Any]:
        return {
            "ns": self.namespace,
            "tq": self.task_queue,
            "now": tx.now,
            "far": FAR,
            "identity": self.identity,
            "owner": self.owner,
            "n": max(0, n),
            "max": self.max_tasks,
            "only": None if self.only_types is None else sorted(self.only_types),
            "skip": sorted(self.exclude_types) or None,
        }

    def run(self, tx: Tx) -> ClaimResult:
        """Claim, inside the writer's transaction."""
        n, tokens, rate = self.max_tasks, None, self.queue_rate_per_s
        if rate is not None:
            tokens = queue_tokens(tx, self.namespace, self.task_queue, rate)
            n = min(n, int(tokens))
        params = self.params(tx, n)
        rows = tx.fetch("claim", **params) if n > 0 else []
        tasks = [row for row in rows if row["run_id"] is not None]
        if tokens is not None and tasks:
            tx.run("queue_rate_spend", **params, tokens=tokens - len(tasks))
        next_ready: float | None = None
        if len(tasks) < self.max_tasks:
            if rows and "next_ready" in rows[0]:  # the claim found it too
                next_ready = rows[0]["next_ready"]
            else:
                next_ready = tx.one("next_ready", **params)["next_ready"]  # type: ignore[index]
            if rate is not None and next_ready is not None and n < self.max_tasks:
                next_ready = max(next_ready, tx.now + 1.0 / rate)
        if tasks:
            tx.changed = True
            tasks.sort(key=lambda r: (r["priority_key"], r["ready_at"], r["id"]))
            for row in tasks:
                tx.claimed[row["run_id"]] = row["attempt"]
            begin_attempts(tx, tasks, self.identity)
            if self.worker_id is not None:
                worker_seen(tx, self.worker_id)
            tx.changes.append(Deadline(self.namespace, min(row["deadline"] for row in tasks)))
        return ClaimResult(
            [_rows.task(row) for row in tasks], None if next_ready is None else tx.local(next_ready)
        )


SEEN_EVERY_S = 1.0
"""How often at most a worker's claims move its ``last_seen``."""

_seen: dict[str, float] = {}


def worker_seen(tx: Tx, worker_id: str) -> None:
    """Note that a worker claimed work (at most every SEEN_EVERY_S)."""
    if tx.now - _seen.get(worker_id, 0.0) >= SEEN_EVERY_S:
        _seen[worker_id] = tx.now
        tx.run("worker_seen", worker_id=worker_id, now=tx.now)


def fail_owner(tx: Tx, owner: str, failure_data: bytes | None) -> int:
    """A process holding the store died: fail the attempts its workers ran as
    WorkerLost (retried as the lifecycle decides) and forget it and its
    workers; how many attempts it failed."""
    info = lc.AttemptFailure(lc.FailureKind.APPLICATION, error_type=lc.WORKER_LOST_ERROR_TYPE)
    failed = 0
    for row in tx.fetch("running_of_owner", owner=owner):
        if apply_failure(tx, row, info, failure_data) is not None:
            failed += 1
    tx.run("workers_of_owner_forget", owner=owner)
    tx.run("owner_forget", owner=owner)
    return failed


def queue_tokens(tx: Tx, namespace: str, task_queue: str, rate: float) -> float:
    """The tokens in the queue's bucket now (its row locked until commit, so
    two processes never spend the same tokens)."""
    capacity = max(1.0, rate)
    tx.run("queue_rate_add", ns=namespace, tq=task_queue, tokens=capacity, now=tx.now)
    row = tx.one("queue_rate_lock", ns=namespace, tq=task_queue)
    assert row is not None
    return float(min(capacity, row["tokens"] + max(0.0, tx.now - row["updated"]) * rate))


def reuse_refusal(tx: Tx, new: NewExecution) -> ActivityAlreadyStartedError | None:
    if new.id_reuse_policy is ActivityIDReusePolicy.ALLOW_DUPLICATE:
        return None
    latest = tx.one("latest_of_id", ns=new.namespace, activity_id=new.activity_id)
    status = None if latest is None else Status(latest["status"])
    if not lc.reuse_refused(new.id_reuse_policy, status):
        return None
    assert latest is not None and status is not None
    return ActivityAlreadyStartedError(
        f"activity id {new.activity_id!r} was used by a closed execution "
        f"({status.value}) and the reuse policy is {new.id_reuse_policy.name}",
        activity_id=new.activity_id,
        run_id=latest["run_id"],
    )


def attribute_refusal(
    tx: Tx, new: NewExecution, known: dict[tuple[str, str], str]
) -> ValueError | None:
    """Fix the type of each search attribute name of the start the first
    time a start uses it; a ValueError if one was fixed to another type
    (``known``: the types this transaction has seen)."""
    for key, _ in new.search_attributes:
        kind = key.indexed_value_type.name
        seen = known.get((new.namespace, key.name))
        if seen is None:
            tx.run("register_search_attribute", ns=new.namespace, attr=key.name, type=kind)
            row = tx.one("search_attribute_type", ns=new.namespace, attr=key.name)
            assert row is not None
            seen = known[(new.namespace, key.name)] = row["type"]
        if seen != kind:
            return ValueError(
                f"search attribute {key.name!r} holds {seen} values in namespace "
                f"{new.namespace!r}; activity {new.activity_id!r} gives it a {kind} value"
            )
    return None


def insert(tx: Tx, news: list[NewExecution]) -> set[str]:
    """Insert new executions; the run ids of those inserted (the others' ids
    are running already, or their run ids are taken)."""
    if not news:
        return set()
    rows = []
    planned = []
    for new in news:
        times = lc.start_times(
            now=tx.now,
            start_delay_s=new.start_delay_s,
            schedule_to_close_s=new.schedule_to_close_s,
            schedule_to_start_s=new.schedule_to_start_s,
        )
        planned.append(times)
        rows.append(
            {
                "namespace": new.namespace,
                "activity_id": new.activity_id,
                "run_id": new.run_id,
                "activity_type": new.activity_type,
                "task_queue": new.task_queue,
                "input": new.input,
                "ready_at": times.ready_at,
                "s2c_deadline": times.schedule_to_close_deadline,
                "deadline": times.deadline,
                "schedule_to_close_s": new.schedule_to_close_s,
                "schedule_to_start_s": new.schedule_to_start_s,
                "start_to_close_s": new.start_to_close_s,
                "heartbeat_s": new.heartbeat_s,
                "retry_policy": _rows.policy_text(new.retry_policy),
                "priority_key": new.priority_key,
                "start_delay_s": new.start_delay_s,
                "summary": new.summary,
                "search_attributes": _rows.attributes_text(new.search_attributes),
                "headers": new.headers,
            }
        )
    created = {
        row["run_id"]
        for row in tx.each("insert_execution", rows, key="run_id", now=tx.now, far=FAR)
    }
    indexed = [
        row
        for new in news
        if new.search_attributes and new.run_id in created
        for row in _rows.attribute_rows(new.run_id, new.search_attributes)
    ]
    if indexed:
        tx.each("insert_search_attributes", indexed, key="slot")
    for new, times in zip(news, planned, strict=True):
        if new.run_id in created:
            _note_waiting(tx, new.namespace, new.task_queue, times.ready_at, times.deadline)
    return created


def _note_waiting(
    tx: Tx, namespace: str, task_queue: str, ready_at: float | None, deadline: float
) -> None:
    """Note for the feed that an execution waits on its queue, claimable from
    ``ready_at`` (None: held, paused), and its next deadline."""
    if ready_at is not None:
        queue = (namespace, task_queue)
        tx.changes.append(Started(queue) if ready_at <= tx.now else Claimable(queue, ready_at))
    if deadline < FAR:
        tx.changes.append(Deadline(namespace, deadline))


def start_conflict(tx: Tx, new: NewExecution, made: list[NewExecution]) -> Outcome:
    """The id of ``new`` was running (or its run id taken) when inserted:
    return the running run (USE_EXISTING), refuse, or insert again if the
    running one closed meanwhile."""
    for _ in range(START_RETRIES):
        running = tx.one("running_of_id", ns=new.namespace, activity_id=new.activity_id)
        if running is not None:
            if new.id_conflict_policy is ActivityIDConflictPolicy.USE_EXISTING:
                return StartResult(running["run_id"], created=False), None
            return None, ActivityAlreadyStartedError(
                f"activity id {new.activity_id!r} is already running (run {running['run_id']})",
                activity_id=new.activity_id,
                run_id=running["run_id"],
            )
        if tx.one("run_id_taken", run_id=new.run_id) is not None:
            return None, ActivityAlreadyStartedError(
                f"run id {new.run_id!r} is already in use", activity_id=new.activity_id
            )
        refused = reuse_refusal(tx, new)
        if refused is not None:
            return None, refused
        if insert(tx, [new]):
            made.append(new)
            return StartResult(new.run_id, created=True), None
    return None, ActivityAlreadyStartedError(
        f"activity id {new.activity_id!r} is being started and closed concurrently; try again",
        activity_id=new.activity_id,
    )


def find_open(tx: Tx, namespace: str, activity_id: str, run_id: str | None, verb: str) -> Row:
    """The execution a cancel or terminate is about (locked where the dialect
    locks rows). Raises ActivityNotFoundError / ActivityAlreadyClosedError."""
    if run_id is None:
        row = tx.one("find_latest", ns=namespace, activity_id=activity_id)
    else:
        row = tx.one("find_run", ns=namespace, activity_id=activity_id, run_id=run_id)
    if row is None:
        raise ActivityNotFoundError(_rows.not_found(namespace, activity_id, run_id))
    if row["status"] != Status.RUNNING.value:
        raise ActivityAlreadyClosedError(
            f"cannot {verb} activity {activity_id!r} (run {row['run_id']}): "
            f"it already closed {row['status']}"
        )
    return row


def retry_now(tx: Tx, namespace: str, activity_id: str, run_id: str | None) -> bool:
    """Make an execution waiting out a retry backoff or a start delay
    claimable now (its attempt count goes on); False if it was not waiting.

    Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
    """
    row = find_open(tx, namespace, activity_id, run_id, "retry")
    if row["run_state"] != RunState.SCHEDULED.value or row["ready_at"] <= tx.now:
        return False
    deadline = lc.scheduled_deadline(
        ready_at=tx.now,
        schedule_to_start_s=row["schedule_to_start_s"],
        schedule_to_close_deadline=row["s2c_deadline"],
    )
    done = tx.run(
        "retry_now", id=row["id"], now=tx.now, deadline=deadline, ready_was=row["ready_at"]
    )
    if done != 1:
        return False
    _note_waiting(tx, row["namespace"], row["task_queue"], tx.now, deadline)
    return True


def cancel(
    tx: Tx, namespace: str, activity_id: str, run_id: str | None, reason: str | None
) -> Status | None:
    """Cancel: a waiting (or paused) execution closes CANCELED at once; a
    running attempt is asked to stop. The status after; None if a cancel was
    requested already (nothing changed).

    Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
    """
    row = find_open(tx, namespace, activity_id, run_id, "cancel")
    found_run = row["run_id"]
    if RunState(row["run_state"]) in lc.NO_ATTEMPT_RUNS:
        tx.run("cancel_scheduled", id=row["id"], reason=reason, now=tx.now, far=FAR)
        tx.changes.append(Closed(found_run, ClosedRun(found_run, Status.CANCELED)))
        return Status.CANCELED
    if row["run_state"] not in (RunState.STARTED.value, RunState.PAUSE_REQUESTED.value):
        return None
    tx.run("cancel_started", id=row["id"], reason=reason)
    tx.changes.append(Interrupted(found_run, "cancel", row["attempt"]))
    return Status.RUNNING


def terminate(
    tx: Tx, namespace: str, activity_id: str, run_id: str | None, reason: str | None
) -> None:
    """Close an open execution TERMINATED; a running attempt is interrupted.

    Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
    """
    row = find_open(tx, namespace, activity_id, run_id, "terminate")
    found_run = row["run_id"]
    tx.run("terminate", id=row["id"], reason=reason, now=tx.now, far=FAR)
    tx.changes.append(Closed(found_run, ClosedRun(found_run, Status.TERMINATED)))
    if RunState(row["run_state"]) not in lc.NO_ATTEMPT_RUNS:
        # The attempt is cut short: recorded as CANCELED (terminated).
        end_attempts(tx, [(found_run, row["attempt"], "CANCELED", None, None)])
        tx.changes.append(Interrupted(found_run, "terminate", row["attempt"]))


CLOSE_AT_ONCE = {"cancel": Status.CANCELED, "terminate": Status.TERMINATED}
"""The status each bulk verb that closes executions no attempt of which runs
closes them with (``close_at_once``)."""


def close_at_once(tx: Tx, ids: list[int], verb: str, reason: str | None) -> set[int]:
    """Cancel or terminate (``verb``) those of these executions (row ids) no
    attempt of which runs, with one statement conditional on each row's state
    as it is then (so one that was claimed or closed meanwhile is left for
    ``cancel`` / ``terminate``); the row ids it closed.
    """
    if not ids:
        return set()
    status = CLOSE_AT_ONCE[verb]
    rows = tx.fetch(
        "close_at_once",
        ids=ids,
        states=sorted(state.value for state in lc.NO_ATTEMPT_RUNS),
        status=status.value,
        cancel_requested=status is Status.CANCELED,
        reason=reason,
        now=tx.now,
        far=FAR,
    )
    if rows:
        tx.changed = True
    for row in rows:
        tx.changes.append(Closed(row["run_id"], ClosedRun(row["run_id"], status)))
    return {row["id"] for row in rows}


def pause(tx: Tx, namespace: str, activity_id: str, run_id: str | None) -> bool:
    """Pause: a waiting execution at once (PAUSED); a running attempt is asked
    to stop (PAUSE_REQUESTED). False if nothing changed (paused already, or a
    cancel was requested first).

    Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
    """
    row = find_open(tx, namespace, activity_id, run_id, "pause")
    state = row["run_state"]
    if state == RunState.SCHEDULED.value:
        return tx.run("pause_scheduled", id=row["id"], deadline=row["s2c_deadline"]) == 1
    if state == RunState.STARTED.value:
        moved = _move(tx, row, RunState.STARTED, RunState.PAUSE_REQUESTED)
        if moved:
            tx.changes.append(Interrupted(row["run_id"], "pause", row["attempt"]))
        return moved
    return False


def unpause(
    tx: Tx, namespace: str, activity_id: str, run_id: str | None, jitter_s: float, draw: float
) -> bool:
    """Unpause: a paused execution is dispatchable again (its pending backoff
    still runs out, then within ``jitter_s``); a pause requested of a running
    attempt is withdrawn. False if it was not paused.

    Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
    """
    row = find_open(tx, namespace, activity_id, run_id, "unpause")
    if row["run_state"] == RunState.PAUSE_REQUESTED.value:
        return _move(tx, row, RunState.PAUSE_REQUESTED, RunState.STARTED)
    if row["run_state"] != RunState.PAUSED.value:
        return False
    ready_at = lc.unpaused_ready_at(
        ready_at=row["ready_at"], now=tx.now, jitter_s=jitter_s, draw=draw
    )
    deadline = lc.scheduled_deadline(
        ready_at=ready_at,
        schedule_to_start_s=row["schedule_to_start_s"],
        schedule_to_close_deadline=row["s2c_deadline"],
    )
    if tx.run("unpause", id=row["id"], ready_at=ready_at, deadline=deadline) != 1:
        return False
    _note_waiting(tx, row["namespace"], row["task_queue"], ready_at, deadline)
    return True


def reset(
    tx: Tx,
    namespace: str,
    activity_id: str,
    run_id: str | None,
    *,
    keep_paused: bool,
    reset_heartbeat: bool,
    jitter_s: float,
    draw: float,
    restore_original_options: bool,
) -> bool:
    """Reset: the next attempt is number 1, claimable at once (within
    ``jitter_s``); a running attempt is interrupted and its late outcome
    refused (its serial is no longer current). Unpauses unless
    ``keep_paused``. False if nothing changed: a cancel was requested (it
    wins), or the execution changed meanwhile.

    Raises ActivityNotFoundError, or ActivityAlreadyClosedError if closed.
    """
    row = find_open(tx, namespace, activity_id, run_id, "reset")
    if row["cancel_requested"]:
        return False
    if restore_original_options and row["original_options"] is not None:
        original = _rows.options_from_text(row["original_options"])
        row = _set_options(tx, row, original, restored=True, publish=False)
    state = RunState(row["run_state"])
    held = keep_paused and state in (RunState.PAUSED, RunState.PAUSE_REQUESTED)
    ready_at = lc.reset_ready_at(now=tx.now, jitter_s=jitter_s, draw=draw)
    deadline = (
        row["s2c_deadline"]  # while paused only schedule_to_close counts
        if held
        else lc.scheduled_deadline(
            ready_at=ready_at,
            schedule_to_start_s=row["schedule_to_start_s"],
            schedule_to_close_deadline=row["s2c_deadline"],
        )
    )
    done = tx.run(
        "reset",
        id=row["id"],
        attempt_was=row["attempt"],
        state_was=state.value,
        run_state=(RunState.PAUSED if held else RunState.SCHEDULED).value,
        ready_at=ready_at,
        deadline=deadline,
        reset_heartbeat=reset_heartbeat,
        far=FAR,
    )
    if done != 1:
        return False
    found_run = row["run_id"]
    if state in (RunState.STARTED, RunState.PAUSE_REQUESTED):
        end_attempts(tx, [(found_run, row["attempt"], "RESET", None, None)])
        tx.changes.append(Interrupted(found_run, "reset", row["attempt"]))
    _note_waiting(tx, row["namespace"], row["task_queue"], None if held else ready_at, deadline)
    return True


def update_options(
    tx: Tx,
    namespace: str,
    activity_id: str,
    run_id: str | None,
    changes: dict[str, Any] | None,
) -> ExecutionOptions:
    """Change an open execution's options (``changes``: option name to new
    value; None restores the start's options); the options after. One that
    waits takes the change at once; a running attempt keeps its own
    timeouts (see ``lc.after_options_change``).

    Raises ActivityNotFoundError, ActivityAlreadyClosedError if closed,
    ValueError if the options would be invalid, and StoreError if the
    execution changed meanwhile (try again).
    """
    row = find_open(tx, namespace, activity_id, run_id, "update the options of")
    current = _rows.options(row)
    if changes is None:
        if row["original_options"] is None:
            return current  # never changed
        new = _rows.options_from_text(row["original_options"])
    else:
        new = dataclasses.replace(current, **changes)
    _set_options(tx, row, new, restored=changes is None)
    return new


def _set_options(
    tx: Tx, row: Row, new: ExecutionOptions, *, restored: bool, publish: bool = True
) -> Row:
    """Write ``new`` options over ``row``'s (``restored``: they are the
    start's, so forget those) and publish where it now waits (not if
    ``publish`` is False: a reset follows and does); the row as it is after."""
    if new.start_to_close_s is None and new.schedule_to_close_s is None:
        raise ValueError(
            "an activity needs start_to_close_timeout or schedule_to_close_timeout; "
            "this update would leave it neither"
        )
    old = _rows.options(row)
    state = RunState(row["run_state"])
    times = lc.after_options_change(
        run_state=state,
        schedule_time=row["schedule_time"],
        ready_at=row["ready_at"],
        deadline=row["deadline"],
        attempt=row["attempt"] - row["attempt_base"],
        never_started=row["attempt"] == 1,
        interval_s=row["retry_interval_s"],
        attempt_started=row["started_time"],
        attempt_start_to_close_s=row["attempt_start_to_close_s"],
        policy=new.retry_policy,
        policy_changed=new.retry_policy != old.retry_policy,
        start_delay_s=new.start_delay_s,
        start_delay_changed=new.start_delay_s != old.start_delay_s,
        schedule_to_close_s=new.schedule_to_close_s,
        schedule_to_start_s=new.schedule_to_start_s,
    )
    original = None if restored else (row["original_options"] or _rows.options_text(old))
    columns = {name: getattr(new, name) for name in OPTION_FIELDS}
    columns["retry_policy"] = _rows.policy_text(new.retry_policy)
    done = tx.run(
        "update_options",
        id=row["id"],
        attempt_was=row["attempt"],
        state_was=state.value,
        **columns,
        original=original,
        ready_at=times.ready_at,
        s2c_deadline=times.schedule_to_close_deadline,
        deadline=times.deadline,
        attempt_deadline=times.attempt_deadline,
        interval_s=times.interval_s,
    )
    if done != 1:
        raise StoreError(
            f"the options of activity {row['run_id']!r} were not changed: "
            "it changed meanwhile; try again"
        )
    tx.changes.append(OptionsChanged(row["run_id"]))
    after = {
        **row,
        **columns,
        "original_options": original,
        "ready_at": times.ready_at,
        "s2c_deadline": times.schedule_to_close_deadline,
        "deadline": times.deadline,
    }
    if publish:
        ready = times.ready_at if state is RunState.SCHEDULED else None
        _note_waiting(tx, row["namespace"], new.task_queue, ready, times.deadline)
    return after


def _move(tx: Tx, row: Row, from_state: RunState, to_state: RunState) -> bool:
    done = tx.run(
        "move_run_state", id=row["id"], from_state=from_state.value, to_state=to_state.value
    )
    return bool(done == 1)


def apply_failure(
    tx: Tx, row: Row, info: lc.AttemptFailure, failure_data: bytes | None
) -> Status | None:
    """Retry, hold (paused) or close the execution whose decide-columns are
    ``row``, conditional on the attempt and deadline it was read with; None
    if it changed meanwhile."""
    decision = lc.after_failure(
        policy=_rows.policy(row["retry_policy"]),
        attempt=row["attempt"] - row["attempt_base"],
        failure=info,
        cancel_requested=bool(row["cancel_requested"]),
        schedule_to_close_deadline=row["s2c_deadline"],
        now=tx.now,
        paused=row["run_state"] == RunState.PAUSE_REQUESTED.value,
    )
    if isinstance(decision, lc.Close):
        return _close_failed(tx, row, info, failure_data, decision.status)
    held = isinstance(decision, lc.Hold)
    deadline = (
        row["s2c_deadline"]  # while paused only schedule_to_close counts
        if held
        else lc.scheduled_deadline(
            ready_at=decision.ready_at,
            schedule_to_start_s=row["schedule_to_start_s"],
            schedule_to_close_deadline=row["s2c_deadline"],
        )
    )
    done = tx.run(
        "retry",
        id=row["id"],
        attempt=row["attempt"],
        deadline_was=row["deadline"],
        run_state=(RunState.PAUSED if held else RunState.SCHEDULED).value,
        next_attempt=row["attempt"] + 1,  # the serial: decision.attempt is its number
        ready_at=decision.ready_at,
        deadline=deadline,
        failure=failure_data,
        timeout_type=None if info.timeout_type is None else int(info.timeout_type),
        interval_s=decision.interval_s,
        far=FAR,
    )
    if done != 1:
        return None
    _end_failed(tx, row, info, failure_data)
    ready = None if held else decision.ready_at
    _note_waiting(tx, row["namespace"], row["task_queue"], ready, deadline)
    return Status.RUNNING


def _close_failed(
    tx: Tx, row: Row, info: lc.AttemptFailure, failure_data: bytes | None, status: Status
) -> Status | None:
    done = tx.run(
        "close_failed",
        id=row["id"],
        attempt=row["attempt"],
        deadline_was=row["deadline"],
        status=status.value,
        failure=failure_data,
        timeout_type=None if info.timeout_type is None else int(info.timeout_type),
        now=tx.now,
        far=FAR,
    )
    if done != 1:
        return None
    _end_failed(tx, row, info, failure_data)
    tx.changes.append(Closed(row["run_id"], ClosedRun(row["run_id"], status)))
    return status


def _end_failed(tx: Tx, row: Row, info: lc.AttemptFailure, failure: bytes | None) -> None:
    outcome = lc.failed_attempt_outcome(
        info, pause_requested=row["run_state"] == RunState.PAUSE_REQUESTED.value
    )
    timeout = None if info.timeout_type is None else int(info.timeout_type)
    end_attempts(tx, [(row["run_id"], row["attempt"], outcome, failure, timeout)])


def close_timed_out(tx: Tx, row: Row, fired: TimeoutType) -> None:
    done = tx.run(
        "close_failed",
        id=row["id"],
        attempt=row["attempt"],
        deadline_was=row["deadline"],
        status=Status.TIMED_OUT.value,
        failure=None,
        timeout_type=int(fired),
        now=tx.now,
        far=FAR,
    )
    if done == 1:
        if row["run_state"] not in (RunState.SCHEDULED.value, RunState.PAUSED.value):
            end_attempts(tx, [(row["run_id"], row["attempt"], "TIMED_OUT", None, int(fired))])
        tx.changes.append(Closed(row["run_id"], ClosedRun(row["run_id"], Status.TIMED_OUT)))


def reset_deadline(tx: Tx, row: Row, deadline: float) -> None:
    tx.run("reset_deadline", id=row["id"], deadline_was=row["deadline"], deadline=deadline)


def fire_timer(tx: Tx, row: Row) -> None:
    """Apply the timeout of a row whose deadline passed (or put back its real
    deadline if the stored one was stale)."""
    now, s2c = tx.now, row["s2c_deadline"]
    if row["run_state"] == RunState.PAUSED.value:  # only schedule_to_close counts
        if now >= s2c:
            close_timed_out(tx, row, TimeoutType.SCHEDULE_TO_CLOSE)
        else:
            reset_deadline(tx, row, s2c)
        return
    if row["run_state"] == RunState.SCHEDULED.value:
        fired = lc.scheduled_timeout_type(
            now=now,
            ready_at=row["ready_at"],
            schedule_to_start_s=row["schedule_to_start_s"],
            schedule_to_close_deadline=s2c,
        )
        if fired is not None:
            close_timed_out(tx, row, fired)
        else:
            real = lc.scheduled_deadline(
                ready_at=row["ready_at"],
                schedule_to_start_s=row["schedule_to_start_s"],
                schedule_to_close_deadline=s2c,
            )
            reset_deadline(tx, row, real)
        return
    timing: dict[str, Any] = {
        "attempt_started": row["started_time"],
        # The running attempt's own timeouts (update_options changes the next one's).
        "start_to_close_s": row["attempt_start_to_close_s"],
        "heartbeat_s": row["attempt_heartbeat_s"],
        "last_heartbeat": row["last_heartbeat_time"],
        "schedule_to_close_deadline": s2c,
    }
    fired = lc.started_timeout_type(now=now, **timing)
    if fired is None:
        reset_deadline(tx, row, lc.started_deadline(**timing))
    elif fired is TimeoutType.SCHEDULE_TO_CLOSE:
        close_timed_out(tx, row, fired)
    else:
        info = lc.AttemptFailure(lc.FailureKind.TIMEOUT, timeout_type=fired)
        apply_failure(tx, row, info, None)


def expire_if_due(tx: Tx, run_id: str) -> None:
    """Fire the run's timeout if its deadline has passed but no timer fired it
    yet, so that an outcome or heartbeat arriving after the deadline finds its
    attempt stale instead of overtaking the timeout."""
    row = tx.one("due_of_run", run_id=run_id, now=tx.now)
    if row is not None:
        fire_timer(tx, row)


# ------------------------------------------------------------------ attempt history

KEPT_ATTEMPTS = 100
"""Attempts kept per execution (the newest; attempt numbers stay exact)."""


def begin_attempts(tx: Tx, rows: list[Row], identity: str) -> None:
    """Record that the attempts of these claimed rows began."""
    began = [
        {
            "run_id": row["run_id"],
            "attempt": row["attempt"],
            "attempt_number": row["attempt"] - row["attempt_base"],
            "identity": identity,
            "heartbeats_before": row["heartbeat_count"],
        }
        for row in rows
    ]
    tx.each("attempt_begin", began, key="run_id", now=tx.now)
    for row in rows:
        if row["attempt"] > KEPT_ATTEMPTS:
            tx.run("attempts_forget", run_id=row["run_id"], attempt=row["attempt"])


Ended = tuple[str, int, str, bytes | None, int | None]
"""How an attempt ended: run id, serial, outcome, failure, timeout type."""


def end_attempts(tx: Tx, ended: list[Ended]) -> None:
    """Record how attempts ended."""
    if ended:
        rows = [
            {"run_id": r, "attempt": a, "outcome": outcome, "failure": failure, "timeout": t}
            for r, a, outcome, failure, t in ended
        ]
        tx.each("attempt_end", rows, key="run_id", now=tx.now)
