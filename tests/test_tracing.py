"""OpenTelemetry traces (DESIGN.md §6 "Watching"; issue 14 point 2): a
``StartActivity`` span at the client and one ``RunActivity`` span per attempt,
joined into one trace through the execution's header, in one process and
across processes; messaging attributes; failures, cancellations and retries
recorded. Spans are read back from the OpenTelemetry SDK's in-memory exporter,
and from the file a worker process exports to (tests/spans.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import NoOpTracer

from errands import activity, exceptions
from errands import client as errands_client
from errands import worker as worker_api
from errands.client import ActivityStart, Client, OutboundInterceptor, StartActivityInput
from errands.common import RetryPolicy
from errands.contrib.opentelemetry import HEADER_KEY, TracingInterceptor
from errands.converter import Payload
from errands.worker import Worker
from tests import intercepted_activities as acts
from tests import procs
from tests.intercepted_activities import Kind
from tests.spans import read_spans, span_dict
from tests.support import FAST_RETRY, TIMEOUT, eventually, failure_of, heartbeat_stored

Span = dict[str, Any]


class Spans:
    """A tracer whose finished spans the test reads as dicts (tests/spans.py)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("errands-tests")

    def finished(self) -> list[Span]:
        return [span_dict(s) for s in self.exporter.get_finished_spans()]

    def named(self, prefix: str) -> list[Span]:
        return [s for s in self.finished() if s["name"].startswith(prefix)]


@pytest.fixture
def spans() -> Iterator[Spans]:
    traced = Spans()
    yield traced
    traced.provider.shutdown()


def _children(parent: Span, spans: list[Span]) -> list[Span]:
    return [
        s
        for s in spans
        if s["parent_id"] == parent["span_id"] and s["trace_id"] == parent["trace_id"]
    ]


def _check_retried_trace(start: Span, runs: list[Span], task_queue: str, activity_id: str) -> None:
    """One start span and its attempts, the last of which succeeded after
    ``len(runs) - 1`` failures of type Flaky, each a child of the start span."""
    assert start["kind"] == "PRODUCER"
    assert start["attributes"] == {
        "messaging.system": "errands",
        "messaging.destination.name": task_queue,
        "messaging.operation.type": "send",
        "messaging.message.id": activity_id,
        "errands.activity.type": start["name"].split(":", 1)[1],
        "errands.activity.run_id": start["attributes"]["errands.activity.run_id"],
    }
    runs = sorted(runs, key=lambda s: s["attributes"]["errands.activity.attempt"])
    assert [s["attributes"]["errands.activity.attempt"] for s in runs] == list(
        range(1, len(runs) + 1)
    )
    for run in runs:
        # siblings: each attempt's parent is the start span, in its trace
        assert run["trace_id"] == start["trace_id"]
        assert run["parent_id"] == start["span_id"]
        assert run["kind"] == "CONSUMER"
        assert run["name"] == "RunActivity:" + start["name"].split(":", 1)[1]
        attributes = run["attributes"]
        assert attributes["messaging.system"] == "errands"
        assert attributes["messaging.destination.name"] == task_queue
        assert attributes["messaging.message.id"] == activity_id
        assert attributes["messaging.operation.type"] == "process"
        assert (
            attributes["errands.activity.run_id"] == start["attributes"]["errands.activity.run_id"]
        )
    for failed in runs[:-1]:
        assert failed["status"] == "ERROR"
        assert failed["attributes"]["error.type"] == "Flaky"
        assert [e["name"] for e in failed["events"]] == ["exception"]
        assert failed["events"][0]["attributes"]["exception.type"].endswith("ApplicationError")
    assert runs[-1]["status"] == "UNSET" and "error.type" not in runs[-1]["attributes"]
    assert runs[-1]["events"] == []


async def test_retries_are_sibling_attempt_spans_under_the_start_span(
    db_url: str, task_queue: str, spans: Spans
) -> None:
    # Given a client (and so its worker) traced
    client = await Client.connect(db_url, interceptors=[TracingInterceptor(spans.tracer)])
    try:
        async with Worker(client, task_queue=task_queue, activities=[acts.fail_then_succeed]):
            # When an activity fails twice and then succeeds
            result = await client.execute_activity(
                acts.fail_then_succeed,
                2,
                id="flaky",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                retry_policy=FAST_RETRY,
            )
    finally:
        await client.close()
    assert result == 3
    # Then one trace holds the start span and three attempt spans under it
    (start,) = spans.named("StartActivity:")
    assert start["name"] == "StartActivity:fail_then_succeed"
    _check_retried_trace(start, spans.named("RunActivity:"), task_queue, "flaky")
    assert len(spans.finished()) == 4


async def test_a_cancelled_attempt_s_span_says_so(
    db_url: str, task_queue: str, spans: Spans, executor_kind: Kind
) -> None:
    kind = executor_kind
    # Given a traced worker of each executor kind, running an activity that waits
    client = await Client.connect(db_url, interceptors=[TracingInterceptor(spans.tracer)])
    try:
        async with kind.worker(client, task_queue, [kind.wait_for_cancel]):
            handle = await client.start_activity(
                kind.wait_for_cancel,
                id="waiter",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            await heartbeat_stored(handle)
            # When it is cancelled
            await handle.cancel()
            assert isinstance(await failure_of(handle), exceptions.CancelledError)
    finally:
        await client.close()
    # Then its attempt span is an error that says why, under the start span
    (start,) = spans.named("StartActivity:")
    (run,) = spans.named("RunActivity:")
    assert run["parent_id"] == start["span_id"] and run["trace_id"] == start["trace_id"]
    assert run["status"] == "ERROR" and run["status_description"] == "cancelled"
    assert run["attributes"]["error.type"] == "CancelledError"
    assert run["attributes"]["errands.activity.cancellation"] == "cancel_requested"
    assert [e["name"] for e in run["events"]] == ["exception"]


async def test_a_thread_pool_activity_s_own_spans_are_children_of_its_attempt_span(
    client: Client, task_queue: str, spans: Spans, thread_pool: Any
) -> None:
    tracer = spans.tracer

    @activity.defn
    def make_a_span() -> str:
        with tracer.start_as_current_span("inside the activity"):
            return "done"

    traced = Client(client.store, interceptors=[TracingInterceptor(tracer)])
    async with Worker(
        traced, task_queue=task_queue, activities=[make_a_span], activity_executor=thread_pool
    ):
        await traced.execute_activity(
            make_a_span, id="inner", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    (run,) = spans.named("RunActivity:")
    (inner,) = spans.named("inside the activity")
    assert inner["parent_id"] == run["span_id"] and inner["trace_id"] == run["trace_id"]


async def test_a_batch_start_is_one_span_that_every_attempt_names_as_parent(
    client: Client, task_queue: str, spans: Spans
) -> None:
    traced = Client(client.store, interceptors=[TracingInterceptor(spans.tracer)])
    async with Worker(traced, task_queue=task_queue, activities=[acts.fail_then_succeed]):
        handles = await traced.start_activities(
            [
                ActivityStart(
                    acts.fail_then_succeed,
                    [0],
                    id=f"batch-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                )
                for i in range(3)
            ]
        )
        assert [await h.result() for h in handles] == [1, 1, 1]
    (batch,) = spans.named("StartActivities")
    assert batch["kind"] == "PRODUCER"
    assert batch["attributes"]["messaging.batch.message_count"] == 3
    assert batch["attributes"]["messaging.destination.name"] == task_queue
    runs = spans.named("RunActivity:")
    assert sorted(r["attributes"]["messaging.message.id"] for r in runs) == [
        "batch-0",
        "batch-1",
        "batch-2",
    ]
    assert _children(batch, runs) == runs


async def test_a_non_retryable_failure_and_an_untraced_start(
    client: Client, task_queue: str, spans: Spans
) -> None:
    # Given a traced worker on a client whose starts are not traced
    worker_client = Client(client.store, interceptors=[TracingInterceptor(spans.tracer)])
    async with Worker(
        worker_client,
        task_queue=task_queue,
        activities=[acts.fail_then_succeed],
    ):
        # When a start without a trace header fails for good (one attempt allowed)
        handle = await client.start_activity(
            acts.fail_then_succeed,
            1,
            id="bad",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        await failure_of(handle)
    # Then its attempt began a trace of its own
    (run,) = spans.named("RunActivity:")
    assert run["parent_id"] is None
    assert run["status"] == "ERROR" and run["attributes"]["error.type"] == "Flaky"
    assert spans.named("StartActivity:") == []


async def test_the_trace_goes_from_the_client_s_span_through_every_attempt_in_a_worker_process(
    db_url: str, task_queue: str, spans: Spans, tmp_path: Path
) -> None:
    # Given a worker in another process that exports its spans to a file
    trace_file = tmp_path / "worker-spans.jsonl"
    client = await Client.connect(db_url, interceptors=[TracingInterceptor(spans.tracer)])
    try:
        with procs.Children(tmp_path) as children:
            worker = await children.worker("worker", db_url, task_queue, trace_file=trace_file)
            # When the client starts an activity that fails twice before it succeeds
            result = await client.execute_activity(
                procs.slow_then_flaky,
                args=[2, 0.05],
                id="across",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                retry_policy=FAST_RETRY,
            )
            assert result == 3
            # (each span is exported as it ends: the last may land just after the result)
            await eventually(lambda: len(read_spans(trace_file)) == 3, "three attempt spans")
            worker.stop()
    finally:
        await client.close()
    # Then the worker's attempt spans are children of the client's start span
    worker_spans = read_spans(trace_file)
    assert {s["pid"] for s in worker_spans} == {worker.pid} != {os.getpid()}
    (start,) = spans.named("StartActivity:")
    _check_retried_trace(start, worker_spans, task_queue, "across")
    keep = os.environ.get("ERRANDS_KEEP_TRACE")
    if keep:  # docs/render_trace.py draws the README's picture from this export
        Path(keep).write_text(
            "".join(json.dumps(s) + "\n" for s in [*spans.finished(), *worker_spans])
        )


def test_the_start_span_s_context_travels_in_the_header_temporalio_names() -> None:
    assert HEADER_KEY == "_tracer-data"


_IMPORTS = "import errands, errands.activity, errands.client, errands.worker, errands.converter"


def test_errands_imports_nothing_of_opentelemetry() -> None:
    # With OpenTelemetry installed, importing errands loads none of it
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{_IMPORTS}; import sys; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'opentelemetry'))",
        ],
        cwd=procs.REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert loaded.stdout.strip() == "[]"


def test_without_opentelemetry_errands_works_and_the_contrib_module_says_what_to_install() -> None:
    # Given an interpreter where OpenTelemetry cannot be imported (as if not installed)
    code = f"""
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, Missing())
{_IMPORTS}
from errands.client import Client
from errands.worker import Worker
try:
    import errands.contrib.opentelemetry
except ImportError as e:
    print("refused:", e)
"""
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=procs.REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert ran.stdout.strip() == (
        "refused: errands.contrib.opentelemetry needs opentelemetry-api: "
        "pip install 'errands[opentelemetry]'"
    )


async def test_an_unreadable_trace_header_begins_a_new_trace_and_says_so(
    client: Client, task_queue: str, spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a start whose trace header holds no carrier
    class Garble(errands_client.Interceptor):
        def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
            class Outbound(OutboundInterceptor):
                async def start_activity(self, input: StartActivityInput) -> Any:
                    input.headers = {HEADER_KEY: Payload({"encoding": b"json/plain"}, b"[1, 2]")}
                    return await super().start_activity(input)

            return Outbound(next)

    starter = Client(client.store, interceptors=[Garble()])
    worker_client = Client(client.store, interceptors=[TracingInterceptor(spans.tracer)])
    async with Worker(worker_client, task_queue=task_queue, activities=[acts.fail_then_succeed]):
        # When a traced worker runs it
        result = await starter.execute_activity(
            acts.fail_then_succeed,
            0,
            id="garbled",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
    # Then the attempt still runs, in a trace of its own, and the header is reported
    assert result == 1
    (run,) = spans.named("RunActivity:")
    assert run["parent_id"] is None and run["status"] == "UNSET"
    assert any("header cannot be read" in r.getMessage() for r in caplog.records)


class _Headers(worker_api.Interceptor):
    """Keeps the headers every attempt was given."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Payload]] = []

    def intercept_activity(
        self, next: worker_api.ActivityInboundInterceptor
    ) -> worker_api.ActivityInboundInterceptor:
        seen = self.seen

        class Inbound(worker_api.ActivityInboundInterceptor):
            async def execute_activity(self, input: worker_api.ExecuteActivityInput) -> Any:
                seen.append(dict(input.headers))
                return await super().execute_activity(input)

        return Inbound(next)


async def test_under_a_no_op_tracer_a_start_carries_no_trace_header(
    client: Client, task_queue: str
) -> None:
    # Given a client tracing with a tracer that records nothing and has no span context
    traced = Client(client.store, interceptors=[TracingInterceptor(NoOpTracer())])
    headers = _Headers()
    async with Worker(
        client, task_queue=task_queue, activities=[acts.fail_then_succeed], interceptors=[headers]
    ):
        # When it starts an activity
        result = await traced.execute_activity(
            acts.fail_then_succeed,
            0,
            id="untraced",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
    # Then the activity ran, and its attempt was given no trace header
    assert result == 1
    assert headers.seen == [{}]


async def test_an_unsampled_start_still_tells_its_attempts_not_to_sample(
    client: Client, task_queue: str
) -> None:
    # Given a client whose tracer samples nothing, and a worker whose tracer
    # samples whatever has no sampled parent
    exporter = InMemorySpanExporter()
    worker_provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    worker_provider.add_span_processor(SimpleSpanProcessor(exporter))
    client_provider = TracerProvider(sampler=ALWAYS_OFF)
    starter = Client(
        client.store,
        interceptors=[TracingInterceptor(client_provider.get_tracer("t"))],
    )
    worker_client = Client(
        client.store,
        interceptors=[TracingInterceptor(worker_provider.get_tracer("t"))],
    )
    try:
        async with Worker(
            worker_client, task_queue=task_queue, activities=[acts.fail_then_succeed]
        ):
            # When the client starts an activity
            result = await starter.execute_activity(
                acts.fail_then_succeed,
                0,
                id="unsampled",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
        # Then the start's unsampled context reached the attempt, which was not sampled either
        assert result == 1
        assert exporter.get_finished_spans() == ()
    finally:
        worker_provider.shutdown()
        client_provider.shutdown()
