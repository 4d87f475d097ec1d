"""The idle workload: what waiting costs.

Two child processes, each on a fresh store of its own so neither wakes the
other: a worker on a task queue with nothing to do (``python -m bench
worker``), and a client awaiting ``result()`` of an activity on a task queue
that no worker serves (``python -m bench idle-client``). After a settle period
their CPU time (utime + stime of every thread, from /proc/<pid>/stat, their
descendants included) is read at the start and the end of the window; the
figure is that CPU time as a share of one core over the window. On PostgreSQL
the backends serving each store (by application_name) are reported beside
it, unjudged."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

from bench.activities import noop
from bench.children import started, worker_argv
from bench.compare._procstat import CLK_TCK, cpu_seconds, descendants
from bench.compare._sides import postgres_backends
from bench.stores import StoreTarget
from bench.workloads import TIMEOUT, Figure
from errands.client import Client

TARGET = "<= 0.2"
"""% of one core, for each process (issue 10 point 3)."""
WORKER_QUEUE = "idle"
NOBODYS_QUEUE = "nobody"
WORKER_SLOTS = 10


async def await_forever(url: str, task_queue: str) -> None:
    """The idle client child: start one activity on ``task_queue`` (which no
    worker serves), say ``ready`` once its ``result()`` is being awaited,
    and await it until SIGTERM."""
    client = await Client.connect(url)
    try:
        handle = await client.start_activity(
            noop, 0, id="awaited", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        waiting = asyncio.ensure_future(handle.result())
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, waiting.cancel)
        await asyncio.sleep(0.1)  # let result() reach its wait before saying ready
        if waiting.done():
            raise RuntimeError(f"result() returned while nobody ran the activity: {waiting!r}")
        print("ready", flush=True)
        with contextlib.suppress(asyncio.CancelledError):  # SIGTERM: the run is over
            await waiting
    finally:
        await client.close()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its living descendants."""
    return sum(cpu_seconds(p) or 0.0 for p in [pid, *descendants(pid)])


def pids_cpu_s(pids: list[int]) -> dict[int, float]:
    found = {pid: cpu_seconds(pid) for pid in pids}
    return {pid: s for pid, s in found.items() if s is not None}


async def idle(
    store: StoreTarget, window_s: float, settle_s: float, notes: list[str]
) -> list[Figure]:
    """The idle worker's and the idle client's CPU, as % of one core over
    ``window_s`` after ``settle_s``."""
    urls = {"worker": store.url_for("idle-worker"), "client": store.url_for("idle-client")}
    argvs = [
        worker_argv(urls["worker"], WORKER_QUEUE, WORKER_SLOTS),
        ["idle-client", "--url", urls["client"], "--task-queue", NOBODYS_QUEUE],
    ]
    backends: dict[str, Callable[[], list[int]]] = {}
    if store.kind == "postgresql":
        backends = {who: postgres_backends(url) for who, url in urls.items()}
    figures = []
    try:
        async with started(argvs) as (worker, client):
            await asyncio.sleep(settle_s)
            pids = {"worker": worker.pid, "client": client.pid}
            served = {who: await asyncio.to_thread(f) for who, f in backends.items()}
            began = time.perf_counter()
            before = {who: tree_cpu_s(pid) for who, pid in pids.items()}
            backends_before = {who: pids_cpu_s(p) for who, p in served.items()}
            await asyncio.sleep(window_s)
            after = {who: tree_cpu_s(pid) for who, pid in pids.items()}
            backends_after = {who: pids_cpu_s(p) for who, p in served.items()}
            elapsed = time.perf_counter() - began
            for who, child in (("worker", worker), ("client", client)):
                if child.proc.returncode is not None:
                    raise RuntimeError(f"the idle {who} exited during the window")
    finally:
        for url in urls.values():
            await asyncio.to_thread(store.drop, url)
    label = {
        "worker": "worker process, nothing to do",
        "client": "client process awaiting result()",
    }
    for who in pids:
        share = 100 * (after[who] - before[who]) / elapsed
        figures.append(Figure("idle", label[who], share, "% of a core", TARGET))
        if who in served:
            if not served[who]:
                notes.append(
                    f"idle: no PostgreSQL backend is named errands:<schema> for the {who}; "
                    "its backends' CPU is not counted"
                )
                continue
            spent = sum(
                backends_after[who].get(pid, s) - s for pid, s in backends_before[who].items()
            )
            figures.append(
                Figure(
                    "idle",
                    f"PostgreSQL backends serving the {who} ({len(served[who])})",
                    100 * spent / elapsed,
                    "% of a core",
                )
            )
    notes.append(
        f"idle: CPU over a {elapsed:.1f} s window after {settle_s:g} s of settling; "
        f"CPU clock tick {1000 / CLK_TCK:.0f} ms, so one tick is "
        f"{100 / CLK_TCK / elapsed:.3f}% of a core over the window"
    )
    return figures
