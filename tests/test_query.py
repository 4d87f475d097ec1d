"""Visibility queries: the parser in ``errands._query`` and ``list_activities`` /
``count_activities`` filtering real executions in a SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from errands import activity
from errands._lifecycle import Status
from errands._query import UnknownFieldError, parse_query
from errands.client import ActivityExecution, ActivityExecutionStatus, ActivityHandle, Client
from errands.common import SearchAttributeIndexedValueType as IVT
from errands.exceptions import ActivityFailedError, ApplicationError
from errands.store import And, Between, Compare, Field, In, IsNull, Not, Or, Query
from errands.worker import Worker

TIMEOUT = timedelta(seconds=10)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t"])
def test_no_query_or_a_blank_one_matches_everything(text: str | None) -> None:
    assert parse_query(text) == Query()


def eq(field: str, value: str, op: str = "=") -> Compare:
    return Compare(Field(field), op, value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("ActivityId = 'a-1'", eq("ActivityId", "a-1")),
        ("ActivityType != 'greet'", eq("ActivityType", "greet", "!=")),
        ('TaskQueue = "images"', eq("TaskQueue", "images")),
        ("ActivityId STARTS_WITH 'order-'", eq("ActivityId", "order-", "STARTS_WITH")),
        ("ActivityId=''", eq("ActivityId", "")),
        (
            "TaskQueue = 'q' AND ActivityType != 'x' AND ActivityId STARTS_WITH 'p'",
            And(
                (
                    eq("TaskQueue", "q"),
                    eq("ActivityType", "x", "!="),
                    eq("ActivityId", "p", "STARTS_WITH"),
                )
            ),
        ),
        (
            "  ActivityId='a'   and\tTaskQueue =  'b'  ",
            And((eq("ActivityId", "a"), eq("TaskQueue", "b"))),
        ),
        (
            "ActivityId = 'a' OR ActivityId = 'b' AND TaskQueue = 'q'",
            Or((eq("ActivityId", "a"), And((eq("ActivityId", "b"), eq("TaskQueue", "q"))))),
        ),
        (
            "(ActivityId = 'a' OR ActivityId = 'b') AND NOT TaskQueue = 'q'",
            And(
                (
                    Or((eq("ActivityId", "a"), eq("ActivityId", "b"))),
                    Not(eq("TaskQueue", "q")),
                )
            ),
        ),
        ("TaskQueue IN ('a', 'b')", In(Field("TaskQueue"), ("a", "b"))),
        ("TaskQueue not in ('a')", Not(In(Field("TaskQueue"), ("a",)))),
        ("Attempt BETWEEN 2 AND 5", Between(Field("Attempt"), 2, 5)),
        ("Attempt NOT BETWEEN 2 AND 5", Not(Between(Field("Attempt"), 2, 5))),
        ("Attempt >= 3", Compare(Field("Attempt"), ">=", 3)),
        ("CloseTime IS NULL", IsNull(Field("CloseTime"))),
        ("RunState IS NOT NULL", Not(IsNull(Field("RunState")))),
        ("RunState = 'PauseRequested'", eq("RunState", "PAUSE_REQUESTED")),
        (
            "ScheduleTime < '1970-01-01T00:01:00Z'",
            Compare(Field("ScheduleTime"), "<", 60.0),
        ),
        ("ScheduleTime > '1970-01-01T01:00:00+01:00'", Compare(Field("ScheduleTime"), ">", 0.0)),
    ],
)
def test_valid_queries_parse_into_a_tree_of_bound_values(text: str, where: Any) -> None:
    assert parse_query(text) == Query(where)


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("Running", Status.RUNNING),
        ("Completed", Status.COMPLETED),
        ("Failed", Status.FAILED),
        ("Canceled", Status.CANCELED),
        ("Terminated", Status.TERMINATED),
        ("TimedOut", Status.TIMED_OUT),
        ("Paused", Status.PAUSED),
    ],
)
def test_execution_status_names_map_to_statuses(name: str, status: Status) -> None:
    assert parse_query(f"ExecutionStatus = '{name}'").where == eq("ExecutionStatus", status.value)
    assert parse_query(f'ExecutionStatus != "{name}"').where == (
        eq("ExecutionStatus", status.value, "!=")
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("ActivityId = 'it''s'", "it's"),
        ("ActivityId = 'it\\'s'", "it's"),
        ('ActivityId = "it\'s"', "it's"),
        ('ActivityId = "say ""hi"""', 'say "hi"'),
        ('ActivityId = "say \\"hi\\""', 'say "hi"'),
        ("ActivityId = 'a \"b\"'", 'a "b"'),
        ("ActivityId = 'back\\\\slash'", "back\\slash"),
        ("ActivityId = 'x AND y'", "x AND y"),
        ("ActivityId = 'GROUP BY ExecutionStatus'", "GROUP BY ExecutionStatus"),
        ("ActivityId = 'naïve-€'", "naïve-€"),
    ],
)
def test_quotes_and_escapes_are_read_into_the_value(text: str, value: str) -> None:
    assert parse_query(text).where == eq("ActivityId", value)


def test_group_by_execution_status_sets_grouping() -> None:
    assert parse_query("GROUP BY ExecutionStatus") == Query(None, group_by_status=True)
    assert parse_query("GROUP BY TaskQueue") == Query(None, group_by="TaskQueue")
    assert parse_query("group by ActivityType") == Query(None, group_by="ActivityType")
    assert parse_query(
        "TaskQueue = 'q' AND ActivityId STARTS_WITH 'a' GROUP BY ExecutionStatus"
    ) == Query(
        And((eq("TaskQueue", "q"), eq("ActivityId", "a", "STARTS_WITH"))), group_by_status=True
    )


@pytest.mark.parametrize(
    ("text", "order_by", "descending"),
    [
        ("ORDER BY ScheduleTime", "ScheduleTime", False),
        ("TaskQueue = 'q' ORDER BY CloseTime DESC", "CloseTime", True),
        ("TaskQueue = 'q' order by CloseTime asc", "CloseTime", False),
    ],
)
def test_order_by_a_time_sets_the_order(text: str, order_by: str, descending: bool) -> None:
    parsed = parse_query(text)
    assert (parsed.order_by, parsed.descending) == (order_by, descending)


def test_search_attributes_are_typed_by_the_names_given() -> None:
    types = {
        "Customer": IVT.KEYWORD,
        "Size": IVT.INT,
        "Score": IVT.DOUBLE,
        "Vip": IVT.BOOL,
        "Due": IVT.DATETIME,
        "Tags": IVT.KEYWORD_LIST,
    }
    parsed = parse_query(
        "Customer = 'acme' AND Size > 2 AND Score <= 1 AND Vip = TRUE "
        "AND Due < '1970-01-01T00:00:01Z' AND Tags IN ('x')",
        types,
    )
    assert parsed.where == And(
        (
            Compare(Field("Customer", IVT.KEYWORD), "=", "acme"),
            Compare(Field("Size", IVT.INT), ">", 2),
            Compare(Field("Score", IVT.DOUBLE), "<=", 1.0),
            Compare(Field("Vip", IVT.BOOL), "=", 1),
            Compare(Field("Due", IVT.DATETIME), "<", 1_000_000),
            In(Field("Tags", IVT.KEYWORD_LIST), ("x",)),
        )
    )
    with pytest.raises(UnknownFieldError, match="unknown field 'Customer'"):
        parse_query("Customer = 'acme'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Foo = 'x'", r"unknown field 'Foo'"),
        ("activityid = 'x'", r"unknown field 'activityid'"),
        ("ExecutionStatus = 'Done'", r"unknown ExecutionStatus 'Done'"),
        ("ExecutionStatus = 'running'", r"unknown ExecutionStatus 'running'"),
        ("RunState = 'Running'", r"unknown RunState 'Running'"),
        ("ActivityId = 'abc", r"unexpected \"'\""),
        ('ActivityId = "abc', r"unexpected '\"'"),
        ("ActivityId = abc", r"expected a quoted string, found 'abc'"),
        ("ActivityId = ", r"expected a quoted string, found the end"),
        ("ActivityId 'a'", r"expected an operator .*, found \"'a'\""),
        ("ActivityId", r"expected an operator .* at the end"),
        ("ActivityId LIKE 'a%'", r"expected an operator .*, found 'LIKE'"),
        ("ActivityId = 'a' xyz", r"expected AND, OR, found 'xyz'"),
        ("ActivityId = 'a' 'b'", r"expected AND, OR, found \"'b'\""),
        ("ActivityId = 'a' AND", r"expected a field name at the end"),
        ("AND ActivityId = 'a'", r"expected a field name, found 'AND'"),
        ("(ActivityId = 'a'", r"expected '\)' at the end"),
        ("ActivityId = 'a')", r"expected AND, OR, found '\)'"),
        ("ActivityId IN ()", r"expected a quoted string, found '\)'"),
        ("ActivityId IN ('a' 'b')", r"expected ',' or '\)'"),
        ("Attempt = '1'", r"Attempt takes a number"),
        ("Attempt = 1.5", r"Attempt takes an integer, not 1.5"),
        ("Attempt = 99999999999999999999", r"does not fit in 64 bits"),
        ("Attempt BETWEEN 1", r"expected AND in BETWEEN at the end"),
        ("ScheduleTime > 'yesterday'", r"ScheduleTime takes an ISO-8601 time"),
        ("ScheduleTime IS NULL", r"ScheduleTime is never NULL"),
        ("ExecutionStatus > 'Running'", r"> does not work on ExecutionStatus"),
        ("RunState BETWEEN 'a' AND 'b'", r"BETWEEN does not work on RunState"),
        ("Attempt STARTS_WITH '1'", r"STARTS_WITH works on string fields, not Attempt"),
        ("ActivityId NOT = 'a'", r"expected IN or BETWEEN after ActivityId NOT"),
        ("ActivityId = 'a\x00'", r"NUL"),
        ("GROUP BY Attempt", r"can only GROUP BY ExecutionStatus, TaskQueue, ActivityType, not"),
        ("GROUP ExecutionStatus", r"expected BY"),
        ("GROUP BY ExecutionStatus AND ActivityId = 'a'", r"expected the end, found 'AND'"),
        ("ActivityId = 'a' AND GROUP BY ExecutionStatus", r"expected a field name, found 'GROUP'"),
        ("ORDER BY Attempt", r"can only ORDER BY ScheduleTime or CloseTime, not 'Attempt'"),
        ("ORDER BY CloseTime GROUP BY ExecutionStatus", r"expected the end, found 'GROUP'"),
        ("(" * 40 + "ActivityId = 'a'" + ")" * 40, r"nested deeper than"),
        ("NOT " * 40 + "ActivityId = 'a'", r"nested deeper than"),
        ("ActivityId IN (" + ", ".join(["'a'"] * 600) + ")", r"more than 500 values"),
    ],
)
def test_malformed_queries_are_refused_with_a_clear_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_query(text)
    assert "invalid query" in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "ActivityId = 'x' OR 1=1",
        "ActivityId = 'x' OR '1'='1'",
        "ActivityId = 'x'; DROP TABLE executions",
        "ActivityId = 'x' -- comment",
        "ActivityId = 'x' /* comment */",
        "ActivityId = 'x' UNION SELECT * FROM executions",
        "ActivityId = ('x')",
        "ActivityId = 'x' AND 1=1",
        "ActivityId = 'x' ORDER BY id; DELETE FROM executions",
    ],
)
def test_injection_attempts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid query"):
        parse_query(text)


# --------------------------------------------------------------------------- against a store


@activity.defn
async def succeed(x: int) -> int:
    return x


@activity.defn
async def fail_hard(x: int) -> int:
    raise ApplicationError("no", non_retryable=True)


@dataclass(frozen=True)
class Population:
    client: Client
    busy_queue: str  # served by a worker
    idle_queue: str  # no worker: executions there stay put
    started: list[str]  # activity ids, oldest first


@pytest.fixture
async def population(client: Client, task_queue: str) -> AsyncIterator[Population]:
    """Executions in every status, on two task queues, started in a known order."""
    busy, idle = f"{task_queue}-busy", f"{task_queue}-idle"
    started: list[str] = []

    async def start(
        fn: Callable[..., Any], id: str, queue: str, **options: Any
    ) -> ActivityHandle[Any]:
        handle = await client.start_activity(fn, 1, id=id, task_queue=queue, **options)
        started.append(id)
        return handle

    async with Worker(client, task_queue=busy, activities=[succeed, fail_hard]):
        done = await start(succeed, "order-1", busy, start_to_close_timeout=TIMEOUT)
        failed = await start(fail_hard, "order-2", busy, start_to_close_timeout=TIMEOUT)
        await start(succeed, "ship-1", idle, start_to_close_timeout=TIMEOUT)
        canceled = await start(succeed, "ship-2", idle, start_to_close_timeout=TIMEOUT)
        terminated = await start(fail_hard, "ship-3", idle, start_to_close_timeout=TIMEOUT)
        timed_out = await start(
            succeed,
            "ship-4",
            idle,
            schedule_to_close_timeout=timedelta(milliseconds=200),
        )
        await canceled.cancel()
        await terminated.terminate()
        assert await done.result() == 1
        for handle in (failed, timed_out):
            with pytest.raises(ActivityFailedError):
                await handle.result()
    yield Population(client, busy, idle, started)


async def ids(client: Client, query: str | None = None, *, limit: int | None = None) -> list[str]:
    return [e.activity_id async for e in client.list_activities(query, limit=limit)]


async def test_list_without_a_query_returns_every_execution_newest_first(
    population: Population,
) -> None:
    assert await ids(population.client) == list(reversed(population.started))
    executions: list[ActivityExecution] = [e async for e in population.client.list_activities()]
    times = [e.schedule_time for e in executions]
    assert times == sorted(times, reverse=True)
    assert {e.activity_id: e.status for e in executions} == {
        "order-1": ActivityExecutionStatus.COMPLETED,
        "order-2": ActivityExecutionStatus.FAILED,
        "ship-1": ActivityExecutionStatus.RUNNING,
        "ship-2": ActivityExecutionStatus.CANCELED,
        "ship-3": ActivityExecutionStatus.TERMINATED,
        "ship-4": ActivityExecutionStatus.TIMED_OUT,
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Running", ["ship-1"]),
        ("Completed", ["order-1"]),
        ("Failed", ["order-2"]),
        ("Canceled", ["ship-2"]),
        ("Terminated", ["ship-3"]),
        ("TimedOut", ["ship-4"]),
    ],
)
async def test_list_and_count_filter_by_status(
    population: Population, name: str, expected: list[str]
) -> None:
    query = f"ExecutionStatus = '{name}'"
    assert await ids(population.client, query) == expected
    assert (await population.client.count_activities(query)).count == len(expected)
    others = await ids(population.client, f"ExecutionStatus != '{name}'")
    assert sorted(others) == sorted(set(population.started) - set(expected))


async def test_list_and_count_filter_by_type_queue_and_id_prefix(population: Population) -> None:
    client = population.client
    assert await ids(client, "ActivityType = 'fail_hard'") == ["ship-3", "order-2"]
    assert await ids(client, "ActivityType != 'fail_hard'") == [
        "ship-4",
        "ship-2",
        "ship-1",
        "order-1",
    ]
    assert await ids(client, f"TaskQueue = '{population.busy_queue}'") == ["order-2", "order-1"]
    assert await ids(client, "ActivityId STARTS_WITH 'ship-'") == [
        "ship-4",
        "ship-3",
        "ship-2",
        "ship-1",
    ]
    assert await ids(client, "ActivityId = 'ship-2'") == ["ship-2"]
    combined = (
        f"TaskQueue = '{population.idle_queue}' AND ActivityType = 'succeed' "
        "AND ExecutionStatus != 'Running'"
    )
    assert await ids(client, combined) == ["ship-4", "ship-2"]
    assert (await client.count_activities(combined)).count == 2
    assert (await client.count_activities("ActivityId STARTS_WITH 'order'")).count == 2
    assert (await client.count_activities()).count == len(population.started)


async def test_starts_with_takes_its_prefix_literally(population: Population) -> None:
    client = population.client
    for prefix in ("ship_", "ship%", "%", "_", "SHIP-", "ship-1x"):
        query = f"ActivityId STARTS_WITH '{prefix}'"
        assert await ids(client, query) == [], prefix
        assert (await client.count_activities(query)).count == 0, prefix
    assert await ids(client, "ActivityId STARTS_WITH ''") == list(reversed(population.started))


async def test_limit_keeps_the_newest(population: Population) -> None:
    client = population.client
    newest_first = list(reversed(population.started))
    assert await ids(client, limit=2) == newest_first[:2]
    assert await ids(client, "ActivityId STARTS_WITH 'order'", limit=1) == ["order-2"]
    assert await ids(client, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        await ids(client, limit=-1)


async def test_count_groups_by_execution_status(population: Population) -> None:
    client = population.client
    everything = await client.count_activities("GROUP BY ExecutionStatus")
    assert everything.count == 6
    assert {tuple(g.group_values): g.count for g in everything.groups} == {
        ("Running",): 1,
        ("Completed",): 1,
        ("Failed",): 1,
        ("Canceled",): 1,
        ("Terminated",): 1,
        ("TimedOut",): 1,
    }
    idle = await client.count_activities(
        f"TaskQueue = '{population.idle_queue}' AND ActivityType = 'succeed' "
        "GROUP BY ExecutionStatus"
    )
    assert idle.count == 3
    assert {tuple(g.group_values): g.count for g in idle.groups} == {
        ("Running",): 1,
        ("Canceled",): 1,
        ("TimedOut",): 1,
    }
    assert (await client.count_activities("ActivityType = 'succeed'")).groups == []


async def test_count_groups_by_task_queue_and_by_activity_type_the_most_numerous_first(
    population: Population,
) -> None:
    client = population.client
    queues = await client.count_activities("GROUP BY TaskQueue")
    assert queues.count == 6
    assert [(g.group_values, g.count) for g in queues.groups] == [
        ([population.idle_queue], 4),
        ([population.busy_queue], 2),
    ]
    types = await client.count_activities("ExecutionStatus != 'Running' GROUP BY ActivityType")
    assert [(g.group_values, g.count) for g in types.groups] == [
        (["succeed"], 3),
        (["fail_hard"], 2),
    ]


async def test_group_by_is_refused_by_list(population: Population) -> None:
    with pytest.raises(ValueError, match="GROUP BY"):
        await ids(population.client, "GROUP BY ExecutionStatus")
    with pytest.raises(ValueError, match="GROUP BY"):
        await ids(population.client, "GROUP BY TaskQueue")


async def test_list_and_count_refuse_a_malformed_query(population: Population) -> None:
    with pytest.raises(ValueError, match="unknown field 'Owner'"):
        await ids(population.client, "Owner = 'me'")
    with pytest.raises(ValueError, match="expected a field name, found '1'"):
        await population.client.count_activities("ActivityId = 'x' OR 1=1")


async def test_quoted_values_match_ids_with_quotes(client: Client, task_queue: str) -> None:
    for id in ("it's", 'say "hi"', "back\\slash"):
        await client.start_activity(
            succeed, 1, id=id, task_queue=task_queue, start_to_close_timeout=TIMEOUT
        )
    assert await ids(client, "ActivityId = 'it''s'") == ["it's"]
    assert await ids(client, 'ActivityId = "it\'s"') == ["it's"]
    assert await ids(client, 'ActivityId = "say ""hi"""') == ['say "hi"']
    assert await ids(client, "ActivityId = 'back\\\\slash'") == ["back\\slash"]
    assert await ids(client, "ActivityId STARTS_WITH 'it'''") == ["it's"]


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_an_injection_looking_value_matches_nothing_and_harms_nothing(
    population: Population, db_path: Path
) -> None:
    client = population.client
    hostile = [
        "ActivityId = 'a''; DROP TABLE executions; --'",
        "ActivityId = 'x'' OR ''1''=''1'",
        "ActivityId STARTS_WITH ''' OR 1=1 --'",
        "TaskQueue = '\"; DELETE FROM executions; --'",
    ]
    for query in hostile:
        assert await ids(client, query) == [], query
        assert (await client.count_activities(query)).count == 0, query
    assert await ids(client) == list(reversed(population.started))
    with closing(sqlite3.connect(db_path)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "executions" in tables

    # The same text, as a real id, is found exactly: it was a bound value all along.
    await client.start_activity(
        succeed,
        1,
        id="a'; DROP TABLE executions; --",
        task_queue=population.idle_queue,
        start_to_close_timeout=TIMEOUT,
    )
    assert await ids(client, hostile[0]) == ["a'; DROP TABLE executions; --"]
    assert (await client.count_activities()).count == len(population.started) + 1
