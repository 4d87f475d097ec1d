"""From the runs' figures to the tables: each figure's median with its
min-max over the runs; for the peer workloads, which system leads (and which
among those whose results are durable); for the others, the ratio between
errands and Temporal (how many times better the better one is) and the
issue's goals."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.compare._sides import LABELS, TEMPORAL
from bench.compare._workloads import PEER_WORKLOADS
from bench.peers import SYSTEMS


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str  # in a run's figures
    label: str
    unit: str
    higher_is_better: bool = False
    goal: str = ""  # "ratio>=100": errands that many times better; "below 50": errands' median
    count: bool = False  # 0/1 per run, shown as "k/n runs"
    ranked: bool = True  # False: context, no leader


PEER_METRICS = [
    metric
    for workload in ("loop", "lanes", "batch")
    for metric in (
        Metric(workload, "n", "tasks measured", "tasks", ranked=False),
        Metric(workload, "throughput", "throughput", "tasks/s", True),
        Metric(workload, "cpu_per_1k", "CPU per 1,000 tasks", "s"),
        Metric(workload, "rss_mib", "peak RSS", "MiB"),
    )
] + [
    Metric("sequential", "p50", "round trip p50", "ms"),
    Metric("sequential", "p99", "round trip p99", "ms"),
    Metric("sequential", "cpu_per_1k", "CPU per 1,000 tasks", "s"),
]

METRICS = [
    *PEER_METRICS,
    Metric("throughput-async", "throughput", "throughput", "activities/s", True, "ratio>=100"),
    Metric("throughput-async", "cpu_per_1k", "CPU per 1,000 activities", "s"),
    Metric("throughput-async", "rss_mib", "peak RSS", "MiB"),
    Metric("latency", "p50", "round trip p50", "ms", goal="ratio>=20"),
    Metric("latency", "p99", "round trip p99", "ms"),
    Metric("throughput-thread", "throughput", "throughput", "activities/s", True),
    Metric("throughput-thread", "cpu_per_1k", "CPU per 1,000 activities", "s"),
    Metric("throughput-thread", "rss_mib", "peak RSS", "MiB"),
    Metric("throughput-process", "throughput", "throughput", "activities/s", True),
    Metric("throughput-process", "cpu_per_1k", "CPU per 1,000 activities", "s"),
    Metric("throughput-process", "rss_mib", "peak RSS", "MiB"),
    Metric("cancel-async", "p50", "cancel seen, p50", "ms", goal="below 50"),
    Metric("cancel-async", "max", "cancel seen, max", "ms"),
    Metric("cancel-thread", "p50", "cancel seen, p50", "ms", goal="below 50"),
    Metric("cancel-thread", "max", "cancel seen, max", "ms"),
    Metric("crash-recovery", "recovery_s", "SIGKILL to attempt 2 start", "s"),
    Metric("crash-recovery", "late_s", "attempt 2 start past its earliest due time", "s"),
    Metric(
        "crash-recovery",
        "details_arrived",
        "heartbeat details reached attempt 2",
        "runs",
        True,
        count=True,
    ),
    Metric("crash-recovery", "lost_ticks", "heartbeat ticks lost (100 ms each)", "ticks"),
]


@dataclass
class Summary:
    """One figure of one system over its runs."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "runs": self.values,
        }


def summarize(runs: list[dict[str, Any]], key: str) -> Summary | None:
    values = [r[key] for r in runs if "error" not in r and r.get(key) is not None]
    return Summary(values) if values else None


def not_applicable(runs: list[dict[str, Any]]) -> str | None:
    """The reason the system could not run the workload, when it could not."""
    reasons = [r["n/a"] for r in runs if "n/a" in r]
    return reasons[0] if reasons and len(reasons) == len(runs) else None


def missing_cell(runs: list[dict[str, Any]]) -> str:
    """What a cell without figures says: not run, n/a, or error."""
    if not runs:
        return "-"
    return "n/a" if not_applicable(runs) is not None else "error"


def leader(metric: Metric, summaries: dict[str, Summary | None], durable_only: bool) -> str:
    """The system whose median is best (among the durable ones), or "-"."""
    found = [
        (s.median, system)
        for system, s in summaries.items()
        if s is not None and (SYSTEMS[system].durable or not durable_only)
    ]
    if not found:
        return "-"
    best = max(found) if metric.higher_is_better else min(found)
    return LABELS[best[1]]


def build_peer_rows(
    results: dict[str, dict[str, list[dict[str, Any]]]], systems: list[str]
) -> list[dict[str, Any]]:
    """One row per figure of every peer workload that ran: its summary per
    system, and the leaders."""
    rows = []
    for metric in PEER_METRICS:
        by_system = results.get(metric.workload)
        if by_system is None:
            continue
        summaries = {s: summarize(by_system.get(s, []), metric.key) for s in systems}
        rows.append(
            {
                "workload": metric.workload,
                "figure": metric.label,
                "unit": metric.unit,
                "better": "higher" if metric.higher_is_better else "lower",
                "cells": {
                    s: cell(metric, summaries[s], missing_cell(by_system.get(s, [])))
                    for s in systems
                },
                "leader": leader(metric, summaries, durable_only=False) if metric.ranked else "",
                "durable leader": (
                    leader(metric, summaries, durable_only=True) if metric.ranked else ""
                ),
                "summaries": {s: (v.to_json() if v else None) for s, v in summaries.items()},
            }
        )
    return rows


def render_peers(rows: list[dict[str, Any]], systems: list[str]) -> str:
    header = ["workload", "figure", *(LABELS[s] for s in systems), "leader", "durable leader"]
    lines = [header]
    for row in rows:
        line = [row["workload"], f"{row['figure']} ({row['unit']})"]
        line += [row["cells"][s] for s in systems] + [row["leader"], row["durable leader"]]
        lines.append(line)
    return _columns(lines)


def _columns(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(c.ljust(wd) for c, wd in zip(line, widths, strict=True)).rstrip())
        if k == 0:
            out.append("  ".join("-" * wd for wd in widths))
    return "\n".join(out)


def number(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(metric: Metric, summary: Summary | None, missing: str) -> str:
    if summary is None:
        return missing
    if metric.count:
        return f"{int(sum(summary.values))}/{len(summary.values)} runs"
    if not metric.ranked:  # a count of tasks
        low, high = int(min(summary.values)), int(max(summary.values))
        return f"{int(summary.median):,}" + (f" ({low:,}-{high:,})" if low != high else "")
    text = number(summary.median)
    if len(summary.values) > 1:
        text += f" ({number(min(summary.values))}-{number(max(summary.values))})"
    return text


def advantage(metric: Metric, errands: Summary | None, temporal: Summary | None) -> float | None:
    """How many times better errands' median is than Temporal's (below 1:
    Temporal is better); None when either is missing or zero."""
    if errands is None or temporal is None or metric.count:
        return None
    e, t = errands.median, temporal.median
    if e <= 0 or t <= 0:
        return None
    return e / t if metric.higher_is_better else t / e


def winner(metric: Metric, errands: Summary | None, temporal: Summary | None) -> str:
    if errands is None or temporal is None:
        return "-"
    e = sum(errands.values) / len(errands.values) if metric.count else errands.median
    t = sum(temporal.values) / len(temporal.values) if metric.count else temporal.median
    if e == t:
        return "tie"
    return "errands" if (e > t) == metric.higher_is_better else "Temporal"


def ratio_cell(metric: Metric, errands: Summary | None, temporal: Summary | None) -> str:
    who = winner(metric, errands, temporal)
    x = advantage(metric, errands, temporal)
    if x is None or who == "tie":
        return who
    return f"{number(x if x >= 1 else 1 / x)}x {who}"


def goal_cell(metric: Metric, errands: Summary | None, temporal: Summary | None) -> str:
    if not metric.goal:
        return ""
    kind, bound = metric.goal.split(">=") if ">=" in metric.goal else metric.goal.split()
    if kind == "ratio":
        x = advantage(metric, errands, temporal)
        verdict = "n/a" if x is None else ("met" if x >= float(bound) else "MISSED")
        return f">= {bound}x: {verdict}"
    verdict = "n/a" if errands is None else ("met" if errands.median < float(bound) else "MISSED")
    return f"< {bound} ms: {verdict}"


def build_rows(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    systems: list[str],
    temporal_ok: bool,
) -> list[dict[str, Any]]:
    """One row per figure of every workload that ran: its summaries per
    system, ratio and goal per errands store."""
    rows = []
    for metric in METRICS:
        by_system = results.get(metric.workload)
        if by_system is None or metric.workload in PEER_WORKLOADS:
            continue
        summaries = {s: summarize(by_system.get(s, []), metric.key) for s in systems}
        temporal = summaries.get(TEMPORAL)
        row: dict[str, Any] = {
            "workload": metric.workload,
            "figure": metric.label,
            "unit": metric.unit,
            "better": "higher" if metric.higher_is_better else "lower",
            "cells": {},
            "ratio": {},
            "winner": {},
            "goal": {},
            "summaries": {s: (v.to_json() if v else None) for s, v in summaries.items()},
        }
        for system in systems:
            missing = "n/a" if system == TEMPORAL and not temporal_ok else "error"
            row["cells"][system] = cell(metric, summaries[system], missing)
            if system == TEMPORAL:
                continue
            row["ratio"][system] = ratio_cell(metric, summaries[system], temporal)
            row["winner"][system] = winner(metric, summaries[system], temporal)
            row["goal"][system] = goal_cell(metric, summaries[system], temporal)
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], systems: list[str], temporal_label: str) -> str:
    errands_systems = [s for s in systems if s != TEMPORAL]
    several = len(errands_systems) > 1
    header = ["workload", "figure"]
    header += [LABELS[s] for s in errands_systems] + [temporal_label]
    for s in errands_systems:
        suffix = f" ({LABELS[s].split('(')[1][:-1]})" if several else ""
        header += [f"ratio{suffix}", f"goal{suffix}"]
    lines = [header]
    for row in rows:
        line = [row["workload"], f"{row['figure']} ({row['unit']})"]
        line += [row["cells"][s] for s in errands_systems] + [row["cells"][TEMPORAL]]
        for s in errands_systems:
            line += [row["ratio"][s], row["goal"][s]]
        lines.append(line)
    return _columns(lines)
