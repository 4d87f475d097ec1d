"""The telemetry-overhead workload (issue 14 point 5): throughput with metrics
(and tracing, when errands has it) on against off, in the same run.

Worker and client share one process (the "1p" shape: every recorded value
costs this one process), so the overhead is not hidden by a second core.
Each variant runs ROUNDS times, interleaved (off, on, off, on, ...) so a
drift of the machine's load falls on all of them alike, each round on a fresh
store; its figure is the median round. Variants:

- off: ``Runtime.default()`` (no metrics);
- prometheus: ``PrometheusConfig`` serving ``/metrics`` on 127.0.0.1, scraped
  every SCRAPE_EVERY_S by a thread of this process (Prometheus' default is
  15 s: this is harsher);
- otel-sdk: ``OpenTelemetryConfig`` over an OpenTelemetry SDK MeterProvider
  with an in-memory reader collected every SCRAPE_EVERY_S (only when
  opentelemetry-sdk is installed);
- tracing: the otel-sdk metrics plus ``errands.contrib.opentelemetry.
  TracingInterceptor`` on an SDK TracerProvider with a batch span processor
  (only when errands has that interceptor; otherwise a note says so);
- tracing-10pct: the same with the provider sampling one trace in ten
  (``ParentBased(TraceIdRatioBased(0.1))``: the attempts follow their start's
  decision through the header).

Each "on" variant is held to TARGET_SHARE of the off figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import statistics
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench import workloads as w
from bench.stores import StoreTarget
from errands.client import Client
from errands.runtime import OpenTelemetryConfig, PrometheusConfig, Runtime, TelemetryConfig

NAME = "telemetry-overhead"
ROUNDS = 5
"""Rounds per variant (the figure is the median)."""
TARGET_SHARE = 0.85
"""An "on" variant must reach this share of the "off" throughput."""
SCRAPE_EVERY_S = 1.0
"""How often the metrics are collected while a round runs."""
TRACING_MODULE = "errands.contrib.opentelemetry"


@dataclass
class Variant:
    """One way of running: how to make its runtime and client options, and
    what to do while a round runs (scrape, collect)."""

    name: str
    label: str
    setup: Callable[[], contextlib.AbstractContextManager[dict[str, Any]]]
    rates: list[float] = field(default_factory=list)


@contextlib.contextmanager
def _off() -> Iterator[dict[str, Any]]:
    yield {}


@contextlib.contextmanager
def _every(action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` every SCRAPE_EVERY_S on a thread until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(SCRAPE_EVERY_S):
            action()

    thread = threading.Thread(target=loop, name="bench-scraper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _prometheus() -> Iterator[dict[str, Any]]:
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address="127.0.0.1:0"))
    )
    assert runtime.prometheus_address is not None
    host, port = runtime.prometheus_address
    url = f"http://{host}:{port}/metrics"

    def scrape() -> None:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()

    try:
        with _every(scrape):
            yield {"runtime": runtime}
    finally:
        runtime.close()


def _otel_available() -> bool:
    return importlib.util.find_spec("opentelemetry.sdk") is not None


@contextlib.contextmanager
def _otel_metrics() -> Iterator[dict[str, Any]]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=OpenTelemetryConfig(meter_provider=provider))
    )
    try:
        with _every(reader.get_metrics_data):
            yield {"runtime": runtime}
    finally:
        provider.shutdown()


def tracing_interceptor() -> Any | None:
    """The TracingInterceptor class, when errands has it (issue 14 point 2)."""
    try:
        module = importlib.import_module(TRACING_MODULE)
    except ImportError:
        return None
    return getattr(module, "TracingInterceptor", None)


SAMPLED_SHARE = 0.1
"""The share of traces the tracing-10pct variant samples."""


@contextlib.contextmanager
def _tracing(sampled: float | None = None) -> Iterator[dict[str, Any]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    interceptor_class = tracing_interceptor()
    assert interceptor_class is not None
    tracer_provider = (
        TracerProvider()
        if sampled is None
        else TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampled)))
    )
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    interceptor = interceptor_class(tracer_provider.get_tracer("bench"))
    try:
        with _otel_metrics() as options:
            yield {**options, "interceptors": [interceptor]}
    finally:
        tracer_provider.shutdown()


def variants(notes: list[str]) -> list[Variant]:
    """The variants this installation can run (notes say what was left out)."""
    found = [
        Variant("off", "metrics off", _off),
        Variant("prometheus", "Prometheus metrics, scraped every 1 s", _prometheus),
    ]
    if not _otel_available():
        notes.append(f"{NAME}: opentelemetry-sdk is not installed: no OpenTelemetry variants")
        return found
    found.append(Variant("otel-sdk", "OpenTelemetry SDK metrics", _otel_metrics))
    if tracing_interceptor() is None:
        notes.append(
            f"{NAME}: no {TRACING_MODULE}.TracingInterceptor in this errands: tracing not measured"
        )
    else:
        found.append(Variant("tracing", "OpenTelemetry metrics + tracing", _tracing))
        found.append(
            Variant(
                "tracing-10pct",
                f"OpenTelemetry metrics + tracing, {SAMPLED_SHARE:.0%} of traces sampled",
                lambda: _tracing(SAMPLED_SHARE),
            )
        )
    return found


async def _round(store: StoreTarget, variant: Variant, k: int, n: int, in_flight: int) -> float:
    """One round of ``variant`` on a fresh store: activities per second."""
    url = store.url_for(f"overhead-{variant.name}-{k}")
    try:
        with variant.setup() as options:
            client = await Client.connect(url, **options)
            try:
                async with w.running_worker(
                    client, url, "bench", child=False, slots=in_flight, pool=None
                ):
                    await w.warm_up(client, "bench")
                    return n / await w.timed_run(client, "bench", n, in_flight)
            finally:
                await client.close()
    finally:
        await asyncio.to_thread(store.drop, url)


async def overhead(store: StoreTarget, n: int, in_flight: int, notes: list[str]) -> list[w.Figure]:
    """Throughput of each variant (the median of ROUNDS interleaved rounds),
    and each "on" variant as a share of "off"."""
    found = variants(notes)
    for k in range(ROUNDS):
        for variant in found:
            variant.rates.append(await _round(store, variant, k, n, in_flight))
    off = statistics.median(found[0].rates)
    figures = []
    for variant in found:
        rate = statistics.median(variant.rates)
        figures.append(_figure(variant.label, rate, "activities/s"))
        if variant is not found[0]:
            figures.append(
                _figure(f"{variant.label}, % of off", 100 * rate / off, "%", TARGET_SHARE)
            )
    notes.append(
        f"{NAME}: rounds (activities/s) "
        + "; ".join(f"{v.name} " + " ".join(f"{r:,.0f}" for r in v.rates) for v in found)
    )
    return figures


def _figure(label: str, value: float, unit: str, share: float | None = None) -> w.Figure:
    """A figure of this workload (a share becomes a ">= x" target in %)."""
    target = "" if share is None else f">= {100 * share:.0f}"
    return w.Figure(NAME, label, value, unit, target)
