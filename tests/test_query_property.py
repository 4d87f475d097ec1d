"""Property tests of the query language (hypothesis): any text either parses
or raises ValueError; every query the grammar builds parses, and runs on
both real stores without a database error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from errands._query import RUN_STATE_NAMES, STATUS_NAMES, parse_query
from errands.cli import quoted
from errands.client import Client
from errands.common import SearchAttributeIndexedValueType as IVT
from errands.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from errands.store import Query

T = TypeVar("T")

ATTRIBUTES = {
    "Customer": IVT.KEYWORD,
    "Note": IVT.TEXT,
    "Size": IVT.INT,
    "Score": IVT.DOUBLE,
    "Vip": IVT.BOOL,
    "Due": IVT.DATETIME,
    "Tags": IVT.KEYWORD_LIST,
}
BUILT_IN = {
    "ActivityId": "string",
    "ActivityType": "string",
    "TaskQueue": "string",
    "ExecutionStatus": "status",
    "RunState": "run_state",
    "ScheduleTime": "time",
    "CloseTime": "time",
    "Attempt": "int",
}
KIND = {**BUILT_IN, **{name: kind.name.lower() for name, kind in ATTRIBUTES.items()}}
NULLABLE = {"RunState", "CloseTime", *ATTRIBUTES}
UNORDERED = {"status", "run_state", "bool"}
STRINGS = {"string", "keyword", "text", "keyword_list"}
WORDS = [
    "AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "ORDER", "GROUP", "BY", "ASC", "DESC",
    "STARTS_WITH", "TRUE", "false", "(", ")", ",", "=", "!=", "<>", "<", "<=", ">", ">=",
    "'x'", "''", "'2026-01-01'", "1", "-2.5", "1e999", "99999999999999999999", "'\\'", "\\",
    ";", "--", "/*", "*", "%", "?", ":ns", "$1", "%(ns)s", *KIND,
]  # fmt: skip
"""Tokens for soups of query-like text: a random query is mostly refused, a
soup of the language's own words gets much further into the parser."""


def cased(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word, word.lower(), word.capitalize()])


strings = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8
).map(quoted)
any_strings = st.one_of(
    strings,
    st.text(max_size=8).map(quoted),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff"]).map(quoted),
)
"""Strings as anyone may type them: NUL and lone surrogates too (refused)."""
times = st.datetimes(timezones=st.none() | st.just(timezone.utc)).map(
    lambda t: quoted(t.isoformat())
)


def values(kind: str, raw: bool) -> st.SearchStrategy[str]:
    """Literals of a field's kind (``raw``: strings may hold what is refused)."""
    if kind in STRINGS:
        return any_strings if raw else strings
    if kind == "status":
        return st.sampled_from(sorted(STATUS_NAMES)).map(quoted)
    if kind == "run_state":
        return st.sampled_from(sorted(RUN_STATE_NAMES)).map(quoted)
    if kind in ("time", "datetime"):
        return times
    if kind == "int":
        return st.integers(-(2**63), 2**63 - 1).map(str)
    if kind == "double":
        return st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.integers(
            -(10**6), 10**6
        ).map(str)
    return st.sampled_from(["TRUE", "FALSE", "true", "False"])


@st.composite
def predicates(draw: st.DrawFn, raw: bool) -> str:
    field = draw(st.sampled_from(sorted(KIND)))
    kind = KIND[field]
    value = values(kind, raw)
    forms = ["=", "!=", "<>", "in", "not in"]
    if kind not in UNORDERED:
        forms += ["<", "<=", ">", ">=", "between", "not between"]
    if field in NULLABLE:
        forms += ["is null", "is not null"]
    if kind in STRINGS:
        forms += ["starts_with"]
    form = draw(st.sampled_from(forms))
    if form in ("in", "not in"):
        listed = ", ".join(draw(st.lists(value, min_size=1, max_size=4)))
        return f"{field} {draw(cased(form))} ({listed})"
    if form in ("between", "not between"):
        return f"{field} {draw(cased(form))} {draw(value)} {draw(cased('AND'))} {draw(value)}"
    if form in ("is null", "is not null"):
        return f"{field} {draw(cased(form))}"
    return f"{field} {draw(cased(form)) if form == 'starts_with' else form} {draw(value)}"


@st.composite
def expressions(draw: st.DrawFn, raw: bool, depth: int = 0) -> str:
    if depth >= 3 or draw(st.booleans()):
        return draw(predicates(raw))
    shape = draw(st.sampled_from(["and", "or", "not", "parentheses"]))
    if shape == "not":
        return f"{draw(cased('NOT'))} {draw(expressions(raw, depth + 1))}"
    if shape == "parentheses":
        return f"({draw(expressions(raw, depth + 1))})"
    terms = draw(st.lists(expressions(raw, depth + 1), min_size=2, max_size=3))
    return f" {draw(cased(shape.upper()))} ".join(terms)


@st.composite
def queries(draw: st.DrawFn, raw: bool = False) -> str:
    """A query the grammar of ``errands._query`` builds (``raw``: its
    strings may hold what the parser refuses)."""
    text = draw(st.none() | expressions(raw))
    tail = draw(
        st.sampled_from(["", "GROUP BY ExecutionStatus", "order by CloseTime"])
        | st.tuples(st.sampled_from(["ScheduleTime", "CloseTime"]), cased("DESC")).map(
            lambda t: f"ORDER BY {t[0]} {t[1]}"
        )
    )
    return " ".join(part for part in (text, tail) if part)


soups = st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join)


def parses_or_value_error(text: str) -> Query | None:
    """The parsed query, or None when it raised ValueError (anything else
    raised fails the test)."""
    try:
        return parse_query(text, ATTRIBUTES)
    except ValueError:
        return None


@settings(max_examples=400, deadline=None)
@given(st.text() | soups)
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    parses_or_value_error(text)


@settings(max_examples=300, deadline=None)
@given(queries())
def test_every_query_the_grammar_builds_parses(text: str) -> None:
    parse_query(text, ATTRIBUTES)


class LoopThread:
    """An event loop on a thread of its own, for a synchronous hypothesis
    test to drive a client with."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def populate(client: Client) -> None:
    """Executions with and without every attribute, open and closed."""
    key = SearchAttributeKey
    full = TypedSearchAttributes(
        [
            SearchAttributePair(key.for_keyword("Customer"), "acme"),
            SearchAttributePair(key.for_text("Note"), "it's"),
            SearchAttributePair(key.for_int("Size"), 3),
            SearchAttributePair(key.for_float("Score"), 0.5),
            SearchAttributePair(key.for_bool("Vip"), True),
            SearchAttributePair(key.for_datetime("Due"), datetime(2026, 1, 1)),
            SearchAttributePair(key.for_keyword_list("Tags"), ["a", "b"]),
        ]
    )
    for i, attributes in enumerate([full, None, full]):
        handle = await client.start_activity(
            "idle",
            id=f"p-{i}",
            task_queue="property",
            start_to_close_timeout=timedelta(seconds=10),
            search_attributes=attributes,
        )
        if i:
            await handle.terminate()


Work = Callable[[Client], Coroutine[Any, Any, None]]


@pytest.fixture
def run_on_store(db_url: str) -> Iterator[Callable[[Work], None]]:
    """Run work with a client of this test's store (populated)."""
    loop = LoopThread()
    client = loop.run(Client.connect(db_url))
    try:
        loop.run(populate(client))
        loop.run(client.count_activities())
        yield lambda work: loop.run(work(client))
    finally:
        loop.run(client.close())
        loop.close()


async def listed(client: Client, text: str) -> None:
    if not parse_query(text, ATTRIBUTES).group_by_status:
        [e async for e in client.list_activities(text, limit=50)]
    await client.count_activities(text)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=st.one_of(queries(), queries(raw=True), soups))
def test_queries_run_on_a_real_store_without_a_database_error(
    run_on_store: Callable[[Work], None], text: str
) -> None:
    if parses_or_value_error(text) is None:
        return
    run_on_store(lambda client: listed(client, text))
