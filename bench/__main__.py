"""``python -m bench``: run the workloads, print the settings and one table,
write the results as JSON. ``python -m bench worker ...`` is the worker child."""

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
from errands.client import Client

WORKLOADS = [
    "throughput-1p",
    "throughput-2p",
    "latency-1p",
    "latency-2p",
    "cancel-1p",
    "cancel-2p",
    "throughput-thread",
    "throughput-process",
    "cancel-thread",
    "cancel-process",
]
"""1p: worker and client in one process; 2p: the worker in a child process;
thread/process: sync activities on a thread pool / process pool of a worker in
the client's process."""

THREAD_SHARE = 0.7
"""throughput-thread must reach this share of throughput-1p (same run)."""

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--n", type=int, default=5000, help="activities per throughput run")
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
    p.add_argument("--json", type=Path, help="where to write results (default bench/results/)")
    return p.parse_args(argv)


def parse_worker_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench worker")
    p.add_argument("--url", required=True)
    p.add_argument("--task-queue", required=True)
    p.add_argument("--slots", type=int, default=500)
    return p.parse_args(argv)


async def read_settings(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """What this run ran with; the pragmas are read on the store's own connection."""

    def pragmas(conn: sqlite3.Connection) -> dict[str, Any]:
        names = ("journal_mode", "synchronous", "busy_timeout")
        return {n: conn.execute(f"PRAGMA {n}").fetchone()[0] for n in names}

    client = await Client.connect(f"sqlite:///{tmp / 'settings.db'}")
    try:
        found = await client.store._read(pragmas)  # type: ignore[attr-defined]
    finally:
        await client.close()
    found["synchronous"] = SYNCHRONOUS.get(found["synchronous"], found["synchronous"])
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=w.REPO_ROOT, capture_output=True, text=True
    )
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        **{f"PRAGMA {k}": v for k, v in found.items()},
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
        "workloads": " ".join(args.only),
    }


async def run_workload(name: str, args: argparse.Namespace, tmp: Path) -> list[w.Figure]:
    """One workload on a fresh store file, with its own worker (and pool)."""
    kind, where = name.split("-")
    url = f"sqlite:///{tmp / name}.db"
    client = await Client.connect(url)
    try:
        async with (
            w.activity_pool(where) as pool,
            w.running_worker(
                client, url, "bench", child=where == "2p", slots=args.in_flight, pool=pool
            ),
        ):
            if kind == "throughput":
                if pool is None:
                    return await w.throughput(name, client, "bench", args.n, args.in_flight)
                n = args.process_n if where == "process" else args.n
                figures = await w.throughput(name, client, "bench", n, args.in_flight, noop_sync)
                if where == "process":
                    figures += await w.process_breakdown(
                        name, client, "bench", pool, args.breakdown_rounds
                    )
                return figures
            if kind == "latency":
                return await w.latency(name, client, "bench", args.latency_rounds)
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
        settings = await read_settings(args, tmp)
        print("settings:")
        for key, value in settings.items():
            print(f"  {key}: {value}")
        print(flush=True)
        figures: list[w.Figure] = []
        errors: dict[str, str] = {}
        for name in [n for n in WORKLOADS if n in args.only]:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                figures += await run_workload(name, args, tmp)
            except Exception as e:
                traceback.print_exc()
                errors[name] = f"{type(e).__name__}: {e}"
            print(f"  {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    figures = w.judge_thread_throughput(figures, THREAD_SHARE)
    print_table(figures, errors)
    path = args.json or RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = [{**asdict(f), "met": f.met} for f in figures]
    path.write_text(
        json.dumps({"settings": settings, "results": results, "errors": errors}, indent=2)
    )
    print(f"\nresults written to {path}")
    return 1 if errors else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        a = parse_worker_args(argv[1:])
        asyncio.run(w.serve(a.url, a.task_queue, a.slots))
        return 0
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
