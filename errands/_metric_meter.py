"""The metric meter a user records their own metrics with, in temporalio's
shape (``temporalio.common.MetricMeter``): ``activity.metric_meter()`` and
``Runtime.metric_meter`` return one. Re-exported from ``errands.common``.

A meter makes instruments; each instrument records values with attributes
(the meter's, its own, and the call's, merged in that order). When metrics
are off the meter is ``MetricMeter.noop``, whose instruments do nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from datetime import timedelta
from typing import ClassVar, TypeVar

MetricAttributes = Mapping[str, "str | int | float | bool"]
"""Attributes (labels) of a recorded value."""

_M = TypeVar("_M", bound="MetricCommon")


class MetricCommon(abc.ABC):  # noqa: B024 (its subclasses hold the abstract methods)
    """What every instrument has: a name, a description, a unit."""

    def __init__(
        self, name: str, description: str | None, unit: str | None, attributes: MetricAttributes
    ) -> None:
        self._name = name
        self._description = description
        self._unit = unit
        self._attributes: dict[str, str | int | float | bool] = dict(attributes)

    @property
    def name(self) -> str:
        """The instrument's name (not prefixed)."""
        return self._name

    @property
    def description(self) -> str | None:
        """Its description, if any."""
        return self._description

    @property
    def unit(self) -> str | None:
        """Its unit, if any."""
        return self._unit

    def with_additional_attributes(self: _M, additional_attributes: MetricAttributes) -> _M:
        """The same instrument recording with these attributes too (they win
        over the ones it has). Raises TypeError for a value that is not
        str, int, float or bool."""
        _check(additional_attributes)
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._attributes = {**self._attributes, **additional_attributes}
        return copy

    def _merged(self, extra: MetricAttributes | None) -> dict[str, str | int | float | bool]:
        if not extra:
            return self._attributes
        _check(extra)
        return {**self._attributes, **extra}


class MetricCounter(MetricCommon):
    """A counter: a total that only grows."""

    @abc.abstractmethod
    def add(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        """Add ``value``. Raises ValueError if it is negative, TypeError for a
        bad attribute value."""


class MetricHistogram(MetricCommon):
    """A histogram of integer values."""

    @abc.abstractmethod
    def record(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        """Record ``value``. Raises ValueError if it is negative, TypeError for
        a bad attribute value."""


class MetricHistogramFloat(MetricCommon):
    """A histogram of float values."""

    @abc.abstractmethod
    def record(self, value: float, additional_attributes: MetricAttributes | None = None) -> None:
        """Record ``value``. Raises ValueError if it is negative, TypeError for
        a bad attribute value."""


class MetricHistogramTimedelta(MetricCommon):
    """A histogram of durations, recorded in milliseconds (seconds when the
    runtime's metrics config says ``durations_as_seconds``)."""

    @abc.abstractmethod
    def record(
        self, value: timedelta, additional_attributes: MetricAttributes | None = None
    ) -> None:
        """Record ``value``. Raises ValueError if it is negative, TypeError for
        a bad attribute value."""


class MetricGauge(MetricCommon):
    """A gauge of integer values: the last one set wins."""

    @abc.abstractmethod
    def set(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        """Set the gauge to ``value``. Raises ValueError if it is negative,
        TypeError for a bad attribute value."""


class MetricGaugeFloat(MetricCommon):
    """A gauge of float values: the last one set wins."""

    @abc.abstractmethod
    def set(self, value: float, additional_attributes: MetricAttributes | None = None) -> None:
        """Set the gauge to ``value``. Raises ValueError if it is negative,
        TypeError for a bad attribute value."""


class MetricMeter(abc.ABC):
    """Makes instruments for the user's own metrics."""

    noop: ClassVar[MetricMeter]
    """A meter whose instruments record nothing (metrics are off)."""

    @abc.abstractmethod
    def create_counter(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricCounter:
        """A counter named ``name``."""

    @abc.abstractmethod
    def create_histogram(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogram:
        """A histogram of integers named ``name``."""

    @abc.abstractmethod
    def create_histogram_float(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogramFloat:
        """A histogram of floats named ``name``."""

    @abc.abstractmethod
    def create_histogram_timedelta(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogramTimedelta:
        """A histogram of durations named ``name``."""

    @abc.abstractmethod
    def create_gauge(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricGauge:
        """A gauge of integers named ``name``."""

    @abc.abstractmethod
    def create_gauge_float(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricGaugeFloat:
        """A gauge of floats named ``name``."""

    @abc.abstractmethod
    def with_additional_attributes(self, additional_attributes: MetricAttributes) -> MetricMeter:
        """A meter whose instruments record with these attributes too.
        Raises TypeError for a value that is not str, int, float or bool."""


def _check(attributes: MetricAttributes) -> None:
    for key, value in attributes.items():
        if not isinstance(value, (str, int, float, bool)):
            raise TypeError(
                f"metric attribute {key!r} is a {type(value).__name__}: "
                "attribute values are str, int, float or bool"
            )


def _non_negative(value: float) -> None:
    if value < 0:
        raise ValueError(f"metric value must not be negative, got {value}")


class _NoopCounter(MetricCounter):
    def add(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        _non_negative(value)


class _NoopHistogram(MetricHistogram):
    def record(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        _non_negative(value)


class _NoopHistogramFloat(MetricHistogramFloat):
    def record(self, value: float, additional_attributes: MetricAttributes | None = None) -> None:
        _non_negative(value)


class _NoopHistogramTimedelta(MetricHistogramTimedelta):
    def record(
        self, value: timedelta, additional_attributes: MetricAttributes | None = None
    ) -> None:
        _non_negative(value.total_seconds())


class _NoopGauge(MetricGauge):
    def set(self, value: int, additional_attributes: MetricAttributes | None = None) -> None:
        _non_negative(value)


class _NoopGaugeFloat(MetricGaugeFloat):
    def set(self, value: float, additional_attributes: MetricAttributes | None = None) -> None:
        _non_negative(value)


class _NoopMeter(MetricMeter):
    """Instruments that check their input and record nothing."""

    def create_counter(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricCounter:
        return _NoopCounter(name, description, unit, {})

    def create_histogram(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogram:
        return _NoopHistogram(name, description, unit, {})

    def create_histogram_float(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogramFloat:
        return _NoopHistogramFloat(name, description, unit, {})

    def create_histogram_timedelta(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricHistogramTimedelta:
        return _NoopHistogramTimedelta(name, description, unit, {})

    def create_gauge(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricGauge:
        return _NoopGauge(name, description, unit, {})

    def create_gauge_float(
        self, name: str, description: str | None = None, unit: str | None = None
    ) -> MetricGaugeFloat:
        return _NoopGaugeFloat(name, description, unit, {})

    def with_additional_attributes(self, additional_attributes: MetricAttributes) -> MetricMeter:
        _check(additional_attributes)
        return self


MetricMeter.noop = _NoopMeter()
