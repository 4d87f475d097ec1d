"""The fleet workload: I/O-bound activities on 1, 4 and 16 worker processes.

Every activity awaits 200 ms (bench.activities.io_wait) and each worker
process has 10 slots, so a worker can at best finish slots / 0.2 s = 50
activities/s, and N workers N times that. One client process (``python -m
bench fleet-client``) keeps ``slots x workers x (1 + margin)`` activities in
flight (lanes of start + result), so a freed slot always finds a task
waiting. After a warm-up the client counts the results that arrive during
the window; the CPU time of every process (the workers, the client, this
process, and on PostgreSQL the backends serving the store's schema) is read
at the window's start and end, so start-up is excluded.

Figures per worker count: throughput, its share of the slots' ceiling, CPU
per activity; and against one worker: efficiency = throughput(N) / (N x
throughput(1)), and CPU per activity(N) / CPU per activity(1). On PostgreSQL
the single-worker case also runs with the database reached over a link with
a netem delay (bench.netem), when the kernel has netem."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench import netem
from bench.activities import io_wait
from bench.children import started, worker_argv
from bench.compare._procstat import CpuMeter, cpu_seconds
from bench.compare._sides import postgres_backends
from bench.stores import StoreTarget
from bench.workloads import TIMEOUT, Figure
from errands.client import Client

EFFICIENCY_TARGET = ">= 95"
"""% of N x one worker's throughput (issue 10 point 4)."""
CPU_RATIO_TARGET = "<= 1.2"
"""CPU per activity at N workers / at one."""
TASK_QUEUE = "fleet"
DRAIN_GRACE_S = 0.5
LINE_GRACE_S = 120.0
"""How much longer than planned the parent waits for the client's lines."""


@dataclass
class FleetSize:
    """The workload's settings (flags of ``python -m bench``)."""

    workers: Sequence[int]
    slots: int
    activity_s: float
    margin: float
    warmup_s: float
    window_s: float
    netem_delay_ms: float

    def in_flight(self, workers: int) -> int:
        return math.ceil(self.slots * workers * (1 + self.margin))


@dataclass
class Measured:
    """One window: results counted by the client, CPU seconds spent."""

    workers: int
    completed: int
    seconds: float
    own_cpu_s: float  # this process tree: the workers, the client, the bench
    client_cpu_s: float  # the client's alone
    db_cpu_s: float | None  # PostgreSQL's backends; None: some were not seen both times
    load: str
    backends: int  # PostgreSQL backends named errands:<schema> at the window's start

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    @property
    def cpu_ms(self) -> float | None:
        """CPU ms per activity, all processes; None when the backends' is unknown."""
        if self.db_cpu_s is None:
            return None
        return 1000 * (self.own_cpu_s + self.db_cpu_s) / self.completed


# --------------------------------------------------------------------------- the client


async def drive(
    url: str, task_queue: str, in_flight: int, activity_s: float, warmup_s: float, window_s: float
) -> None:
    """The fleet client child: ``in_flight`` lanes of start + result of
    ``io_wait``. Says ``ready`` once connected, ``start`` after the warm-up,
    then ``end {"completed": n, "seconds": s}`` after the window, and exits."""
    client = await Client.connect(url)
    completed = 0

    async def lane(k: int) -> None:
        nonlocal completed
        for i in itertools.count():
            handle = await client.start_activity(
                io_wait,
                args=[i, activity_s],
                id=f"{k}-{i}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            if await handle.result() != i:
                raise RuntimeError(f"activity {k}-{i} returned the wrong value")
            completed += 1

    lanes = asyncio.ensure_future(
        asyncio.gather(*(lane(k) for k in range(in_flight)))
    )  # fails as soon as a lane does
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lanes.cancel)

    async def run_for(seconds: float) -> None:
        """Let the lanes run for ``seconds``; raise if they end first."""
        await asyncio.wait([lanes], timeout=seconds)
        if lanes.done():
            lanes.result()  # a lane's error, or CancelledError on SIGTERM
            raise RuntimeError("the lanes ended before the window did")

    try:
        print("ready", flush=True)
        await run_for(warmup_s)
        began, first = time.perf_counter(), completed
        print("start", flush=True)
        await run_for(window_s)
        seconds, count = time.perf_counter() - began, completed - first
        print("end " + json.dumps({"completed": count, "seconds": seconds}), flush=True)
    finally:
        lanes.cancel()
        await asyncio.gather(lanes, return_exceptions=True)
        await client.close()


# --------------------------------------------------------------------------- one window


async def measure(
    url: str,
    workers: int,
    size: FleetSize,
    server_pids: Callable[[], list[int]],
    prefix: Sequence[str] = (),
) -> Measured:
    """One window with ``workers`` worker processes and the client on the
    store at ``url`` (children run under ``prefix``)."""
    in_flight = size.in_flight(workers)
    client_argv = [
        "fleet-client",
        "--url",
        url,
        "--task-queue",
        TASK_QUEUE,
        "--in-flight",
        str(in_flight),
        "--activity-s",
        str(size.activity_s),
        "--warmup",
        str(size.warmup_s),
        "--window",
        str(size.window_s),
    ]
    meter = CpuMeter(server_pids)
    async with (
        started([worker_argv(url, TASK_QUEUE, size.slots)] * workers, prefix),
        started([client_argv], prefix) as (client,),
    ):
        said = await client.line(size.warmup_s + LINE_GRACE_S)
        if said != "start":
            raise RuntimeError(f"the fleet client said {said!r}, not 'start'")
        await asyncio.to_thread(meter.start)
        backends = len(await asyncio.to_thread(server_pids))
        client_before = cpu_seconds(client.pid) or 0.0
        said = await client.line(size.window_s + LINE_GRACE_S)
        client_s = (cpu_seconds(client.pid) or 0.0) - client_before
        own_s, db_s = await asyncio.to_thread(meter.stop)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if not said.startswith("end "):
            raise RuntimeError(f"the fleet client said {said!r}, not 'end ...'")
        counted = json.loads(said[len("end ") :])
        await asyncio.wait_for(client.proc.wait(), LINE_GRACE_S)
        # The tasks the client left claimed or queued end within about this;
        # a worker's shutdown would interrupt them, and each would log a warning.
        await asyncio.sleep(size.activity_s * (2 + size.margin) + DRAIN_GRACE_S)
    return Measured(
        workers, counted["completed"], counted["seconds"], own_s, client_s, db_s, load, backends
    )


# --------------------------------------------------------------------------- the workload


def _label(workers: int) -> str:
    return f"{workers} worker process" + ("es" if workers > 1 else "")


async def fleet(store: StoreTarget, size: FleetSize, notes: list[str]) -> list[Figure]:
    """A window per worker count on a fresh store each (and on PostgreSQL the
    netem run); the figures."""
    measured: dict[int, Measured] = {}
    for workers in size.workers:
        url = store.url_for(f"fleet-{workers}")
        try:
            server_pids = postgres_backends(url) if store.kind == "postgresql" else list
            measured[workers] = await measure(url, workers, size, server_pids)
        finally:
            await asyncio.to_thread(store.drop, url)
        m = measured[workers]
        notes.append(
            f"fleet {_label(workers)}: {m.completed} results in {m.seconds:.1f} s, "
            f"{size.in_flight(workers)} in flight; load average at the window's end {m.load}"
        )
        if store.kind == "postgresql" and not m.backends:
            notes.append(
                f"fleet {_label(workers)}: no PostgreSQL backend is named errands:<schema>, "
                "so the database's CPU is not in CPU per activity"
            )
        if m.db_cpu_s is None:
            notes.append(
                f"fleet {_label(workers)}: a PostgreSQL backend came or went during the "
                "window, so CPU per activity is not reported"
            )
    figures = fleet_figures(measured, size, store.kind == "postgresql")
    if store.kind == "postgresql":
        figures += await delayed(store, size, notes)
    return figures


def fleet_figures(measured: dict[int, Measured], size: FleetSize, postgres: bool) -> list[Figure]:
    figures = []
    one = measured.get(1)
    for workers, m in measured.items():
        label = _label(workers)
        ceiling = workers * size.slots / size.activity_s
        figures += [
            Figure("fleet", f"{label}: throughput", m.rate, "activities/s"),
            Figure("fleet", f"{label}: % of the slots' ceiling", 100 * m.rate / ceiling, "%"),
        ]
        if m.cpu_ms is not None:
            figures.append(Figure("fleet", f"{label}: CPU per activity", m.cpu_ms, "ms"))
        if postgres and m.db_cpu_s is not None:
            db_ms = 1000 * m.db_cpu_s / m.completed
            figures.append(Figure("fleet", f"{label}: of which PostgreSQL", db_ms, "ms"))
        client_ms = 1000 * m.client_cpu_s / m.completed
        figures.append(Figure("fleet", f"{label}: of which the client", client_ms, "ms"))
        if m.cpu_ms is not None:
            cores = m.cpu_ms * m.completed / 1000 / m.seconds
            figures.append(Figure("fleet", f"{label}: CPU used, all processes", cores, "cores"))
        if one is None or workers == 1:
            continue
        efficiency = 100 * m.rate / (workers * one.rate)
        figures.append(
            Figure(
                "fleet",
                f"{label}: efficiency vs {workers}x one",
                efficiency,
                "%",
                EFFICIENCY_TARGET,
            )
        )
        if m.cpu_ms is not None and one.cpu_ms is not None:
            ratio = m.cpu_ms / one.cpu_ms
            figures.append(
                Figure("fleet", f"{label}: CPU per activity / one's", ratio, "x", CPU_RATIO_TARGET)
            )
    return figures


async def delayed(store: StoreTarget, size: FleetSize, notes: list[str]) -> list[Figure]:
    """One worker process (and the client) reaching PostgreSQL over a link
    with ``size.netem_delay_ms`` of netem delay each way; its throughput, or
    a note saying why it could not run."""
    delay = size.netem_delay_ms
    url = store.url_for("fleet-netem")
    try:
        async with netem.delayed_link(url, delay) as link:
            rtt_ms = await link.connect_rtt_ms()
            m = await measure(link.url, 1, size, postgres_backends(url), link.prefix)
    except netem.LinkUnavailable as e:
        notes.append(f"fleet, PostgreSQL {delay:g} ms away: not run: {e}")
        return []
    finally:
        await asyncio.to_thread(store.drop, url)
    notes.append(
        f"fleet, PostgreSQL {delay:g} ms away: {link.describe()}; {m.completed} results in "
        f"{m.seconds:.1f} s; load average at the window's end {m.load}"
    )
    label = f"1 worker process, PostgreSQL {delay:g} ms away"
    return [
        Figure("fleet", f"{label}: link round trip (TCP connect p50)", rtt_ms, "ms"),
        Figure("fleet", f"{label}: throughput", m.rate, "activities/s"),
    ]
