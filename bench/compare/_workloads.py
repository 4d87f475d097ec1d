"""One run of one workload on one system, in a process of its own (``python
-m bench.compare run-one SPEC``), and the crash workload's worker processes
(``python -m bench.compare worker SPEC``).

The workloads call the same methods on both systems' clients
(``start_activity``, ``execute_activity``, and on a handle ``result``,
``cancel``, ``describe``), so throughput and latency are bench.workloads'
own code, run unchanged against either client."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench import workloads as w
from bench.compare import _crash
from bench.compare._pool import Pool, activity_pool
from bench.compare._procstat import CpuMeter, peak_rss_mib, reset_peak_rss
from bench.compare._sides import ERRANDS_POSTGRES, Side, postgres_backends, side_for

PEER_WORKLOADS = ("loop", "lanes", "batch", "sequential")
"""The workloads every system runs, its worker in other processes (bench.peers)."""
WORKLOADS = (
    *PEER_WORKLOADS,
    "throughput-async",
    "latency",
    "throughput-thread",
    "throughput-process",
    "cancel-async",
    "cancel-thread",
    "crash-recovery",
)
POOL_KIND = {
    "throughput-thread": "thread",
    "throughput-process": "process",
    "cancel-thread": "thread",
}
THROUGHPUT_NAME = {  # bench.workloads' names (its throughput() looks up a target by name)
    "throughput-async": "throughput-1p",
    "throughput-thread": "throughput-thread",
    "throughput-process": "throughput-process",
}
TIMEOUT = w.TIMEOUT
WAIT_S = 30.0  # ceiling for every condition a workload waits on
POLL_S = 0.01
KILL_AFTER_TICKS = 5  # attempt 1 has heartbeated this many times when its worker is killed
RETRY_INITIAL_INTERVAL_S = 1.0  # both systems' default RetryPolicy.initial_interval
RECOVERY_WAIT_S = 120.0


@dataclass
class RunSpec:
    """Everything a run child needs; passed as JSON on its command line."""

    system: str
    workload: str
    run: int
    target: str
    mode: str
    server_pid: int
    tmp: str
    task_queue: str
    n: int
    in_flight: int
    latency_rounds: int
    thread_n: int
    process_n: int
    cancel_rounds: int
    heartbeat_timeout_s: float
    postgres: str = ""
    """The PostgreSQL given (--postgres): the peers on PostgreSQL make their database there."""
    peer_in_flight: int = 500
    loop_n: int = 2000
    lanes_n: int = 5000
    batch_n: int = 20000
    sequential_rounds: int = 200
    max_seconds: float = 30.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))


async def run_one(spec: RunSpec) -> dict[str, Any]:
    """The figures of one run."""
    if spec.server_pid:
        reset_peak_rss(spec.server_pid)  # this run's peak, not an earlier workload's
    if spec.workload in PEER_WORKLOADS:
        return await peer_workload(spec)
    side = side_for(spec.system, spec.target, spec.mode)
    if spec.workload == "crash-recovery":
        return await crash_recovery(side, spec)
    client, calls = await side.connect()
    try:
        async with (
            activity_pool(POOL_KIND.get(spec.workload, "")) as pool,
            side.worker(client, spec.task_queue, slots=spec.in_flight, pool=pool),
        ):
            if spec.workload.startswith("throughput"):
                return await throughput(side, calls, spec, pool)
            if spec.workload == "latency":
                return await latency(side, calls, spec)
            return await cancel_delivery(side, calls, spec, sync=pool is not None)
    finally:
        await side.close(client)


async def peer_workload(spec: RunSpec) -> dict[str, Any]:
    """A peer workload (bench.peers._workloads) on any system, its worker in
    other processes."""
    from bench.peers import Run
    from bench.peers._run import run_workload

    run = Run(
        system=spec.system,
        namespace=spec.task_queue.replace("-", "_"),
        target=spec.target,
        postgres=spec.postgres,
        in_flight=spec.peer_in_flight,
        tmp=spec.tmp,
        mode=spec.mode,
    )
    sizes = {
        "loop_n": spec.loop_n,
        "lanes_n": spec.lanes_n,
        "batch_n": spec.batch_n,
        "sequential_rounds": spec.sequential_rounds,
        "max_seconds": int(spec.max_seconds),
    }
    return await run_workload(spec.system, spec.workload, run, sizes, spec.server_pid)


async def throughput(side: Side, calls: Any, spec: RunSpec, pool: Pool | None) -> dict[str, Any]:
    """bench.workloads.throughput (warm-up, then ``in_flight`` lanes of start +
    result), with the CPU every process of the side spent on it (the warm-up
    included, so per activity it is divided by n + the warm-up rounds) and
    their peak RSS."""
    n = {"throughput-async": spec.n, "throughput-thread": spec.thread_n}.get(
        spec.workload, spec.process_n
    )
    meter = CpuMeter(_server_pids(spec))
    meter.start()
    figures = await w.throughput(
        THROUGHPUT_NAME[spec.workload],
        calls,
        spec.task_queue,
        n,
        spec.in_flight,
        side.noop if pool is None else side.noop_sync,
    )
    cpu_tree, cpu_server = meter.stop()
    rss_tree, rss_server = peak_rss_mib(spec.server_pid)
    activities = n + w.WARMUP_ROUNDS
    return {
        "throughput": figures[0].value,
        "wall_s": figures[1].value,
        "cpu_per_1k": None if cpu_server is None else 1000 * (cpu_tree + cpu_server) / activities,
        "cpu_client_worker_s": cpu_tree,
        "cpu_server_s": cpu_server,
        "rss_mib": rss_tree + rss_server,
        "rss_client_worker_mib": rss_tree,
        "rss_server_mib": rss_server,
    }


def _server_pids(spec: RunSpec) -> Callable[[], list[int]]:
    """The server processes whose CPU counts for the run: Temporal's server,
    the PostgreSQL backends serving the run's schema, or none (SQLite)."""
    if spec.system == ERRANDS_POSTGRES:
        return postgres_backends(spec.target)
    return lambda: [spec.server_pid] if spec.server_pid else []


async def latency(side: Side, calls: Any, spec: RunSpec) -> dict[str, Any]:
    """bench.workloads' warm-up and sequential execute_activity round trips."""
    await w.warm_up(calls, spec.task_queue, side.noop)
    times_ms = await w._round_trips(calls, spec.task_queue, side.noop, spec.latency_rounds, "lat")
    return {"p50": w.percentile(times_ms, 50), "p99": w.percentile(times_ms, 99)}


async def _wait_heartbeated(handle: Any) -> None:
    """Until the system has recorded a heartbeat of ``handle``'s attempt (a
    cancel is delivered through heartbeats on both systems)."""
    deadline = time.monotonic() + WAIT_S
    while (await handle.describe()).last_heartbeat_time is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{handle.id} did not heartbeat within {WAIT_S} s")
        await asyncio.sleep(POLL_S)


async def cancel_delivery(side: Side, calls: Any, spec: RunSpec, *, sync: bool) -> dict[str, Any]:
    """bench.workloads.cancel_delivery's loop on either system: start a spin
    activity (heartbeat every 10 ms) with heartbeat_timeout
    ``spec.heartbeat_timeout_s``, wait until a heartbeat is recorded, then
    time from just before ``cancel()`` to the activity's ``except`` of the
    cancel (perf_counter() on both ends: the worker is in this process)."""
    await w.warm_up(calls, spec.task_queue, side.noop_sync if sync else side.noop)
    spin = side.spin_sync if sync else side.spin
    heartbeat_timeout = timedelta(seconds=spec.heartbeat_timeout_s)
    times_ms = []
    for k in range(spec.cancel_rounds):
        activity_id = f"cancel-{k}"
        handle = await calls.start_activity(
            spin,
            side.spin_arg(activity_id),
            id=activity_id,
            task_queue=spec.task_queue,
            start_to_close_timeout=TIMEOUT,
            heartbeat_timeout=heartbeat_timeout,
        )
        await _wait_heartbeated(handle)
        began = time.perf_counter()
        await handle.cancel()
        try:
            await handle.result()
        except Exception as e:
            if not side.is_cancel(e):
                raise
        else:
            raise RuntimeError(f"{activity_id} completed instead of ending cancelled")
        times_ms.append((side.cancel_seen_at.pop(activity_id) - began) * 1000)
    return {"p50": w.percentile(times_ms, 50), "max": max(times_ms)}


# --------------------------------------------------------------------------- crash recovery


async def _start_worker(spec: RunSpec) -> asyncio.subprocess.Process:
    """A worker process serving the crash activity on the run's task queue,
    once it says it runs."""
    worker_spec = {
        "system": spec.system,
        "target": spec.target,
        "mode": spec.mode,
        "task_queue": spec.task_queue,
        "slots": spec.in_flight,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.compare",
        "worker",
        json.dumps(worker_spec),
        stdout=asyncio.subprocess.PIPE,
        cwd=w.REPO_ROOT,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
    if line.strip() != b"ready":
        raise RuntimeError(f"worker process did not start (said {line!r})")
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    await proc.wait()


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


async def crash_recovery(side: Side, spec: RunSpec) -> dict[str, Any]:
    """Two worker processes serve the task queue; attempt 1 of ``crash``
    (heartbeat_timeout ``spec.heartbeat_timeout_s``, the default retry
    policy) heartbeats a counter every 100 ms in one of them. Once it has
    heartbeated 5 times and the system has recorded a heartbeat, that process
    is SIGKILLed. Figures: the time from the kill to attempt 2's start (in
    the other process); how late that start was against the earliest the
    rules allow (last recorded heartbeat + heartbeat_timeout + the 1 s
    backoff), which is the system's own delay while the first figure also
    depends on when the kill fell between heartbeats; whether the heartbeat
    details reached attempt 2 and how many ticks they lagged the last
    heartbeat call."""
    marks = Path(spec.tmp) / "crash"
    marks.mkdir(parents=True)
    client, calls = await side.connect()
    workers: list[asyncio.subprocess.Process] = []
    try:
        workers += await asyncio.gather(_start_worker(spec), _start_worker(spec))
        handle = await calls.start_activity(
            side.crash,
            str(marks),
            id="crash-0",
            task_queue=spec.task_queue,
            start_to_close_timeout=TIMEOUT,
            heartbeat_timeout=timedelta(seconds=spec.heartbeat_timeout_s),
        )
        deadline = time.monotonic() + WAIT_S
        while True:
            mark = _read(marks / "attempt1.json")
            if (
                mark is not None
                and mark["k"] >= KILL_AFTER_TICKS
                and (await handle.describe()).last_heartbeat_time is not None
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"attempt 1 did not heartbeat {KILL_AFTER_TICKS} times")
            await asyncio.sleep(POLL_S)
        victim = next((p for p in workers if p.pid == mark["pid"]), None)
        if victim is None:
            raise RuntimeError(f"attempt 1 ran in pid {mark['pid']}, not in a worker process")
        victim.kill()
        killed_at = time.time()
        await victim.wait()
        last = _read(marks / "attempt1.json")
        last_heartbeat = (await handle.describe()).last_heartbeat_time
        assert last is not None and last_heartbeat is not None
        deadline = time.monotonic() + RECOVERY_WAIT_S
        while (second := _read(marks / "attempt2.json")) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no attempt 2 within {RECOVERY_WAIT_S} s of the kill")
            await asyncio.sleep(POLL_S)
        result = await handle.result()
        if result != _crash.RESULT:
            raise RuntimeError(f"the crash activity returned {result!r}")
    finally:
        for proc in workers:
            await _stop(proc)
        await side.close(client)
    if second["pid"] == victim.pid or second["pid"] not in {p.pid for p in workers}:
        raise RuntimeError(f"attempt 2 ran in pid {second['pid']}, not the other worker")
    due = last_heartbeat.timestamp() + spec.heartbeat_timeout_s + RETRY_INITIAL_INTERVAL_S
    details = second["details"]
    return {
        "recovery_s": second["at"] - killed_at,
        "late_s": second["at"] - due,
        "details_arrived": 1 if details else 0,
        "lost_ticks": last["k"] - details[0] if details else None,
    }


async def serve_worker(spec: dict[str, Any]) -> None:
    """A crash-workload worker process: serve until SIGTERM; print 'ready' once it runs."""
    side = side_for(spec["system"], spec["target"], spec["mode"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client, _ = await side.connect()
    try:
        async with side.worker(
            client, spec["task_queue"], slots=spec["slots"], pool=None, activities=[side.crash]
        ):
            print("ready", flush=True)
            await stop.wait()
    finally:
        await side.close(client)
