"""Search attributes and the grown query language on both stores: values of
every type travel from start to describe and list, every operator and field
filters real executions, and bad input is refused before anything is
written."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from errands import activity
from errands.client import ActivityExecutionStatus, ActivityHandle, Client
from errands.common import RetryPolicy, SearchAttributeKey, SearchAttributePair
from errands.common import TypedSearchAttributes as Attributes
from errands.exceptions import ApplicationError
from errands.worker import Worker
from tests.conftest import admin
from tests.support import describe_until

TIMEOUT = timedelta(seconds=10)
UTC = timezone.utc

keyword = SearchAttributeKey.for_keyword
CUSTOMER = keyword("Customer")
SIZE = SearchAttributeKey.for_int("Size")
SCORE = SearchAttributeKey.for_float("Score")
VIP = SearchAttributeKey.for_bool("Vip")
DUE = SearchAttributeKey.for_datetime("Due")
TAGS = SearchAttributeKey.for_keyword_list("Tags")
NOTE = SearchAttributeKey.for_text("Note")


def attrs(**values: Any) -> Attributes:
    keys = {"customer": CUSTOMER, "size": SIZE, "score": SCORE, "vip": VIP}
    keys |= {"due": DUE, "tags": TAGS, "note": NOTE}
    return Attributes([SearchAttributePair(keys[name], v) for name, v in values.items()])


@activity.defn
async def flaky() -> None:
    raise ApplicationError("once more")


async def start(
    client: Client,
    id: str,
    queue: str,
    attributes: Attributes | None = None,
    activity: Any = "idle",
    **options: Any,
) -> ActivityHandle[Any]:
    return await client.start_activity(
        activity, id=id, task_queue=queue, start_to_close_timeout=TIMEOUT,
        search_attributes=attributes, **options,
    )  # fmt: skip


@dataclass(frozen=True)
class Population:
    client: Client
    scheduled: dict[str, datetime]  # activity id: schedule time


@pytest.fixture
async def population(client: Client, task_queue: str) -> AsyncIterator[Population]:
    """a: open; b: terminated; c: canceled (empty tag list); d: paused, no
    attributes; e: backing off after attempt 1 failed. Started in that order;
    c closes after b."""
    a = await start(client, "a", task_queue, attrs(
        customer="acme", size=1, score=0.5, vip=True, due=datetime(2026, 1, 1, tzinfo=UTC),
        tags=["red", "blue", "red"], note="hello world",
    ))  # fmt: skip
    b = await start(client, "b", task_queue, attrs(
        customer="acme", size=5, score=2.5, vip=False, due=datetime(2026, 6, 1, tzinfo=UTC),
        tags=["blue"],
    ))  # fmt: skip
    c = await start(client, "c", task_queue, attrs(customer="globex", size=10, tags=[]))
    d = await start(client, "d", task_queue)
    e = await start(
        client, "e", f"{task_queue}-flaky", attrs(customer="initech", size=-3), flaky,
        retry_policy=RetryPolicy(initial_interval=timedelta(hours=1)),
    )  # fmt: skip
    async with Worker(client, task_queue=f"{task_queue}-flaky", activities=[flaky]):
        await describe_until(e, lambda desc: desc.attempt == 2, "attempt 1 failed")
    await b.terminate()
    await c.cancel()
    await d.pause()
    scheduled = {h.id: (await h.describe()).schedule_time for h in (a, b, c, d, e)}
    yield Population(client, scheduled)


async def ids(client: Client, query: str, limit: int | None = None) -> list[str]:
    return [e.activity_id async for e in client.list_activities(query, limit=limit)]


def matching(population: Population) -> list[tuple[str, set[str]]]:
    a, b = population.scheduled["a"], population.scheduled["b"]
    b_time = (a + (b - a) / 2).isoformat()  # between a's start and b's
    return [
        # built-in fields, new operators
        ("ActivityId IN ('a', 'c', 'zz')", {"a", "c"}),
        ("ActivityId NOT IN ('a', 'c')", {"b", "d", "e"}),
        ("ActivityId > 'c'", {"d", "e"}),
        ("ActivityId BETWEEN 'b' AND 'd'", {"b", "c", "d"}),
        ("ExecutionStatus = 'Terminated' OR ExecutionStatus = 'Canceled'", {"b", "c"}),
        ("ExecutionStatus IN ('Paused', 'Running')", {"a", "d", "e"}),
        ("ExecutionStatus = 'Paused'", {"d"}),
        ("ExecutionStatus = 'Running'", {"a", "e"}),
        ("RunState = 'Scheduled'", {"a", "e"}),
        ("RunState = 'Paused'", {"d"}),
        ("RunState != 'Paused'", {"a", "e"}),
        ("RunState IS NULL", {"b", "c"}),
        ("RunState IS NOT NULL", {"a", "d", "e"}),
        ("Attempt = 2", {"e"}),
        ("Attempt > 1", {"e"}),
        ("Attempt BETWEEN 1 AND 1", {"a", "b", "c", "d"}),
        ("CloseTime IS NULL", {"a", "d", "e"}),
        ("CloseTime IS NOT NULL", {"b", "c"}),
        ("CloseTime > '2000-01-01T00:00:00Z'", {"b", "c"}),
        ("NOT CloseTime > '2000-01-01T00:00:00Z'", {"a", "d", "e"}),
        (f"ScheduleTime >= '{b_time}'", {"b", "c", "d", "e"}),
        (f"ScheduleTime < '{b_time}'", {"a"}),
        (f"ScheduleTime BETWEEN '2000-01-01' AND '{b_time}'", {"a"}),
        # keyword
        ("Customer = 'acme'", {"a", "b"}),
        ("Customer != 'acme'", {"c", "e"}),
        ("NOT Customer = 'acme'", {"c", "d", "e"}),
        ("Customer IN ('globex', 'initech')", {"c", "e"}),
        ("Customer NOT IN ('globex', 'initech')", {"a", "b", "d"}),
        ("Customer STARTS_WITH 'ac'", {"a", "b"}),
        ("Customer > 'b'", {"c", "e"}),
        ("Customer IS NULL", {"d"}),
        ("Customer IS NOT NULL", {"a", "b", "c", "e"}),
        # int, float, bool, datetime
        ("Size > 1", {"b", "c"}),
        ("Size <= 1", {"a", "e"}),
        ("Size BETWEEN 0 AND 5", {"a", "b"}),
        ("Size = -3", {"e"}),
        ("Score < 1", {"a"}),
        ("Score >= 2.5", {"b"}),
        ("Score = 2.5", {"b"}),
        ("Vip = TRUE", {"a"}),
        ("Vip = false", {"b"}),
        ("Vip != true", {"b"}),
        ("Due > '2026-03-01T00:00:00Z'", {"b"}),
        ("Due BETWEEN '2025-12-31' AND '2026-01-02'", {"a"}),
        ("Due = '2026-01-01T01:00:00+01:00'", {"a"}),
        # keyword list: any element; != when none is equal
        ("Tags = 'blue'", {"a", "b"}),
        ("Tags = 'red'", {"a"}),
        ("Tags != 'red'", {"b"}),
        ("Tags IN ('red', 'green')", {"a"}),
        ("Tags IS NULL", {"c", "d", "e"}),
        # text
        ("Note = 'hello world'", {"a"}),
        ("Note STARTS_WITH 'hello'", {"a"}),
        # combinations; an attribute equality with more terms (the index walk)
        ("(Customer = 'globex' OR Size = 5) AND Tags IS NULL", {"c"}),
        ("Customer = 'acme' AND ExecutionStatus = 'Running'", {"a"}),
        ("Tags = 'blue' AND Size > 1", {"b"}),
        ("Customer = 'acme' AND (Vip = TRUE OR Score > 2)", {"a", "b"}),
        ("NOT (Customer = 'acme' OR Customer IS NULL)", {"c", "e"}),
        ("Customer = 'acme' AND Customer = 'globex'", set()),
        ("Customer = 'nobody'", set()),
    ]


async def test_every_operator_and_field_filters_real_executions(population: Population) -> None:
    client = population.client
    wrong = []
    for query, expected in matching(population):
        found = await ids(client, query)
        counted = (await client.count_activities(query)).count
        if (
            sorted(found) != sorted(expected)
            or counted != len(expected)
            or len(set(found)) != len(found)
        ):
            wrong.append((query, sorted(expected), found, counted))
    assert wrong == []


async def test_a_listing_is_newest_first_or_in_the_order_asked(population: Population) -> None:
    client = population.client
    assert await ids(client, "Customer = 'acme'") == ["b", "a"]
    assert await ids(client, "Customer = 'acme'", limit=1) == ["b"]
    assert await ids(client, "Tags = 'red'") == ["a"]  # one row, though the list holds it twice
    assert await ids(client, "ORDER BY ScheduleTime") == ["a", "b", "c", "d", "e"]
    assert await ids(client, "ORDER BY ScheduleTime DESC") == ["e", "d", "c", "b", "a"]
    # Closed ones by close time (c closed after b), then the open ones.
    assert await ids(client, "ORDER BY CloseTime DESC") == ["c", "b", "e", "d", "a"]
    assert await ids(client, "ORDER BY CloseTime ASC") == ["b", "c", "a", "d", "e"]
    assert await ids(client, "Size > 0 ORDER BY CloseTime DESC", limit=2) == ["c", "b"]


async def test_counts_group_by_status_under_an_attribute_filter(population: Population) -> None:
    counted = await population.client.count_activities("Customer = 'acme' GROUP BY ExecutionStatus")
    assert counted.count == 2
    assert {tuple(g.group_values): g.count for g in counted.groups} == {
        ("Running",): 1,
        ("Terminated",): 1,
    }


async def test_a_bulk_action_takes_an_attribute_query(population: Population) -> None:
    client = population.client
    assert await client.terminate_activities("Customer IN ('acme', 'initech')") == 2
    assert sorted(await ids(client, "ExecutionStatus = 'Terminated'")) == ["a", "b", "e"]


async def test_values_of_every_type_come_back_from_describe_and_list(
    client: Client, task_queue: str
) -> None:
    naive = datetime(2026, 2, 3, 4, 5, 6, 789012)
    given = attrs(
        customer="naïve-€ 'quoted'", size=-(2**63), score=3, vip=False, due=naive,
        tags=["x", "y", "x"], note="a\nb",
    )  # fmt: skip
    handle = await start(client, "typed", task_queue, given)
    described = (await handle.describe()).typed_search_attributes
    (listed,) = [e.typed_search_attributes async for e in client.list_activities()]
    assert described == listed == given
    assert described[DUE] == naive.replace(tzinfo=UTC)  # a naive datetime is taken as UTC
    assert described[SCORE] == 3.0 and isinstance(described[SCORE], float)
    assert described[TAGS] == ["x", "y", "x"]
    assert described.get(SearchAttributeKey.for_int("Customer")) is None  # another type
    plain = await start(client, "plain", task_queue)
    assert (await plain.describe()).typed_search_attributes == Attributes.empty


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: attrs(size="5"), TypeError, r"'Size' \(INT\) takes an int, not str"),
        (lambda: attrs(size=True), TypeError, r"takes an int, not bool"),
        (lambda: attrs(size=2**63), ValueError, r"does not fit in 64 bits"),
        (lambda: attrs(score=float("nan")), ValueError, r"not a finite number"),
        (lambda: attrs(vip=1), TypeError, r"takes a bool, not int"),
        (lambda: attrs(due="2026-01-01"), TypeError, r"takes a datetime, not str"),
        (lambda: attrs(tags="red"), TypeError, r"takes a sequence of str, not str"),
        (lambda: attrs(tags=["ok", 3]), TypeError, r"takes a str, not int"),
        (lambda: attrs(customer="x" * 2001), ValueError, r"over 2000 bytes"),
        (lambda: attrs(customer="a\x00b"), ValueError, r"NUL"),
        (lambda: keyword("ActivityId"), ValueError, r"built-in query field"),
        (lambda: keyword("order"), ValueError, r"word of the query language"),
        (lambda: keyword("1st"), ValueError, r"invalid search attribute name"),
        (lambda: keyword("a-b"), ValueError, r"invalid search attribute name"),
        (lambda: keyword(""), ValueError, r"invalid search attribute name"),
        (lambda: keyword(3), TypeError, r"name must be a str"),
        (
            lambda: Attributes([(CUSTOMER, "a"), (CUSTOMER, "b")]),
            ValueError,
            r"'Customer' is given twice",
        ),
    ],
)  # fmt: skip
def test_bad_search_attributes_are_refused_when_built(
    build: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build()


async def test_a_name_keeps_its_first_type_and_a_refused_start_writes_nothing(
    client: Client, task_queue: str
) -> None:
    await start(client, "first", task_queue, attrs(customer="acme"))
    as_int = Attributes([SearchAttributePair(SearchAttributeKey.for_int("Customer"), 7)])
    with pytest.raises(ValueError, match=r"'Customer' holds KEYWORD values .* gives it a INT"):
        await start(client, "second", task_queue, as_int)
    with pytest.raises(TypeError, match="must be a TypedSearchAttributes"):
        await client.start_activity(
            "idle", id="third", task_queue=task_queue, start_to_close_timeout=TIMEOUT,
            search_attributes={"Customer": "acme"},  # type: ignore[arg-type]
        )  # fmt: skip
    assert await ids(client, "ActivityId STARTS_WITH ''") == ["first"]
    assert await ids(client, "Customer = 'acme'") == ["first"]


async def test_queries_with_unknown_names_or_wrong_types_are_value_errors(
    client: Client, task_queue: str
) -> None:
    await start(client, "one", task_queue, attrs(size=1, vip=True, tags=["a"]))
    for query, message in [
        ("Nobody = 'x'", r"unknown field 'Nobody'"),
        ("Size = 'x'", r"Size takes a number"),
        ("Size = 1.5", r"Size takes an integer"),
        ("Vip > TRUE", r"> does not work on Vip"),
        ("Vip = 'yes'", r"Vip takes TRUE or FALSE"),
        ("Tags = 1", r"expected a quoted string"),
        ("Size STARTS_WITH '1'", r"STARTS_WITH works on string fields"),
    ]:
        with pytest.raises(ValueError, match=message):
            await ids(client, query)
        with pytest.raises(ValueError, match=message):
            await client.count_activities(query)


async def test_a_name_another_client_started_with_is_known_at_once(
    client: Client, db_url: str, task_queue: str
) -> None:
    assert await ids(client, "ActivityId = 'x'") == []  # this client has looked up the names
    other = await Client.connect(db_url, namespace=client.namespace)
    try:
        await start(other, "elsewhere", task_queue, attrs(note="hi"))
    finally:
        await other.close()
    assert await ids(client, "Note = 'hi'") == ["elsewhere"]


def index_rows(store_kind: str, request: pytest.FixtureRequest) -> int:
    sql = "SELECT count(*) FROM search_attributes"
    if store_kind == "sqlite":
        with closing(sqlite3.connect(request.getfixturevalue("db_path"))) as conn:
            return int(conn.execute(sql).fetchone()[0])
    schema = request.getfixturevalue("pg_schema")
    return int(admin(f'SELECT count(*) FROM "{schema}".search_attributes')[0][0])


async def test_prune_deletes_the_values_with_their_execution(
    client: Client, task_queue: str, store_kind: str, request: pytest.FixtureRequest
) -> None:
    kept = await start(client, "kept", task_queue, attrs(customer="k", tags=["1", "2"]))
    gone = await start(client, "gone", task_queue, attrs(customer="g", size=1))
    assert index_rows(store_kind, request) == 5  # a row per name, per element of a list
    await gone.terminate()
    closed = (await gone.describe()).close_time
    assert closed is not None
    pruned = await client.store.prune(client.namespace, closed.timestamp() + 1)
    assert pruned == 1
    assert index_rows(store_kind, request) == 3
    assert await ids(client, "Customer IS NOT NULL") == ["kept"]
    assert (await kept.describe()).status is ActivityExecutionStatus.RUNNING
