"""Interceptors in temporalio's shapes (DESIGN.md §6 "Watching"; issue 14
point 1): the client's calls each pass through ``OutboundInterceptor``; a
worker's attempts pass through ``ActivityInboundInterceptor`` (init, then
execute_activity) and what activities call through
``ActivityOutboundInterceptor`` (info, heartbeat); headers set at start reach
every attempt. Each worker hook is tested with async, thread-pool and
process-pool activities (spawn children, a real manager), on both stores."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from errands import activity, exceptions
from errands import client as errands_client
from errands import worker as errands_worker
from errands.client import (
    ActivityExecutionStatus,
    ActivityOptionsKeys,
    ActivityStart,
    AttemptOutcome,
    Client,
    OutboundInterceptor,
    StartActivityInput,
)
from errands.common import RetryPolicy
from errands.converter import Payload, PayloadConverter, deserialize_headers, serialize_headers
from errands.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Worker,
)
from tests import intercepted_activities as acts
from tests.intercepted_activities import Kind
from tests.support import FAST_RETRY, TIMEOUT, describe_until, failure_of, heartbeat_stored

CONVERTER = PayloadConverter()


# --------------------------------------------------------------------------- interceptors


class SetHeader(errands_client.Interceptor):
    """Puts ``tenant: <value>`` in the headers of every start."""

    def __init__(self, value: str) -> None:
        self.value = value

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _SetHeaderOutbound(next, self.value)


class _SetHeaderOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, value: str) -> None:
        super().__init__(next)
        self.value = value

    async def start_activity(self, input: StartActivityInput) -> Any:
        input.headers = {**input.headers, "tenant": CONVERTER.to_payload(self.value)}
        return await super().start_activity(input)


@dataclass
class Record:
    """What a RecordAttempts interceptor saw."""

    events: list[str] = field(default_factory=list)
    inputs: list[ExecuteActivityInput] = field(default_factory=list)
    info_attempts: list[int] = field(default_factory=list)
    """``activity.info().attempt`` as execute_activity saw it."""
    heartbeats: list[tuple[tuple[Any, ...], int, int]] = field(default_factory=list)
    """(details, the thread it ran on, ``activity.info().attempt`` there)."""
    outcomes: list[type[BaseException] | None] = field(default_factory=list)


class RecordAttempts(errands_worker.Interceptor):
    """Records every hook; marks the info the activity sees (``+seen`` on its
    activity id) and the heartbeats it sends (a ``marked`` detail appended)."""

    def __init__(self) -> None:
        self.record = Record()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        self.record.events.append("intercept_activity")
        return _RecordInbound(next, self.record)


class _RecordInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, record: Record) -> None:
        super().__init__(next)
        self.record = record

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        self.record.events.append("init")
        super().init(_MarkOutbound(outbound, self.record))

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        self.record.events.append("execute_activity")
        self.record.inputs.append(input)
        self.record.info_attempts.append(activity.info().attempt)
        try:
            result = await super().execute_activity(input)
        except BaseException as e:
            self.record.outcomes.append(type(e))
            raise
        self.record.outcomes.append(None)
        return result


class _MarkOutbound(ActivityOutboundInterceptor):
    def __init__(self, next: ActivityOutboundInterceptor, record: Record) -> None:
        super().__init__(next)
        self.record = record

    def info(self) -> activity.Info:
        info = super().info()
        return dataclasses.replace(info, activity_id=info.activity_id + "+seen")

    def heartbeat(self, *details: Any) -> None:
        self.record.heartbeats.append((details, threading.get_ident(), activity.info().attempt))
        super().heartbeat(*details, "marked")


# --------------------------------------------------------------------------- worker hooks


async def test_a_worker_s_interceptors_see_every_attempt_with_the_start_s_headers(
    db_url: str, task_queue: str, executor_kind: Kind
) -> None:
    kind = executor_kind
    # Given a client that sets a header at start, and a worker with an interceptor
    client = await Client.connect(db_url, interceptors=[SetHeader("acme")])
    recorder = RecordAttempts()
    try:
        async with kind.worker(client, task_queue, [kind.report], interceptors=[recorder]):
            # When an activity fails its first attempt and completes the second
            handle = await client.start_activity(
                kind.report,
                True,
                id="reporter",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
                retry_policy=FAST_RETRY,
            )
            result = await handle.result()
            desc = await handle.describe(include_heartbeat_details=True)
    finally:
        await client.close()
    record = recorder.record
    # Then each attempt went through intercept_activity, init, execute_activity
    assert record.events == ["intercept_activity", "init", "execute_activity"] * 2
    assert record.info_attempts == [1, 2]
    assert record.outcomes == [exceptions.ApplicationError, None]
    # with the headers of the start, the function, its arguments and the executor
    for seen in record.inputs:
        assert {k: CONVERTER.from_payload(v) for k, v in seen.headers.items()} == {"tenant": "acme"}
        assert seen.fn is kind.report
        assert list(seen.args) == [True]
        assert seen.executor is kind.executor
    # the activity's info() went through the outbound interceptor (in a
    # process-pool child too: it gets what info() said when the call was sent)
    assert result["activity_id"] == "reporter+seen"
    assert result["attempt"] == 2
    # and so did every heartbeat, on the worker's event loop, with info() working there
    loop_thread = threading.get_ident()
    assert record.heartbeats, "no heartbeat passed through the interceptor"
    assert {(details, thread) for details, thread, _ in record.heartbeats} <= {
        (("progress", 1), loop_thread),
        (("progress", 2), loop_thread),
    }
    assert {attempt for _, _, attempt in record.heartbeats} == {1, 2}
    assert list(await desc.heartbeat_details()) == ["progress", 2, "marked"]


async def test_a_cancellation_passes_out_through_the_interceptors(
    db_url: str, task_queue: str, executor_kind: Kind
) -> None:
    kind = executor_kind
    # Given a worker with an interceptor, running an activity that waits to be cancelled
    client = await Client.connect(db_url)
    recorder = RecordAttempts()
    try:
        async with kind.worker(client, task_queue, [kind.wait_for_cancel], interceptors=[recorder]):
            handle = await client.start_activity(
                kind.wait_for_cancel,
                id="waiter",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
            await heartbeat_stored(handle)
            # When it is cancelled
            await handle.cancel()
            cause = await failure_of(handle)
    finally:
        await client.close()
    # Then the cancellation left the activity through the interceptor, and the execution is CANCELED
    assert isinstance(cause, exceptions.CancelledError)
    expected = asyncio.CancelledError if kind.name == "async" else exceptions.CancelledError
    assert recorder.record.outcomes == [expected]
    assert recorder.record.inputs[0].headers == {}


class Hold(errands_worker.Interceptor):
    """Holds each attempt in execute_activity, before the activity runs,
    until a cancellation has been delivered to it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.outcomes: list[type[BaseException] | None] = []

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _HoldInbound(next, self)


class _HoldInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: Hold) -> None:
        super().__init__(next)
        self.root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        self.root.entered.set()
        await activity.wait_for_cancelled()
        try:
            result = await super().execute_activity(input)
        except BaseException as e:
            self.root.outcomes.append(type(e))
            raise
        self.root.outcomes.append(None)
        return result


async def test_an_interruption_that_comes_while_an_interceptor_holds_the_attempt_still_lands(
    client: Client, task_queue: str, executor_kind: Kind
) -> None:
    kind = executor_kind
    # Given an attempt held by its interceptor before its activity runs
    hold = Hold()
    async with kind.worker(client, task_queue, [kind.wait_for_cancel], interceptors=[hold]):
        handle = await client.start_activity(
            kind.wait_for_cancel, id="held", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await asyncio.wait_for(hold.entered.wait(), 30)
        # When the execution is terminated meanwhile (the interceptor then lets it run)
        await handle.terminate(reason="while held")
        # Then the activity is interrupted all the same (it would wait a minute or an hour)
        await asyncio.wait_for(_outcome_of(hold), 30)
    expected = asyncio.CancelledError if kind.name == "async" else exceptions.CancelledError
    assert hold.outcomes == [expected]


async def test_an_activity_that_never_awaits_still_reports_after_a_cancel_that_came_before_it(
    client: Client, task_queue: str
) -> None:
    # Given an attempt held by its interceptor before its activity (which
    # never awaits) runs
    hold = Hold()
    async with Worker(
        client, task_queue=task_queue, activities=[acts.report_async], interceptors=[hold]
    ):
        handle = await client.start_activity(
            acts.report_async,
            False,
            id="quick",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await asyncio.wait_for(hold.entered.wait(), 30)
        # When the worker shuts down meanwhile (leaving the block cancels its attempts)
    # Then the call did not begin, and the attempt's ending was reported all the
    # same (a cancel left pending in the attempt's task once broke its report)
    assert hold.outcomes == [asyncio.CancelledError]
    attempts = await handle.attempts()
    assert [a.outcome for a in attempts][:1] != [AttemptOutcome.RUNNING], attempts


async def _outcome_of(hold: Hold) -> None:
    while not hold.outcomes:
        await asyncio.sleep(0.01)


class Order(errands_client.Interceptor, errands_worker.Interceptor):
    """A client and worker interceptor that notes its label as each attempt passes."""

    def __init__(self, label: str, seen: list[str]) -> None:
        self.label = label
        self.seen = seen

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _OrderInbound(next, self)


class _OrderInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: Order) -> None:
        super().__init__(next)
        self.root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        self.root.seen.append(self.root.label)
        return await super().execute_activity(input)


async def test_client_interceptors_that_are_worker_interceptors_wrap_its_workers_first(
    db_url: str, task_queue: str
) -> None:
    # Given a client with two interceptors that are also worker interceptors
    seen: list[str] = []
    client = await Client.connect(
        db_url, interceptors=[Order("client-1", seen), Order("client-2", seen)]
    )
    try:
        # When a worker built on it with one of its own runs an activity
        worker = Worker(
            client,
            task_queue=task_queue,
            activities=[acts.report_async],
            interceptors=[Order("worker", seen)],
        )
        async with worker:
            await client.execute_activity(
                acts.report_async,
                False,
                id="ordered",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
    finally:
        await client.close()
    # Then the client's come first, outermost first, then the worker's
    assert seen == ["client-1", "client-2", "worker"]


class Rewrite(errands_worker.Interceptor):
    """Replaces the function and arguments of each attempt, and doubles the result."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _RewriteInbound(next)


class _RewriteInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        input.fn = acts.fail_then_succeed
        input.args = [0]
        return 2 * await super().execute_activity(input)


class Refuse(errands_worker.Interceptor):
    """Fails every attempt before the activity runs."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _RefuseInbound(next)


class _RefuseInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        raise exceptions.ApplicationError("refused by an interceptor", non_retryable=True)


async def test_an_interceptor_decides_what_runs_and_what_the_attempt_returns(
    client: Client, task_queue: str
) -> None:
    # Given a worker whose interceptor swaps the function and doubles the result
    async with Worker(
        client, task_queue=task_queue, activities=[acts.report_async], interceptors=[Rewrite()]
    ):
        # When an activity runs on it
        result = await client.execute_activity(
            "report_async",  # by name: its result is not typed by report_async's annotation
            False,
            id="rewritten",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
    # Then what ran was the interceptor's choice, and its result is what was stored
    assert result == 2


async def test_an_interceptor_that_raises_fails_the_attempt(
    client: Client, task_queue: str
) -> None:
    async with Worker(
        client, task_queue=task_queue, activities=[acts.report_async], interceptors=[Refuse()]
    ):
        handle = await client.start_activity(
            acts.report_async,
            False,
            id="refused",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        cause = await failure_of(handle)
    assert isinstance(cause, exceptions.ApplicationError)
    assert cause.message == "refused by an interceptor"


async def test_interceptors_of_the_wrong_kind_are_refused(client: Client, db_url: str) -> None:
    with pytest.raises(TypeError, match=r"errands\.client\.Interceptor"):
        await Client.connect(db_url, interceptors=[RecordAttempts()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"errands\.worker\.Interceptor"):
        Worker(
            client,
            task_queue="q",
            activities=[acts.report_async],
            interceptors=[SetHeader("x")],  # type: ignore[list-item]
        )


# --------------------------------------------------------------------------- client hooks

ASYNC_CALLS = [
    "start_activity",
    "start_activities",
    "get_activity_result",
    "describe_activity",
    "cancel_activity",
    "terminate_activity",
    "pause_activity",
    "unpause_activity",
    "reset_activity",
    "update_activity_options",
    "retry_activity_now",
    "get_activity_attempts",
    "count_activities",
    "cancel_activities",
    "terminate_activities",
    "pause_activities",
    "unpause_activities",
    "reset_activities",
    "retry_activities_now",
    "update_activities_options",
    "list_workers",
    "heartbeat_async_activity",
    "complete_async_activity",
    "fail_async_activity",
    "report_cancellation_async_activity",
]


class RecordCalls(errands_client.Interceptor):
    """Records every client call's name and input (and hands it on)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _RecordOutbound(next, self.calls)


class _RecordOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, calls: list[tuple[str, Any]]) -> None:
        super().__init__(next)
        self.calls = calls

    def list_activities(self, input: Any) -> Any:
        self.calls.append(("list_activities", input))
        return self.next.list_activities(input)


def _recorded(name: str) -> Callable[..., Any]:
    async def call(self: _RecordOutbound, input: Any) -> Any:
        self.calls.append((name, input))
        return await getattr(self.next, name)(input)

    return call


for _name in ASYNC_CALLS:
    setattr(_RecordOutbound, _name, _recorded(_name))


def test_every_client_call_has_an_interceptor_method_the_tests_cover() -> None:
    public = {name for name in vars(OutboundInterceptor) if not name.startswith("_")}
    assert public == {*ASYNC_CALLS, "list_activities"}


async def test_every_client_call_passes_through_the_interceptors(
    db_url: str, task_queue: str
) -> None:
    # Given a client with a recording interceptor (and no worker: nothing runs)
    recorder = RecordCalls()
    client = await Client.connect(db_url, interceptors=[recorder])
    calls = recorder.calls
    q = f"ActivityId = 'batch-1' AND TaskQueue = '{task_queue}'"
    try:
        # When every call is made
        handle = await client.start_activity(
            acts.report_async,
            False,
            id="one",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        await handle.describe(include_input=True)
        await handle.pause(reason="look")
        await handle.unpause()
        await handle.update_options([ActivityOptionsKeys.retry_policy.value_set(FAST_RETRY)])
        await handle.restore_original_options()
        await handle.reset(keep_paused=True)
        await handle.retry_now()
        await handle.attempts()
        await handle.cancel(reason="enough")
        with pytest.raises(exceptions.ActivityFailedError):
            await handle.result()
        other = await client.start_activity(
            "by-name", id="two", task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
        await other.terminate(reason="gone")
        await client.start_activities(
            [
                ActivityStart(
                    "by-name",
                    id=f"batch-{i}",
                    task_queue=task_queue,
                    start_to_close_timeout=TIMEOUT,
                )
                for i in range(2)
            ]
        )
        listed = [
            e.activity_id async for e in client.list_activities(f"TaskQueue = '{task_queue}'")
        ]
        count = await client.count_activities(f"TaskQueue = '{task_queue}'")
        assert await client.pause_activities(q) == 1
        assert await client.unpause_activities(q) == 1
        assert await client.reset_activities(q, keep_paused=True) == 1
        updates = [ActivityOptionsKeys.retry_policy.value_set(FAST_RETRY)]
        assert await client.update_activities_options(q, updates) == 1
        assert await client.retry_activities_now(q) == 0  # paused: nothing to hurry
        assert await client.cancel_activities(q) == 1
        assert await client.terminate_activities("ActivityId = 'batch-0'") == 1
        assert await client.list_workers() == []
        async_handle = client.get_async_activity_handle(activity_id="one")
        for report in (
            async_handle.heartbeat("beat"),
            async_handle.complete("done"),
            async_handle.fail(ValueError("no"), last_heartbeat_details=["last"]),
            async_handle.report_cancellation("bye"),
        ):
            with pytest.raises(exceptions.ActivityNotFoundError):
                await report  # its execution is closed: the call went through and was refused
    finally:
        await client.close()
    # Then each call passed through the interceptor once, with its input
    assert [name for name, _ in calls] == [
        "start_activity",
        "describe_activity",
        "pause_activity",
        "unpause_activity",
        "update_activity_options",
        "update_activity_options",
        "reset_activity",
        "retry_activity_now",
        "get_activity_attempts",
        "cancel_activity",
        "get_activity_result",
        "start_activity",
        "terminate_activity",
        "start_activities",
        "list_activities",
        "count_activities",
        "pause_activities",
        "unpause_activities",
        "reset_activities",
        "update_activities_options",
        "retry_activities_now",
        "cancel_activities",
        "terminate_activities",
        "list_workers",
        "heartbeat_async_activity",
        "complete_async_activity",
        "fail_async_activity",
        "report_cancellation_async_activity",
    ]
    inputs = [input for _, input in calls]
    start = inputs[0]
    assert (start.activity_type, start.id, start.task_queue, list(start.args)) == (
        "report_async",
        "one",
        task_queue,
        [False],
    )
    assert start.result_type == dict[str, Any] and start.headers == {}
    assert inputs[1].include_input and not inputs[1].include_outcome
    assert inputs[2].reason == "look"
    assert [u.key.name for u in inputs[4].updates] == ["retry_policy"]
    assert inputs[5].updates is None  # restore_original_options
    assert inputs[6].keep_paused
    assert inputs[9].reason == "enough"
    assert inputs[10].activity_run_id == handle.run_id
    assert inputs[12].reason == "gone"
    assert [s.id for s in inputs[13].starts] == ["batch-0", "batch-1"]
    assert sorted(listed) == ["batch-0", "batch-1", "one", "two"] and count.count == 4
    assert inputs[16].query == q and inputs[18].keep_paused
    assert [u.key.name for u in inputs[19].updates] == ["retry_policy"] and inputs[20].query == q
    assert inputs[24].id_or_token.activity_id == "one"
    assert list(inputs[24].details) == ["beat"]
    assert inputs[25].result == "done"
    assert isinstance(inputs[26].error, ValueError)
    assert list(inputs[27].details) == ["bye"]


class Redirect(errands_client.Interceptor):
    """Sends every start to another task queue, and adds 1000 to every result."""

    def __init__(self, task_queue: str, seen: list[str]) -> None:
        self.task_queue = task_queue
        self.seen = seen

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        root = self

        class Outbound(OutboundInterceptor):
            async def start_activity(self, input: StartActivityInput) -> Any:
                root.seen.append(root.task_queue)
                input.task_queue = root.task_queue
                return await super().start_activity(input)

            async def get_activity_result(self, input: Any) -> Any:
                return 1000 + await super().get_activity_result(input)

        return Outbound(next)


async def test_client_interceptors_change_calls_and_chain_outermost_first(
    db_url: str, task_queue: str
) -> None:
    # Given two client interceptors that redirect starts (the first to "nowhere")
    seen: list[str] = []
    redirected = task_queue + "-redirected"
    client = await Client.connect(
        db_url, interceptors=[Redirect("nowhere", seen), Redirect(redirected, seen)]
    )
    try:
        # When an activity is started for a queue no worker serves
        async with Worker(client, task_queue=redirected, activities=[acts.fail_then_succeed]):
            result = await client.execute_activity(
                acts.fail_then_succeed,
                0,
                id="redirected",
                task_queue=task_queue,
                start_to_close_timeout=TIMEOUT,
            )
    finally:
        await client.close()
    # Then the first interceptor ran first, the inner one's change won, and
    # both result interceptors added to the value
    assert seen == ["nowhere", redirected]
    assert result == 2001


async def test_headers_set_at_start_are_kept_with_the_execution(
    client: Client, task_queue: str
) -> None:
    # Given a start whose interceptor sets two headers
    payloads = {"a": CONVERTER.to_payload({"x": 1}), "b": Payload({"custom": b"1"}, b"\x00raw")}

    class TwoHeaders(errands_client.Interceptor):
        def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
            class Outbound(OutboundInterceptor):
                async def start_activity(self, input: StartActivityInput) -> Any:
                    input.headers = payloads
                    return await super().start_activity(input)

            return Outbound(next)

    with_headers = Client(client.store, interceptors=[TwoHeaders()])
    await with_headers.start_activity(
        "kept",
        id="kept",
        task_queue=task_queue,
        start_to_close_timeout=TIMEOUT,
        retry_policy=RetryPolicy(maximum_attempts=1),
    )
    # When a worker claims it
    claimed = await client.store.claim_batch(
        client.namespace, task_queue, max_tasks=1, identity="test"
    )
    # Then the claim carries the headers as they were set
    (task,) = claimed.tasks
    assert deserialize_headers(task.headers) == payloads
    assert serialize_headers({}) is None and deserialize_headers(None) == {}


def test_headers_that_are_not_payloads_are_refused_and_bad_bytes_do_not_decode() -> None:
    with pytest.raises(TypeError, match="Payload"):
        serialize_headers({"a": b"raw"})  # type: ignore[dict-item]
    framed = serialize_headers({"a": CONVERTER.to_payload(1)})
    assert framed is not None
    with pytest.raises(ValueError, match="undecodable"):
        deserialize_headers(framed[:-1])


async def test_a_description_goes_through_the_chain_with_the_handle_s_result_type(
    client: Client, task_queue: str
) -> None:
    # the describe input carries the handle's result type, so the outcome decodes by it
    recorder = RecordCalls()
    recording = Client(client.store, interceptors=[recorder])
    async with Worker(client, task_queue=task_queue, activities=[acts.fail_then_succeed]):
        handle = await recording.start_activity(
            acts.fail_then_succeed,
            0,
            id="described",
            task_queue=task_queue,
            start_to_close_timeout=TIMEOUT,
        )
        desc = await describe_until(
            handle, lambda d: d.status is ActivityExecutionStatus.COMPLETED, "it completes"
        )
        full = await handle.describe(include_outcome=True)
    assert desc.status is ActivityExecutionStatus.COMPLETED
    assert full.result == 1 and type(full.result) is int
    describes = [i for name, i in recorder.calls if name == "describe_activity"]
    assert describes and all(i.result_type is int for i in describes)
