"""Parse the subset of Temporal's visibility query syntax that errands supports.

::

    query     := condition ( AND condition )* [ GROUP BY ExecutionStatus ]
    condition := Field ( = | != ) 'value'  |  ActivityId STARTS_WITH 'prefix'
    Field     := ActivityId | ActivityType | TaskQueue | ExecutionStatus

Values are single- or double-quoted strings ('' or \\' escapes a quote).
ExecutionStatus values: Running Completed Failed Canceled Terminated TimedOut.
The result is a ``Query`` of bound values: nothing is pasted into SQL.
"""

from __future__ import annotations

import re

from errands._lifecycle import Status
from errands.store import Condition, Query

FIELDS = ("ActivityId", "ActivityType", "TaskQueue", "ExecutionStatus")

STATUS_NAMES = {
    "Running": Status.RUNNING,
    "Completed": Status.COMPLETED,
    "Failed": Status.FAILED,
    "Canceled": Status.CANCELED,
    "Terminated": Status.TERMINATED,
    "TimedOut": Status.TIMED_OUT,
    "Paused": Status.PAUSED,
}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
      | (?P<op>!=|=)
      | (?P<word>[A-Za-z_][A-Za-z_0-9]*)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
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
        out.append((kind, value))
    return out


def _unquote(token: str) -> str:
    quote = token[0]
    body = token[1:-1]
    return re.sub(r"\\(.)", r"\1", body.replace(quote * 2, quote))


def parse_query(text: str | None) -> Query:
    """Parse a visibility query; None or blank means everything.

    Raises ValueError naming what is wrong for anything outside the subset.
    """
    if text is None or not text.strip():
        return Query()
    tokens = _tokens(text)
    conditions: list[Condition] = []
    group_by = False
    i = 0

    def expect(kind: str, what: str) -> str:
        nonlocal i
        if i >= len(tokens):
            raise ValueError(f"invalid query {text!r}: expected {what} at the end")
        found_kind, value = tokens[i]
        if found_kind != kind:
            raise ValueError(f"invalid query {text!r}: expected {what}, found {value!r}")
        i += 1
        return value

    while True:
        after_and = i > 0 and tokens[i - 1] == ("word", "AND")
        if i < len(tokens) and tokens[i] == ("word", "GROUP") and not after_and:
            i += 1
            if expect("word", "BY") != "BY":
                raise ValueError(f"invalid query {text!r}: expected BY after GROUP")
            field = expect("word", "a field to group by")
            if field != "ExecutionStatus":
                raise ValueError(
                    f"invalid query {text!r}: can only GROUP BY ExecutionStatus, not {field!r}"
                )
            group_by = True
            break
        field = expect("word", "a field name")
        if field not in FIELDS:
            raise ValueError(
                f"invalid query {text!r}: unknown field {field!r} (known: {', '.join(FIELDS)})"
            )
        if i < len(tokens) and tokens[i] == ("word", "STARTS_WITH"):
            i += 1
            op = "STARTS_WITH"
            if field != "ActivityId":
                raise ValueError(f"invalid query {text!r}: STARTS_WITH works on ActivityId only")
        else:
            op = expect("op", "= or !=")
        value = _unquote(expect("string", "a quoted value"))
        if field == "ExecutionStatus":
            if value not in STATUS_NAMES:
                raise ValueError(
                    f"invalid query {text!r}: unknown ExecutionStatus {value!r} "
                    f"(known: {', '.join(STATUS_NAMES)})"
                )
            value = STATUS_NAMES[value].value
        conditions.append(Condition(field, op, value))
        if i >= len(tokens):
            break
        if tokens[i] == ("word", "AND"):
            i += 1
            continue
        if tokens[i] == ("word", "GROUP"):
            continue
        raise ValueError(f"invalid query {text!r}: expected AND, found {tokens[i][1]!r}")
    if i < len(tokens):
        raise ValueError(f"invalid query {text!r}: unexpected {tokens[i][1]!r} after GROUP BY")
    return Query(tuple(conditions), group_by)
