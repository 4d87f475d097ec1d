"""The ``errands`` command: run a worker, start and look at activities, look
after the store. ``python -m errands`` runs it too.

::

    errands worker MODULE[:ATTR] --task-queue Q [--threads N | --processes N]
    errands start TYPE --id ID --task-queue Q [--input JSON]... [--start-to-close 30s]
    errands execute ...                  start, wait, print the result
    errands describe ID | result ID | cancel ID | terminate ID
    errands list [--status S] [--type T] [--task-queue Q] [--limit N]
    errands count [same filters] [--group-by-status]
    errands migrate | prune --older-than 7d
    errands dashboard [--host 127.0.0.1] [--port 8780] [--read-only] [--token T]

Built on click, a well-kept CLI library, rather than hand-written argument
parsing. Every error is one line on stderr, never a traceback. The output
itself is written by ``errands._cli_output`` only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import click

from errands import _cli_output as out
from errands._query import STATUS_NAMES, quote_string
from errands.client import (
    ActivityAttempt,
    ActivityExecutionOptions,
    ActivityHandle,
    ActivityOptionsKeys,
    ActivityOptionsUpdate,
    Client,
    WorkerInfo,
)
from errands.common import Priority, RetryPolicy
from errands.exceptions import ActivityFailedError, ErrandsError

__all__ = ["main"]

# Exit statuses besides 0; bad usage (an unknown option, a bad duration or JSON
# value) is 2, as click has it.
EXIT_FAILED = 1
"""The command could not do its work: unknown id, store missing or locked, ..."""
EXIT_ACTIVITY_FAILED = 3
"""``result`` / ``execute``: the activity ended without a result (failed,
timed out, cancelled or terminated)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C while a command waited."""

DEFAULT_START_TO_CLOSE = timedelta(seconds=30)
"""start_to_close for ``start`` / ``execute`` when neither timeout is given."""

DEFAULT_LIST_LIMIT = 100

T = TypeVar("T")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class CommandError(click.ClickException):
    """A command could not do its work; the message says why."""

    exit_code = EXIT_FAILED


class ActivityEndedError(CommandError):
    """``result`` / ``execute`` of an activity that ended without a result."""

    exit_code = EXIT_ACTIVITY_FAILED


class CommandInterrupted(CommandError):
    """Ctrl-C while a command waited."""

    exit_code = EXIT_INTERRUPTED


# --------------------------------------------------------------------------- option values
# Converted by callbacks rather than click.ParamType subclasses: ParamType's
# typing changed between click 8.1 and 8.2, and a callback reads the same in both.

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_STATUS_BY_KEY = {name.lower(): name for name in STATUS_NAMES}


def parse_duration(text: str) -> timedelta:
    """``250ms``, ``30s``, ``5m``, ``2h``, ``7d``, or a sum such as ``1h30m``.

    Raises ValueError for anything else.
    """
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration (such as 250ms, 30s, 5m, 2h, 7d)")
    return timedelta(seconds=sum(float(n) * _UNIT_S[u] for n, u in parts))


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def _json_values(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[Any]:
    parsed = []
    for value in values:
        try:
            parsed.append(json.loads(value))
        except ValueError as e:
            raise click.BadParameter(
                f"{value!r} is not JSON ({e}); quote strings, as in '\"text\"'", ctx, param
            ) from None
    return parsed


def _status(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An execution status as the query language or the tables spell it
    (``Running``, ``TimedOut``, ``TIMED_OUT``, ``completed``, ...)."""
    if value is None:
        return None
    found = _STATUS_BY_KEY.get(value.replace("_", "").lower())
    if found is None:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(STATUS_NAMES)}", ctx, param)
    return found


def duration_option(*names: str, **kwargs: Any) -> Decorator:
    """An option taking a duration."""
    return click.option(*names, metavar="DURATION", callback=_duration, **kwargs)


# --------------------------------------------------------------------------- shared plumbing


quoted = quote_string
"""A visibility-query string literal holding exactly a value."""


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn what can go wrong into one-line CommandErrors."""
    try:
        return asyncio.run(work)
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        raise CommandInterrupted("interrupted") from None
    except (ErrandsError, ValueError, TypeError, ImportError) as e:
        raise CommandError(str(e)) from None
    except Exception as e:
        raise CommandError(f"unexpected {type(e).__name__}: {e}") from None


async def _with_client(
    url: str | None, namespace: str, work: Callable[[Client], Awaitable[T]]
) -> T:
    client = await Client.connect(url, namespace=namespace)
    try:
        return await work(client)
    finally:
        await client.close()


def store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--url`` and ``--namespace``, as every command takes them."""
    command = click.option(
        "--namespace",
        metavar="NS",
        default="default",
        show_default=True,
        help="The namespace to use.",
    )(command)
    return click.option(
        "--url",
        envvar="ERRANDS_URL",
        metavar="URL",
        help="The store: sqlite:///relative.db, sqlite:////absolute.db or postgresql://... "
        "[default: $ERRANDS_URL, else sqlite:///errands.db]",
    )(command)


def bulk_capable(
    verb: str, act: Callable[[Client, dict[str, Any]], Awaitable[int]]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command that acts on one ID ``--query`` (act on every open
    activity a visibility query matches instead), ``--yes`` and ``--json``."""

    def wrap(one: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(one)
        def command(*, query: str | None, yes: bool, as_json: bool, **options: Any) -> None:
            target = (options["url"], options["namespace"])
            if not _bulk(
                options["activity_id"], query, yes, as_json, target, verb,
                lambda client: act(client, {**options, "query": query}),
            ):  # fmt: skip
                one(**options)

        command = click.option(
            "--json", "as_json", is_flag=True, help="With --query: print JSON for scripts."
        )(command)
        command = click.option(
            "--yes", is_flag=True, help="With --query: do not ask for confirmation on a terminal."
        )(command)
        return click.option(
            "--query",
            metavar="QUERY",
            help="Act on every open activity this visibility query matches instead of one ID.",
        )(command)

    return wrap


async def _status_after(
    url: str | None, namespace: str, activity_id: str, run_id: str | None,
    act: Callable[[ActivityHandle[Any]], Awaitable[object]],
) -> str:  # fmt: skip
    """Act on one activity; its status (and run state) after, for the message."""

    async def work(client: Client) -> str:
        handle = client.get_activity_handle(activity_id, run_id=run_id)
        await act(handle)
        desc = await handle.describe()
        return desc.status.name + (f" ({desc.run_state.name})" if desc.run_state else "")

    return await _with_client(url, namespace, work)


def _bulk(
    activity_id: str | None,
    query: str | None,
    yes: bool,
    as_json: bool,
    target: tuple[str | None, str],
    verb: str,
    act: Callable[[Client], Awaitable[int]],
) -> bool:
    """Run a bulk action when --query was given (True), after confirming on a
    terminal; False when the command acts on one ID."""
    if query is None:
        if activity_id is None:
            raise click.UsageError("give an activity ID, or --query")
        return False
    if activity_id is not None:
        raise click.UsageError("give an activity ID or --query, not both")
    url, namespace = target
    if not yes and sys.stdin.isatty():

        async def count(client: Client) -> int:
            return (await client.count_activities(query)).count

        matching = _run(_with_client(url, namespace, count))
        click.confirm(
            f"{verb} the open ones of {matching} activities matching {query!r}?", abort=True
        )
    changed = _run(_with_client(url, namespace, act))
    if as_json:
        out.as_json({"changed": changed})
    else:
        out.line(f"{verb}: {changed} activities changed.")
    return True


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The filters ``list`` and ``count`` share."""
    for decorator in reversed(
        [
            click.option(
                "--status",
                callback=_status,
                metavar="STATUS",
                help="Only this status (e.g. Running).",
            ),
            click.option(
                "--type", "activity_type", metavar="TYPE", help="Only this activity type."
            ),
            click.option("--task-queue", metavar="QUEUE", help="Only this task queue."),
            click.option(
                "--query",
                metavar="QUERY",
                help="Extra visibility-query conditions, e.g. \"ActivityId STARTS_WITH 'img-'\".",
            ),
        ]
    ):
        command = decorator(command)
    return command


def _query(
    status: str | None, activity_type: str | None, task_queue: str | None, query: str | None
) -> str | None:
    conditions = []
    if status is not None:
        conditions.append(f"ExecutionStatus = {quoted(status)}")
    if activity_type is not None:
        conditions.append(f"ActivityType = {quoted(activity_type)}")
    if task_queue is not None:
        conditions.append(f"TaskQueue = {quoted(task_queue)}")
    if query is not None and query.strip():
        conditions.append(query.strip())
    return " AND ".join(conditions) or None


# --------------------------------------------------------------------------- the commands


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit status: 0 success, 1 the command failed, 2 bad usage, "
    "3 the activity ended without a result (result, execute).",
)
def cli() -> None:
    """Durable activities on SQLite or PostgreSQL: run workers, start and inspect activities."""


@cli.command()
@click.argument("activities", metavar="MODULE[:ATTR]")
@click.option(
    "--task-queue", metavar="QUEUE", required=True, help="The task queue to take activities from."
)
@store_options
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=100,
    show_default=True,
    help="Most activities running at once.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run plain def activities on N threads.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run plain def activities in N processes (spawned).",
)
@duration_option(
    "--graceful-shutdown-timeout",
    default="10s",
    show_default=True,
    help="How long running activities may finish after SIGINT/SIGTERM; "
    "a second signal cancels them at once.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    metavar="N",
    help="Serve Prometheus metrics at http://127.0.0.1:N/metrics (0: any free port, logged).",
)
@click.option(
    "--metric-prefix",
    metavar="PREFIX",
    default="errands_",
    show_default=True,
    help="Put before every metric's name; temporal_ gives Temporal's names.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def worker(
    activities: str,
    task_queue: str,
    url: str | None,
    namespace: str,
    concurrency: int,
    threads: int | None,
    processes: int | None,
    graceful_shutdown_timeout: timedelta,
    metrics_port: int | None,
    metric_prefix: str,
    log_level: str,
) -> None:
    """Run a worker until SIGINT / SIGTERM.

    It runs the activities MODULE:ATTR names (a list of them), or every
    @activity.defn function of MODULE. The first signal lets running
    activities finish for --graceful-shutdown-timeout, then cancels them (they
    are retried elsewhere); a second signal cancels them at once. Logs go to
    stderr, one line per attempt outcome.
    """
    # Imported here: the other commands need neither the worker nor multiprocessing.
    from errands._cli_worker import LOG_FORMAT, WorkerOptions, serve

    if threads is not None and processes is not None:
        raise click.UsageError("give --threads or --processes, not both")
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    _run(
        serve(
            WorkerOptions(
                spec=activities,
                task_queue=task_queue,
                url=url,
                namespace=namespace,
                concurrency=concurrency,
                threads=threads,
                processes=processes,
                graceful_shutdown_timeout=graceful_shutdown_timeout,
                metrics_port=metrics_port,
                metric_prefix=metric_prefix,
            )
        )
    )


@cli.command()
@click.option(
    "--host",
    metavar="HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; another than this machine's needs --token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8780,
    show_default=True,
    help="Port to listen on (0: any free one; the address printed says which).",
)
@click.option("--read-only", is_flag=True, help="Show everything, take no action.")
@click.option(
    "--token",
    envvar="ERRANDS_DASHBOARD_TOKEN",
    metavar="TOKEN",
    help="Every request must carry it (the printed address does, once). "
    "[default: $ERRANDS_DASHBOARD_TOKEN]",
)
@store_options
def dashboard(
    host: str, port: int, read_only: bool, token: str | None, url: str | None, namespace: str
) -> None:
    """Serve the web console until SIGINT / SIGTERM; prints its address.

    Pages: activities (counts, query, facets), one activity (fields,
    payloads, attempts, actions), queues and workers, updated live from the
    store. Needs the dashboard extra: pip install 'errands[dashboard]'.
    """
    # Imported here: the other commands need neither uvicorn nor Starlette.
    from errands._cli_dashboard import DashboardOptions, serve

    _run(serve(DashboardOptions(url, namespace, host, port, read_only, token)))


def start_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """What ``start`` and ``execute`` take."""
    decorators: list[Decorator] = [
        click.argument("activity_type", metavar="TYPE"),
        click.option("--id", "activity_id", metavar="ID", required=True, help="The activity id."),
        click.option(
            "--task-queue", metavar="QUEUE", required=True, help="The task queue to run it on."
        ),
        click.option(
            "--input",
            "inputs",
            metavar="JSON",
            callback=_json_values,
            multiple=True,
            help="One argument as JSON; repeat for more.",
        ),
        duration_option(
            "--start-to-close",
            help="Longest one attempt may run. [default: 30s, or --schedule-to-close]",
        ),
        duration_option("--schedule-to-close", help="Longest for all attempts."),
        duration_option("--heartbeat-timeout", help="Longest between heartbeats."),
        store_options,
        json_option,
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


async def _start(
    client: Client,
    activity_type: str,
    activity_id: str,
    task_queue: str,
    inputs: Sequence[Any],
    start_to_close: timedelta | None,
    schedule_to_close: timedelta | None,
    heartbeat_timeout: timedelta | None,
) -> ActivityHandle[Any]:
    if start_to_close is None and schedule_to_close is None:
        start_to_close = DEFAULT_START_TO_CLOSE
    return await client.start_activity(
        activity_type,
        args=list(inputs),
        id=activity_id,
        task_queue=task_queue,
        start_to_close_timeout=start_to_close,
        schedule_to_close_timeout=schedule_to_close,
        heartbeat_timeout=heartbeat_timeout,
    )


@cli.command()
@start_options
def start(url: str | None, namespace: str, as_json: bool, **options: Any) -> None:
    """Start an activity (without waiting).

    TYPE is the activity's name; each --input is one argument, as JSON.
    """

    async def work(client: Client) -> ActivityHandle[Any]:
        return await _start(client, **options)

    handle = _run(_with_client(url, namespace, work))
    if as_json:
        out.as_json({"activity_id": handle.id, "run_id": handle.run_id})
    else:
        out.line(f"Started activity {handle.id!r} (run {handle.run_id}).")


@cli.command()
@start_options
def execute(url: str | None, namespace: str, as_json: bool, **options: Any) -> None:
    """Start an activity, wait, print its result.

    The result is printed as JSON; an activity that fails, times out, is
    cancelled or terminated exits with status 3 and says why on stderr.
    """

    async def work(client: Client) -> tuple[ActivityHandle[Any], Any]:
        handle = await _start(client, **options)
        return handle, await _result_or_failure(handle)

    handle, result = _run(_with_client(url, namespace, work))
    _print_result(handle, result, as_json)


@cli.command()
@click.argument("activity_id", metavar="ID")
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@store_options
@json_option
def result(
    activity_id: str, run_id: str | None, url: str | None, namespace: str, as_json: bool
) -> None:
    """Wait for an activity's result and print it (as JSON)."""

    async def work(client: Client) -> tuple[ActivityHandle[Any], Any]:
        handle = client.get_activity_handle(activity_id, run_id=run_id)
        return handle, await _result_or_failure(handle)

    handle, value = _run(_with_client(url, namespace, work))
    _print_result(handle, value, as_json)


class _Failed:
    """What ``result()`` raised and the status the execution closed with,
    carried out of the event loop to be printed."""

    def __init__(self, error: ActivityFailedError, status: str) -> None:
        self.error = error
        self.status = status


async def _result_or_failure(handle: ActivityHandle[Any]) -> Any:
    try:
        return await handle.result()
    except ActivityFailedError as e:
        return _Failed(e, (await handle.describe()).status.name)


def _print_result(handle: ActivityHandle[Any], value: Any, as_json: bool) -> None:
    if isinstance(value, _Failed):
        cause = value.error.cause
        if as_json:
            out.as_json(
                {
                    "activity_id": handle.id,
                    "run_id": handle.run_id,
                    "status": value.status,
                    "failure": out.failure_json(cause),
                }
            )
        raise ActivityEndedError(f"{value.error}: {out.failure(cause)}")
    if as_json:
        out.as_json(
            {
                "activity_id": handle.id,
                "run_id": handle.run_id,
                "status": "COMPLETED",
                "result": value,
            }
        )
    else:
        out.line(json.dumps(out.jsonable(value), indent=2, ensure_ascii=False))


@cli.command()
@click.argument("activity_id", metavar="ID")
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@store_options
@json_option
def describe(
    activity_id: str, run_id: str | None, url: str | None, namespace: str, as_json: bool
) -> None:
    """Show everything known about an activity."""

    async def work(client: Client) -> tuple[Any, Sequence[Any]]:
        desc = await client.get_activity_handle(activity_id, run_id=run_id).describe(
            include_input=True,
            include_outcome=True,
            include_heartbeat_details=True,
            include_last_failure=True,
        )
        return desc, await desc.heartbeat_details()

    desc, details = _run(_with_client(url, namespace, work))
    if as_json:
        out.as_json(out.description_json(desc, details))
    else:
        out.description(desc, details)


@cli.command()
@click.argument("activity_id", metavar="[ID]", required=False)
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@click.option("--reason", metavar="TEXT", help="Why; shown by describe.")
@store_options
@bulk_capable("Cancel", lambda c, o: c.cancel_activities(o["query"], reason=o["reason"]))
def cancel(
    activity_id: str, run_id: str | None, reason: str | None, url: str | None, namespace: str
) -> None:
    """Cancel an activity, or with --query every open one a query matches.

    One that has not started is CANCELED at once; a started one learns of it
    through its heartbeats.
    """
    status = _run(_status_after(url, namespace, activity_id, run_id, lambda h: h.cancel(reason)))
    out.line(f"Requested cancellation of activity {activity_id!r}: now {status}.")


@cli.command()
@click.argument("activity_id", metavar="[ID]", required=False)
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@click.option("--reason", metavar="TEXT", help="Why; shown by describe.")
@store_options
@bulk_capable("Terminate", lambda c, o: c.terminate_activities(o["query"], reason=o["reason"]))
def terminate(
    activity_id: str, run_id: str | None, reason: str | None, url: str | None, namespace: str
) -> None:
    """Terminate an activity now (a running attempt is interrupted), or with
    --query every open one a query matches."""

    async def work(client: Client) -> None:
        await client.get_activity_handle(activity_id, run_id=run_id).terminate(reason)

    _run(_with_client(url, namespace, work))
    out.line(f"Terminated activity {activity_id!r}.")


@cli.command()
@click.argument("activity_id", metavar="[ID]", required=False)
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@click.option("--reason", metavar="TEXT", help="Why (for your logs).")
@store_options
@bulk_capable("Pause", lambda c, o: c.pause_activities(o["query"], reason=o["reason"]))
def pause(
    activity_id: str, run_id: str | None, reason: str | None, url: str | None, namespace: str
) -> None:
    """Pause an activity (or with --query every open one a query matches): no
    new attempt starts until unpause. A running attempt is asked to stop, as
    a cancel asks it."""
    status = _run(
        _status_after(url, namespace, activity_id, run_id, lambda h: h.pause(reason=reason))
    )
    out.line(f"Paused activity {activity_id!r}: now {status}.")


@cli.command()
@click.argument("activity_id", metavar="[ID]", required=False)
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@duration_option("--jitter", help="Start it at a random moment within this (e.g. 30s).")
@store_options
@bulk_capable("Unpause", lambda c, o: c.unpause_activities(o["query"], jitter=o["jitter"]))
def unpause(
    activity_id: str, run_id: str | None, jitter: timedelta | None, url: str | None, namespace: str
) -> None:
    """Unpause an activity (or with --query every paused one a query matches):
    it is dispatched again (a pending retry backoff still runs out first)."""
    status = _run(
        _status_after(url, namespace, activity_id, run_id, lambda h: h.unpause(jitter=jitter))
    )
    out.line(f"Unpaused activity {activity_id!r}: now {status}.")


@cli.command()
@click.argument("activity_id", metavar="[ID]", required=False)
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@click.option("--reason", metavar="TEXT", help="Why (for your logs).")
@click.option("--keep-paused", is_flag=True, help="A paused activity stays paused.")
@click.option("--reset-heartbeat", is_flag=True, help="Drop the heartbeat details.")
@duration_option("--jitter", help="Start it at a random moment within this (e.g. 30s).")
@click.option("--restore-original-options", is_flag=True, help="Also undo every update-options.")
@store_options
@bulk_capable("Reset", lambda c, o: c.reset_activities(o["query"], **_reset_flags(o)))
def reset(
    activity_id: str, run_id: str | None, url: str | None, namespace: str, **flags: Any
) -> None:
    """Reset an activity (or with --query every open one a query matches): its
    next attempt is attempt 1, dispatched now. A running attempt is asked to
    stop, as a cancel asks it, and whatever it reports later is refused."""
    chosen = _reset_flags(flags)
    status = _run(_status_after(url, namespace, activity_id, run_id, lambda h: h.reset(**chosen)))
    out.line(f"Reset activity {activity_id!r}: now {status}, attempt 1 next.")


def _reset_flags(options: dict[str, Any]) -> dict[str, Any]:
    names = ("reason", "keep_paused", "reset_heartbeat", "jitter", "restore_original_options")
    return {name: options[name] for name in names}


_OPTION_NAMES = {
    "task-queue": "task_queue",
    "schedule-to-close": "schedule_to_close_timeout",
    "schedule-to-start": "schedule_to_start_timeout",
    "start-to-close": "start_to_close_timeout",
    "heartbeat-timeout": "heartbeat_timeout",
    "start-delay": "start_delay",
    "retry-policy": "retry_policy",
    "priority": "priority",
}
"""update-options' option names, and the ActivityOptionsKeys they set."""

_RETRY_FIELDS = {
    "retry_initial_interval": "initial_interval",
    "retry_backoff": "backoff_coefficient",
    "retry_max_interval": "maximum_interval",
    "retry_max_attempts": "maximum_attempts",
}


@cli.command(name="update-options")
@click.argument("activity_id", metavar="[ID]", required=False)
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@click.option(
    "--query",
    metavar="QUERY",
    help="Change every open activity this visibility query matches instead of one ID "
    "(whole options only: not --retry-* or --restore).",
)
@click.option(
    "--yes", is_flag=True, help="With --query: do not ask for confirmation on a terminal."
)
@click.option("--task-queue", metavar="QUEUE", help="Move it to this task queue.")
@duration_option("--schedule-to-close", help="Longest for all attempts, from its schedule time.")
@duration_option("--schedule-to-start", help="Longest an attempt may wait to be claimed.")
@duration_option("--start-to-close", help="Longest one attempt may run.")
@duration_option("--heartbeat-timeout", help="Longest between heartbeats.")
@duration_option("--start-delay", help="Wait this long (from its schedule time) before attempt 1.")
@click.option("--priority", type=click.IntRange(min=1), help="Priority key (smaller runs first).")
@duration_option("--retry-initial-interval", help="Retry policy: delay before the first retry.")
@click.option("--retry-backoff", type=click.FloatRange(min=1.0), help="Retry policy: coefficient.")
@duration_option("--retry-max-interval", help="Retry policy: longest delay.")
@click.option(
    "--retry-max-attempts", type=click.IntRange(min=0), help="Retry policy: attempts (0: no limit)."
)
@click.option(
    "--unset",
    "unset",
    multiple=True,
    type=click.Choice(list(_OPTION_NAMES)),
    help="Clear an option (no timeout, no delay, the default policy or priority); repeatable.",
)
@click.option("--restore", is_flag=True, help="Back to the options it was started with.")
@store_options
@json_option
def update_options(
    activity_id: str | None,
    run_id: str | None,
    query: str | None,
    yes: bool,
    unset: Sequence[str],
    restore: bool,
    url: str | None,
    namespace: str,
    as_json: bool,
    **values: Any,
) -> None:
    """Change an activity's options: one that waits takes them at once (a new
    queue, a recomputed retry backoff); a running attempt keeps its own
    timeouts and the next attempt takes the new ones. --retry-* options change
    the current retry policy's fields. Prints the options after; with --query,
    how many activities changed."""
    retry = {field: values.pop(name) for name, field in _RETRY_FIELDS.items()}
    retry = {field: value for field, value in retry.items() if value is not None}
    if values["priority"] is not None:
        values["priority"] = Priority(values["priority"])
    chosen = {
        _OPTION_NAMES[name.replace("_", "-")]: value
        for name, value in values.items()
        if value is not None
    }
    if restore and (chosen or retry or unset):
        raise click.UsageError("--restore takes no other option")
    if not (restore or chosen or retry or unset):
        raise click.UsageError("give an option to change, --unset or --restore")
    if query is not None and (restore or retry or run_id):
        raise click.UsageError(
            "--query sets or unsets whole options: not with --restore, --retry-* or --run-id "
            "(give --retry-policy's fields per activity)"
        )

    def updates() -> list[ActivityOptionsUpdate[Any]]:
        keys = ActivityOptionsKeys
        made = [getattr(keys, name).value_set(value) for name, value in chosen.items()]
        return made + [getattr(keys, _OPTION_NAMES[name]).value_unset() for name in unset]

    target = (url, namespace)
    if _bulk(
        activity_id, query, yes, as_json, target, "Update options",
        lambda client: client.update_activities_options(query, updates()),
    ):  # fmt: skip
        return
    assert activity_id is not None  # _bulk refused a call with neither

    async def work(client: Client) -> ActivityExecutionOptions:
        handle = client.get_activity_handle(activity_id, run_id=run_id)
        if restore:
            return await handle.restore_original_options()
        if retry:
            policy = (await handle.describe()).retry_policy or RetryPolicy()
            chosen["retry_policy"] = dataclasses.replace(policy, **retry)
        return await handle.update_options(updates())

    options = _run(_with_client(url, namespace, work))
    if as_json:
        out.as_json(out.jsonable(options))
    else:
        out.options(options)


@cli.command(name="retry-now")
@click.argument("activity_id", metavar="[ID]", required=False)
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@store_options
@bulk_capable("Retry now", lambda c, o: c.retry_activities_now(o["query"]))
def retry_now(activity_id: str, run_id: str | None, url: str | None, namespace: str) -> None:
    """Run an activity's next attempt now, skipping what is left of its
    retry backoff or start delay (the attempt count goes on); with --query,
    of every open one a query matches that waits so."""

    async def work(client: Client) -> bool:
        return await client.get_activity_handle(activity_id, run_id=run_id).retry_now()

    if _run(_with_client(url, namespace, work)):
        out.line(f"Activity {activity_id!r} is claimable now.")
    else:
        out.line(f"Activity {activity_id!r} was not waiting to retry: nothing changed.")


@cli.command()
@click.argument("activity_id", metavar="ID")
@click.option("--run-id", metavar="RUN_ID", help="A run of the id other than the latest.")
@store_options
@json_option
def attempts(
    activity_id: str, run_id: str | None, url: str | None, namespace: str, as_json: bool
) -> None:
    """Show every attempt of an activity: when, where, how it ended, and why."""

    async def work(client: Client) -> list[ActivityAttempt]:
        return await client.get_activity_handle(activity_id, run_id=run_id).attempts()

    found = _run(_with_client(url, namespace, work))
    if as_json:
        out.as_json(out.jsonable(found))
    else:
        out.attempts(found)


@cli.command()
@store_options
@json_option
def workers(url: str | None, namespace: str, as_json: bool) -> None:
    """List the running workers: where they run, their task queue, their slots
    in use, when they started and last claimed work."""

    async def work(client: Client) -> list[WorkerInfo]:
        return await client.list_workers()

    found = _run(_with_client(url, namespace, work))
    if as_json:
        out.as_json(out.jsonable(found))
    else:
        out.workers(found)


@cli.command(name="list")
@filter_options
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    metavar="N",
    default=DEFAULT_LIST_LIMIT,
    show_default=True,
    help="Most activities to show, newest first; 0 for all.",
)
@store_options
@json_option
def list_(
    status: str | None,
    activity_type: str | None,
    task_queue: str | None,
    query: str | None,
    limit: int,
    url: str | None,
    namespace: str,
    as_json: bool,
) -> None:
    """List activities, newest first."""
    text = _query(status, activity_type, task_queue, query)

    async def work(client: Client) -> list[Any]:
        # One more than asked, to tell whether there are more.
        return [e async for e in client.list_activities(text, limit=limit + 1 if limit else None)]

    found = _run(_with_client(url, namespace, work))
    more = bool(limit) and len(found) > limit
    shown = found[:limit] if limit else found
    if as_json:
        out.as_json(shown)
    else:
        out.executions(shown, more)


@cli.command()
@filter_options
@click.option("--group-by-status", is_flag=True, help="Count per status.")
@store_options
@json_option
def count(
    status: str | None,
    activity_type: str | None,
    task_queue: str | None,
    query: str | None,
    group_by_status: bool,
    url: str | None,
    namespace: str,
    as_json: bool,
) -> None:
    """Count activities."""
    text = _query(status, activity_type, task_queue, query)
    if group_by_status:
        text = f"{text or ''} GROUP BY ExecutionStatus".strip()

    async def work(client: Client) -> Any:
        return await client.count_activities(text)

    counted = _run(_with_client(url, namespace, work))
    if as_json:
        out.as_json(out.count_json(counted))
    else:
        out.count(counted)


@cli.command()
@store_options
def migrate(url: str | None, namespace: str) -> None:
    """Apply pending schema migrations; print the schema version.

    Every command (and every Client.connect) migrates the store too; this one
    does only that.
    """
    # Each migration applied is logged (at INFO): show those lines on stderr.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    async def work(client: Client) -> tuple[str, int | None]:
        store = client.store
        module = sys.modules.get(type(store).__module__)
        version = getattr(module, "SCHEMA_VERSION", None)
        return type(store).__name__, version if isinstance(version, int) else None

    store_name, version = _run(_with_client(url, namespace, work))
    shown = "unknown" if version is None else str(version)
    out.line(f"{store_name} is at schema version {shown}.")


@cli.command()
@duration_option(
    "--older-than",
    default="7d",
    show_default=True,
    help="Delete activities closed longer ago than this.",
)
@store_options
def prune(older_than: timedelta, url: str | None, namespace: str) -> None:
    """Delete activities that closed long ago.

    They go in small batches, so a busy store is held only briefly.
    """
    before = time.time() - older_than.total_seconds()

    async def work(client: Client) -> int:
        return await client.store.prune(client.namespace, before)

    deleted = _run(_with_client(url, namespace, work))
    cutoff = out.when(datetime.fromtimestamp(before, timezone.utc))
    out.line(f"Deleted {deleted} activities closed before {cutoff}.")


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line (the ``errands`` console script); exits the process."""
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="errands",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        click.echo("Error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # click 8.2+: bare ``errands``
            e.show()
            sys.exit(e.exit_code)
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        click.echo(f"Error: {_one_line(e.format_message())}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"Error: {_one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    main()
