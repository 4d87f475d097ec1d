"""Metrics: errands' instruments under Temporal's names, in one place, and
the two ways out of the process.

Every instrument is declared once below (``Spec``): Temporal's activity
metrics (temporalio/sdk-core's names, labels and millisecond durations) and
errands' own (cancel delivery, queue backlog and oldest age, group commits,
blocked event loops). A ``Metrics`` (one per ``errands.runtime.Runtime`` with
metrics on) puts the runtime's prefix before each name (``errands_`` by
default; ``temporal_`` gives Temporal's exact names) and records into one
sink:

- ``errands._prometheus.Registry``: errands' own small registry, rendered as
  Prometheus text by the ``/metrics`` server of ``PrometheusConfig``
  (``errands worker --metrics-port``) or by any app that serves it;
- ``errands._otel_metrics.OtelSink``: the instruments of an OpenTelemetry
  ``MeterProvider`` (imported only when such a config is made).

Cost on the hot path: the recorders a worker calls per attempt are bound
once per (namespace, task queue, activity type) and do a bisect and a few
increments under an uncontended lock. Gauges (slots, backlog) cost nothing
until collected: they are read when a scrape or an OpenTelemetry reader asks.
"""

from __future__ import annotations

import abc
import logging
import math
import threading
import time
import weakref
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


def _summed(observations: Iterable[Observation]) -> list[tuple[Labels, float]]:
    """Observations added up per label set (two workers of one queue in one
    process make one series)."""
    totals: dict[Labels, float] = {}
    for attributes, value in observations:
        key = _key(attributes)
        totals[key] = totals.get(key, 0.0) + value
    return sorted(totals.items())


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
        self, sink: Sink, prefix: str = DEFAULT_PREFIX, global_tags: Mapping[str, str] | None = None
    ) -> None:
        self.sink = sink
        self.prefix = prefix
        self.global_tags = dict(global_tags or {})
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
        self._stores: weakref.WeakSet[Store] = weakref.WeakSet()
        """The stores whose commits are recorded (a closed store is let go)."""
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
            if store in self._stores:
                return
            self._stores.add(store)
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
