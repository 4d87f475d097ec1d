"""``errands worker``: find the activities a ``MODULE[:ATTR]`` names, build the
executor, and run a Worker until SIGINT / SIGTERM.

The first signal shuts down gracefully (running activities get the grace
period, then are cancelled and fail retryably, so another worker retries
them); a second signal cancels them at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import multiprocessing
import multiprocessing.managers
import os
import signal
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from errands.activity import _DEFINITION_ATTR, _Definition
from errands.client import Client
from errands.runtime import PrometheusConfig, Runtime, TelemetryConfig
from errands.worker import SharedStateManager, Worker

logger = logging.getLogger("errands.cli")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class WorkerSetupError(ValueError):
    """The command line names no usable activities or executor; the message says why."""


@dataclass(frozen=True)
class WorkerOptions:
    """What ``errands worker`` was asked to run."""

    spec: str
    task_queue: str
    url: str | None
    namespace: str
    concurrency: int
    threads: int | None
    processes: int | None
    graceful_shutdown_timeout: timedelta
    metrics_port: int | None = None
    """Serve Prometheus metrics on 127.0.0.1 at this port (None: no metrics)."""
    metric_prefix: str = "errands_"


# --------------------------------------------------------------------------- activities


def load_activities(spec: str) -> list[Callable[..., Any]]:
    """The activities ``MODULE[:ATTR]`` names: a list (or other iterable) of
    activities, one activity, or a module whose ``@activity.defn`` functions
    are taken (also those it imports), sorted by name.

    The current directory is importable, as with ``python -m``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or (":" in spec and not attr):
        raise WorkerSetupError(f"expected MODULE or MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise WorkerSetupError(f"cannot import {module_name!r}: {e}") from e
    except Exception as e:  # the user's module failed while importing
        raise WorkerSetupError(f"importing {module_name!r} raised {type(e).__name__}: {e}") from e
    for part in attr.split(".") if attr else ():
        try:
            target = getattr(target, part)
        except AttributeError:
            raise WorkerSetupError(f"{spec!r}: {module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, types.ModuleType):
        found = _marked_functions(target)
        if not found:
            raise WorkerSetupError(f"module {target.__name__!r} has no @activity.defn functions")
        return found
    if callable(target):
        candidates: list[Any] = [target]
    else:
        try:
            candidates = list(target)
        except TypeError:
            raise WorkerSetupError(
                f"{spec!r} is a {type(target).__name__}, not a list of activities or a module"
            ) from None
    if not candidates:
        raise WorkerSetupError(f"{spec!r} is empty: no activities to run")
    for candidate in candidates:
        if getattr(candidate, _DEFINITION_ATTR, None) is None:
            raise WorkerSetupError(f"{spec!r} holds {candidate!r}, not marked with @activity.defn")
    return candidates


def _marked_functions(module: types.ModuleType) -> list[Callable[..., Any]]:
    found: dict[int, tuple[str, Callable[..., Any]]] = {}
    for name, value in vars(module).items():
        if callable(value) and getattr(value, _DEFINITION_ATTR, None) is not None:
            found.setdefault(id(value), (name, value))
    return [fn for _, fn in sorted(found.values(), key=lambda item: item[0])]


# --------------------------------------------------------------------------- executors


def ignore_sigint() -> None:
    """Process-pool initializer: Ctrl-C in a terminal reaches the whole process
    group; the worker decides what happens to its children's activities."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _executor(
    options: WorkerOptions, activities: list[Callable[..., Any]]
) -> Iterator[tuple[concurrent.futures.Executor | None, SharedStateManager | None]]:
    """The executor (and shared state) for plain ``def`` activities, shut down afterwards."""
    sync = [d.name for d in map(_Definition.from_callable, activities) if not d.is_async]
    if options.threads is None and options.processes is None:
        if sync:
            raise WorkerSetupError(
                f"activity {sync[0]!r} is a plain def: run it with --threads N or --processes N"
            )
        yield None, None
        return
    if options.threads is not None:
        threads = concurrent.futures.ThreadPoolExecutor(
            options.threads, thread_name_prefix="errands-activity"
        )
        try:
            yield threads, None
        finally:
            threads.shutdown(wait=True, cancel_futures=True)
        return
    # spawn, not fork: forking a process that holds threads and database
    # connections is unsafe.
    context = multiprocessing.get_context("spawn")
    manager: multiprocessing.managers.SyncManager = context.Manager()
    pool = concurrent.futures.ProcessPoolExecutor(
        options.processes, mp_context=context, initializer=ignore_sigint
    )
    try:
        yield pool, SharedStateManager.create_from_multiprocessing(manager)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        manager.shutdown()


# --------------------------------------------------------------------------- running


async def serve(options: WorkerOptions) -> None:
    """Run the worker until a signal stops it (or it fails)."""
    activities = load_activities(options.spec)
    runtime = _runtime(options)
    with _executor(options, activities) as (executor, shared_state):
        client = await Client.connect(options.url, namespace=options.namespace, runtime=runtime)
        try:
            worker = Worker(
                client,
                task_queue=options.task_queue,
                activities=activities,
                activity_executor=executor,
                shared_state_manager=shared_state,
                max_concurrent_activities=options.concurrency,
                graceful_shutdown_timeout=options.graceful_shutdown_timeout,
            )
            logger.info(
                "serving %s on task queue %r of namespace %r",
                ", ".join(_Definition.from_callable(fn).name for fn in activities),
                options.task_queue,
                options.namespace,
            )
            await _run_until_signalled(worker, options.graceful_shutdown_timeout)
        finally:
            await client.close()
            if runtime is not None:
                runtime.close()


def _runtime(options: WorkerOptions) -> Runtime | None:
    """The runtime serving ``--metrics-port`` (None without it)."""
    if options.metrics_port is None:
        return None
    address = f"127.0.0.1:{options.metrics_port}"
    try:
        runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=address),
                metric_prefix=options.metric_prefix,
            )
        )
    except OSError as e:
        raise WorkerSetupError(f"cannot serve metrics on {address}: {e}") from e
    host, port = runtime.prometheus_address or (address, options.metrics_port)
    logger.info("serving metrics at http://%s:%d/metrics", host, port)
    return runtime


async def _run_until_signalled(worker: Worker, grace: timedelta) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received = 0
    cutting: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received == 1:
            logger.warning(
                "%s: shutting down; running activities have %s to finish before they are "
                "cancelled (send the signal again to cancel them now)",
                name,
                _seconds(grace),
            )
            stop.set()
        elif received == 2:
            logger.warning("%s again: cancelling running activities now", name)
            cutting.append(loop.create_task(worker.shutdown(cancel_now=True)))
        else:
            logger.warning("%s: already cancelling running activities", name)

    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on this loop
            loop.add_signal_handler(signum, on_signal, signum)
            handled.append(signum)
    running = asyncio.ensure_future(worker.run())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        await worker.shutdown()
        await running
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        stopping.cancel()
        await asyncio.gather(stopping, *cutting, return_exceptions=True)


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g} s"
