"""Draw a trace as an SVG timeline: one row per span, indented under its
parent, a bar from its start to its end, red when it ended in error.

    python docs/render_trace.py SPANS.jsonl docs/trace.svg

SPANS.jsonl holds one span a line as tests/spans.py writes them. The README's
picture comes from the cross-process tracing test's export:

    ERRANDS_KEEP_TRACE=/tmp/trace.jsonl python -m pytest -q \\
        "tests/test_tracing.py::test_the_trace_goes_from_the_client_s_span_through_every_attempt_in_a_worker_process[sqlite]"
    python docs/render_trace.py /tmp/trace.jsonl docs/trace.svg

Plain SVG written by hand, so drawing needs nothing beyond Python.
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

ROW_H = 30
LABEL_W = 330
PLOT_W = 560
TOP = 46
BOTTOM = 40
RIGHT = 20
COLOURS = {"ERROR": "#d9534f", "OK": "#3c8d5a", "UNSET": "#3c8d5a"}


def _ordered(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Spans depth-first (children under their parent, by start time), with depths."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children.setdefault(parent, []).append(span)
    out: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start_ns"]):
            out.append((depth, span))
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return out


def render(spans: list[dict[str, Any]]) -> str:
    """The SVG of one trace's spans."""
    rows = _ordered(spans)
    t0 = min(s["start_ns"] for s in spans)
    t1 = max(s["end_ns"] for s in spans)
    total_ms = max((t1 - t0) / 1e6, 1.0)
    first_pid = rows[0][1]["pid"]
    width = LABEL_W + PLOT_W + RIGHT
    height = TOP + ROW_H * len(rows) + BOTTOM

    def x(ns: int) -> float:
        return float(LABEL_W + (ns - t0) / 1e6 / total_ms * PLOT_W)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="12" y="20" font-size="14" font-weight="bold">trace '
        f"{escape(rows[0][1]['trace_id'])}</text>",
        f'<text x="12" y="36" fill="#666">{len(rows)} spans, {total_ms:.0f} ms; '
        "grey rows ran in the worker process</text>",
    ]
    step = _tick(total_ms)
    tick = 0.0
    while tick <= total_ms + 1e-9:
        tx = LABEL_W + tick / total_ms * PLOT_W
        parts.append(
            f'<line x1="{tx:.1f}" y1="{TOP - 4}" x2="{tx:.1f}" '
            f'y2="{TOP + ROW_H * len(rows)}" stroke="#e5e5e5"/>'
        )
        parts.append(
            f'<text x="{tx:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle" '
            f'fill="#666">{tick:.0f} ms</text>'
        )
        tick += step
    for i, (depth, span) in enumerate(rows):
        y = TOP + i * ROW_H
        if span["pid"] != first_pid:
            parts.append(f'<rect x="0" y="{y}" width="{width}" height="{ROW_H}" fill="#f4f4f4"/>')
        attributes = span["attributes"]
        label = span["name"]
        if "errands.activity.attempt" in attributes:
            label += f"  (attempt {attributes['errands.activity.attempt']})"
        parts.append(f'<text x="{12 + 16 * depth}" y="{y + 19}">{escape(label)}</text>')
        x0, x1 = x(span["start_ns"]), x(span["end_ns"])
        colour = COLOURS.get(span["status"], "#3c8d5a")
        parts.append(
            f'<rect x="{x0:.1f}" y="{y + 7}" width="{max(x1 - x0, 2):.1f}" height="{ROW_H - 14}" '
            f'rx="2" fill="{colour}"/>'
        )
        note = f"{(span['end_ns'] - span['start_ns']) / 1e6:.1f} ms {span['kind'].lower()}"
        if span["status"] == "ERROR":
            note += f" · {attributes.get('error.type', 'error')}"
        anchor, tx = ("start", x1 + 6) if x1 < LABEL_W + PLOT_W * 0.7 else ("end", x0 - 6)
        parts.append(
            f'<text x="{tx:.1f}" y="{y + 19}" text-anchor="{anchor}" fill="#444">'
            f"{escape(note)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _tick(total_ms: float) -> float:
    """A round step between 5 and 10 ticks over the span of the trace."""
    step = 1.0
    while total_ms / step > 10:
        for factor in (2, 2.5, 2):
            step *= factor
            if total_ms / step <= 10:
                break
    return step


def main(argv: list[str]) -> None:
    """Read the spans file, write the SVG."""
    if len(argv) != 2:
        raise SystemExit("usage: python docs/render_trace.py SPANS.jsonl OUT.svg")
    spans = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line]
    if not spans:
        raise SystemExit(f"{argv[0]} holds no spans")
    Path(argv[1]).write_text(render(spans))


if __name__ == "__main__":
    main(sys.argv[1:])
