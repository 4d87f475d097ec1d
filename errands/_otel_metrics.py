"""The OpenTelemetry sink of ``OpenTelemetryConfig``: errands' metrics as
the instruments of a MeterProvider's meter. Imported only when such a config
is made: without it errands imports nothing of OpenTelemetry.

An SDK's record costs microseconds per call (attribute cleaning and hashing,
exemplar filtering), so counters and gauges are kept here and handed over
through observable instruments when a reader collects; only histograms are
recorded value by value.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.metrics import Observation as OtelObservation

from errands._metrics import Instrument, Kind, Observation, Observe, Record, Sink, _summed
from errands._prometheus import _Family, _Value

logger = logging.getLogger("errands.metrics")


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

    def callback(options: Any) -> Iterable[Any]:
        del options
        try:
            summed = _summed(observe())
        except Exception:
            logger.warning("metric %s could not be read", name, exc_info=True)
            return []
        return [OtelObservation(float(v) * scale, dict(k)) for k, v in summed]

    return callback
