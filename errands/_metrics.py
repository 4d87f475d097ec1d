"""Metrics: errands' instruments under Temporal's names, in one place, and
the two ways out of the process.

Every instrument is declared once below (``Spec``): Temporal's activity
metrics (temporalio/sdk-core's names, labels and millisecond durations) and
errands' own (cancel delivery, queue backlog and oldest age, group commits,
blocked event loops). A ``Metrics`` (one per ``errands.runtime.Runtime`` with
metrics on) puts the runtime's prefix before each name (``errands_`` by
default; ``temporal_`` gives Temporal's exact names) and records into one
sink:

- ``Registry``: errands' own small registry, rendered as Prometheus text
  (``render``) by the ``/metrics`` server of ``PrometheusConfig`` (``errands
  worker --metrics-port``) or by any app that serves ``Registry.render()``;
- ``OtelSink``: the instruments of an OpenTelemetry ``MeterProvider``
  (imported only when such a config is made).

Why a registry of our own and not prometheus_client: the core install stays
click-only, the text format it needs is small and stable, and the hot path
is a lock and a list increment per value (prometheus_client would add a
process-global registry and a second HTTP server model for the dashboard to
work around).

Cost on the hot path: the recorders a worker calls per attempt are bound
once per (namespace, task queue, activity type) and do a bisect and a few
increments under an uncontended lock. Gauges (slots, backlog) cost nothing
until collected: they are read when a scrape or an OpenTelemetry reader asks.
"""

from __future__ import annotations

import abc
import bisect
import http.server
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from errands._metric_meter import (
    MetricAttributes,
    MetricCounter,
    MetricGauge,
    MetricGaugeFloat,
    MetricHistogram,
    MetricHistogramFloat,
    MetricHistogramTimedelta,
    MetricMeter,
    _check,
    _non_negative,
)

if TYPE_CHECKING:
    from errands.store import Store
    from errands.store._core import CoreStore

logger = logging.getLogger("errands.metrics")

DEFAULT_PREFIX = "errands_"
"""Put before every built-in metric's name (Temporal's SDKs use ``temporal_``)."""

BACKLOG_CACHE_S = 1.0
"""A queue backlog read serves the collections of this long (the backlog
and the age gauges, several readers) with one query."""

Kind = Literal["counter", "histogram", "gauge"]
Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted by name."""
Record = Callable[[float], None]
"""Records one value into one series."""


@dataclass(frozen=True)
class Spec:
    """One built-in instrument: its name (without prefix), kind, help text,
    labels, unit ("ms" marks a duration) and histogram buckets."""

    name: str
    kind: Kind
    description: str
    labels: tuple[str, ...]
    unit: str = ""
    buckets: tuple[float, ...] = ()


ACTIVITY = ("namespace", "task_queue", "activity_type")
QUEUE = ("namespace", "task_queue")

# Temporal's activity metrics (names and meanings as temporalio/sdk-core has
# them; its millisecond buckets, with finer ones below 100 ms since errands'
# latencies are milliseconds).
TASK_RECEIVED = Spec(
    "activity_task_received", "counter", "Activity tasks claimed by a worker.", ACTIVITY
)
EXECUTION_FAILED = Spec(
    "activity_execution_failed",
    "counter",
    "Activity attempts that failed (cancellations and worker shutdowns are not counted).",
    ACTIVITY,
)
SCHEDULE_TO_START = Spec(
    "activity_schedule_to_start_latency",
    "histogram",
    "From an attempt becoming scheduled to a worker claiming it.",
    ACTIVITY,
    "ms",
    (1, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 100_000, 1_000_000),
)
EXECUTION_LATENCY = Spec(
    "activity_execution_latency",
    "histogram",
    "From claiming an attempt to its function ending, whatever the outcome.",
    ACTIVITY,
    "ms",
    (1, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 60_000),
)
SUCCEED_ENDTOEND = Spec(
    "activity_succeed_endtoend_latency",
    "histogram",
    "From an execution being scheduled to its successful completion (all attempts).",
    ACTIVITY,
    "ms",
    (1, 5, 10, 50, 100, 500, 1000, 2500, 10_000, 60_000),
)
SLOTS_AVAILABLE = Spec(
    "worker_task_slots_available",
    "gauge",
    "Free activity slots of the workers of this process.",
    (*QUEUE, "worker_type", "slot_type"),
)
SLOTS_USED = Spec(
    "worker_task_slots_used",
    "gauge",
    "Activity slots in use by the workers of this process.",
    (*QUEUE, "worker_type", "slot_type"),
)
# errands' own.
CANCEL_DELIVERY = Spec(
    "activity_cancel_delivery_latency",
    "histogram",
    "From the worker hearing a cancel request to the attempt raising the cancellation.",
    ACTIVITY,
    "ms",
    (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 30_000),
)
QUEUE_BACKLOG = Spec(
    "task_queue_backlog",
    "gauge",
    "Executions of the queue that could be claimed now and wait for a worker.",
    QUEUE,
)
QUEUE_OLDEST_AGE = Spec(
    "task_queue_oldest_scheduled_age",
    "gauge",
    "How long the queue's longest-waiting claimable execution has waited.",
    QUEUE,
    "ms",
)
COMMIT_SIZE = Spec(
    "store_group_commit_size",
    "histogram",
    "Changes (starts, claims, heartbeats, outcomes ...) written by one group commit.",
    ("store",),
    "",
    (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
COMMIT_LATENCY = Spec(
    "store_commit_latency",
    "histogram",
    "How long one group commit's transaction took, from BEGIN to COMMIT.",
    ("store",),
    "ms",
    (0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 5000),
)
LOOP_BLOCKED = Spec(
    "worker_event_loop_blocked",
    "counter",
    "Times an async activity held the worker's event loop past the threshold.",
    ACTIVITY,
)

SPECS = (
    TASK_RECEIVED,
    EXECUTION_FAILED,
    SCHEDULE_TO_START,
    EXECUTION_LATENCY,
    SUCCEED_ENDTOEND,
    SLOTS_AVAILABLE,
    SLOTS_USED,
    CANCEL_DELIVERY,
    QUEUE_BACKLOG,
    QUEUE_OLDEST_AGE,
    COMMIT_SIZE,
    COMMIT_LATENCY,
    LOOP_BLOCKED,
)
"""Every built-in instrument (README's "Metrics" table lists them)."""

DEFAULT_USER_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10_000)
"""Buckets of the user's histograms (``activity.metric_meter()``)."""

Observation = tuple[Mapping[str, str], float]
"""One gauge value and its labels."""
Observe = Callable[[], Iterable[Observation]]


def _key(attributes: Mapping[str, object]) -> Labels:
    return tuple(sorted((k, _label_value(v)) for k, v in attributes.items()))


def _label_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------- sinks


class Instrument(abc.ABC):
    """One instrument of a sink."""

    @abc.abstractmethod
    def bind(self, attributes: Mapping[str, object]) -> Record:
        """The recorder of the series with these attributes: adds to a
        counter, records into a histogram, sets a gauge."""


class Sink(abc.ABC):
    """Where values go: the Prometheus registry or an OpenTelemetry meter."""

    @abc.abstractmethod
    def instrument(
        self, name: str, kind: Kind, description: str, unit: str, buckets: Sequence[float]
    ) -> Instrument:
        """The instrument ``name`` (made on first use)."""

    @abc.abstractmethod
    def observe(self, name: str, description: str, unit: str, observe: Observe) -> None:
        """A gauge whose values ``observe`` gives when collected."""


# --------------------------------------------------------------------------- registry


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
        rows: list[tuple[Labels, _Value | _Buckets | float]]
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


def _summed(observations: Iterable[Observation]) -> list[tuple[Labels, _Value | _Buckets | float]]:
    """Observations added up per label set (two workers of one queue in one
    process make one series)."""
    totals: dict[Labels, float] = {}
    for attributes, value in observations:
        key = _key(attributes)
        totals[key] = totals.get(key, 0.0) + value
    return sorted(totals.items())


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


# --------------------------------------------------------------------------- OpenTelemetry


class _OtelInstrument(Instrument):
    """A histogram or gauge of an OpenTelemetry meter (counters are ``_Family``s)."""

    def __init__(self, instrument: Any, kind: Kind, scale: float) -> None:
        self._instrument = instrument
        self._kind = kind
        self._scale = scale

    def bind(self, attributes: Mapping[str, object]) -> Record:
        attrs = dict(attributes)
        scale = self._scale
        call = self._instrument.record if self._kind == "histogram" else self._instrument.set
        if scale == 1.0:
            return lambda value: call(value, attrs)
        return lambda value: call(value * scale, attrs)


class OtelSink(Sink):
    """The instruments of an OpenTelemetry meter. Durations are recorded in
    milliseconds (unit "ms"), or seconds (unit "s") with ``durations_as_seconds``."""

    def __init__(
        self,
        meter: Any,
        durations_as_seconds: bool = False,
        bucket_overrides: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self._meter = meter
        self._seconds = durations_as_seconds
        self._overrides = dict(bucket_overrides or {})
        self._made: dict[str, tuple[Kind, Instrument]] = {}
        self._lock = threading.Lock()

    def _unit(self, unit: str) -> tuple[str, float]:
        if unit == "ms" and self._seconds:
            return "s", 0.001
        return unit, 1.0

    def instrument(
        self, name: str, kind: Kind, description: str, unit: str, buckets: Sequence[float]
    ) -> Instrument:
        with self._lock:
            made = self._made.get(name)
            if made is not None:
                if made[0] != kind:
                    raise ValueError(f"metric {name!r} is a {made[0]}, not a {kind}")
                return made[1]
            out_unit, scale = self._unit(unit)
            meter = self._meter
            if kind == "counter":
                # Counted here and handed over when collected: an SDK's add()
                # costs microseconds per call, an observable counter nothing
                # until a reader asks.
                totals = _Family(name, "counter", description, out_unit, ())
                meter.create_observable_counter(
                    name,
                    callbacks=[_observed(name, lambda: _totals(totals))],
                    unit=out_unit,
                    description=description,
                )
                self._made[name] = (kind, totals)
                return totals
            if kind == "histogram":
                bounds = self._overrides.get(name)
                if bounds is None:
                    bounds = [b * scale for b in buckets]
                raw = meter.create_histogram(
                    name,
                    unit=out_unit,
                    description=description,
                    explicit_bucket_boundaries_advisory=list(bounds) or None,
                )
            else:
                raw = meter.create_gauge(name, unit=out_unit, description=description)
            instrument = _OtelInstrument(raw, kind, scale)
            self._made[name] = (kind, instrument)
            return instrument

    def observe(self, name: str, description: str, unit: str, observe: Observe) -> None:
        out_unit, scale = self._unit(unit)
        self._meter.create_observable_gauge(
            name,
            callbacks=[_observed(name, observe, scale)],
            unit=out_unit,
            description=description,
        )


def _totals(family: _Family) -> list[Observation]:
    return [
        (dict(labels), series.value)
        for labels, series in list(family.series.items())
        if isinstance(series, _Value)
    ]


def _observed(name: str, observe: Observe, scale: float = 1.0) -> Callable[[Any], Iterable[Any]]:
    """An OpenTelemetry callback giving ``observe``'s values (summed per labels)."""
    from opentelemetry.metrics import Observation as OtelObservation

    def callback(options: Any) -> Iterable[Any]:
        del options
        try:
            summed = _summed(observe())
        except Exception:
            logger.warning("metric %s could not be read", name, exc_info=True)
            return []
        return [OtelObservation(float(v) * scale, dict(k)) for k, v in summed]  # type: ignore[arg-type]

    return callback


# --------------------------------------------------------------------------- errands' metrics


class ActivityMetrics:
    """The recorders of one (namespace, task queue, activity type), bound once."""

    __slots__ = (
        "cancel_delivery",
        "execution",
        "failed",
        "loop_blocked",
        "received",
        "schedule_to_start",
        "succeeded",
    )

    def __init__(self, bind: Callable[[Spec], Record]) -> None:
        self.received = bind(TASK_RECEIVED)
        self.failed = bind(EXECUTION_FAILED)
        self.schedule_to_start = bind(SCHEDULE_TO_START)
        self.execution = bind(EXECUTION_LATENCY)
        self.succeeded = bind(SUCCEED_ENDTOEND)
        self.cancel_delivery = bind(CANCEL_DELIVERY)
        self.loop_blocked = bind(LOOP_BLOCKED)


SlotReport = Callable[[], Iterable[tuple[Mapping[str, str], int, int]]]
"""A worker's slots: (labels, available, used) per slot kind."""


class _Backlog:
    """One (store, namespace) whose queues' backlog is reported; one cached read
    serves all gauges of a collection."""

    def __init__(self, store: CoreStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        self.users = 0
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._rows: list[tuple[str, int, float]] = []

    def rows(self) -> list[tuple[str, int, float]]:
        """(task queue, backlog, oldest age in seconds) of every queue with a backlog."""
        with self._lock:
            if time.monotonic() - self._read_at >= BACKLOG_CACHE_S:
                found = self.store.queue_backlog_now(self.namespace)
                self._rows = [(q.task_queue, q.backlog, q.oldest_age_s) for q in found]
                self._read_at = time.monotonic()
            return self._rows


class Metrics:
    """errands' built-in instruments (prefixed) and the user's meter, over one sink."""

    def __init__(
        self, sink: Sink, prefix: str = DEFAULT_PREFIX, global_tags: Mapping[str, str] = {}
    ) -> None:
        self.sink = sink
        self.prefix = prefix
        self.global_tags = dict(global_tags)
        self._instruments = {
            spec: sink.instrument(
                prefix + spec.name, spec.kind, spec.description, spec.unit, spec.buckets
            )
            for spec in SPECS
            if spec.kind != "gauge"
        }
        self._activities: dict[tuple[str, str, str], ActivityMetrics] = {}
        self._slots: dict[int, SlotReport] = {}
        self._backlogs: dict[tuple[int, str], _Backlog] = {}
        self._stores: dict[int, Store] = {}
        self._lock = threading.Lock()
        for spec, observe in (
            (SLOTS_AVAILABLE, self._slots_available),
            (SLOTS_USED, self._slots_used),
            (QUEUE_BACKLOG, self._backlog),
            (QUEUE_OLDEST_AGE, self._oldest_age),
        ):
            sink.observe(prefix + spec.name, spec.description, spec.unit, observe)
        self.meter: MetricMeter = _Meter(self, self.global_tags)
        """The user's meter (``Runtime.metric_meter``): its names are not prefixed."""

    def _bind(self, spec: Spec, labels: Mapping[str, str]) -> Record:
        return self._instruments[spec].bind({**self.global_tags, **labels})

    def activity(self, namespace: str, task_queue: str, activity_type: str) -> ActivityMetrics:
        """The recorders of one activity type of a queue (made once)."""
        key = (namespace, task_queue, activity_type)
        found = self._activities.get(key)
        if found is None:
            labels = {"namespace": namespace, "task_queue": task_queue}
            labels["activity_type"] = activity_type
            found = ActivityMetrics(lambda spec: self._bind(spec, labels))
            self._activities[key] = found
        return found

    # ---------------------------------------------------------------- worker slots

    def add_slots(self, report: SlotReport) -> Callable[[], None]:
        """Report a worker's slots until the returned function is called."""
        key = id(report)
        with self._lock:
            self._slots[key] = report

        def remove() -> None:
            with self._lock:
                self._slots.pop(key, None)

        return remove

    def _slot_rows(self) -> list[tuple[Mapping[str, str], int, int]]:
        with self._lock:
            reports = list(self._slots.values())
        return [row for report in reports for row in report()]

    def _slots_available(self) -> Iterable[Observation]:
        return [({**self.global_tags, **labels}, a) for labels, a, _ in self._slot_rows()]

    def _slots_used(self) -> Iterable[Observation]:
        return [({**self.global_tags, **labels}, u) for labels, _, u in self._slot_rows()]

    # ---------------------------------------------------------------- queue backlog

    def watch_backlog(self, store: Store, namespace: str) -> Callable[[], None]:
        """Report the backlog of the namespace's queues (read from ``store``
        when collected) until the returned function is called."""
        from errands.store._core import CoreStore

        if not isinstance(store, CoreStore):
            return lambda: None  # a store of the user's own: nothing to read it with
        key = (id(store), namespace)
        with self._lock:
            backlog = self._backlogs.get(key)
            if backlog is None:
                backlog = self._backlogs[key] = _Backlog(store, namespace)
            backlog.users += 1

        def remove() -> None:
            with self._lock:
                backlog.users -= 1
                if backlog.users == 0 and self._backlogs.get(key) is backlog:
                    del self._backlogs[key]

        return remove

    def _backlog_rows(self) -> list[tuple[str, str, int, float]]:
        with self._lock:
            backlogs = list(self._backlogs.values())
        out: list[tuple[str, str, int, float]] = []
        for backlog in backlogs:
            try:
                rows = backlog.rows()
            except Exception as e:  # the store is down or closed: no figure this time
                logger.warning("queue backlog of %r not read: %s", backlog.namespace, e)
                continue
            out.extend((backlog.namespace, *row) for row in rows)
        return out

    def _backlog(self) -> Iterable[Observation]:
        tags = self.global_tags
        return [
            ({**tags, "namespace": ns, "task_queue": tq}, n)
            for ns, tq, n, _ in self._backlog_rows()
        ]

    def _oldest_age(self) -> Iterable[Observation]:
        tags = self.global_tags
        return [
            ({**tags, "namespace": ns, "task_queue": tq}, age_s * 1000.0)
            for ns, tq, _, age_s in self._backlog_rows()
        ]

    # ---------------------------------------------------------------- the store's writer

    def watch_store(self, store: Store) -> None:
        """Record the group commits of ``store`` (once per store)."""
        observe = getattr(store, "observe_commits", None)
        if observe is None:
            return  # a store of the user's own: no writer to watch
        with self._lock:
            if self._stores.get(id(store)) is store:
                return
            self._stores[id(store)] = store
        labels = {"store": str(getattr(store, "kind", "") or "unknown")}
        size = self._bind(COMMIT_SIZE, labels)
        latency = self._bind(COMMIT_LATENCY, labels)

        def committed(changes: int, seconds: float) -> None:
            size(changes)
            latency(seconds * 1000.0)

        observe(committed)


# --------------------------------------------------------------------------- the user's meter


class _Meter(MetricMeter):
    """``MetricMeter`` over a runtime's sink; names are the user's own."""

    def __init__(self, metrics: Metrics, attributes: MetricAttributes) -> None:
        self._metrics = metrics
        self._attributes = dict(attributes)

    def _make(
        self,
        cls: type[Any],
        kind: Kind,
        name: str,
        description: str | None,
        unit: str | None,
    ) -> Any:
        buckets = DEFAULT_USER_BUCKETS if kind == "histogram" else ()
        raw = self._metrics.sink.instrument(name, kind, description or "", unit or "", buckets)
        made = cls(name, description, unit, self._attributes)
        made._raw = raw
        return made

    def create_counter(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricCounter:
        made: MetricCounter = self._make(_Counter, "counter", name, description, unit)
        return made

    def create_histogram(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogram:
        made: MetricHistogram = self._make(_Histogram, "histogram", name, description, unit)
        return made

    def create_histogram_float(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogramFloat:
        made: MetricHistogramFloat = self._make(
            _HistogramFloat, "histogram", name, description, unit
        )
        return made

    def create_histogram_timedelta(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogramTimedelta:
        made: MetricHistogramTimedelta = self._make(
            _HistogramTimedelta, "histogram", name, description, "ms"
        )
        return made

    def create_gauge(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricGauge:
        made: MetricGauge = self._make(_Gauge, "gauge", name, description, unit)
        return made

    def create_gauge_float(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricGaugeFloat:
        made: MetricGaugeFloat = self._make(_GaugeFloat, "gauge", name, description, unit)
        return made

    def with_additional_attributes(self, additional_attributes: MetricAttributes) -> MetricMeter:
        _check(additional_attributes)
        return _Meter(self._metrics, {**self._attributes, **additional_attributes})


class _UserInstrument:
    """Mixed into the user's instruments: records through the sink's instrument."""

    _raw: Instrument

    def _put(self, value: float, attributes: MetricAttributes) -> None:
        _non_negative(value)
        self._raw.bind(attributes)(value)


class _Counter(_UserInstrument, MetricCounter):
    def add(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        self._put(value, self._merged(additional_attributes))


class _Histogram(_UserInstrument, MetricHistogram):
    def record(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        self._put(value, self._merged(additional_attributes))


class _HistogramFloat(_UserInstrument, MetricHistogramFloat):
    def record(self, value: float, additional_attributes: MetricAttributes | None = None) -> None:
        self._put(value, self._merged(additional_attributes))


class _HistogramTimedelta(_UserInstrument, MetricHistogramTimedelta):
    def record(
        self, value: timedelta, additional_attributes: MetricAttributes | None = None
    ) -> None:
        self._put(value.total_seconds() * 1000.0, self._merged(additional_attributes))


class _Gauge(_UserInstrument, MetricGauge):
    def set(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        self._put(value, self._merged(additional_attributes))


class _GaugeFloat(_UserInstrument, MetricGaugeFloat):
    def set(self, value: float, additional_attributes: MetricAttributes | None = None) -> None:
        self._put(value, self._merged(additional_attributes))
