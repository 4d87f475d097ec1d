"""The activity-author API: ``activity.defn``, the context functions an activity
calls while it runs, ``activity.logger``, and how the Worker checks what it is
given. Activities run on a real Worker over a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from errands import activity
from errands.client import Client
from errands.common import Priority, RawValue
from errands.exceptions import ApplicationError
from errands.worker import Worker
from tests.support import FAST_RETRY, TIMEOUT, describe_until

# What activities saw, keyed by task queue (every test has its own).
seen_infos: dict[str, list[activity.Info]] = defaultdict(list)


@activity.defn
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@activity.defn(name="shout")
async def loud_greet(name: str) -> str:
    return f"HELLO, {name.upper()}!"


@activity.defn(dynamic=True)
async def catch_all(args: Sequence[RawValue]) -> list[Any]:
    converter = activity.payload_converter()
    return [activity.info().activity_type, *(converter.from_payload(a.payload) for a in args)]


@activity.defn
async def record_info_fail_first() -> str:
    info = activity.info()
    seen_infos[info.task_queue].append(info)
    if info.attempt == 1:
        activity.heartbeat("halfway", 5)
        raise RuntimeError("the first attempt fails")
    return info.activity_id


@activity.defn
async def report_context() -> dict[str, Any]:
    return {
        "in_activity": activity.in_activity(),
        "client_id": id(activity.client()),
        "converter_id": id(activity.payload_converter()),
        "is_cancelled": activity.is_cancelled(),
        "cancellation_details": activity.cancellation_details(),
        "is_worker_shutdown": activity.is_worker_shutdown(),
    }


@activity.defn
async def use_own_client() -> list[str]:
    info = activity.info()
    client = activity.client()
    own = await client.get_activity_handle(info.activity_id).describe()
    assert own.run_state is not None
    child = await client.execute_activity(
        greet,
        "nested",
        id=f"{info.activity_id}-child",
        task_queue=info.task_queue,
        start_to_close_timeout=TIMEOUT,
    )
    return [own.run_state.name, child]


@activity.defn
async def log_something(what: str) -> None:
    activity.logger.info("doing %s", what)


class Greeter:
    """Activities as methods that share state held by the object."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting
        self.calls = 0

    @activity.defn
    async def greet_method(self, name: str) -> str:
        self.calls += 1
        return f"{self.greeting}, {name}!"


def sync_activity_fn(x: int) -> int:
    return x


sync_activity = activity.defn(name="sync-one")(sync_activity_fn)


# --------------------------------------------------------------------------- defn


async def test_a_plain_defn_names_the_activity_after_the_function(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[greet]):
        by_function = await client.execute_activity(
            greet, "World", id="g1", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        by_name = await client.execute_activity(
            "greet", "Name", id="g2", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert by_function == "Hello, World!"
    assert by_name == "Hello, Name!"
    assert (await client.get_activity_handle("g1").describe()).activity_type == "greet"


async def test_defn_with_a_name_registers_the_activity_under_that_name(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[loud_greet]):
        by_function = await client.execute_activity(
            loud_greet, "ann", id="s1", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        by_name = await client.execute_activity(
            "shout", "bob", id="s2", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert by_function == "HELLO, ANN!"
    assert by_name == "HELLO, BOB!"
    assert (await client.get_activity_handle("s1").describe()).activity_type == "shout"


async def test_a_dynamic_activity_takes_unknown_names_as_raw_values(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[greet, catch_all]):
        unknown = await client.execute_activity(
            "no-such-activity",
            args=[1, "two", {"three": [3]}],
            id="d1",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        known = await client.execute_activity(
            "greet", "still routed", id="d2", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert unknown == ["no-such-activity", 1, "two", {"three": [3]}]
    assert known == "Hello, still routed!"


def test_defn_refuses_keyword_only_parameters_at_decoration() -> None:
    async def with_keyword_only(a: int, *, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match=r"keyword-only parameter 'b'"):
        activity.defn(with_keyword_only)


def test_defn_refuses_var_keyword_parameters_at_decoration() -> None:
    async def with_kwargs(a: int, **options: Any) -> int:
        return a

    with pytest.raises(TypeError, match=r"'options'.*positional only"):
        activity.defn(name="kw")(with_kwargs)


def test_defn_refuses_a_name_on_a_dynamic_activity() -> None:
    async def anything(args: Sequence[RawValue]) -> None:
        return None

    with pytest.raises(TypeError, match="dynamic"):
        activity.defn(name="x", dynamic=True)(anything)  # type: ignore[call-overload]


async def test_calling_a_decorated_function_directly_still_works() -> None:
    assert await greet("direct") == "Hello, direct!"
    assert await loud_greet("direct") == "HELLO, DIRECT!"
    assert not activity.in_activity()


async def test_a_decorated_method_registers_as_the_bound_method(
    client: Client, task_queue: str
) -> None:
    greeter = Greeter("Howdy")
    async with Worker(client, task_queue=task_queue, activities=[greeter.greet_method]):
        result = await client.execute_activity(
            greeter.greet_method,
            "partner",
            id="m1",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        by_name = await client.execute_activity(
            "greet_method", "pal", id="m2", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert result == "Howdy, partner!"
    assert by_name == "Howdy, pal!"
    assert greeter.calls == 2
    assert await greeter.greet_method("direct") == "Howdy, direct!"


# --------------------------------------------------------------------------- inside an activity


async def test_info_describes_the_running_attempt(client: Client, task_queue: str) -> None:
    before = datetime.now(timezone.utc) - timedelta(milliseconds=1)
    async with Worker(client, task_queue=task_queue, activities=[record_info_fail_first]):
        handle = await client.start_activity(
            record_info_fail_first,
            id="info-1",
            task_queue=task_queue,
            schedule_to_close_timeout=timedelta(seconds=30),
            start_to_close_timeout=timedelta(seconds=10),
            heartbeat_timeout=timedelta(seconds=5),
            retry_policy=FAST_RETRY,
            priority=Priority(2),
        )
        assert await handle.result() == "info-1"
    after = datetime.now(timezone.utc) + timedelta(milliseconds=1)

    first, second = seen_infos[task_queue]
    for info, attempt in ((first, 1), (second, 2)):
        assert info.activity_id == "info-1"
        assert info.activity_run_id == handle.run_id
        assert info.activity_type == "record_info_fail_first"
        assert info.attempt == attempt
        assert info.task_queue == task_queue
        assert info.namespace == "default"
        assert info.is_local is False
        assert isinstance(info.task_token, bytes) and info.task_token
        assert info.schedule_to_close_timeout == timedelta(seconds=30)
        assert info.start_to_close_timeout == timedelta(seconds=10)
        assert info.heartbeat_timeout == timedelta(seconds=5)
        assert info.retry_policy == FAST_RETRY
        assert info.priority == Priority(2)
        assert (info.workflow_id, info.workflow_namespace) == (None, None)
        assert (info.workflow_run_id, info.workflow_type) == (None, None)
        for moment in (info.scheduled_time, info.current_attempt_scheduled_time, info.started_time):
            assert moment.utcoffset() == timedelta(0)
            assert before <= moment <= after
        assert info.scheduled_time <= info.current_attempt_scheduled_time <= info.started_time
    assert first.task_token != second.task_token
    assert first.scheduled_time == second.scheduled_time
    # The retry waits out the backoff after the first attempt began.
    assert second.current_attempt_scheduled_time >= first.started_time + timedelta(milliseconds=100)
    # The second attempt resumes from the first one's last heartbeat.
    assert list(first.heartbeat_details) == []
    assert list(second.heartbeat_details) == ["halfway", 5]


async def test_the_context_functions_answer_inside_an_async_activity(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[report_context]):
        seen = await client.execute_activity(
            report_context, id="ctx", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert seen == {
        "in_activity": True,
        "client_id": id(client),
        "converter_id": id(client.data_converter.payload_converter),
        "is_cancelled": False,
        "cancellation_details": None,
        "is_worker_shutdown": False,
    }
    assert not activity.in_activity()


async def test_an_async_activity_can_use_the_workers_client(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[use_own_client, greet]):
        result = await client.execute_activity(
            use_own_client, id="parent", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert result == ["STARTED", "Hello, nested!"]
    child = await client.get_activity_handle("parent-child").describe()
    assert child.activity_type == "greet"


async def _wait_for_cancelled() -> None:
    await activity.wait_for_cancelled()


async def _wait_for_worker_shutdown() -> None:
    await activity.wait_for_worker_shutdown()


@pytest.mark.parametrize(
    "call",
    [
        activity.info,
        lambda: activity.heartbeat("details"),
        activity.is_cancelled,
        activity.cancellation_details,
        activity.is_worker_shutdown,
        activity.payload_converter,
        activity.client,
    ],
    ids=[
        "info",
        "heartbeat",
        "is_cancelled",
        "cancellation_details",
        "is_worker_shutdown",
        "payload_converter",
        "client",
    ],
)
def test_every_context_function_raises_runtime_error_outside_an_activity(
    call: Callable[[], object],
) -> None:
    with pytest.raises(RuntimeError, match="not in an activity"):
        call()


@pytest.mark.parametrize("wait", [_wait_for_cancelled, _wait_for_worker_shutdown])
async def test_the_context_waits_raise_runtime_error_outside_an_activity(
    wait: Callable[[], Awaitable[None]],
) -> None:
    with pytest.raises(RuntimeError, match="not in an activity"):
        await asyncio.wait_for(wait(), timeout=5)


def test_in_activity_is_false_outside_an_activity() -> None:
    assert activity.in_activity() is False


async def test_activity_logger_records_carry_the_activity(
    client: Client, task_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="errands.activity")
    async with Worker(client, task_queue=task_queue, activities=[log_something]):
        await client.execute_activity(
            log_something,
            "the laundry",
            id="log-1",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
    records = [r for r in caplog.records if r.name == "errands.activity"]
    assert len(records) == 1
    record = records[0]
    assert record.getMessage().startswith("doing the laundry")
    assert record.__dict__["activity_id"] == "log-1"
    assert record.__dict__["activity_type"] == "log_something"
    assert record.__dict__["attempt"] == 1
    assert record.__dict__["task_queue"] == task_queue
    assert record.__dict__["activity_info"]["activity_id"] == "log-1"
    assert "log-1" in record.getMessage() and task_queue in record.getMessage()


def test_activity_logger_outside_an_activity_adds_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="errands.activity")
    activity.logger.info("plain message")
    (record,) = [r for r in caplog.records if r.name == "errands.activity"]
    assert record.getMessage() == "plain message"
    assert "activity_id" not in record.__dict__


# --------------------------------------------------------------------------- unknown types


async def test_an_unknown_activity_type_fails_retryably_naming_it_and_the_registered_ones(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=task_queue, activities=[greet, loud_greet]):
        handle = await client.start_activity(
            "missing-activity",
            "x",
            id="unknown-1",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
            retry_policy=FAST_RETRY,
        )
        desc = await describe_until(
            handle,
            lambda d: d.attempt > 1 and d.last_failure is not None,
            "the first attempt fails and a retry is scheduled",
        )
        await handle.terminate("done looking")
    assert desc.status.name == "RUNNING"
    failure = desc.last_failure
    assert isinstance(failure, ApplicationError)
    assert failure.type == "NotFoundError"
    assert failure.non_retryable is False
    assert "missing-activity" in failure.message
    assert "greet" in failure.message and "shout" in failure.message
    assert (await handle.describe()).status.name == "TERMINATED"


# --------------------------------------------------------------------------- Worker checks


def test_a_worker_needs_at_least_one_activity(client: Client, task_queue: str) -> None:
    with pytest.raises(ValueError, match="at least one activity"):
        Worker(client, task_queue=task_queue, activities=[])


def test_a_worker_refuses_two_activities_with_one_name(client: Client, task_queue: str) -> None:
    async def other_greet(name: str) -> str:
        return name

    also_greet = activity.defn(name="greet")(other_greet)
    with pytest.raises(ValueError, match=r"'greet' is registered twice"):
        Worker(client, task_queue=task_queue, activities=[greet, also_greet])


def test_a_worker_refuses_two_dynamic_activities(client: Client, task_queue: str) -> None:
    async def another_catch_all(args: Sequence[RawValue]) -> None:
        return None

    second = activity.defn(dynamic=True)(another_catch_all)
    with pytest.raises(ValueError, match="two dynamic activities"):
        Worker(client, task_queue=task_queue, activities=[catch_all, second])


def test_a_worker_refuses_an_undecorated_function(client: Client, task_queue: str) -> None:
    async def plain(name: str) -> str:
        return name

    with pytest.raises(TypeError, match=r"plain.*@activity\.defn"):
        Worker(client, task_queue=task_queue, activities=[greet, plain])


def test_a_worker_refuses_a_sync_activity_without_an_executor(
    client: Client, task_queue: str
) -> None:
    with pytest.raises(ValueError, match=r"'sync-one'.*activity_executor"):
        Worker(client, task_queue=task_queue, activities=[greet, sync_activity])


async def test_a_worker_runs_only_once(client: Client, task_queue: str) -> None:
    worker = Worker(client, task_queue=task_queue, activities=[greet])
    async with worker:
        with pytest.raises(RuntimeError, match=r"run\(\) called twice"):
            await worker.run()
        assert (
            await client.execute_activity(
                greet, "still", id="once-1", task_queue=task_queue, start_to_close_timeout=TIMEOUT
            )
            == "Hello, still!"
        )
    with pytest.raises(RuntimeError, match=r"run\(\) called twice"):
        await worker.run()
