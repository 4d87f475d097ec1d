"""errands.testing.ActivityEnvironment: activities run with the activity context
the test sets (info, heartbeat callback, payload converter, client), and the test
delivers cancellation and worker shutdown the way a worker would. No store."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from errands import activity, exceptions
from errands.activity import ActivityCancellationDetails
from errands.client import Client
from errands.converter import PayloadConverter
from errands.testing import ActivityEnvironment

CEILING_S = 30.0  # an upper bound on waits that normally end in milliseconds

Seen = list[Any]


# --------------------------------------------------------------------------- activities


def _describe_context(greeting: str) -> dict[str, Any]:
    """Heartbeat twice, then report what the activity context says."""
    activity.heartbeat(greeting, 1)
    activity.heartbeat(greeting, 2)
    info = activity.info()
    return {
        "in_activity": activity.in_activity(),
        "activity_id": info.activity_id,
        "attempt": info.attempt,
        "heartbeat_details": info.heartbeat_details,
        "payload_converter": activity.payload_converter(),
        "cancelled": activity.is_cancelled(),
        "shutdown": activity.is_worker_shutdown(),
        "thread": threading.get_ident(),
    }


@activity.defn
async def describe_context_async(greeting: str) -> dict[str, Any]:
    return _describe_context(greeting)


def describe_context_sync(greeting: str) -> dict[str, Any]:
    """Not decorated: the environment runs any callable."""
    return _describe_context(greeting)


@activity.defn
async def heartbeat_until_cancelled(seen: Seen) -> str:
    deadline = time.monotonic() + CEILING_S
    try:
        while time.monotonic() < deadline:
            activity.heartbeat("tick")
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        seen.append((activity.is_cancelled(), activity.cancellation_details()))
        raise
    return "never cancelled"


@activity.defn
async def wait_for_cancel_and_return(seen: Seen) -> str:
    activity.heartbeat("waiting")
    try:
        await activity.wait_for_cancelled()
    except asyncio.CancelledError:
        seen.append(activity.cancellation_details())
    return "finished anyway"


@activity.defn
def spin_until_cancelled(seen: Seen) -> str:
    deadline = time.monotonic() + CEILING_S
    try:
        while time.monotonic() < deadline:
            activity.heartbeat("spinning")
            time.sleep(0.001)
    except exceptions.CancelledError:
        seen.append(
            (threading.get_ident(), activity.is_cancelled(), activity.cancellation_details())
        )
        raise
    return "never cancelled"


@activity.defn(no_thread_cancel_exception=True)
def wait_for_cancel_then_finish(may_finish: threading.Event) -> tuple[bool, bool, Any]:
    activity.heartbeat("waiting")
    told = activity.wait_for_cancelled_sync(CEILING_S)
    # Any exception raised into this thread would land here, before the return.
    may_finish.wait(CEILING_S)
    return told, activity.is_cancelled(), activity.cancellation_details()


@activity.defn
def finish_shielded_work(seen: Seen) -> str:
    with activity.shield_thread_cancel_exception():
        activity.heartbeat("shielded")
        activity.wait_for_cancelled_sync(CEILING_S)
        seen.append("shielded work done")
    seen.append("past the shield")
    return "not cancelled"


@activity.defn
async def await_worker_shutdown_async() -> tuple[bool, bool]:
    activity.heartbeat("started")
    await activity.wait_for_worker_shutdown()
    return activity.is_worker_shutdown(), activity.is_cancelled()


@activity.defn
def await_worker_shutdown_sync() -> tuple[bool, bool, bool]:
    activity.heartbeat("started")
    told = activity.wait_for_worker_shutdown_sync(CEILING_S)
    return told, activity.is_worker_shutdown(), activity.is_cancelled()


@activity.defn
async def client_of_async_activity() -> Client:
    return activity.client()


@activity.defn
def client_of_sync_activity() -> Client:
    return activity.client()


@activity.defn
def report_cancellation() -> tuple[bool, ActivityCancellationDetails | None]:
    return activity.is_cancelled(), activity.cancellation_details()


class Greeter:
    """Activities as methods, sharing what the object holds."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    @activity.defn
    async def greet(self, name: str) -> str:
        return f"{self.greeting}, {name}! ({activity.info().activity_type})"


class TaggedConverter(PayloadConverter):
    """A payload converter a test can tell apart from the default one."""


# --------------------------------------------------------------------------- helpers


def heartbeat_recorder(
    env: ActivityEnvironment,
) -> tuple[list[tuple[Any, ...]], threading.Event]:
    """Record env's heartbeats; the event is set at the first one."""
    beats: list[tuple[Any, ...]] = []
    first = threading.Event()

    def on_heartbeat(*details: Any) -> None:
        beats.append(details)
        first.set()

    env.on_heartbeat = on_heartbeat
    return beats, first


async def wait_for(event: threading.Event) -> None:
    """Wait, off the event loop, for ``event``; fail after the ceiling."""
    assert await asyncio.to_thread(event.wait, CEILING_S), "the activity never heartbeated"


# --------------------------------------------------------------------------- info and context


def test_the_default_info_describes_a_first_attempt_started_now() -> None:
    before = datetime.now(timezone.utc)
    info = ActivityEnvironment().info
    after = datetime.now(timezone.utc)

    assert (info.activity_id, info.activity_type, info.attempt) == ("test", "unknown", 1)
    assert (info.task_queue, info.task_token, info.namespace) == ("test", b"test", "default")
    assert list(info.heartbeat_details) == []
    assert info.is_local is False
    assert info.workflow_id is None
    for moment in (info.scheduled_time, info.current_attempt_scheduled_time, info.started_time):
        assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
        assert before <= moment <= after


async def test_an_async_activity_sees_the_info_heartbeat_callback_and_converter_set() -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, activity_id="greet-7", attempt=3, heartbeat_details=[5]
    )
    env.payload_converter = TaggedConverter()
    beats, _ = heartbeat_recorder(env)

    seen = await env.run(describe_context_async, "hello")

    assert seen["in_activity"] is True
    assert (seen["activity_id"], seen["attempt"], seen["heartbeat_details"]) == ("greet-7", 3, [5])
    assert seen["payload_converter"] is env.payload_converter
    assert beats == [("hello", 1), ("hello", 2)]
    assert (seen["cancelled"], seen["shutdown"]) == (False, False)


async def test_running_an_async_activity_returns_an_awaitable_that_starts_it() -> None:
    env = ActivityEnvironment()
    beats, _ = heartbeat_recorder(env)

    pending = env.run(describe_context_async, "later")
    assert beats == []

    assert (await pending)["in_activity"] is True
    assert beats == [("later", 1), ("later", 2)]


def test_a_sync_activity_runs_in_the_callers_thread_with_the_context_set() -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id="resize-1", heartbeat_details=("page", 4))
    env.payload_converter = TaggedConverter()
    beats, _ = heartbeat_recorder(env)

    seen = env.run(describe_context_sync, "hi")

    assert seen["in_activity"] is True
    assert seen["thread"] == threading.get_ident()
    assert (seen["activity_id"], seen["attempt"]) == ("resize-1", 1)
    assert tuple(seen["heartbeat_details"]) == ("page", 4)
    assert seen["payload_converter"] is env.payload_converter
    assert beats == [("hi", 1), ("hi", 2)]
    assert activity.in_activity() is False  # the caller's context is restored


async def test_a_decorated_bound_method_runs_with_its_object() -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="greet")

    assert await env.run(Greeter("Howdy").greet, "Ada") == "Howdy, Ada! (greet)"


CONTEXT_FUNCTIONS: dict[str, Callable[[], object]] = {
    "info": activity.info,
    "heartbeat": lambda: activity.heartbeat("x"),
    "is_cancelled": activity.is_cancelled,
    "cancellation_details": activity.cancellation_details,
    "is_worker_shutdown": activity.is_worker_shutdown,
    "wait_for_cancelled_sync": lambda: activity.wait_for_cancelled_sync(0),
    "payload_converter": activity.payload_converter,
    "client": activity.client,
}


@pytest.mark.parametrize("name", sorted(CONTEXT_FUNCTIONS))
async def test_context_functions_raise_outside_run(name: str) -> None:
    env = ActivityEnvironment()
    await env.run(describe_context_async, "before")
    env.run(describe_context_sync, "before")

    assert activity.in_activity() is False
    with pytest.raises(RuntimeError, match="not in an activity"):
        CONTEXT_FUNCTIONS[name]()


# --------------------------------------------------------------------------- client


async def test_client_raises_in_an_async_activity_when_the_environment_has_none() -> None:
    with pytest.raises(RuntimeError, match="async activities only"):
        await ActivityEnvironment().run(client_of_async_activity)


async def test_an_async_activity_gets_the_client_set_on_the_environment(client: Client) -> None:
    env = ActivityEnvironment()
    env.client = client

    assert await env.run(client_of_async_activity) is client
    assert await ActivityEnvironment(client).run(client_of_async_activity) is client


async def test_client_raises_in_a_sync_activity_even_with_a_client_set(client: Client) -> None:
    env = ActivityEnvironment(client)

    with pytest.raises(RuntimeError, match="async activities only"):
        env.run(client_of_sync_activity)


# --------------------------------------------------------------------------- cancellation


async def test_cancelling_a_heartbeating_async_activity_raises_cancelled_error_inside_it() -> None:
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    seen: Seen = []
    running = asyncio.create_task(env.run(heartbeat_until_cancelled, seen))
    await wait_for(started)

    env.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, CEILING_S)
    assert seen == [(True, ActivityCancellationDetails(cancel_requested=True))]


async def test_an_async_activity_that_swallows_the_cancel_returns_its_value() -> None:
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    seen: Seen = []
    running = asyncio.create_task(env.run(wait_for_cancel_and_return, seen))
    await wait_for(started)

    env.cancel(ActivityCancellationDetails(timed_out=True))

    assert await asyncio.wait_for(running, CEILING_S) == "finished anyway"
    assert seen == [ActivityCancellationDetails(timed_out=True)]


async def test_cancel_from_another_thread_reaches_an_async_activity_on_its_loop() -> None:
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    seen: Seen = []
    running = asyncio.create_task(env.run(wait_for_cancel_and_return, seen))
    await wait_for(started)

    await asyncio.to_thread(env.cancel)

    assert await asyncio.wait_for(running, CEILING_S) == "finished anyway"
    assert seen == [ActivityCancellationDetails(cancel_requested=True)]


async def test_cancelling_a_sync_activity_in_a_thread_raises_errands_cancelled_error_there() -> (
    None
):
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    seen: Seen = []
    running = asyncio.ensure_future(asyncio.to_thread(env.run, spin_until_cancelled, seen))
    await wait_for(started)

    env.cancel()

    with pytest.raises(exceptions.CancelledError):
        await asyncio.wait_for(running, CEILING_S)
    [(thread, cancelled, details)] = seen
    assert thread != threading.get_ident()
    assert (cancelled, details) == (True, ActivityCancellationDetails(cancel_requested=True))


def test_a_sync_activity_in_the_callers_thread_is_cancelled_from_another_thread() -> None:
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    details = ActivityCancellationDetails(worker_shutdown=True)

    def cancel_once_started() -> None:
        if started.wait(CEILING_S):
            env.cancel(details)

    canceller = threading.Thread(target=cancel_once_started)
    canceller.start()
    seen: Seen = []
    try:
        with pytest.raises(exceptions.CancelledError):
            env.run(spin_until_cancelled, seen)
    finally:
        canceller.join(CEILING_S)

    assert seen == [(threading.get_ident(), True, details)]


async def test_a_sync_activity_with_no_thread_cancel_exception_sees_the_flag_only() -> None:
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    may_finish = threading.Event()
    running = asyncio.ensure_future(
        asyncio.to_thread(env.run, wait_for_cancel_then_finish, may_finish)
    )
    await wait_for(started)

    env.cancel()
    may_finish.set()

    told, cancelled, details = await asyncio.wait_for(running, CEILING_S)
    assert (told, cancelled) == (True, True)
    assert details == ActivityCancellationDetails(cancel_requested=True)


async def test_a_shielded_sync_activity_gets_the_cancel_exception_when_the_shield_ends() -> None:
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    seen: Seen = []
    running = asyncio.ensure_future(asyncio.to_thread(env.run, finish_shielded_work, seen))
    await wait_for(started)

    env.cancel()

    with pytest.raises(exceptions.CancelledError):
        await asyncio.wait_for(running, CEILING_S)
    assert seen == ["shielded work done"]


async def test_a_run_started_after_cancel_is_cancelled_at_once() -> None:
    env = ActivityEnvironment()
    details = ActivityCancellationDetails(not_found=True)
    env.cancel(details)
    beats, _ = heartbeat_recorder(env)

    with pytest.raises(asyncio.CancelledError):
        await env.run(describe_context_async, "too late")
    assert beats == []  # the coroutine never started
    assert env.run(report_cancellation) == (True, details)  # a sync run sees the flag


def test_only_the_first_cancel_has_an_effect() -> None:
    env = ActivityEnvironment()
    first = ActivityCancellationDetails(cancel_requested=True)

    env.cancel(first)
    env.cancel(ActivityCancellationDetails(timed_out=True))

    assert env.run(report_cancellation) == (True, first)


def test_a_fresh_environment_is_not_cancelled() -> None:
    assert ActivityEnvironment().run(report_cancellation) == (False, None)


# --------------------------------------------------------------------------- worker shutdown


async def test_worker_shutdown_reaches_a_running_async_activity_without_cancelling_it() -> None:
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    running = asyncio.create_task(env.run(await_worker_shutdown_async))
    await wait_for(started)
    assert not running.done()

    env.worker_shutdown()

    assert await asyncio.wait_for(running, CEILING_S) == (True, False)


async def test_worker_shutdown_reaches_a_running_sync_activity_without_cancelling_it() -> None:
    env = ActivityEnvironment()
    _, started = heartbeat_recorder(env)
    running = asyncio.ensure_future(asyncio.to_thread(env.run, await_worker_shutdown_sync))
    await wait_for(started)
    assert not running.done()

    env.worker_shutdown()

    assert await asyncio.wait_for(running, CEILING_S) == (True, True, False)


async def test_a_run_started_after_worker_shutdown_sees_it() -> None:
    env = ActivityEnvironment()
    env.worker_shutdown()

    assert (await env.run(describe_context_async, "late"))["shutdown"] is True
    assert env.run(describe_context_sync, "late")["shutdown"] is True
