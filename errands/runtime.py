"""Where a process's telemetry goes, in temporalio's shape
(``temporalio.runtime``): a ``Runtime`` made with a ``TelemetryConfig`` whose
``metrics`` is a ``PrometheusConfig`` (a ``/metrics`` endpoint) or an
``OpenTelemetryConfig`` (the instruments of an OpenTelemetry MeterProvider),
or None (metrics off: the default).

    runtime = Runtime(telemetry=TelemetryConfig(
        metrics=PrometheusConfig(bind_address="127.0.0.1:9464")))
    client = await Client.connect(url, runtime=runtime)    # or Runtime.set_default(runtime)

Workers built on a client record into its runtime. The metrics and their
labels are listed in README's "Metrics" section (and ``errands._metrics``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from errands._metric_meter import MetricMeter
from errands._metrics import DEFAULT_PREFIX, Metrics
from errands._prometheus import PrometheusServer, Registry, RenderOptions

__all__ = [
    "OpenTelemetryConfig",
    "PrometheusConfig",
    "Runtime",
    "TelemetryConfig",
]


@dataclass(frozen=True)
class PrometheusConfig:
    """Keep metrics in this process and serve them as Prometheus text at
    ``http://<bind_address>/metrics``.

    Attributes:
        bind_address: ``host:port`` of the HTTP server (port 0: any free port,
            see ``Runtime.prometheus_address``). *(errands)* An empty string
            serves nothing: the text is there for an app of your own
            (``Runtime.prometheus_text()``), as the dashboard's ``/metrics``.
        counters_total_suffix: Append ``_total`` to counter names. Default False.
        unit_suffix: Append ``_milliseconds`` (or ``_seconds``) to duration
            metrics' names. Default False.
        durations_as_seconds: Report durations in seconds, not milliseconds.
            Default False.
        histogram_bucket_overrides: Bucket bounds by metric name (prefixed
            as exported), in the exported unit.
    """

    bind_address: str
    counters_total_suffix: bool = False
    unit_suffix: bool = False
    durations_as_seconds: bool = False
    histogram_bucket_overrides: Mapping[str, Sequence[float]] | None = None


@dataclass(frozen=True)
class OpenTelemetryConfig:
    """Record metrics with the instruments of an OpenTelemetry MeterProvider
    of this process (needs ``errands[opentelemetry]``).

    Unlike temporalio's, which pushes to a collector URL itself, this one
    hands the values to your MeterProvider: its readers and exporters decide
    where they go (OTLP, Prometheus, in-memory for tests).

    Attributes:
        meter_provider: The provider; None takes the global one
            (``opentelemetry.metrics.get_meter_provider()``) when the Runtime is made.
        durations_as_seconds: Record durations in seconds (unit "s"), not
            milliseconds (unit "ms"). Default False.
        histogram_bucket_overrides: Bucket bounds by metric name (prefixed as
            recorded), in the recorded unit, given to the meter as advice.
    """

    meter_provider: Any = None
    durations_as_seconds: bool = False
    histogram_bucket_overrides: Mapping[str, Sequence[float]] | None = None


@dataclass(frozen=True)
class TelemetryConfig:
    """What a Runtime records and where it goes.

    Attributes:
        metrics: PrometheusConfig, OpenTelemetryConfig, or None (no metrics).
        global_tags: Labels put on every metric.
        metric_prefix: Put before every built-in metric's name; None means
            ``errands_``. ``temporal_`` gives Temporal's exact names, so that
            dashboards made for Temporal's SDK metrics work.
    """

    metrics: PrometheusConfig | OpenTelemetryConfig | None = None
    global_tags: Mapping[str, str] = field(default_factory=dict)
    metric_prefix: str | None = None


class Runtime:
    """A process's telemetry: made once, shared by the clients given it (and
    the workers built on them). ``Runtime.default()`` has metrics off unless
    ``Runtime.set_default`` replaced it.

    Raises:
        ValueError: a bind address that is not ``host:port``.
        OSError: the Prometheus server cannot listen there.
        ImportError: OpenTelemetryConfig without ``errands[opentelemetry]``.
    """

    def __init__(self, *, telemetry: TelemetryConfig) -> None:
        self.telemetry = telemetry
        self._registry: Registry | None = None
        self._server: PrometheusServer | None = None
        self._metrics: Metrics | None = None
        config = telemetry.metrics
        prefix = DEFAULT_PREFIX if telemetry.metric_prefix is None else telemetry.metric_prefix
        if isinstance(config, PrometheusConfig):
            host, port = _host_port(config.bind_address)
            self._registry = Registry(
                RenderOptions(
                    counters_total_suffix=config.counters_total_suffix,
                    unit_suffix=config.unit_suffix,
                    durations_as_seconds=config.durations_as_seconds,
                ),
                config.histogram_bucket_overrides,
            )
            self._metrics = Metrics(self._registry, prefix, telemetry.global_tags)
            if host is not None:
                self._server = PrometheusServer(self._registry, host, port)
        elif isinstance(config, OpenTelemetryConfig):
            from opentelemetry import metrics as otel_metrics

            from errands._otel_metrics import OtelSink

            provider = config.meter_provider or otel_metrics.get_meter_provider()
            meter = provider.get_meter("errands")
            sink = OtelSink(meter, config.durations_as_seconds, config.histogram_bucket_overrides)
            self._metrics = Metrics(sink, prefix, telemetry.global_tags)
        elif config is not None:
            raise TypeError(
                "TelemetryConfig.metrics must be a PrometheusConfig, an OpenTelemetryConfig "
                f"or None, not {type(config).__name__}"
            )

    @classmethod
    def default(cls) -> Runtime:
        """The runtime of clients connected without one (metrics off, unless
        ``set_default`` replaced it)."""
        with _default_lock:
            global _default
            if _default is None:
                _default = Runtime(telemetry=TelemetryConfig())
            return _default

    @staticmethod
    def set_default(runtime: Runtime, *, error_if_already_set: bool = True) -> None:
        """Make ``runtime`` the default for clients connected from now on.

        Raises RuntimeError if a default exists already and ``error_if_already_set``.
        """
        with _default_lock:
            global _default
            if _default is not None and error_if_already_set:
                raise RuntimeError("Runtime default already set")
            _default = runtime

    @property
    def metric_meter(self) -> MetricMeter:
        """A meter for the user's own metrics (``MetricMeter.noop`` when metrics are off)."""
        return MetricMeter.noop if self._metrics is None else self._metrics.meter

    @property
    def prometheus_address(self) -> tuple[str, int] | None:
        """*(errands)* The host and port ``/metrics`` is served on, if it is."""
        return None if self._server is None else self._server.address

    def prometheus_text(self) -> str:
        """*(errands)* The metrics as Prometheus text, for an app that serves
        them itself. Raises RuntimeError unless the metrics config is a
        PrometheusConfig."""
        if self._registry is None:
            raise RuntimeError("this Runtime keeps no Prometheus metrics (PrometheusConfig)")
        return self._registry.render()

    def close(self) -> None:
        """*(errands)* Stop the ``/metrics`` server, if any; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()


_default: Runtime | None = None
_default_lock = threading.Lock()


def _host_port(address: str) -> tuple[str | None, int]:
    """``host:port`` -> (host, port); "" -> (None, 0): no server."""
    if not address:
        return None, 0
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind_address must be host:port, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
