"""Real OS processes for the durability and race tests.

Run as ``python -m tests.procs <command> ...`` from the repository root (the
parent starts it with ``sys.executable`` and ``cwd=REPO_ROOT``). Commands:

- ``worker``: run a Worker with this module's activities until SIGTERM;
  prints ``ready <pid>`` once the worker runs. With ``--trace-file PATH`` it
  traces its attempts (errands.contrib.opentelemetry, through the global
  tracer provider) and appends each finished span to PATH as a JSON line.
- ``start-loop``: start activities ``<prefix>-0, <prefix>-1, ...`` forever,
  printing ``started <id> <run_id>`` after each start_activity returned.
- ``start-same``: wait for a go-file, then start the given ids (in a shuffled
  order) and print one JSON line: the ids it created and the ones refused.
- ``fire-timers``: fire the namespace's due timers in a tight loop (what every
  worker does, only more often), printing ``ready <pid>`` once it runs.
- ``connect``: print ``ready``, wait for a go-file, then connect to a
  (brand-new) store and start one activity; prints ``ok <run_id>``.
- ``hold-lock``: another program's write transaction on a SQLite file: take
  the write lock (``BEGIN IMMEDIATE`` or ``BEGIN EXCLUSIVE``), write a row of
  its own table, print ``locked``, hold it for ``--seconds``, commit and print
  ``released``.
- ``fleet-client``: wait for a go-file, then run ``fleet_step`` for the ids
  ``<prefix>-<first>`` ... with at most ``--in-flight`` executions open at once
  (start, then await the result), and print one JSON line: each id's result
  and each id's error, if any.

The parent side is ``Child``: it starts a command with stdout and stderr in
files, waits for a line with a generous ceiling, and kills the process; and
``all_ready``, after which the parent creates the go-file of children that all
said ``ready``, so they set off together.
The activities are module level, so the parent can start them by function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from errands import activity
from errands.client import Client
from errands.common import RetryPolicy
from errands.exceptions import ActivityAlreadyStartedError, ApplicationError
from errands.worker import Worker

REPO_ROOT = Path(__file__).resolve().parent.parent

READY_CEILING_S = 30.0
"""How long the parent waits for a child's line before giving up."""


# --------------------------------------------------------------------------- activities


def append_line(path: str, line: str) -> None:
    """Append one line with a single O_APPEND write, so lines of many processes
    never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@activity.defn
async def record_run(log_path: str, seconds: float) -> str:
    """Append ``<activity_id> <attempt> <pid>`` and return the activity id."""
    info = activity.info()
    append_line(log_path, f"{info.activity_id} {info.attempt} {os.getpid()}")
    if seconds > 0:
        await asyncio.sleep(seconds)
    return info.activity_id


@activity.defn
async def count_until_retried(log_path: str) -> dict[str, Any]:
    """Attempt 1 heartbeats 0, 1, 2, ... every 50 ms forever (until its worker
    dies); a later attempt returns what it resumed from."""
    info = activity.info()
    append_line(log_path, f"start {info.activity_id} {info.attempt} {os.getpid()}")
    resumed_from = list(info.heartbeat_details)
    if info.attempt == 1:
        i = 0
        while True:
            activity.heartbeat(i)
            i += 1
            await asyncio.sleep(0.05)
    append_line(log_path, f"done {info.activity_id} {info.attempt} {os.getpid()}")
    return {"attempt": info.attempt, "pid": os.getpid(), "resumed_from": resumed_from}


@activity.defn
async def hang_first_attempt(log_path: str) -> dict[str, Any]:
    """Attempt 1 never heartbeats and never returns; a later one returns."""
    info = activity.info()
    append_line(log_path, f"start {info.activity_id} {info.attempt} {os.getpid()}")
    if info.attempt == 1:
        await asyncio.sleep(3600)
    append_line(log_path, f"done {info.activity_id} {info.attempt} {os.getpid()}")
    return {"attempt": info.attempt, "pid": os.getpid()}


@activity.defn
async def sleep_then_return(log_path: str, seconds: float) -> float:
    """Sleep, note that it returns, and return ``seconds``."""
    await asyncio.sleep(seconds)
    info = activity.info()
    append_line(log_path, f"return {info.activity_id} {info.attempt} {os.getpid()}")
    return seconds


@activity.defn
async def heartbeat_then_sleep(seconds: float) -> float:
    """Heartbeat once (so a cancel reaches it at once), sleep, return ``seconds``."""
    activity.heartbeat("started")
    await asyncio.sleep(seconds)
    return seconds


@activity.defn
async def heartbeat_until_cancelled(log_path: str) -> None:
    """Append ``start <id> <attempt> <pid>``, then heartbeat every 10 ms until
    cancelled; append ``cancelled <id> <attempt> <pid>`` and end cancelled."""
    info = activity.info()
    mark = f"{info.activity_id} {info.attempt} {os.getpid()}"
    append_line(log_path, f"start {mark}")
    try:
        while True:
            activity.heartbeat()
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        append_line(log_path, f"cancelled {mark}")
        raise


@activity.defn
async def fail_twice_then_wait(go_path: str, words: str) -> str:
    """Heartbeat ``{"words": words, "attempt": n}``; raise an ApplicationError
    saying ``words`` in attempts 1 and 2; in attempt 3 wait for ``go_path``
    to exist, then return ``done``."""
    attempt = activity.info().attempt
    activity.heartbeat({"words": words, "attempt": attempt})
    if attempt < 3:
        raise ApplicationError(f"attempt {attempt} failed: {words}", type="Flaky")
    while not os.path.exists(go_path):
        await asyncio.sleep(0.005)
    return "done"


@activity.defn
async def echo(value: str) -> str:
    """Return the value."""
    return value


@activity.defn
async def fleet_step(log_path: str, fail_first: bool, seconds: float) -> str:
    """Append ``start <id> <attempt> <pid>`` as the attempt begins; attempt 1
    of a ``fail_first`` activity then fails (retryably). Otherwise sleep,
    append ``done <id> <attempt> <pid>`` and return ``<id> <attempt> <pid>``."""
    info = activity.info()
    mark = f"{info.activity_id} {info.attempt} {os.getpid()}"
    append_line(log_path, f"start {mark}")
    if fail_first and info.attempt == 1:
        raise ApplicationError("the first attempt fails", type="FleetFlaky")
    if seconds > 0:
        await asyncio.sleep(seconds)
    append_line(log_path, f"done {mark}")
    return mark


@activity.defn
async def four_endings(log_path: str) -> int:
    """Appends ``start <attempt> <pid>``. Attempt 1 fails; attempt 2 heartbeats
    once, then sleeps past its heartbeat timeout; attempt 3 heartbeats every
    0.1 s until its worker dies; attempt 4 returns its number."""
    info = activity.info()
    append_line(log_path, f"start {info.attempt} {os.getpid()}")
    activity.heartbeat(info.attempt)
    if info.attempt == 1:
        raise ApplicationError("attempt 1 fails", type="First")
    if info.attempt == 2:
        await asyncio.sleep(3600)
    if info.attempt == 3:
        while True:
            await asyncio.sleep(0.1)
            activity.heartbeat(info.attempt)
    return info.attempt


@activity.defn
async def note_interruption(log_path: str) -> int:
    """The first run heartbeats and waits; when interrupted it appends
    ``interrupted <id> <attempt> <flags>`` (the cancellation details that are
    set) and lets the cancel out. Any later run returns its attempt number."""
    info = activity.info()
    try:
        os.close(os.open(log_path + ".began", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return info.attempt
    activity.heartbeat()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        details = activity.cancellation_details()
        flags = sorted(k for k, v in vars(details).items() if v) if details else []
        append_line(log_path, f"interrupted {info.activity_id} {info.attempt} {','.join(flags)}")
        raise
    return info.attempt


@activity.defn
async def slow_then_flaky(failures: int, seconds: float) -> int:
    """Work ``seconds``, then fail (retryably) while the attempt number is at
    most ``failures``; else return the attempt number."""
    await asyncio.sleep(seconds)
    attempt = activity.info().attempt
    if attempt <= failures:
        raise ApplicationError(f"attempt {attempt} fails", type="Flaky")
    return attempt


@activity.defn
async def chaos_step(seconds: float, fail_attempts: int) -> int:
    """The chaos soak's activity (tests/chaos.py): heartbeat every 20 ms for
    ``seconds`` (so cancels, pauses and resets reach it at once), fail
    retryably while its attempt number is at most ``fail_attempts``, else
    return the attempt number."""
    info = activity.info()
    deadline = time.monotonic() + seconds
    while True:
        activity.heartbeat(info.attempt)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(0.02, left))
    if info.attempt <= fail_attempts:
        raise ApplicationError(f"attempt {info.attempt} fails", type="ChaosFlaky")
    return info.attempt


ACTIVITIES = [
    slow_then_flaky,
    chaos_step,
    four_endings,
    note_interruption,
    record_run,
    count_until_retried,
    hang_first_attempt,
    sleep_then_return,
    heartbeat_then_sleep,
    heartbeat_until_cancelled,
    echo,
    fleet_step,
    fail_twice_then_wait,
]


# --------------------------------------------------------------------------- child commands


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _wait_for_file(path: str) -> None:
    deadline = time.monotonic() + READY_CEILING_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"go-file {path} never appeared")
        await asyncio.sleep(0.001)


def _trace_to(path: str) -> list[Any]:
    """Export this process's spans to ``path`` (tests/spans.py); the
    interceptors that trace the worker."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from errands.contrib.opentelemetry import TracingInterceptor
    from tests.spans import JsonLinesExporter

    provider = TracerProvider(resource=Resource({"service.name": "errands-worker"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)
    return [TracingInterceptor()]  # the global provider's tracer


async def _worker(args: argparse.Namespace) -> None:
    interceptors = _trace_to(args.trace_file) if args.trace_file else []
    client = await Client.connect(args.url, interceptors=interceptors)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # SIGUSR1: say how many database round trips this process's store made.
    loop.add_signal_handler(
        signal.SIGUSR1,
        lambda: _say(
            f"trips {getattr(client.store, 'round_trips', -1)} "
            f"{getattr(client.store, 'round_trip_kinds', {})}"
        ),
    )
    try:
        async with Worker(
            client,
            task_queue=args.queue,
            activities=ACTIVITIES,
            max_concurrent_activities=args.max_concurrent,
        ):
            _say(f"ready {os.getpid()}")
            await stop.wait()
    finally:
        await client.close()


async def _fire_timers(args: argparse.Namespace) -> None:
    client = await Client.connect(args.url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        _say(f"ready {os.getpid()}")
        while not stop.is_set():
            await client.store.fire_due_timers(client.namespace)
            await asyncio.sleep(args.interval)
    finally:
        await client.close()


async def _start_loop(args: argparse.Namespace) -> None:
    client = await Client.connect(args.url)
    try:
        i = 0
        while True:
            activity_id = f"{args.prefix}-{i}"
            handle = await client.start_activity(
                echo,
                activity_id,
                id=activity_id,
                task_queue=args.queue,
                start_to_close_timeout=timedelta(seconds=30),
            )
            _say(f"started {activity_id} {handle.run_id}")
            i += 1
    finally:
        await client.close()


async def _start_same(args: argparse.Namespace) -> None:
    client = await Client.connect(args.url)
    ids = [f"{args.prefix}-{i}" for i in range(args.count)]
    random.Random(args.seed).shuffle(ids)
    created: dict[str, str] = {}
    refused: dict[str, str | None] = {}

    async def start(activity_id: str) -> None:
        try:
            handle = await client.start_activity(
                echo,
                activity_id,
                id=activity_id,
                task_queue=args.queue,
                start_to_close_timeout=timedelta(seconds=30),
            )
        except ActivityAlreadyStartedError as e:
            refused[activity_id] = e.run_id
        else:
            assert handle.run_id is not None
            created[activity_id] = handle.run_id

    try:
        _say("ready")
        await _wait_for_file(args.go)
        # A few starts in flight at once: each group commit holds a handful, and
        # the processes take the write lock in turns.
        for at in range(0, len(ids), args.in_flight):
            await asyncio.gather(*(start(i) for i in ids[at : at + args.in_flight]))
        _say(json.dumps({"pid": os.getpid(), "created": created, "refused": refused}))
    finally:
        await client.close()


async def _connect(args: argparse.Namespace) -> None:
    _say("ready")  # everything is imported: only the connect itself is left
    await _wait_for_file(args.go)
    client = await Client.connect(args.url)
    try:
        handle = await client.start_activity(
            echo,
            str(os.getpid()),
            id=f"connect-{os.getpid()}",
            task_queue=args.queue,
            start_to_close_timeout=timedelta(seconds=30),
        )
        _say(f"ok {handle.run_id}")
    finally:
        await client.close()


async def _fleet_client(args: argparse.Namespace) -> None:
    client = await Client.connect(args.url)
    retry = RetryPolicy(initial_interval=timedelta(seconds=args.retry_interval))
    gate = asyncio.Semaphore(args.in_flight)
    results: dict[str, str] = {}
    errors: dict[str, str] = {}

    async def run(i: int) -> None:
        activity_id = f"{args.prefix}-{i}"
        async with gate:
            try:
                handle = await client.start_activity(
                    fleet_step,
                    args=[args.log, i % args.fail_every == 0, args.seconds],
                    id=activity_id,
                    task_queue=args.queue,
                    start_to_close_timeout=timedelta(seconds=args.start_to_close),
                    retry_policy=retry,
                )
                results[activity_id] = await handle.result()
            except Exception as e:  # reported to the parent, which fails the test
                errors[activity_id] = repr(e)

    try:
        _say("ready")
        await _wait_for_file(args.go)
        began = time.monotonic()
        await asyncio.gather(*(run(i) for i in range(args.first, args.first + args.count)))
        elapsed = time.monotonic() - began
        _say(
            json.dumps(
                {"pid": os.getpid(), "elapsed": elapsed, "results": results, "errors": errors}
            )
        )
    finally:
        await client.close()


async def _hold_lock(args: argparse.Namespace) -> None:
    conn = sqlite3.connect(args.path, isolation_level=None, timeout=30)
    conn.execute(f"BEGIN {args.mode.upper()}")
    conn.execute("CREATE TABLE IF NOT EXISTS another_program (at REAL)")
    conn.execute("INSERT INTO another_program VALUES (?)", (time.time(),))
    _say("locked")
    time.sleep(args.seconds)  # the fault itself: a program that holds its lock this long
    conn.execute("COMMIT")
    conn.close()
    _say("released")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="python -m tests.procs")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker")
    worker.add_argument("--url", required=True)
    worker.add_argument("--queue", required=True)
    worker.add_argument("--max-concurrent", type=int, default=100)
    worker.add_argument("--trace-file")
    timers = commands.add_parser("fire-timers")
    timers.add_argument("--url", required=True)
    timers.add_argument("--interval", type=float, default=0.002)
    loop = commands.add_parser("start-loop")
    loop.add_argument("--url", required=True)
    loop.add_argument("--queue", required=True)
    loop.add_argument("--prefix", required=True)
    same = commands.add_parser("start-same")
    same.add_argument("--url", required=True)
    same.add_argument("--queue", required=True)
    same.add_argument("--prefix", required=True)
    same.add_argument("--count", type=int, required=True)
    same.add_argument("--seed", type=int, required=True)
    same.add_argument("--in-flight", type=int, default=4)
    same.add_argument("--go", required=True)
    connect = commands.add_parser("connect")
    connect.add_argument("--url", required=True)
    connect.add_argument("--queue", required=True)
    connect.add_argument("--go", required=True)
    fleet = commands.add_parser("fleet-client")
    fleet.add_argument("--url", required=True)
    fleet.add_argument("--queue", required=True)
    fleet.add_argument("--prefix", required=True)
    fleet.add_argument("--first", type=int, required=True)
    fleet.add_argument("--count", type=int, required=True)
    fleet.add_argument("--in-flight", type=int, required=True)
    fleet.add_argument("--log", required=True)
    fleet.add_argument("--fail-every", type=int, required=True)
    fleet.add_argument("--seconds", type=float, required=True)
    fleet.add_argument("--start-to-close", type=float, required=True)
    fleet.add_argument("--retry-interval", type=float, required=True)
    fleet.add_argument("--go", required=True)
    hold = commands.add_parser("hold-lock")
    hold.add_argument("--path", required=True)
    hold.add_argument("--seconds", type=float, required=True)
    hold.add_argument("--mode", choices=["immediate", "exclusive"], default="exclusive")
    args = parser.parse_args(argv)
    run = {
        "worker": _worker,
        "fire-timers": _fire_timers,
        "start-loop": _start_loop,
        "start-same": _start_same,
        "connect": _connect,
        "fleet-client": _fleet_client,
        "hold-lock": _hold_lock,
    }[args.command]
    asyncio.run(run(args))


# --------------------------------------------------------------------------- parent side


class Child:
    """One ``python -m tests.procs`` process, its stdout and stderr in files."""

    def __init__(self, directory: Path, name: str, *args: str) -> None:
        self.name = name
        self.out_path = directory / f"{name}.out"
        self.err_path = directory / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.procs", *args],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[str]:
        """The complete lines the child wrote to stdout so far."""
        text = self.out_path.read_text()
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        return complete.splitlines()

    def stderr(self) -> str:
        return self.err_path.read_text()

    async def wait_for_line(
        self, prefix: str, *, count: int = 1, timeout: float = READY_CEILING_S
    ) -> list[str]:
        """Wait until stdout has ``count`` lines starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if line.startswith(prefix)]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"child {self.name} exited ({self.proc.returncode}) before printing "
                    f"{prefix!r}; stderr:\n{self.stderr()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"child {self.name} printed no {prefix!r} line within {timeout} s; "
                    f"stderr:\n{self.stderr()[-3000:]}"
                )
            await asyncio.sleep(0.005)

    async def wait_exit(self, timeout: float = READY_CEILING_S) -> int:
        """Wait for the child to exit on its own; its exit code."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"child {self.name} did not exit within {timeout} s")
            await asyncio.sleep(0.01)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the child (if it still runs) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()


async def all_ready(children: Sequence[Child]) -> None:
    """Wait until every one of ``children`` has printed ``ready``: it has
    imported everything and polls for its go-file every millisecond, so once
    the parent creates that file they all set off within about a millisecond."""
    for child in children:
        await child.wait_for_line("ready")


class Children:
    """Starts children and kills every one of them on exit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Child] = []

    def spawn(self, name: str, *args: str) -> Child:
        child = Child(self.directory, name, *args)
        self.started.append(child)
        return child

    async def worker(
        self,
        name: str,
        url: str,
        queue: str,
        max_concurrent: int = 100,
        trace_file: Path | None = None,
    ) -> Child:
        """Start a worker process and wait until it runs (tracing its attempts
        to ``trace_file``, when given)."""
        tracing = () if trace_file is None else ("--trace-file", str(trace_file))
        child = self.spawn(
            name,
            "worker",
            *("--url", url, "--queue", queue, "--max-concurrent", str(max_concurrent)),
            *tracing,
        )
        await child.wait_for_line("ready")
        return child

    def connector(self, name: str, url: str, queue: str, go: Path) -> Child:
        """A ``connect`` child: it says ready, connects once ``go`` exists and
        starts one activity."""
        return self.spawn(name, "connect", "--url", url, "--queue", queue, "--go", str(go))

    def starter(
        self, name: str, url: str, queue: str, *, prefix: str, count: int, seed: int, go: Path
    ) -> Child:
        """A ``start-same`` child: it says ready, then once ``go`` exists starts
        ``<prefix>-0`` ... ``<prefix>-<count - 1>`` in an order shuffled by ``seed``."""
        return self.spawn(
            name,
            "start-same",
            *("--url", url, "--queue", queue, "--prefix", prefix),
            *("--count", str(count), "--seed", str(seed), "--go", str(go)),
        )

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self.started:
            child.kill()


if __name__ == "__main__":
    main(sys.argv[1:])
