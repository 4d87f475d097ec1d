"""errands' own metrics registry and its Prometheus text: what
``PrometheusConfig`` keeps, what ``/metrics`` serves (the ``errands worker
--metrics-port`` server here, the dashboard's route), rendered in the text
exposition format 0.0.4.

Why not prometheus_client: the core install stays click-only, the format
needed is small and stable, and a record here is a bisect and a few
increments under an uncontended lock (prometheus_client would add a
process-global registry, and a second HTTP server model for the dashboard to
work around).
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from errands._metrics import Instrument, Kind, Labels, Observe, Record, Sink, _key, _summed

logger = logging.getLogger("errands.metrics")


class _Value:
    """A counter's or a gauge's series."""

    __slots__ = ("lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0.0

    def add(self, amount: float) -> None:
        with self.lock:
            self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class _Buckets:
    """A histogram's series: a count per bucket (the last is +Inf), sum, count."""

    __slots__ = ("bounds", "count", "counts", "lock", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.lock = threading.Lock()
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        at = bisect.bisect_left(self.bounds, value)  # the first bound >= value
        with self.lock:
            self.counts[at] += 1
            self.sum += value
            self.count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        with self.lock:
            return list(self.counts), self.sum, self.count


class _Family(Instrument):
    """One metric of the registry and its series by labels."""

    def __init__(
        self,
        name: str,
        kind: Kind,
        description: str,
        unit: str,
        buckets: Sequence[float],
        observe: Observe | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.description = description
        self.unit = unit
        self.buckets = tuple(buckets)
        self.observe = observe
        self.series: dict[Labels, _Value | _Buckets] = {}
        self._lock = threading.Lock()

    def child(self, labels: Labels) -> _Value | _Buckets:
        found = self.series.get(labels)
        if found is None:
            with self._lock:
                found = self.series.get(labels)
                if found is None:
                    found = _Buckets(self.buckets) if self.kind == "histogram" else _Value()
                    self.series[labels] = found
        return found

    def bind(self, attributes: Mapping[str, object]) -> Record:
        child = self.child(_key(attributes))
        if isinstance(child, _Buckets):
            return child.observe
        return child.add if self.kind == "counter" else child.set


@dataclass(frozen=True)
class RenderOptions:
    """How the registry's metrics are named and scaled in Prometheus text
    (temporalio's ``PrometheusConfig`` options)."""

    counters_total_suffix: bool = False
    unit_suffix: bool = False
    durations_as_seconds: bool = False


class Registry(Sink):
    """errands' metrics of one runtime, kept in this process for Prometheus."""

    def __init__(
        self,
        options: RenderOptions = RenderOptions(),
        bucket_overrides: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.options = options
        self._overrides = dict(bucket_overrides or {})
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def instrument(
        self, name: str, kind: Kind, description: str, unit: str, buckets: Sequence[float]
    ) -> Instrument:
        return self._family(name, kind, description, unit, buckets)

    def observe(self, name: str, description: str, unit: str, observe: Observe) -> None:
        self._family(name, "gauge", description, unit, (), observe)

    def _family(
        self,
        name: str,
        kind: Kind,
        description: str,
        unit: str,
        buckets: Sequence[float],
        observe: Observe | None = None,
    ) -> _Family:
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = _Family(name, kind, description, unit, self._buckets(name, unit, buckets))
                self._families[name] = family
            elif family.kind != kind:
                raise ValueError(f"metric {name!r} is a {family.kind}, not a {kind}")
            if observe is not None:
                family.observe = observe
            return family

    def _buckets(self, name: str, unit: str, buckets: Sequence[float]) -> tuple[float, ...]:
        found = self._overrides.get(name)
        if found is None:
            return tuple(buckets)
        # Overrides are given in the exported unit.
        scale = 1000.0 if unit == "ms" and self.options.durations_as_seconds else 1.0
        return tuple(sorted(b * scale for b in found))

    def render(self) -> str:
        """The metrics as Prometheus text (exposition format 0.0.4)."""
        with self._lock:
            families = sorted(self._families.values(), key=lambda f: f.name)
        out: list[str] = []
        for family in families:
            self._render(family, out)
        return "".join(out)

    def _render(self, family: _Family, out: list[str]) -> None:
        opts = self.options
        duration = family.unit == "ms"
        scale = 0.001 if duration and opts.durations_as_seconds else 1.0
        name = family.name
        if duration and opts.unit_suffix:
            name += "_seconds" if opts.durations_as_seconds else "_milliseconds"
        if family.kind == "counter" and opts.counters_total_suffix:
            name += "_total"
        rows: Sequence[tuple[Labels, _Value | _Buckets | float]]
        if family.observe is not None:
            try:
                rows = _summed(family.observe())
            except Exception:  # a gauge that cannot be read now is left out of this scrape
                logger.warning("metric %s could not be read", family.name, exc_info=True)
                rows = []
        else:
            rows = sorted(family.series.items())
        if family.description:
            out.append(f"# HELP {name} {_escape_help(family.description)}\n")
        out.append(f"# TYPE {name} {family.kind}\n")
        for labels, series in rows:
            if isinstance(series, _Buckets):
                counts, total, count = series.snapshot()
                running = 0
                for bound, n in zip((*series.bounds, math.inf), counts, strict=True):
                    running += n
                    le = (("le", _number(bound * scale)),)
                    out.append(f"{name}_bucket{_labels(labels + le)} {running}\n")
                out.append(f"{name}_sum{_labels(labels)} {_number(total * scale)}\n")
                out.append(f"{name}_count{_labels(labels)} {count}\n")
            else:
                value = series.value if isinstance(series, _Value) else series
                out.append(f"{name}{_labels(labels)} {_number(value * scale)}\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


# --------------------------------------------------------------------------- the /metrics server


class PrometheusServer:
    """Serves a registry's text at ``/metrics`` on a thread of its own (a
    scrape never waits for the worker's event loop)."""

    def __init__(self, registry: Registry, host: str, port: int) -> None:
        import http.server  # here: the commands that serve nothing need not import it

        render = registry.render

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                body = render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args  # scrapes are not news

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="errands-metrics", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The host and port it listens on (the port chosen when 0 was asked)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving (blocks until the serving thread ended)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
