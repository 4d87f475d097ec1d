"""One peer workload on one system, in the run process bench.compare starts:
set up the run's namespace, start the system's worker processes (children of
this process, so their CPU and memory are counted with it), open the
producer, warm up, measure, and take it all down again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bench.compare._procstat import CpuMeter, descendants, peak_rss_mib
from bench.peers import Peer, Run, Unavailable, WorkerProcess, load
from bench.peers import _workloads as pw
from bench.workloads import REPO_ROOT

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
OUTPUT_TAIL_LINES = 20


class WorkerDidNotStart(Exception):
    """A worker process exited, or did not say it was ready in time."""


async def _wait_ready(proc: asyncio.subprocess.Process, worker: WorkerProcess) -> deque[str]:
    """Read the process's output until it has said ``worker.ready`` as often
    as it should; its output so far (the tail)."""
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    seen = 0
    while seen < worker.ready_count:
        line = (await proc.stdout.readline()).decode(errors="replace")
        if not line:
            raise WorkerDidNotStart(
                f"worker {worker.argv[:4]} exited before it was ready:\n" + "".join(tail)
            )
        tail.append(line)
        seen += worker.ready in line
    return tail


async def _drain(proc: asyncio.subprocess.Process, tail: deque[str]) -> None:
    """Keep reading the output (a full pipe would stall the worker)."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        tail.append(line.decode(errors="replace"))


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL (with every process below it) if it has not
    exited within STOP_TIMEOUT_S."""
    below = descendants(proc.pid)
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def worker_processes(workers: Sequence[WorkerProcess]) -> AsyncIterator[None]:
    """The worker processes, started together, once all are ready; stopped on exit."""
    procs: list[asyncio.subprocess.Process] = []
    drains: list[asyncio.Task[None]] = []
    try:
        for worker in workers:
            procs.append(
                await asyncio.create_subprocess_exec(
                    *worker.argv,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=REPO_ROOT,
                    env={**os.environ, **worker.env},
                )
            )
        for proc, worker in zip(procs, workers, strict=True):
            try:
                tail = await asyncio.wait_for(_wait_ready(proc, worker), READY_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise WorkerDidNotStart(
                    f"worker {worker.argv[:4]} not ready within {READY_TIMEOUT_S:.0f} s"
                ) from None
            drains.append(asyncio.create_task(_drain(proc, tail)))
        yield
    finally:
        await asyncio.gather(*(_stop(proc) for proc in procs))
        for task in drains:
            task.cancel()


async def run_workload(
    system: str,
    workload: str,
    run: Run,
    sizes: dict[str, int],
    server_pid: int = 0,
) -> dict[str, Any]:
    """The figures of ``workload`` on ``system``, or {"n/a": reason} when
    the system cannot run here or has no such call. ``sizes``: loop_n,
    lanes_n, batch_n, sequential_rounds, and max_seconds (no new task is
    taken after that long). ``server_pid``: a server started
    for the comparison (Temporal's), whose CPU and memory count too."""
    try:
        peer = load(system)
        peer.check(run)
    except Unavailable as e:
        return {"n/a": str(e)}
    await asyncio.to_thread(peer.setup, run)
    try:
        async with worker_processes(peer.workers(run)):
            producer = await peer.producer(run)
            try:
                await pw.warm_up(producer)
                figures = await _measure(peer, producer, workload, run, sizes, server_pid)
            finally:
                await producer.close()
    finally:
        await asyncio.to_thread(peer.teardown, run)
    return figures


async def _measure(
    peer: Peer,
    producer: Any,
    workload: str,
    run: Run,
    sizes: dict[str, int],
    server_pid: int,
) -> dict[str, Any]:
    def server_pids() -> list[int]:
        return [*peer.server_pids(run), *([server_pid] if server_pid else [])]

    meter = CpuMeter(server_pids)
    seconds = sizes["max_seconds"]
    if workload == "loop":
        figures = await pw.loop(producer, meter, sizes["loop_n"], seconds)
    elif workload == "lanes":
        figures = await pw.lanes(
            producer, meter, sizes["lanes_n"], seconds, run.in_flight, blocking=peer.blocking
        )
    elif workload == "batch":
        figures = await pw.batch(producer, meter, sizes["batch_n"], seconds)
    elif workload == "sequential":
        figures = await pw.sequential(producer, meter, sizes["sequential_rounds"], seconds)
    else:
        raise ValueError(f"unknown peer workload {workload!r}")
    if "n/a" not in figures:
        rss_own, rss_server = peak_rss_mib(server_pid)
        figures["rss_mib"] = rss_own + rss_server
    return figures


def python_module(*args: str) -> list[str]:
    """The command line running ``python -m`` with this interpreter."""
    return [sys.executable, "-m", *args]
