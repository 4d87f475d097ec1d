"""Finished OpenTelemetry spans as plain dicts, and an exporter that appends
them to a file as JSON lines (one span a line, one O_APPEND write each), so a
worker process's spans can be read back by the test that started it, and
drawn (docs/render_trace.py). Imported only by the tracing tests and by
``tests.procs worker --trace-file``: OpenTelemetry's SDK is a dev dependency."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tests.procs import append_line


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """The span's name, ids (hex), kind, times (ns), status, attributes and
    events, and the process that made it."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": None if parent is None else format(parent.span_id, "016x"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": event.name, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to ``path`` as one JSON line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            append_line(self.path, json.dumps(span_dict(span)))
        return SpanExportResult.SUCCESS


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans a JsonLinesExporter wrote (none if it wrote nothing yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
