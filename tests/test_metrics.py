"""Metrics: the values a worker records are read back, through an
OpenTelemetry MeterProvider with an in-memory reader (on both stores), and as
Prometheus text scraped over HTTP from ``errands worker --metrics-port`` in a
worker process.

Waits poll a condition with a generous ceiling; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from errands import activity, exceptions
from errands._metrics import SPECS, Metrics
from errands._prometheus import Registry, RenderOptions
from errands.client import Client
from errands.common import MetricMeter
from errands.runtime import OpenTelemetryConfig, PrometheusConfig, Runtime, TelemetryConfig
from errands.store.sqlite import CATALOGUE as SQLITE
from errands.testing import ActivityEnvironment
from errands.worker import SharedStateManager, Worker
from tests.support import CEILING_S, TIMEOUT, eventually, heartbeat_stored
from tests.test_cli import REPO_ROOT, WorkerProcess

# --------------------------------------------------------------------------- helpers


class Readings:
    """What an in-memory reader holds now, by metric name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.points: dict[str, list[Any]] = {}
        self.units: dict[str, str] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.points.setdefault(metric.name, []).extend(metric.data.data_points)
                    self.units[metric.name] = metric.unit or ""

    def point(self, name: str, **labels: str) -> Any:
        """The one data point of ``name`` whose attributes include ``labels``."""
        found = [
            p
            for p in self.points.get(name, [])
            if all(p.attributes.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, (name, labels, self.points.get(name))
        return found[0]

    def value(self, name: str, **labels: str) -> float:
        """A counter's or a gauge's value (0 when the series is absent)."""
        points = [
            p
            for p in self.points.get(name, [])
            if all(p.attributes.get(k) == v for k, v in labels.items())
        ]
        return sum(p.value for p in points)


@pytest.fixture
def meter_reader() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    """A MeterProvider of this test and its in-memory reader."""
    in_memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[in_memory])
    try:
        yield provider, in_memory
    finally:
        provider.shutdown()


@pytest.fixture
async def metered(
    db_url: str, meter_reader: tuple[MeterProvider, InMemoryMetricReader]
) -> AsyncIterator[tuple[Client, InMemoryMetricReader]]:
    """A client whose runtime records into the test's MeterProvider, with
    Temporal's prefix."""
    provider, in_memory = meter_reader
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=OpenTelemetryConfig(meter_provider=provider), metric_prefix="temporal_"
        )
    )
    client = await Client.connect(db_url, runtime=runtime)
    try:
        yield client, in_memory
    finally:
        await client.close()


# --------------------------------------------------------------------------- activities


@activity.defn
async def double(x: int) -> int:
    return 2 * x


@activity.defn
async def refuse(x: int) -> int:
    raise exceptions.ApplicationError(f"no {x}", non_retryable=True)


@activity.defn
async def beat_until_cancelled() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(0.01)


@activity.defn
async def count_async(n: int) -> str:
    meter = activity.metric_meter()
    meter.create_counter("orders_packed", "Orders packed.").add(n, {"shop": "north"})
    meter.create_histogram_timedelta("pack_time").record(timedelta(milliseconds=250))
    meter.create_gauge("open_boxes").set(7)
    return "counted"


@activity.defn
def count_sync(n: int) -> str:
    activity.metric_meter().create_counter("orders_packed").add(n, {"shop": "south"})
    return "counted"


@activity.defn
def meter_in_child() -> str:
    try:
        activity.metric_meter()
    except RuntimeError as e:
        return str(e)
    return "no error"


@activity.defn
async def hold_the_loop(seconds: float) -> str:
    time.sleep(seconds)  # the mistake being counted
    return "held"


# --------------------------------------------------------------------------- OpenTelemetry


async def test_activity_runs_are_recorded_under_temporals_names_with_their_labels(
    metered: tuple[Client, InMemoryMetricReader], task_queue: str
) -> None:
    client, reader = metered
    async with Worker(client, task_queue=task_queue, activities=[double, refuse]):
        for k in range(3):
            await client.execute_activity(
                double, k, id=f"ok-{k}", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
        with pytest.raises(exceptions.ActivityFailedError):
            await client.execute_activity(
                refuse, 1, id="bad", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
        during = Readings(reader)
    after = Readings(reader)

    ok = {"namespace": "default", "task_queue": task_queue, "activity_type": "double"}
    bad = {**ok, "activity_type": "refuse"}
    assert during.value("temporal_activity_task_received", **ok) == 3
    assert during.value("temporal_activity_task_received", **bad) == 1
    assert during.value("temporal_activity_execution_failed", **ok) == 0
    assert during.value("temporal_activity_execution_failed", **bad) == 1
    assert during.point("temporal_activity_execution_latency", **ok).count == 3
    assert during.point("temporal_activity_execution_latency", **bad).count == 1
    assert during.point("temporal_activity_schedule_to_start_latency", **ok).count == 3
    succeeded = during.point("temporal_activity_succeed_endtoend_latency", **ok)
    assert succeeded.count == 3 and 0 < succeeded.sum < 3 * CEILING_S * 1000
    assert during.units["temporal_activity_execution_latency"] == "ms"
    slots = {"namespace": "default", "task_queue": task_queue, "worker_type": "ActivityWorker"}
    assert during.value("temporal_worker_task_slots_available", **slots) == 100
    assert during.value("temporal_worker_task_slots_used", **slots) == 0
    # Group commits: starts, claims and outcomes went through the store's writer.
    assert during.point("temporal_store_group_commit_size").sum >= 8
    assert during.point("temporal_store_commit_latency").count >= 1
    # A stopped worker's slots are no longer reported.
    assert after.value("temporal_worker_task_slots_available", **slots) == 0


async def test_slots_in_use_are_reported_while_activities_run(
    metered: tuple[Client, InMemoryMetricReader], task_queue: str
) -> None:
    client, reader = metered
    slots = {"task_queue": task_queue, "slot_type": "async"}
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[beat_until_cancelled],
        max_concurrent_activities=5,
    ):
        handles = [
            await client.start_activity(
                beat_until_cancelled,
                id=f"busy-{k}",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                heartbeat_timeout=TIMEOUT,
            )
            for k in range(2)
        ]
        await eventually(
            lambda: Readings(reader).value("temporal_worker_task_slots_used", **slots) == 2,
            "2 slots in use",
        )
        assert Readings(reader).value("temporal_worker_task_slots_available", **slots) == 3
        for handle in handles:
            await handle.cancel()


async def test_a_cancel_is_timed_from_the_request_reaching_the_worker_to_the_activity_raising_it(
    metered: tuple[Client, InMemoryMetricReader], task_queue: str
) -> None:
    client, reader = metered
    async with Worker(client, task_queue=task_queue, activities=[beat_until_cancelled]):
        handle = await client.start_activity(
            beat_until_cancelled,
            id="to-cancel",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            heartbeat_timeout=TIMEOUT,
        )
        await heartbeat_stored(handle)
        await handle.cancel()
        with pytest.raises(exceptions.ActivityFailedError) as failed:
            await handle.result()
        assert isinstance(failed.value.cause, exceptions.CancelledError)
        readings = Readings(reader)

    labels = {"task_queue": task_queue, "activity_type": "beat_until_cancelled"}
    delivery = readings.point("temporal_activity_cancel_delivery_latency", **labels)
    assert delivery.count == 1
    assert 0 <= delivery.sum < 5000  # the design's bar is 50 ms at p50; 5 s is a ceiling
    # A cancellation is not a failure.
    assert readings.value("temporal_activity_execution_failed", **labels) == 0


async def test_the_backlog_and_oldest_wait_of_each_queue_are_read_from_the_store(
    metered: tuple[Client, InMemoryMetricReader], task_queue: str
) -> None:
    client, reader = metered
    waiting = f"{task_queue}-unserved"
    for k in range(3):
        await client.start_activity(
            double, k, id=f"wait-{k}", task_queue=waiting, start_to_close_timeout=TIMEOUT
        )
    await client.start_activity(  # not claimable for an hour: no backlog yet
        double,
        9,
        id="later",
        task_queue=waiting,
        start_to_close_timeout=TIMEOUT,
        start_delay=timedelta(hours=1),
    )
    async with Worker(client, task_queue=task_queue, activities=[double]):
        labels = {"namespace": "default", "task_queue": waiting}
        readings = Readings(reader)
        assert readings.value("temporal_task_queue_backlog", **labels) == 3
        first_age = readings.value("temporal_task_queue_oldest_scheduled_age", **labels)
        assert 0 <= first_age < CEILING_S * 1000
        # The age grows while nobody claims (each collection reads the store
        # again once the last read is a second old).
        await eventually(
            lambda: (
                Readings(reader).value("temporal_task_queue_oldest_scheduled_age", **labels)
                > first_age
            ),
            "the oldest wait growing",
        )
        assert readings.value("temporal_task_queue_backlog", task_queue=task_queue) == 0


async def test_an_activity_records_its_own_metrics_with_its_labels(
    metered: tuple[Client, InMemoryMetricReader],
    task_queue: str,
    thread_pool: ThreadPoolExecutor,
) -> None:
    client, reader = metered
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[count_async, count_sync],
        activity_executor=thread_pool,
    ):
        for fn, n in ((count_async, 2), (count_sync, 5)):
            assert (
                await client.execute_activity(
                    fn,
                    n,
                    id=f"{fn.__name__}",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                )
                == "counted"
            )
    readings = Readings(reader)

    base = {"namespace": "default", "task_queue": task_queue}
    # The user's names are theirs: no prefix.
    north = readings.point("orders_packed", **base, activity_type="count_async", shop="north")
    south = readings.point("orders_packed", **base, activity_type="count_sync", shop="south")
    assert (north.value, south.value) == (2, 5)
    pack = readings.point("pack_time", activity_type="count_async")
    assert (pack.count, pack.sum) == (1, 250)
    assert readings.value("open_boxes", activity_type="count_async") == 7


async def test_metric_meter_is_refused_in_a_process_pool_activity(
    client: Client,
    task_queue: str,
    process_pool: ProcessPoolExecutor,
    shared_state: SharedStateManager,
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[meter_in_child],
        activity_executor=process_pool,
        shared_state_manager=shared_state,
    ):
        said = await client.execute_activity(
            meter_in_child, id="child", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert "not available in process-pool activities" in said


async def test_with_metrics_off_an_activitys_meter_records_nothing_and_raises_nothing(
    client: Client, task_queue: str
) -> None:
    assert client.runtime.metric_meter is MetricMeter.noop
    async with Worker(client, task_queue=task_queue, activities=[count_async]):
        assert (
            await client.execute_activity(
                count_async, 1, id="off", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            == "counted"
        )
    with pytest.raises(ValueError, match="negative"):
        MetricMeter.noop.create_counter("c").add(-1)
    with pytest.raises(TypeError, match="attribute"):
        MetricMeter.noop.with_additional_attributes({"k": [1]})  # type: ignore[dict-item]


@pytest.mark.blocks_loop
@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_an_activity_holding_the_event_loop_is_counted(
    metered: tuple[Client, InMemoryMetricReader], task_queue: str
) -> None:
    client, reader = metered
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[hold_the_loop],
        blocked_loop_threshold=timedelta(milliseconds=200),
    ):
        await client.execute_activity(
            hold_the_loop, 1.0, id="hold", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await eventually(
            lambda: (
                Readings(reader).value(
                    "temporal_worker_event_loop_blocked", activity_type="hold_the_loop"
                )
                == 1
            ),
            "the blocked loop counted",
        )


# --------------------------------------------------------------------------- Prometheus text


def test_prometheus_text_names_scales_and_escapes_as_configured() -> None:
    plain = Registry()
    seconds = Registry(
        RenderOptions(counters_total_suffix=True, unit_suffix=True, durations_as_seconds=True)
    )
    for registry in (plain, seconds):
        registry.instrument("c", "counter", "A count.", "", ()).bind({"q": 'a"b\\c\nd'})(3)
        latency = registry.instrument("lat", "histogram", "Line one\nline two.", "ms", (10, 100))
        record = latency.bind({})
        for ms in (5, 50, 500):
            record(ms)

    assert plain.render().splitlines() == [
        "# HELP c A count.",
        "# TYPE c counter",
        'c{q="a\\"b\\\\c\\nd"} 3',
        "# HELP lat Line one\\nline two.",
        "# TYPE lat histogram",
        'lat_bucket{le="10"} 1',
        'lat_bucket{le="100"} 2',
        'lat_bucket{le="+Inf"} 3',
        "lat_sum 555",
        "lat_count 3",
    ]
    text = seconds.render()
    assert 'c_total{q="a\\"b\\\\c\\nd"} 3' in text
    assert 'lat_seconds_bucket{le="0.01"} 1' in text
    assert "lat_seconds_sum 0.555" in text


def test_a_bind_address_that_is_not_host_and_port_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address="9464")))


def test_errands_imports_nothing_of_opentelemetry_for_prometheus_metrics() -> None:
    code = (
        "import sys, errands.client, errands.worker, errands.activity\n"
        "from errands.runtime import Runtime, TelemetryConfig, PrometheusConfig\n"
        "Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address='')))\n"
        "print([m for m in sys.modules if m.startswith('opentelemetry')])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def scrape(url: str) -> dict[str, float]:
    """The samples of a /metrics page, by series (name and labels as written)."""
    with urllib.request.urlopen(url, timeout=CEILING_S) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_errands_worker_serves_prometheus_metrics_on_its_metrics_port(
    db_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "ERRANDS_URL": db_url}
    worker = WorkerProcess(
        tmp_path,
        "worker",
        env,
        "tests.cli_activities:ACTIVITIES",
        "--task-queue",
        "q",
        "--metrics-port",
        "0",
        "--metric-prefix",
        "temporal_",
    )
    try:
        await asyncio.to_thread(worker.wait_for_log, "/metrics")
        found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", worker.log())
        assert found is not None, worker.log()
        url = found.group(0)
        async with await Client.connect(db_url) as client:
            for k in range(4):
                await client.execute_activity(
                    "greet", f"n{k}", id=f"g-{k}", task_queue="q", start_to_close_timeout=TIMEOUT
                )
            await client.start_activity(
                "greet", "x", id="stuck", task_queue="nobody", start_to_close_timeout=TIMEOUT
            )
        samples = await asyncio.to_thread(scrape, url)
    finally:
        await asyncio.to_thread(worker.stop)

    greet = 'activity_type="greet",namespace="default",task_queue="q"'
    assert samples[f"temporal_activity_task_received{{{greet}}}"] == 4
    assert samples[f"temporal_activity_execution_latency_count{{{greet}}}"] == 4
    assert samples[f"temporal_activity_succeed_endtoend_latency_count{{{greet}}}"] == 4
    assert samples[f'temporal_activity_execution_latency_bucket{{{greet},le="+Inf"}}'] == 4
    assert samples['temporal_task_queue_backlog{namespace="default",task_queue="nobody"}'] == 1
    slots = 'namespace="default",slot_type="async",task_queue="q",worker_type="ActivityWorker"'
    assert samples[f"temporal_worker_task_slots_available{{{slots}}}"] == 100
    assert samples['temporal_store_group_commit_size_count{store="sqlite"}'] >= 1


def test_the_grafana_dashboard_charts_only_metrics_errands_records() -> None:
    dashboard = json.loads((REPO_ROOT / "docs" / "grafana-errands.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    charted = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"\$\{prefix\}(\w+)", expr)
    }
    assert charted == {spec.name for spec in SPECS}
    assert all(
        t["datasource"]["type"] == "prometheus"
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    )


def test_an_activity_environment_gives_its_meter_with_the_infos_labels() -> None:
    registry = Registry()
    metrics = Metrics(registry)
    env = ActivityEnvironment()
    assert env.metric_meter is MetricMeter.noop
    env.metric_meter = metrics.meter
    env.info = dataclasses.replace(env.info, activity_type="pack")

    def pack() -> None:
        activity.metric_meter().create_counter("packed").add(2)

    env.run(pack)

    assert 'packed{activity_type="pack",namespace="default",task_queue="test"} 2' in (
        registry.render()
    )


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_the_backlog_read_walks_the_claim_index_not_the_table(
    client: Client, db_path: Path
) -> None:
    sql = SQLITE["queue_backlog"]
    with sqlite3.connect(db_path) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", {"ns": "default", "now": 0.0}).fetchall()
    walks = "SEARCH executions USING INDEX executions_claim (namespace=?)"
    assert [row[3] for row in plan] == [walks]
