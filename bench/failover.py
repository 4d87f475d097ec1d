"""The failover workload: how soon a SIGKILLed worker's attempt starts again
in another worker, with no heartbeat_timeout.

Two worker processes (``python -m bench worker``) serve the queue. Each
round starts ``hold_first`` (start_to_close 10 minutes, no heartbeat
timeout, a retry backoff of 1 ms: errands' "backoff 0", since an
initial_interval must be positive); attempt 1 writes its pid to a file and
waits. A random moment within ``KILL_SPREAD_S`` after the file appears (so
the kill falls anywhere in the other processes' liveness polls) the parent
SIGKILLs that worker process and notes ``time.time()``; attempt 2, in the
other worker, returns ``time.time()`` at its start. The figure is the
difference (one host, one clock), p50 / p99 / max over the rounds; the killed
worker is restarted before the next round. The parent awaits each result, so
it watches liveness too (as any client awaiting a result does).

Temporal has no liveness: a killed worker's attempt waits out its
heartbeat_timeout, or the whole start_to_close_timeout without one
(bench.compare's crash-recovery: SIGKILL to attempt 2 with heartbeat_timeout
2 s and its 1 s default retry backoff)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.activities import hold_first
from bench.children import Child, spawn, worker_argv
from bench.stores import StoreTarget
from bench.workloads import Figure, percentile
from errands.client import AttemptOutcome, Client
from errands.common import RetryPolicy

TASK_QUEUE = "failover"
TARGET = "< 1000"
"""ms, SIGKILL to the next attempt's start (issue 12 point 1), backoff 0."""
WARMUP_ROUNDS = 2
KILL_SPREAD_S = 1.0
START_TO_CLOSE = timedelta(minutes=10)
BACKOFF = RetryPolicy(initial_interval=timedelta(milliseconds=1), backoff_coefficient=1.0)
MARK_WAIT_S = 30.0
RECOVERY_WAIT_S = 60.0
SLOTS = 10
SEED = 12


async def _worker(url: str) -> Child:
    child = await spawn(worker_argv(url, TASK_QUEUE, SLOTS))
    await child.ready()
    return child


async def _wait_mark(path: Path) -> int:
    deadline = time.monotonic() + MARK_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"attempt 1 did not start within {MARK_WAIT_S} s")
        await asyncio.sleep(0.001)
    return int(path.read_text())


async def one_round(
    client: Client, workers: dict[int, Child], marks: Path, k: int, url: str, rng: random.Random
) -> float:
    """One kill and failover; seconds from the SIGKILL to attempt 2's start.
    The killed worker is replaced in ``workers``."""
    handle = await client.start_activity(
        hold_first,
        str(marks),
        id=f"failover-{k}",
        task_queue=TASK_QUEUE,
        start_to_close_timeout=START_TO_CLOSE,
        retry_policy=BACKOFF,
    )
    pid = await _wait_mark(marks / f"failover-{k}.pid")
    if pid not in workers:
        raise RuntimeError(f"attempt 1 ran in pid {pid}, not in a worker child")
    await asyncio.sleep(rng.uniform(0, KILL_SPREAD_S))
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    began, ran_in = await asyncio.wait_for(handle.result(), RECOVERY_WAIT_S)
    if int(ran_in) == pid or int(ran_in) not in workers:
        raise RuntimeError(f"attempt 2 ran in pid {int(ran_in)}, not in the other worker")
    outcomes = [a.outcome for a in await handle.attempts()]
    if outcomes != [AttemptOutcome.WORKER_LOST, AttemptOutcome.COMPLETED]:
        raise RuntimeError(f"failover-{k}: attempts ended {outcomes}")
    killed = workers.pop(pid)
    await killed.proc.wait()
    replacement = await _worker(url)
    workers[replacement.pid] = replacement
    return float(began) - killed_at


async def failover(store: StoreTarget, rounds: int, notes: list[str]) -> list[Figure]:
    """``rounds`` kills (after WARMUP_ROUNDS uncounted ones) on a fresh store."""
    url = store.url_for("failover")
    rng = random.Random(SEED)
    workers: dict[int, Child] = {}
    try:
        client = await Client.connect(url)
        try:
            with tempfile.TemporaryDirectory(prefix="errands-failover-") as marks:
                for _ in range(2):
                    child = await _worker(url)
                    workers[child.pid] = child
                times_ms = []
                for k in range(WARMUP_ROUNDS + rounds):
                    seconds = await one_round(client, workers, Path(marks), k, url, rng)
                    if k >= WARMUP_ROUNDS:
                        times_ms.append(seconds * 1000)
        finally:
            await asyncio.gather(*(c.stop() for c in workers.values()))
            await client.close()
    finally:
        await asyncio.to_thread(store.drop, url)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    notes.append(
        f"failover: {rounds} SIGKILLs of the worker process running attempt 1 (2 worker "
        f"processes, the kill {KILL_SPREAD_S:g} s at most after the attempt began, retry "
        f"backoff 1 ms, no heartbeat_timeout); load average at the end {load}"
    )
    return [
        Figure("failover", "SIGKILL to next attempt p50", percentile(times_ms, 50), "ms", TARGET),
        Figure("failover", "SIGKILL to next attempt p99", percentile(times_ms, 99), "ms", TARGET),
        Figure("failover", "SIGKILL to next attempt max", max(times_ms), "ms"),
    ]
