"""Activities for the process-pool tests. They live at module level in a module
of their own so that a ``spawn`` child can import them by name (a pool pickles
the function as ``tests.pool_activities.<name>``).

The tests talk to a child through what crosses the process boundary anyway:
arguments, results, heartbeats, log records, and gate files (a child waits for
a path to exist; the test creates it)."""

from __future__ import annotations

import dataclasses
import os
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


def _spin_forever() -> None:
    """Pure-Python work that never blocks in C and never polls is_cancelled()."""
    n = 0
    while True:
        n += 1


def _spin_for(seconds: float) -> int:
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


@activity.defn
def report_from_the_child(gate: str) -> dict[str, Any]:
    """Heartbeats its pid, waits for the gate, returns what the child saw."""
    activity.heartbeat("child", os.getpid())
    _wait_for_file(gate)
    info = activity.info()
    return {
        "pid": os.getpid(),
        "activity_id": info.activity_id,
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
    }


@activity.defn
def log_from_the_child(word: str) -> int:
    activity.logger.info("hello from the child: %s", word)
    return os.getpid()


@activity.defn
def heartbeat_then_spin() -> str:
    activity.heartbeat("spinning")
    _spin_forever()
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
        _spin_forever()
    except exceptions.CancelledError as e:
        details = activity.cancellation_details()
        return {
            "caught": type(e).__module__ + "." + type(e).__qualname__,
            "is_cancelled": activity.is_cancelled(),
            "details": None if details is None else dataclasses.asdict(details),
        }
    return {"caught": None}


@activity.defn(no_thread_cancel_exception=True)
def poll_for_the_cancel() -> dict[str, Any]:
    """Sees the cancel through the cross-process event and returns normally;
    pure-Python work after it shows that no exception is raised into it."""
    activity.heartbeat("waiting")
    waited = activity.wait_for_cancelled_sync(GATE_CEILING_S)
    _spin_for(0.2)
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
def sleep_unless_retried() -> str:
    """Attempt 1 sleeps (in C) until the worker's shutdown cancel interrupts it."""
    attempt = activity.info().attempt
    if attempt == 1:
        activity.heartbeat("sleeping")
        time.sleep(3600)
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
                _spin_for(0.1)
                time.sleep(0.1)  # a signal would interrupt this sleep
                steps.append("inner block ends")
            _spin_for(0.1)
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
    _spin_for(spin_s)
    return os.getpid()


@activity.defn
def run_after_the_race() -> int:
    """Pure Python and a short sleep on the child the racer used: a stray
    cancel signal would land here."""
    _spin_for(0.003)
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
