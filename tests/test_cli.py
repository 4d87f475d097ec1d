"""The ``errands`` command, driven as users drive it: ``python -m errands ...``
in a subprocess, on a SQLite file named by $ERRANDS_URL, with workers started
by ``errands worker`` and stopped with signals.

Waits poll a condition with a generous ceiling; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from errands._query import parse_query
from errands.cli import parse_duration, quoted
from errands.client import Client
from errands.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from errands.store import Compare
from errands.store.sqlite import SCHEMA_VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent

CEILING_S = 30.0
"""Longest any wait lasts before the test fails."""

ACTIVITIES = "tests.cli_activities:ACTIVITIES"


@dataclass
class Ran:
    """A finished command: exit code and output."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    """The environment of every command: the test's store in $ERRANDS_URL."""
    return {**os.environ, "ERRANDS_URL": db_url}


@pytest.fixture
def errands(env: dict[str, str]) -> Callable[..., Ran]:
    """Run ``python -m errands <args>`` to its end."""

    def run(*args: str) -> Ran:
        done = subprocess.run(
            [sys.executable, "-m", "errands", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CEILING_S * 2,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    return run


def wait_until(condition: Callable[[], bool], what: str, timeout: float = CEILING_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


class WorkerProcess:
    """An ``errands worker`` process, its log (stderr) in a file."""

    def __init__(self, directory: Path, name: str, env: dict[str, str], *args: str) -> None:
        self.log_path = directory / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "errands", "worker", *args],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its pool processes can be killed with it
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str) -> None:
        def logged() -> bool:
            if self.proc.poll() is not None and text not in self.log():
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) before logging {text!r}:\n{self.log()}"
                )
            return text in self.log()

        wait_until(logged, f"worker logging {text!r}")

    def wait_exit(self, timeout: float = CEILING_S) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its whole process group if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=CEILING_S / 2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=CEILING_S)


@pytest.fixture
def start_worker(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``errands worker <args>`` and wait until it runs; killed at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str, name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(tmp_path, f"{name}-{len(started)}", env, *args)
        started.append(worker)
        worker.wait_for_log("started on task queue")
        return worker

    yield start
    for worker in started:
        worker.stop()


def assert_one_error_line(ran: Ran, code: int, fragment: str) -> None:
    assert ran.code == code, (ran.code, ran.stdout, ran.stderr)
    assert "Traceback" not in ran.stderr
    assert len(ran.stderr.splitlines()) == 1, ran.stderr
    assert ran.stderr.startswith("Error: ")
    assert fragment in ran.stderr


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def columns(line: str) -> list[str]:
    """The cells of a table row (or a describe line): separated by two spaces or more."""
    return re.split(r"\s{2,}", line.strip())


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --------------------------------------------------------------------------- running activities


def test_execute_prints_the_result_of_an_activity_run_by_a_worker_the_command_started(
    errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(ACTIVITIES, "--task-queue", "q")

    greeted = errands("execute", "greet", "--id", "g-1", "--task-queue", "q", "--input", '"World"')
    summed = errands(
        "execute", "add_up", "--id", "a-1", "--task-queue", "q",
        "--input", "[1, 2, 3]", "--input", '"six"', "--json",
    )  # fmt: skip

    assert (greeted.code, greeted.stdout) == (0, '"Hello, World!"\n'), greeted.stderr
    out = summed.json()
    assert out["result"] == {"label": "six", "sum": 6}
    assert (out["activity_id"], out["status"]) == ("a-1", "COMPLETED")
    assert out["run_id"]
    worker.wait_for_log("activity 'a-1' (add_up) attempt 1 completed")
    assert "activity 'g-1' (greet) attempt 1 completed" in worker.log()


def group_members(pgid: int) -> set[int]:
    """The processes of a process group (from /proc)."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.add(int(entry))
    return members


def test_a_sigkilled_worker_takes_its_pool_children_and_manager_with_it(
    errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker("tests.pool_activities", "--task-queue", "q", "--processes", "2")
    for name in ("s-1", "s-2"):
        errands("start", "heartbeat_then_sleep", "--id", name, "--task-queue", "q")
    for name in ("s-1", "s-2"):
        wait_until(
            lambda name=name: (
                errands("describe", name, "--json").json()["total_heartbeat_count"] >= 1
            ),
            f"{name} sleeps in a pool child",
        )
    helpers = group_members(worker.pid) - {worker.pid}

    os.kill(worker.pid, signal.SIGKILL)
    worker.wait_exit()
    # Both pool children (busy for an hour) and the manager's server end with
    # it; the design's bound is 2 s.
    wait_until(lambda: not group_members(worker.pid), "its helper processes exited", timeout=5)

    assert len(helpers) >= 3  # two pool children and the manager's server


def test_workers_lists_the_running_workers(
    errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    assert errands("workers").stdout == "No workers.\n"
    worker = start_worker(ACTIVITIES, "--task-queue", "q", "--threads", "3")

    listed = errands("workers", "--json").json()
    table = errands("workers").stdout.splitlines()

    assert [(w["pid"], w["task_queues"], w["executor"]) for w in listed] == [
        (worker.pid, ["q"], "thread")
    ]
    assert listed[0]["identity"].startswith(f"{worker.pid}@")
    assert listed[0]["slots_used"] == 0 and listed[0]["slots"] > 0
    assert table[0].split()[:4] == ["IDENTITY", "HOST", "PID", "TASK"]
    assert table[1].split()[2] == str(worker.pid)


@pytest.mark.parametrize("pool", ["--threads", "--processes"])
def test_a_worker_given_a_module_runs_its_plain_def_activities_on_the_pool_asked_for(
    pool: str, errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker("tests.cli_activities", "--task-queue", "q", pool, "1")

    ran = errands(
        "execute", "multiply", "--id", "m-1", "--task-queue", "q",
        "--input", "6", "--input", "7", "--json",
    )  # fmt: skip

    result = ran.json()["result"]
    assert result["product"] == 42
    assert result["in_activity"] is True
    assert (result["pid"] == worker.pid) is (pool == "--threads")
    # The module's async activities are registered too.
    assert errands("execute", "greet", "--id", "g", "--task-queue", "q", "--input", '"x"').code == 0
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0
    wait_until(lambda: not group_alive(worker.pid), "the pool's processes ending with the worker")


def run_three(errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]) -> None:
    """A worker completes g-1 and g-2 (greet) and fails r-1 (refuse), oldest first."""
    start_worker(ACTIVITIES, "--task-queue", "q")
    started = errands("start", "greet", "--id", "g-1", "--task-queue", "q", "--input", '"a"')
    assert started.stdout.startswith("Started activity 'g-1' (run ")
    assert errands("result", "g-1").stdout == '"Hello, a!"\n'
    executed = errands("execute", "greet", "--id", "g-2", "--task-queue", "q", "--input", '"b"')
    assert executed.stdout == '"Hello, b!"\n'
    refused = errands("execute", "refuse", "--id", "r-1", "--task-queue", "q", "--input", '"no"')
    assert_one_error_line(refused, 3, "failed: Refused: no (non-retryable)")


def test_list_shows_a_table_newest_first_and_filters_by_status_and_type(
    errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    run_three(errands, start_worker)

    table = [columns(line) for line in errands("list").stdout.splitlines()]
    completed = errands("list", "--status", "completed", "--json").json()
    refusals = errands("list", "--type", "refuse", "--json").json()
    newest = errands("list", "--limit", "1")

    assert table[0] == [
        "ACTIVITY ID",
        "TYPE",
        "STATUS",
        "TASK QUEUE",
        "SCHEDULED (UTC)",
        "DURATION",
    ]
    assert [row[:4] for row in table[1:]] == [
        ["r-1", "refuse", "FAILED", "q"],
        ["g-2", "greet", "COMPLETED", "q"],
        ["g-1", "greet", "COMPLETED", "q"],
    ]
    assert sorted(e["activity_id"] for e in completed) == ["g-1", "g-2"]
    assert {e["status"] for e in completed} == {"COMPLETED"}
    assert [e["activity_id"] for e in refusals] == ["r-1"]
    assert [columns(line)[0] for line in newest.stdout.splitlines()[1:]] == ["r-1"]
    assert "raise --limit" in newest.stderr


def test_count_and_describe_show_what_the_worker_did(
    errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    run_three(errands, start_worker)

    assert errands("count").stdout == "3\n"
    assert errands("count", "--group-by-status", "--json").json() == {
        "count": 3,
        "groups": {"Completed": 2, "Failed": 1},
    }
    assert errands("count", "--type", "greet", "--status", "FAILED").stdout == "0\n"
    described = dict(columns(line) for line in errands("describe", "r-1").stdout.splitlines())
    assert (described["Activity ID"], described["Status"]) == ("r-1", "FAILED")
    assert described["Last failure"] == "Refused: no (non-retryable)"
    refused = errands("result", "r-1", "--json")
    assert refused.code == 3
    assert json.loads(refused.stdout)["status"] == "FAILED"
    assert json.loads(refused.stdout)["failure"]["error_type"] == "Refused"
    desc = errands("describe", "g-1", "--json").json()
    assert (desc["status"], desc["attempt"], desc["activity_type"]) == ("COMPLETED", 1, "greet")
    assert desc["start_to_close_timeout"] == 30.0
    assert desc["execution_duration"] >= 0


def test_attempts_shows_each_attempt_with_its_ending_and_failure(
    errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    run_three(errands, start_worker)

    (refused,) = errands("attempts", "r-1", "--json").json()
    table = [columns(line) for line in errands("attempts", "g-1").stdout.splitlines()]

    assert (refused["attempt"], refused["outcome"]) == (1, "FAILED")
    assert refused["failure"]["error_type"] == "Refused"
    assert refused["closed_time"] is not None
    assert table[0][:2] == ["ATTEMPT", "OUTCOME"]
    assert table[1][:2] == ["1", "COMPLETED"]


def test_retry_now_says_whether_anything_waited_and_refuses_a_closed_activity(
    errands: Callable[..., Ran],
) -> None:
    errands("start", "greet", "--id", "ready", "--task-queue", "nobody", "--input", '"a"')
    assert "nothing changed" in errands("retry-now", "ready").stdout
    errands("terminate", "ready")
    assert_one_error_line(errands("retry-now", "ready"), 1, "already closed")
    # --query: every open one that waits out a delay
    for name in ("late-1", "late-2"):
        errands("start", "greet", "--id", name, "--task-queue", "nobody", "--input", '"a"')
        errands("update-options", name, "--start-delay", "1h")
    errands("start", "greet", "--id", "now-1", "--task-queue", "nobody", "--input", '"a"')
    bulk = errands("retry-now", "--query", "TaskQueue = 'nobody'", "--json").json()
    assert bulk == {"changed": 2}


def test_pause_and_unpause_through_the_commands(errands: Callable[..., Ran]) -> None:
    errands("start", "greet", "--id", "held", "--task-queue", "nobody", "--input", '"a"')

    paused = errands("pause", "held", "--reason", "maintenance")
    listed = errands("list", "--status", "Paused", "--json").json()
    unpaused = errands("unpause", "held", "--jitter", "1s")

    assert paused.stdout == "Paused activity 'held': now PAUSED (PAUSED).\n"
    assert [e["activity_id"] for e in listed] == ["held"]
    assert unpaused.stdout == "Unpaused activity 'held': now RUNNING (SCHEDULED).\n"


def test_reset_and_update_options_through_the_commands(errands: Callable[..., Ran]) -> None:
    errands("start", "greet", "--id", "moved", "--task-queue", "nobody", "--input", '"a"')

    updated = errands(
        "update-options", "moved", "--task-queue", "elsewhere", "--heartbeat-timeout", "10s",
        "--retry-max-attempts", "5", "--start-delay", "1h", "--json",
    )  # fmt: skip
    cleared = errands("update-options", "moved", "--unset", "start-delay", "--priority", "1")
    described = errands("describe", "moved", "--json").json()
    restored = errands("update-options", "moved", "--restore", "--json").json()
    reset = errands("reset", "moved", "--reset-heartbeat", "--jitter", "1s")
    bulk = errands("reset", "--query", "ActivityId = 'moved'", "--keep-paused", "--json")
    nothing = errands("update-options", "moved")
    both = errands("update-options", "moved", "--restore", "--priority", "2")

    assert updated.json()["task_queue"] == "elsewhere"
    assert updated.json()["heartbeat_timeout"] == 10.0
    assert updated.json()["retry_policy"]["maximum_attempts"] == 5
    assert updated.json()["start_delay"] == 3600.0
    assert cleared.stdout.splitlines() == [
        "Task queue    elsewhere",
        "Timeouts      start_to_close 30s, heartbeat 10s",
        "Retry policy  initial 1s, backoff 2.0, max interval 1m40s, max attempts 5",
        "Priority      1",
    ]
    assert (described["task_queue"], described["priority"]["priority_key"]) == ("elsewhere", 1)
    assert (restored["task_queue"], restored["heartbeat_timeout"]) == ("nobody", None)
    assert restored["retry_policy"]["maximum_attempts"] == 0
    assert reset.stdout == "Reset activity 'moved': now RUNNING (SCHEDULED), attempt 1 next.\n"
    assert bulk.json() == {"changed": 1}
    assert_one_error_line(nothing, 2, "give an option to change")
    assert_one_error_line(both, 2, "--restore takes no other option")


def test_update_options_with_a_query_changes_every_open_match_and_refuses_per_run_options(
    errands: Callable[..., Ran],
) -> None:
    for name in ("u-1", "u-2", "v-1"):
        errands("start", "greet", "--id", name, "--task-queue", "nobody", "--input", '"a"')

    bulk = errands(
        "update-options", "--query", "ActivityId STARTS_WITH 'u-'", "--task-queue", "moved",
        "--heartbeat-timeout", "10s", "--json",
    )  # fmt: skip
    moved = errands("list", "--task-queue", "moved", "--json").json()
    kept = errands("describe", "v-1", "--json").json()
    said = errands("update-options", "--query", "ActivityId = 'v-1'", "--unset", "priority")
    retry = errands("update-options", "--query", "TaskQueue = 'moved'", "--retry-max-attempts", "3")
    both = errands("update-options", "u-1", "--query", "TaskQueue = 'moved'", "--priority", "2")
    neither = errands("update-options", "--priority", "2")

    assert bulk.json() == {"changed": 2}
    assert sorted(row["activity_id"] for row in moved) == ["u-1", "u-2"]
    for name in ("u-1", "u-2"):
        assert errands("describe", name, "--json").json()["heartbeat_timeout"] == 10.0
    assert (kept["task_queue"], kept["heartbeat_timeout"]) == ("nobody", None)
    assert said.stdout == "Update options: 1 activities changed.\n"
    assert_one_error_line(retry, 2, "--query sets or unsets whole options")
    assert_one_error_line(both, 2, "give an activity ID or --query, not both")
    assert_one_error_line(neither, 2, "give an activity ID, or --query")


def test_bulk_commands_act_on_every_open_match_of_a_query_and_say_how_many(
    errands: Callable[..., Ran],
) -> None:
    for name in ("x-1", "x-2", "y-1"):
        errands("start", "greet", "--id", name, "--task-queue", "nobody", "--input", '"a"')

    paused = errands("pause", "--query", "ActivityId STARTS_WITH 'x-'", "--json")
    unpaused = errands("unpause", "--query", "ActivityId STARTS_WITH 'x-'", "--yes")
    cancelled = errands("cancel", "--query", "ActivityId STARTS_WITH 'x-'", "--json")
    terminated = errands("terminate", "--query", "ActivityId = 'y-1'", "--yes")
    both = errands("cancel", "y-1", "--query", "ActivityId = 'y-1'")

    assert paused.json() == {"changed": 2}
    assert unpaused.stdout == "Unpause: 2 activities changed.\n"
    assert cancelled.json() == {"changed": 2}
    assert terminated.stdout == "Terminate: 1 activities changed.\n"
    assert_one_error_line(both, 2, "not both")


def test_cancel_through_the_command_ends_a_heartbeating_activity_canceled(
    errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(ACTIVITIES, "--task-queue", "q")
    assert (
        errands(
            "start", "heartbeat_forever", "--id", "hb", "--task-queue", "q",
            "--heartbeat-timeout", "5s", "--start-to-close", "1m",
        ).code
        == 0
    )  # fmt: skip
    wait_until(
        lambda: errands("describe", "hb", "--json").json()["total_heartbeat_count"] >= 1,
        "a first heartbeat",
    )

    cancelled = errands("cancel", "hb", "--reason", "no longer needed")
    ended = errands("result", "hb")

    assert cancelled.code == 0
    assert cancelled.stdout.startswith("Requested cancellation of activity 'hb': now ")
    assert_one_error_line(ended, 3, "canceled")
    desc = errands("describe", "hb", "--json").json()
    assert (desc["status"], desc["canceled_reason"]) == ("CANCELED", "no longer needed")
    assert desc["heartbeat_details"] and isinstance(desc["heartbeat_details"][0], int)
    worker.wait_for_log("activity 'hb' (heartbeat_forever) attempt 1 canceled")


def test_cancel_and_terminate_close_activities_that_no_worker_has_started(
    errands: Callable[..., Ran],
) -> None:
    for activity_id in ("c-1", "t-1"):
        assert errands("start", "greet", "--id", activity_id, "--task-queue", "nobody").code == 0

    cancelled = errands("cancel", "c-1")
    terminated = errands("terminate", "t-1", "--reason", "wrong input")
    again = errands("terminate", "t-1")

    assert cancelled.stdout == "Requested cancellation of activity 'c-1': now CANCELED.\n"
    assert terminated.stdout == "Terminated activity 't-1'.\n"
    desc = errands("describe", "t-1", "--json").json()
    assert (desc["status"], desc["canceled_reason"]) == ("TERMINATED", "wrong input")
    assert_one_error_line(again, 1, "already closed")
    assert_one_error_line(errands("result", "t-1"), 3, "TerminatedError: wrong input")


def test_filters_match_values_with_quotes_and_backslashes_exactly(
    errands: Callable[..., Ran],
) -> None:
    kinds = {"q-1": "it's", "q-2": "back\\slash", "q-3": "plain", "q-4": "it''s"}
    for activity_id, activity_type in kinds.items():
        assert errands("start", activity_type, "--id", activity_id, "--task-queue", "t").code == 0

    for activity_id, activity_type in kinds.items():
        found = errands("list", "--type", activity_type, "--json").json()
        assert [e["activity_id"] for e in found] == [activity_id]
    assert errands("count", "--query", "ActivityId STARTS_WITH 'q-'").stdout == "4\n"


@pytest.mark.parametrize(
    "value", ["it's", "a\\b", "\\'", "''", "a\\\\'b", "trailing\\", "new\nline", '"double"', ""]
)
def test_a_quoted_filter_value_parses_back_to_itself(value: str) -> None:
    condition = parse_query(f"ActivityType = {quoted(value)}").where
    assert isinstance(condition, Compare) and condition.value == value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 604800), ("1h30m", 5400),
     ("1.5s", 1.5), ("0s", 0)],
)  # fmt: skip
def test_durations_read_as_their_units_say(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["30", "3x", "s", "", "1.5.5s", "-1s", "5 m"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["describe", "nope"], 1, "no activity execution 'nope'"),
        (["result", "nope"], 1, "no activity execution 'nope'"),
        (["cancel", "nope"], 1, "no activity execution 'nope'"),
        (["start", "greet", "--id", "x", "--task-queue", "q", "--input", "World"], 2, "not JSON"),
        (["start", "greet", "--id", "x", "--task-queue", "q", "--start-to-close", "3x"], 2,
         "'3x' is not a duration"),
        (["prune", "--older-than", "a week"], 2, "not a duration"),
        (["list", "--status", "Sleeping"], 2, "'Sleeping' is not one of Running"),
        (["list", "--query", "Foo = 'x'"], 1, "unknown field 'Foo'"),
        (["list", "--url", "sqlite:////no/such/dir/e.db"], 1, "does not exist"),
        (["list", "--url", "mysql://x"], 1, "unknown store URL"),
        (["worker", "no_such_module", "--task-queue", "q"], 1, "cannot import 'no_such_module'"),
        (["worker", "tests.cli_activities:NOPE", "--task-queue", "q"], 1, "no attribute 'NOPE'"),
        (["worker", "tests.cli_activities:ALL_ACTIVITIES", "--task-queue", "q"], 1,
         "'multiply' is a plain def: run it with --threads N or --processes N"),
        (["worker", "tests.cli_activities", "--task-queue", "q", "--threads", "1",
          "--processes", "1"], 2, "not both"),
        (["worker", "tests.cli_activities:greet"], 2, "Missing option '--task-queue'"),
        (["frobnicate"], 2, "No such command 'frobnicate'"),
    ],
)  # fmt: skip
def test_bad_input_exits_non_zero_with_one_line_and_no_traceback(
    args: list[str], code: int, fragment: str, errands: Callable[..., Ran]
) -> None:
    ran = errands(*args)

    assert_one_error_line(ran, code, fragment)
    assert ran.stdout == ""


def test_a_file_that_is_not_a_store_is_a_one_line_error(
    tmp_path: Path, errands: Callable[..., Ran]
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, it is a shopping list\n" * 100)

    ran = errands("count", "--url", f"sqlite:///{junk}")

    assert_one_error_line(ran, 1, "not an errands SQLite store")


def test_help_lists_every_command(errands: Callable[..., Ran]) -> None:
    ran = errands("--help")

    assert ran.code == 0
    commands = ran.stdout.split("Commands:")[1].split()
    for name in ("worker", "start", "execute", "describe", "result", "cancel", "terminate",
                 "list", "count", "migrate", "prune", "attempts", "retry-now", "pause",
                 "unpause", "reset", "update-options", "workers", "dashboard"):  # fmt: skip
        assert name in commands


# --------------------------------------------------------------------------- stopping workers


def test_sigterm_mid_activity_fails_the_attempt_so_another_worker_retries_it(
    tmp_path: Path, errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    runs = tmp_path / "runs.txt"
    first = start_worker(ACTIVITIES, "--task-queue", "q", "--graceful-shutdown-timeout", "200ms")
    errands("start", "hang_on_first_attempt", "--id", "h", "--task-queue", "q",
            "--input", json.dumps(str(runs)))  # fmt: skip
    wait_until(lambda: f"start h 1 {first.pid}" in lines_of(runs), "attempt 1 starting")

    first.proc.send_signal(signal.SIGTERM)

    assert first.wait_exit() == 0
    log = first.log()
    assert "SIGTERM: shutting down" in log
    assert (
        "activity 'h' (hang_on_first_attempt) attempt 1 interrupted by worker shutdown, will retry"
        in log
    )
    pending = errands("describe", "h", "--json").json()
    assert (pending["status"], pending["attempt"]) == ("RUNNING", 2)
    assert pending["last_failure"]["error_type"] == "WorkerShutdown"

    second = start_worker(ACTIVITIES, "--task-queue", "q", name="second")
    retried = errands("result", "h", "--json").json()

    assert retried["result"] == {"attempt": 2, "pid": second.pid}


def test_the_first_signal_lets_a_running_activity_finish_within_the_grace_period(
    tmp_path: Path, errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    runs = tmp_path / "runs.txt"
    worker = start_worker(ACTIVITIES, "--task-queue", "q")  # default grace: 10 s
    errands("start", "finish_after", "--id", "f", "--task-queue", "q",
            "--input", "1.0", "--input", json.dumps(str(runs)))  # fmt: skip
    wait_until(lambda: f"start f 1 {worker.pid}" in lines_of(runs), "attempt 1 starting")

    worker.proc.send_signal(signal.SIGINT)

    assert worker.wait_exit() == 0
    assert "SIGINT: shutting down" in worker.log()
    assert errands("result", "f", "--json").json()["result"] == {"attempt": 1, "pid": worker.pid}


def test_a_second_signal_cancels_running_activities_without_waiting_out_the_grace_period(
    tmp_path: Path, errands: Callable[..., Ran], start_worker: Callable[..., WorkerProcess]
) -> None:
    runs = tmp_path / "runs.txt"
    worker = start_worker(ACTIVITIES, "--task-queue", "q", "--graceful-shutdown-timeout", "20s")
    errands("start", "hang_on_first_attempt", "--id", "h", "--task-queue", "q",
            "--input", json.dumps(str(runs)))  # fmt: skip
    wait_until(lambda: f"start h 1 {worker.pid}" in lines_of(runs), "attempt 1 starting")
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_log("SIGTERM: shutting down")
    signalled = time.monotonic()

    worker.proc.send_signal(signal.SIGTERM)

    assert worker.wait_exit() == 0
    assert time.monotonic() - signalled < 10, "the second signal did not cut the 20 s grace"
    assert "SIGTERM again: cancelling running activities now" in worker.log()
    pending = errands("describe", "h", "--json").json()
    assert (pending["status"], pending["attempt"]) == ("RUNNING", 2)
    assert pending["last_failure"]["error_type"] == "WorkerShutdown"


# --------------------------------------------------------------------------- the store


def test_migrate_makes_a_new_store_and_prints_its_schema_version(
    tmp_path: Path, errands: Callable[..., Ran]
) -> None:
    path = tmp_path / "fresh.db"

    ran = errands("migrate", "--url", f"sqlite:///{path}")

    assert (ran.code, ran.stdout) == (0, f"SQLiteStore is at schema version {SCHEMA_VERSION}.\n")
    assert path.exists()


def test_prune_deletes_closed_activities_older_than_asked(errands: Callable[..., Ran]) -> None:
    errands("start", "greet", "--id", "old", "--task-queue", "nobody")
    errands("start", "greet", "--id", "open", "--task-queue", "nobody")
    errands("terminate", "old")

    kept = errands("prune", "--older-than", "1h")
    pruned = errands("prune", "--older-than", "0s")

    assert kept.stdout.startswith("Deleted 0 activities closed before ")
    assert pruned.stdout.startswith("Deleted 1 activities closed before ")
    assert_one_error_line(errands("describe", "old"), 1, "no activity execution 'old'")
    assert errands("describe", "open", "--json").json()["status"] == "RUNNING"


async def test_list_takes_the_grown_query_language_and_describe_shows_search_attributes(
    client: Client, errands: Callable[..., Ran], task_queue: str
) -> None:
    customer, size = SearchAttributeKey.for_keyword("Customer"), SearchAttributeKey.for_int("Size")
    for id, who, n in (("sa-1", "acme", 1), ("sa-2", "acme", 5), ("sa-3", "globex", 9)):
        await client.start_activity(
            "greet", id=id, task_queue=task_queue, start_to_close_timeout=timedelta(seconds=30),
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(customer, who), SearchAttributePair(size, n)]
            ),
        )  # fmt: skip
    query = "(Customer = 'acme' AND Size > 2) OR Customer IN ('globex') ORDER BY ScheduleTime"
    listed = errands("list", "--query", query, "--json").json()
    assert [e["activity_id"] for e in listed] == ["sa-2", "sa-3"]
    assert listed[0]["typed_search_attributes"] == {"Customer": "acme", "Size": 5}
    described = dict(columns(line) for line in errands("describe", "sa-3").stdout.splitlines())
    assert described["Search attributes"] == '{"Customer": "globex", "Size": 9}'
    refused = errands("list", "--query", "Size = 'many'")
    assert refused.code != 0
    assert "Size takes a number" in refused.stderr
