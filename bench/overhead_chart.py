"""``python -m bench.overhead_chart RESULTS.json OUT.svg``: draw the
telemetry-overhead figures of a bench run (``python -m bench --only
telemetry-overhead``) as a bar chart, one bar per variant, as an SVG file
(no plotting library: a few rectangles and labels)."""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path

from bench.overhead import NAME

WIDTH = 640
BAR_HEIGHT = 28
GAP = 14
LEFT = 250
TOP = 56


def chart(results: dict[str, object]) -> str:
    """The SVG of one bench run's telemetry-overhead figures."""
    rows = [
        r
        for r in results["results"]  # type: ignore[attr-defined]
        if r["workload"] == NAME and r["unit"] == "activities/s"
    ]
    if not rows:
        raise ValueError(f"no {NAME} figures in these results")
    off = rows[0]["value"]
    top = max(r["value"] for r in rows)
    span = WIDTH - LEFT - 150
    height = TOP + len(rows) * (BAR_HEIGHT + GAP) + 30
    settings = results["settings"]  # type: ignore[index]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        '<text x="16" y="24" font-size="15" font-weight="bold">'
        "errands: throughput with telemetry on, against off</text>",
        f'<text x="16" y="42" fill="#555">trivial activities, worker and client in one '
        f"process, {escape(str(settings.get('store', '')).split(',')[0])}, "
        f"{escape(str(settings.get('started', ''))[:10])}, load average "
        f"{escape(str(settings.get('load average (1, 5, 15 min)', '')).split(' ')[0])}</text>",
    ]
    for k, row in enumerate(rows):
        y = TOP + k * (BAR_HEIGHT + GAP)
        width = span * row["value"] / top
        colour = "#8a8a8a" if k == 0 else "#3b7dd8"
        share = "" if k == 0 else f" ({100 * row['value'] / off:.0f}% of off)"
        parts += [
            f'<text x="{LEFT - 8}" y="{y + 19}" text-anchor="end">{escape(row["figure"])}</text>',
            f'<rect x="{LEFT}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" fill="{colour}"/>',
            f'<text x="{LEFT + width + 6:.1f}" y="{y + 19}">{row["value"]:,.0f}/s{share}</text>',
        ]
    target_x = LEFT + span * 0.85 * off / top
    parts += [
        f'<line x1="{target_x:.1f}" y1="{TOP - 6}" x2="{target_x:.1f}" '
        f'y2="{height - 24}" stroke="#c33" stroke-dasharray="4 3"/>',
        f'<text x="{target_x:.1f}" y="{height - 10}" fill="#c33" text-anchor="middle">'
        "85% of off</text>",
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    Path(argv[1]).write_text(chart(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
