"""The chaos soak (issue 12 point 4): up to ``total`` activities run by worker
processes (``tests.procs worker``) while a driver SIGKILLs and restarts them
and cancels, terminates, pauses, unpauses and resets executions at random;
then every execution is checked. Used by tests/test_chaos.py (a short run on
each store) and ``python -m bench --only chaos`` (ten minutes).

The invariants, per execution started:

- it closed, once: after the driver stops, the workers are whole again and
  everything paused is unpaused, every execution closes within the drain
  ceiling (nothing is left RUNNING without a claim or a timer); its status
  and close time read twice, apart, are the same; ``result()`` agrees with
  the status (a value exactly when COMPLETED, and that value is the number
  of the attempt that completed);
- one the driver terminated (``terminate()`` returned) ended TERMINATED;
- its attempt history is consistent: none RUNNING (it is closed); every
  attempt closed no earlier than it started, and started no earlier than
  the one before; numbers go up by one, or back to 1 only where the driver
  reset it; one COMPLETED attempt, the last, exactly when the execution
  COMPLETED; describe's attempt is the last attempt's number when it
  COMPLETED;
- an attempt ended WORKER_LOST only in a worker process the driver killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from errands.client import (
    ActivityAttempt,
    ActivityExecutionStatus,
    ActivityHandle,
    AttemptOutcome,
    Client,
)
from errands.common import RetryPolicy
from errands.exceptions import ActivityAlreadyClosedError, ActivityFailedError
from tests.procs import Child, Children, chaos_step

QUEUE = "chaos"
WORKER_SLOTS = 50
ACTION_PAUSE_S = (0.005, 0.05)
"""The driver's pause between two steering actions (random within)."""
KILL_PAUSE_S = (0.5, 2.0)
"""Its pause between two SIGKILLs of a worker process."""
UNPAUSE_EVERY_S = 1.0
"""While draining: how often everything paused is unpaused again."""
OPEN = (ActivityExecutionStatus.RUNNING, ActivityExecutionStatus.PAUSED)
ACTIONS = ("cancel", "terminate", "pause", "pause", "unpause", "unpause", "reset", "reset")


@dataclass
class Plan:
    """What a soak runs: ``duration_s`` of starting and steering (fewer if
    ``total`` executions were started first), with ``workers`` worker
    processes and ``in_flight`` executions open at once."""

    url: str
    directory: Path
    duration_s: float
    total: int = 10_000
    workers: int = 3
    in_flight: int = 100
    seed: int = 0
    drain_ceiling_s: float = 120.0


@dataclass
class Run:
    """One execution the driver started, and what it did to it."""

    handle: ActivityHandle[int]
    result: int | None = None
    failed: bool = False
    done: bool = False
    terminated: bool = False
    reset: bool = False


@dataclass
class Report:
    """What the soak did and found."""

    started: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    """Steering calls that took effect (or were accepted), by kind; "kill":
    worker processes SIGKILLed; "refused": calls on an execution already closed."""
    attempts: Counter[str] = field(default_factory=Counter)
    """Attempts by outcome."""
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    drain_s: float = 0.0

    def summary(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        actions = ", ".join(f"{k} {v}" for k, v in sorted(self.actions.items()))
        attempts = ", ".join(f"{k} {v}" for k, v in sorted(self.attempts.items()))
        return (
            f"{self.started} executions in {self.seconds:.0f} s (drained in "
            f"{self.drain_s:.1f} s): {statuses}; actions: {actions}; attempts: {attempts}; "
            f"{len(self.violations)} invariant violations"
        )


class Soak:
    def __init__(self, plan: Plan, client: Client, children: Children) -> None:
        self.plan = plan
        self.client = client
        self.children = children
        self.rng = random.Random(plan.seed)
        self.runs: dict[str, Run] = {}
        self.open: list[str] = []
        self.workers: list[Child] = []
        self.killed: set[int] = set()
        self.report = Report()
        self.ends = 0.0
        self._spawned = 0
        self._lanes_done = asyncio.Event()

    # ---------------------------------------------------------------- workers

    async def _worker(self) -> Child:
        self._spawned += 1
        return await self.children.worker(
            f"chaos-worker-{self._spawned}", self.plan.url, QUEUE, WORKER_SLOTS
        )

    async def _killer(self) -> None:
        while time.monotonic() < self.ends:
            await asyncio.sleep(self.rng.uniform(*KILL_PAUSE_S))
            victim = self.rng.choice(self.workers)
            self.killed.add(victim.pid)
            victim.kill()
            self.report.actions["kill"] += 1
            self.workers.remove(victim)
            self.workers.append(await self._worker())

    # ---------------------------------------------------------------- starting

    async def _lane(self, lane: int) -> None:
        k = 0
        while time.monotonic() < self.ends and self.report.started < self.plan.total:
            self.report.started += 1
            activity_id = f"c{lane}-{k}"
            k += 1
            rng = self.rng
            handle = await self.client.start_activity(
                chaos_step,
                args=[rng.choice([0.0, 0.01, 0.05, 0.2, 0.5]), rng.choice([0, 0, 0, 1, 2])],
                id=activity_id,
                task_queue=QUEUE,
                start_to_close_timeout=timedelta(seconds=60),
                heartbeat_timeout=rng.choice([None, None, timedelta(seconds=5)]),
                schedule_to_close_timeout=rng.choice([None, None, None, timedelta(seconds=3)]),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=20),
                    maximum_interval=timedelta(milliseconds=200),
                    maximum_attempts=rng.choice([0, 0, 3]),
                ),
            )
            run = self.runs[activity_id] = Run(handle)
            self.open.append(activity_id)
            try:
                run.result = await handle.result()
            except ActivityFailedError:
                run.failed = True
            run.done = True
            self.open.remove(activity_id)

    # ---------------------------------------------------------------- steering

    async def _steer(self) -> None:
        while time.monotonic() < self.ends:
            await asyncio.sleep(self.rng.uniform(*ACTION_PAUSE_S))
            if not self.open:
                continue
            run = self.runs[self.rng.choice(self.open)]
            action = self.rng.choice(ACTIONS)
            try:
                if action == "cancel":
                    await run.handle.cancel()
                elif action == "terminate":
                    await run.handle.terminate()
                    run.terminated = True
                elif action == "pause":
                    await run.handle.pause()
                elif action == "unpause":
                    await run.handle.unpause()
                else:
                    await run.handle.reset()
                    run.reset = True
            except ActivityAlreadyClosedError:
                self.report.actions["refused"] += 1
                continue
            self.report.actions[action] += 1

    async def _drain(self) -> None:
        """Unpause whatever is paused until every lane has its result, or
        the ceiling."""
        deadline = time.monotonic() + self.plan.drain_ceiling_s
        while self.open and time.monotonic() < deadline:
            await self.client.unpause_activities("ExecutionStatus = 'Paused'")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lanes_done.wait(), UNPAUSE_EVERY_S)

    # ---------------------------------------------------------------- the run

    async def run(self) -> Report:
        began = time.monotonic()
        self.ends = began + self.plan.duration_s
        self.workers = list(
            await asyncio.gather(*(self._worker() for _ in range(self.plan.workers)))
        )
        lanes = asyncio.gather(*(self._lane(k) for k in range(self.plan.in_flight)))
        lanes.add_done_callback(lambda _: self._lanes_done.set())
        try:
            await asyncio.gather(self._killer(), self._steer())
            self.report.seconds = time.monotonic() - began
            drained = time.monotonic()
            await self._drain()
            self.report.drain_s = time.monotonic() - drained
        finally:
            if not lanes.done():
                lanes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lanes  # a lane's own error is raised here
        await self._check()
        return self.report

    # ---------------------------------------------------------------- the checks

    def _violation(self, activity_id: str, what: str) -> None:
        self.report.violations.append(f"{activity_id}: {what}")

    async def _check(self) -> None:
        for activity_id in self.open:
            d = await self.runs[activity_id].handle.describe()
            self._violation(
                activity_id,
                f"still {d.status.name} ({d.run_state}) after {self.plan.drain_ceiling_s:g} s "
                f"of draining; attempt {d.attempt}, last worker {d.last_worker_identity}",
            )
        for activity_id, run in self.runs.items():
            if run.done:
                await self._check_one(activity_id, run)

    async def _check_one(self, activity_id: str, run: Run) -> None:
        first = await run.handle.describe()
        attempts = await run.handle.attempts()
        again = await run.handle.describe()
        status = first.status
        self.report.statuses[status.name] += 1
        for a in attempts:
            self.report.attempts[a.outcome.name] += 1
        if status in OPEN:
            self._violation(activity_id, f"result() returned but the status is {status.name}")
        if (again.status, again.close_time) != (status, first.close_time):
            self._violation(
                activity_id,
                f"closed twice: {status.name} at {first.close_time}, then "
                f"{again.status.name} at {again.close_time}",
            )
        completed = status is ActivityExecutionStatus.COMPLETED
        if completed == run.failed or completed != (run.result is not None):
            self._violation(
                activity_id, f"result() {'failed' if run.failed else run.result} but {status.name}"
            )
        closed, started = first.close_time, first.last_started_time
        if closed is not None and started is not None and closed < started:
            self._violation(activity_id, f"closed at {closed}, before its last start {started}")
        if closed is not None and attempts and closed < attempts[-1].started_time:
            self._violation(
                activity_id,
                f"closed at {closed}, before attempt {attempts[-1].attempt} started at "
                f"{attempts[-1].started_time}",
            )
        if run.terminated and status is not ActivityExecutionStatus.TERMINATED:
            self._violation(activity_id, f"terminate() returned, but it ended {status.name}")
        self._check_attempts(activity_id, run, attempts, completed, first.attempt)

    def _check_attempts(
        self,
        activity_id: str,
        run: Run,
        attempts: list[ActivityAttempt],
        completed: bool,
        attempt: int,
    ) -> None:
        history = " ".join(f"{a.attempt}:{a.outcome.name}" for a in attempts)
        for a in attempts:
            if a.outcome is AttemptOutcome.RUNNING or a.closed_time is None:
                self._violation(activity_id, f"attempt {a.attempt} still runs ({history})")
            elif a.closed_time < a.started_time:
                self._violation(
                    activity_id,
                    f"attempt {a.attempt} closed at {a.closed_time} before it started at "
                    f"{a.started_time} ({history})",
                )
            if (
                a.outcome is AttemptOutcome.WORKER_LOST
                and _pid(a.worker_identity) not in self.killed
            ):
                self._violation(
                    activity_id,
                    f"attempt {a.attempt} lost in {a.worker_identity}, which was not killed",
                )
        for a, b in itertools.pairwise(attempts):
            if b.started_time < a.started_time:
                self._violation(activity_id, f"attempt {b.attempt} started before {a.attempt}")
            if b.attempt != a.attempt + 1 and not (b.attempt == 1 and run.reset):
                self._violation(activity_id, f"attempt numbers jump ({history})")
        done = [a for a in attempts if a.outcome is AttemptOutcome.COMPLETED]
        if completed:
            if len(done) != 1 or attempts[-1] is not done[0]:
                self._violation(activity_id, f"COMPLETED with attempts {history}")
            elif run.result != done[0].attempt or attempt != done[0].attempt:
                self._violation(
                    activity_id,
                    f"result {run.result}, describe's attempt {attempt}, completed attempt "
                    f"{done[0].attempt}",
                )
        elif done:
            self._violation(activity_id, f"not COMPLETED, yet an attempt completed ({history})")


def _pid(identity: str | None) -> int | None:
    """The pid of a ``pid@host`` worker identity."""
    head = (identity or "").split("@", 1)[0]
    return int(head) if head.isdigit() else None


async def soak(plan: Plan) -> Report:
    """Run one soak on a fresh store; its report (``violations`` empty when
    every invariant held)."""
    client = await Client.connect(plan.url)
    try:
        with Children(plan.directory) as children:
            return await Soak(plan, client, children).run()
    finally:
        await client.close()
