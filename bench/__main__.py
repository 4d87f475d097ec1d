"""``python -m bench``: run the workloads, print the settings and one table,
write the results as JSON. ``python -m bench worker ...`` is the worker child,
``idle-client`` and ``fleet-client`` the idle and fleet workloads' clients."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import workloads as w
from bench.activities import noop_sync
from bench.bulk import bulk_cancel
from bench.chaos import chaos
from bench.dashboard import NAME as DASHBOARD
from bench.dashboard import dashboard
from bench.failover import failover
from bench.fleet import FleetSize, drive, fleet
from bench.idle import WORKER_SLOTS as IDLE_SLOTS
from bench.idle import await_forever, idle
from bench.overhead import NAME as OVERHEAD
from bench.overhead import ROUNDS as OVERHEAD_ROUNDS
from bench.overhead import overhead
from bench.retention import RUNS as RETENTION_RUNS
from bench.retention import retention
from bench.search import NAME as SEARCH
from bench.search import PAGE as SEARCH_PAGE
from bench.search import list_by_keyword
from bench.stores import StoreTarget
from bench.stores import read_settings as read_store_settings
from errands.client import Client

WORKLOADS = [
    "throughput-1p",
    "throughput-2p",
    "batch-2p",
    "latency-1p",
    "latency-2p",
    "cancel-1p",
    "cancel-2p",
    "throughput-thread",
    "throughput-process",
    "throughput-process2p",
    "cancel-thread",
    "cancel-process",
    "scaling",
    "retention",
    "idle",
    "fleet",
    "bulk-cancel",
    "list-by-keyword",
    "dashboard",
    "failover",
    "chaos",
    "telemetry-overhead",
]
"""1p: worker and client in one process; 2p: the worker in a child process;
thread/process: sync activities on a thread pool / process pool of a worker in
the client's process; process2p: on the process pool of a worker in a child
process (as a deployment runs it: the client's lanes take no CPU from the
worker's process); scaling: 1, 2, 4 worker processes and the client in this
one; retention: claims with and without a million closed rows, and prune; idle: the
CPU of a waiting worker process and of a client process awaiting a result;
fleet: 1, 4, 16 worker processes of I/O-bound activities (bench/fleet.py);
bulk-cancel: cancel_activities of 100,000 scheduled executions while a worker
process claims from another queue (bench/bulk.py);
list-by-keyword: a page of the executions with one value of a keyword search
attribute among a million (bench/search.py; p50 target <= 20 ms on both stores);
dashboard: the dashboard's activities page and an activity's page among a million
executions, server time (bench/dashboard.py; p95 target <= 100 ms on both stores);
failover: SIGKILL the worker process running an attempt while another serves the
queue, time to the next attempt's start (bench/failover.py; target < 1 s);
chaos: the chaos soak of tests/chaos.py for --chaos-seconds (bench/chaos.py);
telemetry-overhead: throughput with metrics (and tracing) on against off, worker
and client in one process, rounds interleaved (bench/overhead.py; target >= 85%)."""

THREAD_SHARE = 0.7
"""throughput-thread must reach this share of throughput-1p (same run)."""

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLOAD_TIMEOUT_S = 900.0
"""A workload still running after this is stopped and reported as an error."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--n", type=int, default=5000, help="activities per throughput run")
    p.add_argument(
        "--batch-n", type=int, default=20_000, help="activities of the batch-2p run (1,000 a call)"
    )
    p.add_argument(
        "--in-flight", type=int, default=500, help="pending start+result (and worker slots)"
    )
    p.add_argument("--latency-rounds", type=int, default=500)
    p.add_argument("--cancel-rounds", type=int, default=50)
    p.add_argument(
        "--process-n", type=int, default=500, help="activities per throughput-process run"
    )
    p.add_argument(
        "--breakdown-rounds",
        type=int,
        default=200,
        help="sequential calls per throughput-process breakdown row",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=WORKLOADS,
        default=WORKLOADS,
        metavar="NAME",
        help=", ".join(WORKLOADS),
    )
    p.add_argument(
        "--scaling-workers",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        metavar="COUNT",
        help="worker process counts of the scaling workload (its N and in-flight: --n, "
        "--in-flight)",
    )
    p.add_argument(
        "--closed-rows",
        type=int,
        default=1_000_000,
        help="closed executions in the table for the retention workload",
    )
    p.add_argument(
        "--retention-n", type=int, default=2000, help="activities per retention throughput run"
    )
    p.add_argument(
        "--claim-rounds",
        type=int,
        default=1000,
        help="tasks started, then claimed one claim_batch call each (retention)",
    )
    p.add_argument(
        "--search-rows",
        type=int,
        default=1_000_000,
        help="closed executions with a keyword search attribute (list-by-keyword)",
    )
    p.add_argument(
        "--search-calls", type=int, default=500, help="list calls timed (list-by-keyword)"
    )
    p.add_argument(
        "--dashboard-rows",
        type=int,
        default=1_000_000,
        help="closed executions under the dashboard's pages (dashboard)",
    )
    p.add_argument(
        "--dashboard-calls", type=int, default=200, help="requests timed per page (dashboard)"
    )
    p.add_argument(
        "--idle-window", type=float, default=60.0, help="seconds the idle CPU is measured over"
    )
    p.add_argument(
        "--idle-settle",
        type=float,
        default=5.0,
        help="seconds the idle processes run before the window",
    )
    p.add_argument(
        "--fleet-workers",
        type=int,
        nargs="+",
        default=[1, 4, 16],
        metavar="COUNT",
        help="worker process counts of the fleet workload (efficiency and CPU ratio are "
        "against the count 1)",
    )
    p.add_argument(
        "--fleet-slots", type=int, default=10, help="max_concurrent_activities per fleet worker"
    )
    p.add_argument(
        "--fleet-activity-s", type=float, default=0.2, help="seconds each fleet activity awaits"
    )
    p.add_argument(
        "--fleet-margin",
        type=float,
        default=0.5,
        help="activities kept in flight beyond the slots, as a share of them",
    )
    p.add_argument(
        "--fleet-warmup", type=float, default=5.0, help="seconds before the fleet window"
    )
    p.add_argument(
        "--fleet-window", type=float, default=30.0, help="seconds the fleet is measured over"
    )
    p.add_argument("--chaos-seconds", type=float, default=600.0, help="soak time (chaos)")
    p.add_argument(
        "--chaos-total", type=int, default=1_000_000, help="most executions started (chaos)"
    )
    p.add_argument("--failover-rounds", type=int, default=20, help="SIGKILLs timed (failover)")
    p.add_argument(
        "--bulk-n",
        type=int,
        default=100_000,
        help="scheduled executions the bulk-cancel workload cancels",
    )
    p.add_argument(
        "--netem-delay-ms",
        type=float,
        default=1.0,
        help="PostgreSQL only: also run the fleet's single worker with the database this "
        "many ms away each way (netem, in network namespaces of the run's own; needs root "
        "and a kernel with netem; 0: the same path without a delay)",
    )
    p.add_argument(
        "--url",
        help="run on this store: postgresql://... (a fresh schema per workload, dropped "
        "afterwards) or sqlite:///dir/name.db (files dir/name-<workload>.db); default: SQLite "
        "files in a temporary directory",
    )
    p.add_argument("--json", type=Path, help="where to write results (default bench/results/)")
    return p.parse_args(argv)


def parse_worker_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench worker")
    p.add_argument("--url", required=True)
    p.add_argument("--task-queue", required=True)
    p.add_argument("--slots", type=int, default=500)
    p.add_argument(
        "--pool", choices=["none", "process"], default="none", help="run the sync activities too"
    )
    return p.parse_args(argv)


def parse_client_args(name: str, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m bench {name}")
    p.add_argument("--url", required=True)
    p.add_argument("--task-queue", required=True)
    if name == "fleet-client":
        p.add_argument("--in-flight", type=int, required=True)
        p.add_argument("--activity-s", type=float, required=True)
        p.add_argument("--warmup", type=float, required=True)
        p.add_argument("--window", type=float, required=True)
    return p.parse_args(argv)


def fleet_size(args: argparse.Namespace) -> FleetSize:
    return FleetSize(
        workers=args.fleet_workers,
        slots=args.fleet_slots,
        activity_s=args.fleet_activity_s,
        margin=args.fleet_margin,
        warmup_s=args.fleet_warmup,
        window_s=args.fleet_window,
        netem_delay_ms=args.netem_delay_ms,
    )


async def read_settings(args: argparse.Namespace, store: StoreTarget) -> dict[str, Any]:
    """What this run ran with; the store's settings are read on the store's
    own connection (of a store made for this and removed)."""
    url = store.url_for("settings")
    try:
        client = await Client.connect(url)
        try:
            found = await read_store_settings(client, store.kind)
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(store.drop, url)
    versions: dict[str, Any]
    if store.kind == "sqlite":
        versions = {"sqlite": sqlite3.sqlite_version}
    else:
        import psycopg

        versions = {"psycopg": psycopg.__version__, "libpq": psycopg.pq.version()}
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=w.REPO_ROOT, capture_output=True, text=True
    )
    return {
        "store": store.describe(),
        "python": platform.python_version(),
        **versions,
        **found,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "load average (1, 5, 15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "errands commit": git.stdout.strip() or "unknown",
        "n": args.n,
        "in-flight (= worker max_concurrent_activities)": args.in_flight,
        "latency rounds": args.latency_rounds,
        "cancel rounds": args.cancel_rounds,
        "thread pool": f"ThreadPoolExecutor({w.THREAD_POOL_SIZE})",
        "process pool": f"ProcessPoolExecutor({w.PROCESS_POOL_SIZE}, {w.START_METHOD}) "
        f"+ SharedStateManager on a {w.START_METHOD} multiprocessing Manager()",
        "sync slots (worker's)": "min(in-flight, pool size)",
        "process n": args.process_n,
        "process breakdown rounds": args.breakdown_rounds,
        "scaling worker processes": " ".join(map(str, args.scaling_workers)),
        "retention closed rows": args.closed_rows,
        "retention n": f"{args.retention_n} a run, the median of {RETENTION_RUNS} runs",
        "retention claim rounds": args.claim_rounds,
        "idle": f"a worker process ({IDLE_SLOTS} slots, nothing to do) and a client "
        f"process awaiting result(), each on its own store; {args.idle_settle:g} s settle, "
        f"{args.idle_window:g} s window",
        "fleet worker processes": " ".join(map(str, args.fleet_workers)),
        "fleet": f"async activities awaiting {args.fleet_activity_s:g} s, "
        f"max_concurrent_activities={args.fleet_slots} per worker; one client process "
        f"keeping slots x workers x {1 + args.fleet_margin:g} in flight; "
        f"{args.fleet_warmup:g} s warm-up, {args.fleet_window:g} s window",
        "fleet netem delay (PostgreSQL only)": f"{args.netem_delay_ms:g} ms each way",
        "bulk-cancel": f"{args.bulk_n:,} scheduled executions cancelled by query while "
        "a worker process claims one activity started every 10 ms on another queue",
        "list-by-keyword": f"{args.search_rows:,} closed rows, {args.search_calls} list calls "
        f"of {SEARCH_PAGE} one at a time",
        "dashboard": f"{args.dashboard_rows:,} closed rows and 1,000 open, "
        f"{args.dashboard_calls} requests per page one at a time, to the ASGI app in-process",
        "failover": f"{args.failover_rounds} SIGKILLs of a worker process (2 serve the queue)",
        "chaos": f"{args.chaos_seconds:g} s, at most {args.chaos_total:,} executions, "
        "3 worker processes (tests/chaos.py)",
        "telemetry-overhead": f"--n activities, --in-flight lanes, worker in the client's "
        f"process; {OVERHEAD_ROUNDS} interleaved rounds per variant, the median",
        "workloads": " ".join(args.only),
    }


async def run_workload(
    name: str, args: argparse.Namespace, tmp: Path, store: StoreTarget, notes: list[str]
) -> list[w.Figure]:
    """One workload on a fresh store (or, for scaling, retention, idle and
    fleet, one per measurement), each removed afterwards; ``notes`` gathers
    what a workload has to say beside its figures."""
    if name == "idle":
        return await idle(store, args.idle_window, args.idle_settle, notes)
    if name == "fleet":
        return await fleet(store, fleet_size(args), notes)
    if name == "bulk-cancel":
        return await bulk_cancel(store, args.bulk_n, notes)
    if name == "chaos":
        return await chaos(store, args.chaos_seconds, args.chaos_total, notes)
    if name == "failover":
        return await failover(store, args.failover_rounds, notes)
    if name == OVERHEAD:
        return await overhead(store, args.n, args.in_flight, notes)
    if name == SEARCH:
        return await list_by_keyword(store, args.search_rows, args.search_calls)
    if name == DASHBOARD:
        return await dashboard(store, args.dashboard_rows, args.dashboard_calls)
    if name == "retention":
        return await retention(
            store, args.closed_rows, args.retention_n, args.in_flight, args.claim_rounds
        )
    if name == "scaling":
        rates = {}
        for workers in args.scaling_workers:
            url = store.url_for(f"scaling-{workers}")
            try:
                client = await Client.connect(url)
                try:
                    rates[workers] = await w.scaling_rate(
                        client, url, "bench", workers, args.n, args.in_flight
                    )
                finally:
                    await client.close()
            finally:
                await asyncio.to_thread(store.drop, url)
        return w.scaling_figures(rates)
    url = store.url_for(name)
    try:
        return await run_activity_workload(name, args, tmp, url)
    finally:
        await asyncio.to_thread(store.drop, url)


async def run_activity_workload(
    name: str, args: argparse.Namespace, tmp: Path, url: str
) -> list[w.Figure]:
    """One of the throughput, latency and cancel workloads on the fresh store
    at ``url``, with its own worker (and pool)."""
    kind, where = name.split("-")
    meter = w.cpu_meter(url)
    client = await Client.connect(url)
    try:
        async with (
            w.activity_pool(where) as pool,
            w.running_worker(
                client,
                url,
                "bench",
                child=where in ("2p", "process2p"),
                slots=args.in_flight,
                pool=pool,
                pooled_child=where == "process2p",
            ),
        ):
            if kind == "throughput":
                if where == "process2p":
                    return await w.throughput(
                        name, client, "bench", args.process_n, args.in_flight, noop_sync, meter
                    )
                if pool is None:
                    return await w.throughput(
                        name, client, "bench", args.n, args.in_flight, meter=meter
                    )
                n = args.process_n if where == "process" else args.n
                figures = await w.throughput(
                    name, client, "bench", n, args.in_flight, noop_sync, meter
                )
                if where == "process":
                    figures += await w.process_breakdown(
                        name, client, "bench", pool, args.breakdown_rounds
                    )
                return figures
            if kind == "latency":
                return await w.latency(name, client, "bench", args.latency_rounds, meter)
            if kind == "batch":
                return await w.batch_throughput(name, client, "bench", args.batch_n, meter)
            mark_dir = tmp / name if where in ("2p", "process") else None
            if mark_dir is not None:
                mark_dir.mkdir()
            return await w.cancel_delivery(
                name, client, "bench", args.cancel_rounds, mark_dir, sync=pool is not None
            )
    finally:
        await client.close()


def format_value(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def print_table(figures: list[w.Figure], errors: dict[str, str]) -> None:
    verdict = {True: "met", False: "MISSED", None: "-"}
    rows = [("workload", "figure", "value", "unit", "target", "result")]
    rows += [
        (f.workload, f.figure, format_value(f.value), f.unit, f.target or "-", verdict[f.met])
        for f in figures
    ]
    rows += [(name, "error", "-", "-", "-", message) for name, message in errors.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        cells = [c.ljust(wd) for c, wd in zip(row, widths, strict=True)]
        cells[2] = row[2].rjust(widths[2])  # numbers line up on the right
        print("  ".join(cells).rstrip())
        if k == 0:
            print("  ".join("-" * wd for wd in widths))


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="errands-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            store = StoreTarget.create(args.url, tmp)
        except ValueError as e:
            print(f"python -m bench: {e}", file=sys.stderr)
            return 2
        settings = await read_settings(args, store)
        print("settings:")
        for key, value in settings.items():
            print(f"  {key}: {value}")
        print(flush=True)
        figures: list[w.Figure] = []
        errors: dict[str, str] = {}
        notes: list[str] = []
        for name in [n for n in WORKLOADS if n in args.only]:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                figures += await asyncio.wait_for(
                    run_workload(name, args, tmp, store, notes), WORKLOAD_TIMEOUT_S
                )
            except Exception as e:
                if (
                    isinstance(e, TimeoutError)
                    and time.perf_counter() - began >= WORKLOAD_TIMEOUT_S
                ):
                    errors[name] = f"did not finish within {WORKLOAD_TIMEOUT_S:.0f} s"
                else:
                    traceback.print_exc()
                    errors[name] = f"{type(e).__name__}: {e}"
            print(f"  {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    figures = w.judge_thread_throughput(w.apply_targets(figures, store.kind), THREAD_SHARE)
    print_table(figures, errors)
    settings["load average at end (1, 5, 15 min)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    settings["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    print()
    for note in notes:
        print(f"note: {note}")
    print(f"load average at end: {settings['load average at end (1, 5, 15 min)']}")
    path = args.json or RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = [{**asdict(f), "met": f.met} for f in figures]
    document = {"settings": settings, "results": results, "errors": errors, "notes": notes}
    path.write_text(json.dumps(document, indent=2))
    print(f"\nresults written to {path}")
    return 1 if errors else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        a = parse_worker_args(argv[1:])
        asyncio.run(w.serve(a.url, a.task_queue, a.slots, pooled=a.pool == "process"))
        return 0
    if argv[:1] == ["idle-client"]:
        a = parse_client_args("idle-client", argv[1:])
        asyncio.run(await_forever(a.url, a.task_queue))
        return 0
    if argv[:1] == ["fleet-client"]:
        a = parse_client_args("fleet-client", argv[1:])
        asyncio.run(drive(a.url, a.task_queue, a.in_flight, a.activity_s, a.warmup, a.window))
        return 0
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
