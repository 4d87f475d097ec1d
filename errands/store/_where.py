"""A parsed visibility query as SQL over bound parameters.

The SQL text is made only of the fixed pieces here and the column map of
``_rows.QUERY_FIELDS``; every value of the query is a bound parameter.

Search attributes live in a table of their own, ``search_attributes``: a row
per execution and name (per distinct element of a keyword list), the value in
the column of its type (``VALUE_COLUMNS``), with one B-tree per value column
on (namespace, name, value, execution id). Why this layout: a predicate on
an attribute is then a range of one index on both databases (a JSON column
would need a generated column or an expression index per name, known in
advance); the index entries of one value come in execution-id order, so a
listing newest first by one attribute walks that range backwards and stops
after a page (``driver``), whatever the number of executions that match;
and the executions table stays as narrow as before for the claims. The
typed values also sit on the execution's row, as JSON, for describe and
list to return without a join.

Two-valued logic throughout: a comparison on a field an execution lacks is
false (never NULL), and NOT is rendered ``IS NOT TRUE``, so ``NOT X = 'a'``
keeps the executions without X on both databases.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from errands.common import SearchAttributeIndexedValueType
from errands.store._base import And, Between, Compare, Expr, Field, In, IsNull, Not, Or, Query
from errands.store._dialect import Dialect
from errands.store._rows import QUERY_FIELDS, VALUE_COLUMNS

_ORDER_COLUMNS = {"ScheduleTime": "schedule_time", "CloseTime": "close_time"}


COUNTED_FIELDS = {
    "TaskQueue": "task_queue",
    "ActivityType": "activity_type",
    "ExecutionStatus": "status",  # counted as reported
}
"""The fields the ``execution_counts`` table counts by, and its columns."""


def counted(query: Query) -> bool:
    """Whether the query's condition names only the fields that
    ``execution_counts`` keeps (so counts can be read from it)."""
    return query.where is None or _fields(query.where) <= COUNTED_FIELDS.keys()


def _fields(e: Expr) -> set[str]:
    if isinstance(e, (And, Or)):
        return set().union(*(_fields(t) for t in e.terms))
    if isinstance(e, Not):
        return _fields(e.term)
    return {e.field.name if e.field.attribute is None else f"attribute {e.field.name}"}


def where(
    dialect: Dialect, namespace: str, query: Query, columns: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    """The query's condition as SQL over the executions table (always
    narrowed to the namespace, ``:ns``), and its parameters; over another
    table with ``columns`` (field name to column) for the built-in fields."""
    render = _Render(dialect, namespace, columns or QUERY_FIELDS)
    sql = f"namespace = {dialect.param('ns')}"
    if query.where is not None:
        sql += f" AND {render.expr(query.where)}"
    return sql, render.params


def order(query: Query) -> str:
    """The ORDER BY list of a listing: newest first unless the query orders
    by a time (open executions, without a CloseTime, come last)."""
    if query.order_by is None:
        return "id DESC"
    column = _ORDER_COLUMNS[query.order_by]
    direction = "DESC" if query.descending else "ASC"
    return f"{column} IS NULL, {column} {direction}, id {direction}"


def driver(query: Query) -> tuple[Compare, Query] | None:
    """For a listing newest first: an equality on a search attribute that
    every match must satisfy (the query, or a term of its top-level AND),
    and the query without it. The listing then walks that attribute's index
    from the newest execution down and stops after a page, instead of
    gathering every execution with the value before sorting them."""
    if query.order_by is not None or query.where is None:
        return None
    terms = query.where.terms if isinstance(query.where, And) else (query.where,)
    for i, term in enumerate(terms):
        if isinstance(term, Compare) and term.op == "=" and term.field.attribute is not None:
            rest = terms[:i] + terms[i + 1 :]
            left: Expr | None = None if not rest else rest[0] if len(rest) == 1 else And(rest)
            return term, replace(query, where=left)
    return None


class _Render:
    def __init__(self, dialect: Dialect, namespace: str, columns: dict[str, str]) -> None:
        self.dialect = dialect
        self.columns = columns
        self.params: dict[str, Any] = {"ns": namespace}

    def bind(self, value: Any) -> str:
        name = f"q{len(self.params)}"
        self.params[name] = value
        return self.dialect.param(name)

    def expr(self, e: Expr) -> str:
        if isinstance(e, And):
            return "(" + " AND ".join(self.expr(t) for t in e.terms) + ")"
        if isinstance(e, Or):
            return "(" + " OR ".join(self.expr(t) for t in e.terms) + ")"
        if isinstance(e, Not):
            return f"({self.expr(e.term)}) IS NOT TRUE"
        if isinstance(e, IsNull):
            if e.field.attribute is None:
                return f"{self.columns[e.field.name]} IS NULL"
            return f"NOT {self.has(e.field, None)}"
        if (
            isinstance(e, Compare)
            and e.op == "!="
            and e.field.attribute is SearchAttributeIndexedValueType.KEYWORD_LIST
        ):
            # Has the list, and no element is equal.
            equal = replace(e, op="=")
            return f"({self.has(e.field, None)} AND NOT {self.expr(equal)})"
        if e.field.attribute is None:
            return self.test(self.columns[e.field.name], e)
        return self.has(e.field, self.test(VALUE_COLUMNS[e.field.attribute], e))

    def has(self, field: Field, test: str | None) -> str:
        """Whether the execution has a value of the search attribute (that
        passes the test)."""
        sql = (
            "id IN (SELECT execution_id FROM search_attributes "
            f"WHERE namespace = {self.dialect.param('ns')} AND name = {self.bind(field.name)}"
        )
        return sql + ("" if test is None else f" AND {test}") + ")"

    def test(self, column: str, e: Compare | In | Between) -> str:
        if isinstance(e, In):
            return f"{column} IN ({', '.join(self.bind(v) for v in e.values)})"
        if isinstance(e, Between):
            return f"{column} BETWEEN {self.bind(e.low)} AND {self.bind(e.high)}"
        p = self.bind(e.value)
        if e.op == "STARTS_WITH":
            return f"substr({column}, 1, length({p})) = {p}"
        if e.op not in ("=", "!=", "<", "<=", ">", ">="):
            raise ValueError(f"unsupported operator {e.op!r}")
        return f"{column} {'<>' if e.op == '!=' else e.op} {p}"
