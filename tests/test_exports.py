"""The public surface, pinned: each public module exports exactly the names below.

These are the names of DESIGN.md section 2 that are built, plus the public
helpers their modules chose to export. A name is added here when it works,
never before: a name listed in the design but not yet built is absent, not a
stub. Changing the surface means changing this file on purpose.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import errands.client
import errands.exceptions

PROJECT_ROOT = Path(__file__).resolve().parent.parent

EXPORTS: dict[str, set[str]] = {
    "errands": {"activity"},
    "errands.activity": {
        "ActivityCancellationDetails",
        "ActivityDefaults",
        "Info",
        "cancellation_details",
        "client",
        "defn",
        "heartbeat",
        "heartbeat_details",
        "heartbeating",
        "in_activity",
        "info",
        "is_cancelled",
        "is_worker_shutdown",
        "logger",
        "metric_meter",
        "payload_converter",
        "raise_complete_async",
        "shield_thread_cancel_exception",
        "wait_for_cancelled",
        "wait_for_cancelled_sync",
        "wait_for_worker_shutdown",
        "wait_for_worker_shutdown_sync",
    },
    "errands.client": {
        "ActivityAttempt",
        "AttemptOutcome",
        "ActivityExecution",
        "ActivityExecutionCount",
        "ActivityExecutionCountAggregationGroup",  # the type of ActivityExecutionCount.groups
        "ActivityExecutionDescription",
        "ActivityExecutionOptions",
        "ActivityExecutionStatus",
        "ActivityFailureError",
        "ActivityHandle",
        "ActivityOptionsKey",  # the type of ActivityOptionsKeys' attributes
        "ActivityOptionsKeys",
        "ActivityOptionsUpdate",
        "ActivityStart",
        "AsyncActivityCancelledError",
        "AsyncActivityHandle",
        "Client",
        "PendingActivityState",
        "WorkerInfo",
        # interceptors (DESIGN.md §6 "Watching"), as temporalio.client has them
        "Interceptor",
        "OutboundInterceptor",
        "AsyncActivityReference",
        "BulkActivitiesInput",
        "CancelActivityInput",
        "CompleteAsyncActivityInput",
        "CountActivitiesInput",
        "DescribeActivityInput",
        "FailAsyncActivityInput",
        "GetActivityAttemptsInput",
        "GetActivityResultInput",
        "HeartbeatAsyncActivityInput",
        "ListActivitiesInput",
        "ListWorkersInput",
        "PauseActivityInput",
        "ReportCancellationAsyncActivityInput",
        "ResetActivityInput",
        "RetryActivityNowInput",
        "StartActivitiesInput",
        "StartActivityInput",
        "TerminateActivityInput",
        "UnpauseActivityInput",
        "UpdateActivityOptionsInput",
    },
    "errands.worker": {
        "SharedStateManager",
        "Worker",
        # interceptors (DESIGN.md §6 "Watching"), as temporalio.worker has them
        "ActivityInboundInterceptor",
        "ActivityOutboundInterceptor",
        "ExecuteActivityInput",
        "Interceptor",
    },
    "errands.testing": {"ActivityEnvironment"},
    # needs the opentelemetry extra (the dev extra has it)
    "errands.contrib.opentelemetry": {"HEADER_KEY", "TracingInterceptor"},
    "errands.runtime": {"OpenTelemetryConfig", "PrometheusConfig", "Runtime", "TelemetryConfig"},
    "errands.common": {
        "ActivityIDConflictPolicy",
        "ActivityIDReusePolicy",
        "MetricAttributes",  # temporalio.common's metric meter and its instruments
        "MetricCommon",
        "MetricCounter",
        "MetricGauge",
        "MetricGaugeFloat",
        "MetricHistogram",
        "MetricHistogramFloat",
        "MetricHistogramTimedelta",
        "MetricMeter",
        "Priority",
        "RawValue",
        "RetryPolicy",
        "SearchAttributeIndexedValueType",
        "SearchAttributeKey",
        "SearchAttributePair",
        "SearchAttributeUpdate",
        "TypedSearchAttributes",
    },
    "errands.exceptions": {
        "ActivityAlreadyClosedError",
        "ActivityAlreadyStartedError",
        "ActivityFailedError",
        "ActivityNotFoundError",
        "ApplicationError",
        "CancelledError",
        "ErrandsError",
        "FailureError",  # the base of the four errors that travel as a cause
        "StoreError",
        "TerminatedError",
        "TimeoutError",
        "TimeoutType",
    },
    "errands.converter": {
        "DataConverter",
        "EncodedFailure",
        "Payload",
        "PayloadCodec",
        "PayloadConverter",
        "deserialize_payloads",
        "serialize_payloads",
    },
    "errands.dashboard": {"create_app"},
    "errands.store": {
        "And",
        "AttemptRecord",
        "Between",
        "ClaimResult",
        "ClaimedTask",
        "ClosedRun",
        "Compare",
        "ExecutionOptions",
        "ExecutionRecord",
        "Expr",
        "FailureReport",
        "Field",
        "HeartbeatResult",
        "In",
        "IsNull",
        "NewExecution",
        "Not",
        "Or",
        "Query",
        "QueueBacklog",
        "StartResult",
        "Store",
        "WorkerRecord",
    },
}


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_each_public_module_exports_exactly_its_pinned_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ repeats a name"
    assert set(exported) == EXPORTS[module_name]


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_every_exported_name_is_defined(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in EXPORTS[module_name] if getattr(module, name, None) is None]
    assert missing == []


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_a_star_import_brings_exactly_the_pinned_names(module_name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)
    assert set(namespace) - {"__builtins__"} == EXPORTS[module_name]


def test_activity_failure_error_is_temporalios_name_for_activity_failed_error() -> None:
    assert errands.client.ActivityFailureError is errands.exceptions.ActivityFailedError


def test_the_package_has_a_py_typed_marker() -> None:
    marker = resources.files("errands").joinpath("py.typed")
    assert marker.is_file()


def test_a_build_of_the_package_ships_py_typed_and_the_migrations(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="building the package needs setuptools")
    build_lib = tmp_path / "lib"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "egg_info",
            "--egg-base",
            str(tmp_path),
            "build_py",
            "--build-lib",
            str(build_lib),
        ],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (build_lib / "errands" / "py.typed").is_file()
    migrations = "errands/store/migrations/sqlite"
    source = sorted(p.name for p in (PROJECT_ROOT / migrations).glob("*.sql"))
    assert source
    assert sorted(p.name for p in (build_lib / migrations).glob("*.sql")) == source
    dashboard = "errands/dashboard"
    for folder in ("templates", "static"):
        shipped = sorted(p.name for p in (PROJECT_ROOT / dashboard / folder).iterdir())
        assert shipped
        assert sorted(p.name for p in (build_lib / dashboard / folder).iterdir()) == shipped


def test_the_core_imports_nothing_of_the_dashboard_extra() -> None:
    # The client, the worker and the command line run without Starlette,
    # Jinja2 or uvicorn installed: they never import them.
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, errands.client, errands.worker, errands.cli; "
            "print(sorted(m for m in ('starlette', 'jinja2', 'uvicorn') if m in sys.modules))",
        ],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.stdout.strip() == "[]"
