"""bench.peers, the harness of ``python -m bench.compare``'s peer workloads:
each workload runs on errands with its worker in another process and reports
a rate (or latencies), CPU and memory; a system whose library is missing is
not applicable, with the reason; a workload stops taking tasks at its time
budget; the durable leader skips systems whose results are not durable.
Speed itself is measured by the bench, never asserted here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.compare import _report
from bench.peers import SYSTEMS, Run, System, Unavailable, load
from bench.peers._run import run_workload
from bench.peers._workloads import Indexes

SIZES = {"loop_n": 30, "lanes_n": 60, "batch_n": 1500, "sequential_rounds": 10, "max_seconds": 60}


@pytest.mark.parametrize("workload", ["loop", "lanes", "batch", "sequential"])
async def test_a_peer_workload_on_errands_reports_its_figures(
    workload: str, tmp_path: Path
) -> None:
    # Given errands on a fresh SQLite file, its worker in another process
    run = Run(
        system="errands-sqlite",
        namespace="peers_test",
        target=f"sqlite:///{tmp_path / 'e.db'}",
        postgres="",
        in_flight=20,
        tmp=str(tmp_path),
    )
    # When the workload runs
    figures = await run_workload("errands-sqlite", workload, run, SIZES)
    # Then every task it took completed, and it says what that cost
    taken = {"loop": 30, "lanes": 60, "batch": 1500, "sequential": 10}[workload]
    assert figures["n"] == taken
    assert figures["rss_mib"] > 0
    assert figures["cpu_per_1k"] >= 0
    assert figures["cpu_server_s"] == 0  # SQLite: no server process
    if workload == "sequential":
        assert 0 < figures["p50"] <= figures["p99"]
    else:
        assert figures["throughput"] > 0


def test_a_system_whose_library_is_missing_is_not_applicable_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        SYSTEMS, "missing", System("missing", "bench.peers.no_such_system:PEER", True)
    )
    with pytest.raises(Unavailable, match="not installed"):
        load("missing")


async def test_a_peer_on_postgresql_without_a_postgresql_is_not_applicable(
    tmp_path: Path,
) -> None:
    run = Run("pgqueuer", "peers_test", "", "", 10, str(tmp_path))
    figures = await run_workload("pgqueuer", "loop", run, SIZES)
    assert "n/a" in figures


def test_a_workload_takes_no_task_after_its_time_budget() -> None:
    indexes = Indexes(n=10**9, seconds=0.05)
    began = time.perf_counter()
    taken = sum(1 for _ in indexes)
    assert time.perf_counter() - began < 5
    assert 0 < taken == indexes.taken < 10**9
    assert list(Indexes(n=3, seconds=60)) == [0, 1, 2]


def test_the_durable_leader_skips_systems_whose_results_are_not_durable() -> None:
    metric = _report.Metric("loop", "throughput", "throughput", "tasks/s", True)
    summaries = {
        "dramatiq": _report.Summary([3000.0]),
        "errands-sqlite": _report.Summary([2000.0]),
        "pgqueuer": _report.Summary([900.0]),
        "celery-pg": None,
    }
    assert _report.leader(metric, summaries, durable_only=False) == SYSTEMS["dramatiq"].label
    assert _report.leader(metric, summaries, durable_only=True) == SYSTEMS["errands-sqlite"].label
