"""Parse errands' visibility queries (Temporal's list-filter syntax, grown).

::

    query     := [ expr ] [ ORDER BY (ScheduleTime | CloseTime) [ ASC | DESC ] ]
               | [ expr ] GROUP BY (ExecutionStatus | TaskQueue | ActivityType)
    expr      := term ( OR term )*
    term      := factor ( AND factor )*
    factor    := NOT factor | '(' expr ')' | predicate
    predicate := Field ( = | != | < | <= | > | >= ) value
               | Field [ NOT ] IN '(' value ( ',' value )* ')'
               | Field [ NOT ] BETWEEN value AND value
               | Field IS [ NOT ] NULL
               | Field STARTS_WITH 'prefix'
    value     := 'string' | "string" | number | TRUE | FALSE

Keywords may be written in any case; field names are case-sensitive.
Strings take '' (or \\') for a quote. Fields:

- ActivityId, ActivityType, TaskQueue: strings.
- ExecutionStatus: Running Completed Failed Canceled Terminated TimedOut
  Paused (RUNNING with run state PAUSED); = != IN only.
- RunState: Scheduled Started CancelRequested Paused PauseRequested (NULL
  once closed); = != IN IS NULL only.
- ScheduleTime, CloseTime (NULL while open): ISO-8601 strings, e.g.
  '2026-01-31T12:00:00Z' (no zone: UTC).
- Attempt: an integer.
- every search attribute the namespace's executions were started with, by
  its name, typed as it was started: Keyword and Text take strings (Text
  compares whole values: there is no full-text search), Int integers,
  Double numbers, Bool TRUE or FALSE, Datetime ISO-8601 strings, KeywordList
  strings (a term matches if any element does; ``!=`` if none is equal).
  A name no execution was started with is refused as an unknown field.

A comparison, IN or BETWEEN matches only executions that have the field
(``X != 'a'`` leaves out those without X); NOT negates a whole term
(``NOT X = 'a'`` keeps them). Ranges and STARTS_WITH refuse Bool,
ExecutionStatus and RunState; STARTS_WITH takes string fields only.

The result is a ``Query`` tree of bound values: nothing is pasted into SQL.
Anything else raises ValueError naming what is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone

from errands._lifecycle import RunState, Status
from errands._search_attributes import (
    BUILT_IN_FIELDS,
    INT64,
    QUERY_KEYWORDS,
    SearchAttributeIndexedValueType,
)
from errands.store import (
    And,
    Between,
    Compare,
    Expr,
    Field,
    In,
    IsNull,
    Not,
    Or,
    Query,
)
from errands.store._base import ORDER_FIELDS, Value

IVT = SearchAttributeIndexedValueType

FIELDS = BUILT_IN_FIELDS

STATUS_NAMES = {
    "Running": Status.RUNNING,
    "Completed": Status.COMPLETED,
    "Failed": Status.FAILED,
    "Canceled": Status.CANCELED,
    "Terminated": Status.TERMINATED,
    "TimedOut": Status.TIMED_OUT,
    "Paused": Status.PAUSED,
}

RUN_STATE_NAMES = {
    "Scheduled": RunState.SCHEDULED,
    "Started": RunState.STARTED,
    "CancelRequested": RunState.CANCEL_REQUESTED,
    "Paused": RunState.PAUSED,
    "PauseRequested": RunState.PAUSE_REQUESTED,
}

GROUP_FIELDS = ("ExecutionStatus", "TaskQueue", "ActivityType")
"""The fields counts may group by (``count_activities`` only)."""

MAX_DEPTH = 32
"""Deepest nesting of parentheses and NOTs."""
MAX_VALUES = 500
"""Most values (and predicates) in one query: the databases cap bound
parameters and expression depth, and a query must fail here, not there."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_STRING_FIELD = {"ActivityId", "ActivityType", "TaskQueue"}
_TIME_FIELD = {"ScheduleTime", "CloseTime"}
_STRINGS = (IVT.KEYWORD, IVT.TEXT, IVT.KEYWORD_LIST)
_RANGE_OPS = ("<", "<=", ">", ">=")

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
      | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z_0-9]*)
      | (?P<bad>\S)
    )""",
    re.VERBOSE | re.DOTALL,
)

Token = tuple[str, str]


class UnknownFieldError(ValueError):
    """A query names a field that is neither built in nor a search attribute
    known to the caller (who may look the names up again and retry)."""


def _tokens(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        pos = m.end()
        kind = m.lastgroup or "bad"
        value = m.group(kind)
        if kind == "bad":
            raise ValueError(
                f"invalid query {text!r}: unexpected {value!r} at position {m.start(kind)}"
            )
        if kind == "word" and value.upper() in QUERY_KEYWORDS:
            kind, value = "keyword", value.upper()
        out.append((kind, value))
    return out


def quote_string(value: str) -> str:
    """A query string literal holding exactly ``value``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def without_order(text: str | None) -> str | None:
    """The query without its trailing ``ORDER BY`` clause, if it has one (what
    it counts is what it lists); None if nothing is left. Never raises: a
    malformed query is returned as it is, for the parser to refuse."""
    if text is None:
        return None
    pos = 0
    words: list[tuple[str, int]] = []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup in (None, "bad"):
            break
        pos = m.end()
        if m.lastgroup == "word":
            words.append((m.group("word").upper(), m.start("word")))
            if len(words) >= 2 and words[-2][0] == "ORDER" and words[-1][0] == "BY":
                return text[: words[-2][1]].strip() or None
        else:
            words.append(("", m.start()))
    return text.strip() or None


def _unquote(token: str) -> str:
    quote = token[0]
    body = token[1:-1]
    return re.sub(r"\\(.)", r"\1", body.replace(quote * 2, quote), flags=re.DOTALL)


def parse_query(
    text: str | None, attributes: Mapping[str, SearchAttributeIndexedValueType] | None = None
) -> Query:
    """Parse a visibility query; None or blank means everything.
    ``attributes``: the search attribute names the query may use, and their
    types.

    Raises ValueError naming what is wrong for anything outside the grammar
    (UnknownFieldError, a ValueError, for an unknown field name).
    """
    if text is None or not text.strip():
        return Query()
    return _Parser(text, attributes or {}).query()


class _Parser:
    def __init__(self, text: str, attributes: Mapping[str, SearchAttributeIndexedValueType]):
        self.text = text
        self.attributes = attributes
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0
        self.values = 0

    # -- tokens

    def error(self, message: str) -> ValueError:
        return ValueError(f"invalid query {self.text!r}: {message}")

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def at(self, kind: str, value: str | None = None) -> bool:
        found = self.peek()
        return found is not None and found[0] == kind and (value is None or found[1] == value)

    def take(self, kind: str, value: str | None, what: str) -> str:
        found = self.peek()
        if found is None:
            raise self.error(f"expected {what} at the end")
        if found[0] != kind or (value is not None and found[1] != value):
            raise self.error(f"expected {what}, found {found[1]!r}")
        self.i += 1
        return found[1]

    # -- grammar

    def query(self) -> Query:
        where = None
        if not self.at("keyword", "ORDER") and not self.at("keyword", "GROUP"):
            where = self.expr()
        order_by, descending, group_by = None, True, ""
        if self.at("keyword", "ORDER"):
            self.i += 1
            self.take("keyword", "BY", "BY after ORDER")
            order_by = self.take("word", None, "a field to order by")
            if order_by not in ORDER_FIELDS:
                raise self.error(f"can only ORDER BY {' or '.join(ORDER_FIELDS)}, not {order_by!r}")
            descending = False
            if self.at("keyword", "ASC") or self.at("keyword", "DESC"):
                descending = self.take("keyword", None, "ASC or DESC") == "DESC"
        elif self.at("keyword", "GROUP"):
            self.i += 1
            self.take("keyword", "BY", "BY after GROUP")
            field = self.take("word", None, "a field to group by")
            if field not in GROUP_FIELDS:
                raise self.error(f"can only GROUP BY {', '.join(GROUP_FIELDS)}, not {field!r}")
            group_by = field
        found = self.peek()
        if found is not None:
            expected = "AND, OR" if order_by is None and not group_by else "the end"
            raise self.error(f"expected {expected}, found {found[1]!r}")
        return Query(
            where,
            order_by,
            descending,
            group_by == "ExecutionStatus",
            group_by if group_by and group_by != "ExecutionStatus" else None,
        )

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels")

    def expr(self) -> Expr:
        self.nested()
        terms = [self.term()]
        while self.at("keyword", "OR"):
            self.i += 1
            terms.append(self.term())
        self.depth -= 1
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def term(self) -> Expr:
        factors = [self.factor()]
        while self.at("keyword", "AND"):
            self.i += 1
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else And(tuple(factors))

    def factor(self) -> Expr:
        if self.at("keyword", "NOT"):
            self.i += 1
            self.nested()
            inner = self.factor()
            self.depth -= 1
            return Not(inner)
        if self.at("punct", "("):
            self.i += 1
            inner = self.expr()
            self.take("punct", ")", "')'")
            return inner
        return self.predicate()

    def field(self) -> Field:
        found = self.peek()
        if found is None:
            raise self.error("expected a field name at the end")
        if found[0] != "word":
            raise self.error(f"expected a field name, found {found[1]!r}")
        self.i += 1
        name = found[1]
        if name in FIELDS:
            return Field(name)
        kind = self.attributes.get(name)
        if kind is None:
            raise UnknownFieldError(
                f"invalid query {self.text!r}: unknown field {name!r} (built in: "
                f"{', '.join(FIELDS)}; no execution of this namespace was started with a "
                f"search attribute of that name)"
            )
        return Field(name, kind)

    def predicate(self) -> Expr:
        field = self.field()
        self.count()
        if self.at("keyword", "IS"):
            self.i += 1
            negated = self.at("keyword", "NOT")
            self.i += negated
            self.take("keyword", "NULL", "NULL")
            if field.name in FIELDS and field.name not in ("RunState", "CloseTime"):
                raise self.error(f"{field.name} is never NULL")
            return Not(IsNull(field)) if negated else IsNull(field)
        negated = self.at("keyword", "NOT")
        if negated:
            self.i += 1
            if not (self.at("keyword", "IN") or self.at("keyword", "BETWEEN")):
                raise self.error(f"expected IN or BETWEEN after {field.name} NOT")
        if self.at("keyword", "IN"):
            self.i += 1
            self.take("punct", "(", "'(' after IN")
            values = [self.value(field)]
            while self.at("punct", ","):
                self.i += 1
                values.append(self.value(field))
            self.take("punct", ")", "',' or ')'")
            found: Expr = In(field, tuple(values))
        elif self.at("keyword", "BETWEEN"):
            self.i += 1
            self.ranged(field, "BETWEEN")
            low = self.value(field)
            self.take("keyword", "AND", "AND in BETWEEN")
            found = Between(field, low, self.value(field))
        elif self.at("keyword", "STARTS_WITH"):
            self.i += 1
            if field.name not in _STRING_FIELD and field.attribute not in _STRINGS:
                raise self.error(f"STARTS_WITH works on string fields, not {field.name}")
            found = Compare(field, "STARTS_WITH", self.string())
        else:
            op = self.take("op", None, "an operator (= != < <= > >= IN BETWEEN IS STARTS_WITH)")
            op = "!=" if op == "<>" else op
            if op in _RANGE_OPS:
                self.ranged(field, op)
            found = Compare(field, op, self.value(field))
        return Not(found) if negated else found

    def ranged(self, field: Field, op: str) -> None:
        if field.name in ("ExecutionStatus", "RunState") or field.attribute is IVT.BOOL:
            raise self.error(f"{op} does not work on {field.name}")

    def count(self) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise self.error(f"more than {MAX_VALUES} values")

    # -- values

    def literal(self, accepts: Callable[[Token], bool], refusal: str) -> str:
        """The next token's text if ``accepts`` it; else ValueError with
        ``refusal`` and what was found."""
        found = self.peek()
        if found is None or not accepts(found):
            raise self.error(f"{refusal} {'the end' if found is None else repr(found[1])}")
        self.i += 1
        self.count()
        return found[1]

    def string(self) -> str:
        value = _unquote(
            self.literal(lambda t: t[0] == "string", "expected a quoted string, found")
        )
        if "\x00" in value:
            raise self.error("a string holds a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.error("a string is not valid Unicode (a lone surrogate)") from None
        return value

    def value(self, field: Field) -> Value:
        name, kind = field.name, field.attribute
        if name == "ExecutionStatus":
            return str(self.named(STATUS_NAMES, name).value)
        if name == "RunState":
            return str(self.named(RUN_STATE_NAMES, name).value)
        if name in _TIME_FIELD:
            return (self.datetime(name) - _EPOCH).total_seconds()
        if kind is IVT.DATETIME:
            return (self.datetime(name) - _EPOCH) // timedelta(microseconds=1)
        if name == "Attempt" or kind is IVT.INT:
            return self.number(name, integer=True)
        if kind is IVT.DOUBLE:
            return float(self.number(name, integer=False))
        if kind is IVT.BOOL:
            truth = ("keyword", "TRUE"), ("keyword", "FALSE")
            return int(
                self.literal(truth.__contains__, f"{name} takes TRUE or FALSE, not") == "TRUE"
            )
        return self.string()

    def named(self, names: Mapping[str, Status | RunState], field: str) -> Status | RunState:
        value = self.string()
        if value not in names:
            raise self.error(f"unknown {field} {value!r} (known: {', '.join(names)})")
        return names[value]

    def datetime(self, field: str) -> datetime:
        value = self.string()
        try:  # Python 3.10's fromisoformat does not read "Z"
            moment = datetime.fromisoformat(re.sub(r"[Zz]$", "+00:00", value))
        except ValueError:
            raise self.error(f"{field} takes an ISO-8601 time, not {value!r}") from None
        return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment

    def number(self, field: str, *, integer: bool) -> int | float:
        token = self.literal(lambda t: t[0] == "number", f"{field} takes a number, not")
        if integer:
            if not re.fullmatch(r"-?\d+", token):
                raise self.error(f"{field} takes an integer, not {token}")
            number = int(token)
            if not INT64[0] <= number <= INT64[1]:
                raise self.error(f"{token} does not fit in 64 bits")
            return number
        number_f = float(token)
        if not math.isfinite(number_f):
            raise self.error(f"{token} is not a finite number")
        return number_f
