"""Activities for the pool tests (tests/test_pools.py, test_process_pool.py).
They live at module level in a module of their own so that a ``spawn`` child
can import them by name (a pool pickles the function as
``tests.pool_activities.<name>``); the thread-pool variants run the same ones.

The tests talk to an activity through what crosses the process boundary
anyway: arguments, results, heartbeats, log records, and files (a gate the
activity waits for, a report it writes)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import Any

from errands import activity, exceptions

GATE_CEILING_S = 30.0
"""Longest a child waits for its gate file before it gives up."""


def _wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_CEILING_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {path} was not opened within {GATE_CEILING_S} s")
        time.sleep(0.01)


def spin_until_cancel_lands() -> None:
    """Pure-Python work that never blocks in C and never polls is_cancelled();
    only a cancel exception ends it (a RuntimeError after GATE_CEILING_S)."""
    deadline = time.monotonic() + GATE_CEILING_S
    while time.monotonic() < deadline:
        pass
    raise RuntimeError(f"no cancel exception landed within {GATE_CEILING_S} s")


def spin_for(seconds: float) -> int:
    """Pure-Python work for ``seconds`` (many bytecodes for an exception to land on)."""
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n += 1
    return n


@activity.defn
def add(a: int, b: int) -> int:
    return a + b


@activity.defn
def child_pid() -> int:
    return os.getpid()


def _where() -> list[Any]:
    """The process and the thread this runs in."""
    return [os.getpid(), threading.current_thread().name]


@activity.defn
def where_it_runs() -> list[Any]:
    return _where()


@activity.defn
def report_the_context(gate: str) -> dict[str, Any]:
    """Heartbeats where it runs, waits for the gate, returns what the context says."""
    activity.heartbeat("running", *_where())
    _wait_for_file(gate)
    info = activity.info()
    try:
        activity.client()
    except RuntimeError as e:
        client_error = str(e)
    else:
        client_error = None
    return {
        "where": _where(),
        "activity_id": info.activity_id,
        "activity_run_id": info.activity_run_id,
        "activity_type": info.activity_type,
        "attempt": info.attempt,
        "task_queue": info.task_queue,
        "task_token": info.task_token.hex(),
        "heartbeat_timeout_s": (
            None if info.heartbeat_timeout is None else info.heartbeat_timeout.total_seconds()
        ),
        "in_activity": activity.in_activity(),
        "is_cancelled": activity.is_cancelled(),
        "cancellation_details": activity.cancellation_details(),
        "is_worker_shutdown": activity.is_worker_shutdown(),
        "waited_for_cancel": activity.wait_for_cancelled_sync(0.05),
        "waited_for_shutdown": activity.wait_for_worker_shutdown_sync(0.05),
        "client_error": client_error,
    }


@activity.defn
def log_a_line(word: str) -> list[Any]:
    activity.logger.info("hello from the pool: %s", word)
    return _where()


@activity.defn
def heartbeat_then_spin() -> str:
    activity.heartbeat("spinning")
    spin_until_cancel_lands()
    return "unreachable"


@activity.defn
def heartbeat_then_sleep() -> str:
    activity.heartbeat("sleeping")
    time.sleep(3600)
    return "slept an hour"


@activity.defn
def catch_the_cancel_and_report() -> dict[str, Any]:
    """Lets the worker's CancelledError land, catches it, and returns what it saw."""
    activity.heartbeat("spinning")
    try:
        spin_until_cancel_lands()
    except exceptions.CancelledError as e:
        details = activity.cancellation_details()
        return {
            "caught": type(e).__module__ + "." + type(e).__qualname__,
            "is_cancelled": activity.is_cancelled(),
            "waited": activity.wait_for_cancelled_sync(0),
            "details": None if details is None else dataclasses.asdict(details),
        }
    return {"caught": None}


@activity.defn(no_thread_cancel_exception=True)
def poll_for_the_cancel() -> dict[str, Any]:
    """Sees the cancel through the cross-process event and returns normally;
    pure-Python work after it shows that no exception is raised into it."""
    activity.heartbeat("waiting")
    waited = activity.wait_for_cancelled_sync(GATE_CEILING_S)
    spin_for(0.2)
    details = activity.cancellation_details()
    return {
        "waited": waited,
        "is_cancelled": activity.is_cancelled(),
        "details": None if details is None else dataclasses.asdict(details),
    }


@activity.defn
def return_a_lambda() -> Any:
    return lambda: "a lambda does not pickle"


@dataclasses.dataclass
class Sealed:
    """A value the converter builds from JSON but that refuses to pickle."""

    text: str

    def __reduce__(self) -> Any:
        raise TypeError("Sealed values do not pickle")


@activity.defn
def take_an_unpicklable_argument(value: Sealed) -> str:
    return value.text


@activity.defn
def exit_abruptly_on_the_first_attempt() -> str:
    attempt = activity.info().attempt
    if attempt == 1:
        os._exit(13)
    return f"attempt {attempt} ran in child {os.getpid()}"


@activity.defn
def finish_on_worker_shutdown() -> dict[str, bool]:
    before = activity.is_worker_shutdown()  # before the heartbeat the test waits for
    activity.heartbeat("waiting for shutdown")
    noticed = activity.wait_for_worker_shutdown_sync(GATE_CEILING_S)
    return {"before": before, "noticed": noticed, "after": activity.is_worker_shutdown()}


@activity.defn
def outlast_the_grace_period(report: str, sleep: bool) -> str:
    """Attempt 1 heartbeats, then sleeps (in C: only a process's cancel signal
    interrupts that) or spins in Python until the worker's shutdown cancel
    lands; it writes the cancellation details it saw to ``report`` as JSON."""
    attempt = activity.info().attempt
    if attempt == 1:
        activity.heartbeat("busy")
        try:
            if sleep:
                time.sleep(GATE_CEILING_S)
            else:
                spin_until_cancel_lands()
        except exceptions.CancelledError:
            details = activity.cancellation_details()
            with open(report, "w") as f:
                json.dump(None if details is None else dataclasses.asdict(details), f)
            raise
        raise RuntimeError(f"no cancel interrupted the sleep within {GATE_CEILING_S} s")
    return f"attempt {attempt} finished"


@activity.defn
def heartbeat_many(count: int, gate: str) -> int:
    """Heartbeats 1..count as fast as it can, then waits for the gate."""
    for i in range(1, count + 1):
        activity.heartbeat(i)
    _wait_for_file(gate)
    return count


@activity.defn
def shielded_steps() -> list[str]:
    """Nested shields around a wait for the cancel; returns what happened when."""
    activity.heartbeat("shielded")
    steps: list[str] = []
    try:
        with activity.shield_thread_cancel_exception():
            with activity.shield_thread_cancel_exception():
                steps.append(f"inner waited={activity.wait_for_cancelled_sync(GATE_CEILING_S)}")
                spin_for(0.1)
                time.sleep(0.1)  # a signal would interrupt this sleep
                steps.append("inner block ends")
            spin_for(0.1)
            steps.append(f"outer block ends, is_cancelled={activity.is_cancelled()}")
        steps.append("after the outer block")
    except exceptions.CancelledError:
        steps.append("CancelledError")
    return steps


@activity.defn
def end_after(gate: str, spin_s: float) -> int:
    """Heartbeats, waits for the gate, then returns after ``spin_s`` of pure
    Python: the test opens the gate as it cancels, so the end races the cancel."""
    activity.heartbeat("about to end", os.getpid())
    _wait_for_file(gate)
    spin_for(spin_s)
    return os.getpid()


@activity.defn
def run_after_the_race() -> int:
    """Pure Python and a short sleep on the child the racer used: a stray
    cancel signal would land here."""
    spin_for(0.003)
    time.sleep(0.003)
    return os.getpid()


@activity.defn
def heartbeat_log_and_return(count: int) -> int:
    """Heartbeats and logs ``count`` times, then returns it."""
    for i in range(count):
        activity.heartbeat(i)
        activity.logger.info("step %d", i)
    return count


@activity.defn
def heartbeat_and_log_past_the_gate(gate: str, count: int) -> int:
    """Heartbeats once, waits for the gate, then heartbeats and logs (at
    WARNING, which a spawned child forwards by default) ``count`` times."""
    activity.heartbeat("before the gate")
    _wait_for_file(gate)
    for i in range(count):
        activity.heartbeat(i)
        activity.logger.warning("past the gate: step %d", i)
        time.sleep(0.01)
    return count


@activity.defn
def heartbeat_pid_then_sleep() -> str:
    """Heartbeats its pid, then sleeps (in C) until cancelled."""
    activity.heartbeat(os.getpid())
    time.sleep(3600)
    return "slept an hour"


@activity.defn
def heartbeat_pid_then_wait_for_shutdown() -> bool:
    """Heartbeats its pid, then waits for the worker's shutdown."""
    activity.heartbeat(os.getpid())
    return activity.wait_for_worker_shutdown_sync(GATE_CEILING_S)


@activity.defn(auto_heartbeat=True)
def busy_without_heartbeats(seconds: float, blocking: bool) -> str:
    """Never heartbeats itself: pure-Python work (``blocking`` False) or a
    blocking sleep (True) for ``seconds``; auto_heartbeat keeps it alive and
    lets a cancel in."""
    if blocking:
        time.sleep(seconds)
    else:
        spin_for(seconds)
    return "finished"
