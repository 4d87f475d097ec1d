"""Search attributes: typed, named values an execution carries for queries
(the shapes of ``temporalio.common``; ``errands.common`` exports them).

A key is a name and a type; ``TypedSearchAttributes`` checks every value
against its key's type when it is built, so a start never sees a bad one.
Names are query words (``[A-Za-z_][A-Za-z0-9_]*``, at most 64 characters)
that are neither a built-in query field nor a keyword of the query language.
"""

from __future__ import annotations

import enum
import math
import re
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar, overload

T = TypeVar("T")

BUILT_IN_FIELDS = (
    "ActivityId",
    "ActivityType",
    "TaskQueue",
    "ExecutionStatus",
    "ScheduleTime",
    "CloseTime",
    "Attempt",
    "RunState",
)
"""Query fields every execution has; no search attribute may take these names."""

QUERY_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "ORDER", "GROUP", "BY", "ASC", "DESC"}
    | {"STARTS_WITH", "TRUE", "FALSE"}
)
"""Words of the query language (any case); not usable as names either."""

MAX_NAME_CHARS = 64
MAX_STRING_BYTES = 2000
"""Longest keyword or text value (UTF-8): every string value is indexed, and a
PostgreSQL B-tree entry must fit in a third of a page."""
INT64 = (-(2**63), 2**63 - 1)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SearchAttributeIndexedValueType(enum.IntEnum):
    """The type of a search attribute's values (Temporal's numbering)."""

    TEXT = 1  # a string, matched as a whole (errands has no full-text search)
    KEYWORD = 2  # a string: =, !=, IN, STARTS_WITH, ranges
    INT = 3  # a 64-bit integer
    DOUBLE = 4  # a finite float
    BOOL = 5
    DATETIME = 6  # stored to the microsecond, in UTC
    KEYWORD_LIST = 7  # strings; a query term matches if any element does


def check_name(name: object) -> str:
    """The name, if a search attribute may take it.

    Raises TypeError if it is not a string, ValueError if it is not a query
    word, is too long, or is a built-in field or a query keyword.
    """
    if not isinstance(name, str):
        raise TypeError(f"a search attribute name must be a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
        raise ValueError(
            f"invalid search attribute name {name!r}: use letters, digits and '_' "
            f"(not first a digit), at most {MAX_NAME_CHARS} characters"
        )
    if name in BUILT_IN_FIELDS:
        raise ValueError(f"search attribute name {name!r} is a built-in query field")
    if name.upper() in QUERY_KEYWORDS:
        raise ValueError(f"search attribute name {name!r} is a word of the query language")
    return name


@dataclass(frozen=True)
class SearchAttributeKey(Generic[T]):
    """A search attribute's name and value type; make one with a ``for_*``
    function, e.g. ``SearchAttributeKey.for_keyword("Customer")``.

    Two keys are equal when name and type are. Raises ValueError / TypeError
    (see ``check_name``) for a name no search attribute may take.
    """

    name: str
    indexed_value_type: SearchAttributeIndexedValueType

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(
            self, "indexed_value_type", SearchAttributeIndexedValueType(self.indexed_value_type)
        )

    @property
    def origin_value_type(self) -> type:
        """The Python type of this key's values."""
        return _PYTHON_TYPE[self.indexed_value_type]

    def value_set(self, value: T) -> SearchAttributeUpdate[T]:
        """An update that sets this key to ``value``."""
        return SearchAttributeUpdate(self, value)

    def value_unset(self) -> SearchAttributeUpdate[T]:
        """An update that removes this key."""
        return SearchAttributeUpdate(self, None)

    @staticmethod
    def for_text(name: str) -> SearchAttributeKey[str]:
        """A key of text values."""
        return SearchAttributeKey(name, SearchAttributeIndexedValueType.TEXT)

    @staticmethod
    def for_keyword(name: str) -> SearchAttributeKey[str]:
        """A key of keyword values."""
        return SearchAttributeKey(name, SearchAttributeIndexedValueType.KEYWORD)

    @staticmethod
    def for_int(name: str) -> SearchAttributeKey[int]:
        """A key of 64-bit integer values."""
        return SearchAttributeKey(name, SearchAttributeIndexedValueType.INT)

    @staticmethod
    def for_float(name: str) -> SearchAttributeKey[float]:
        """A key of float values."""
        return SearchAttributeKey(name, SearchAttributeIndexedValueType.DOUBLE)

    @staticmethod
    def for_bool(name: str) -> SearchAttributeKey[bool]:
        """A key of bool values."""
        return SearchAttributeKey(name, SearchAttributeIndexedValueType.BOOL)

    @staticmethod
    def for_datetime(name: str) -> SearchAttributeKey[datetime]:
        """A key of datetime values (a naive datetime is taken as UTC)."""
        return SearchAttributeKey(name, SearchAttributeIndexedValueType.DATETIME)

    @staticmethod
    def for_keyword_list(name: str) -> SearchAttributeKey[Sequence[str]]:
        """A key of lists of keywords."""
        return SearchAttributeKey(name, SearchAttributeIndexedValueType.KEYWORD_LIST)


_PYTHON_TYPE: dict[SearchAttributeIndexedValueType, type] = {
    SearchAttributeIndexedValueType.TEXT: str,
    SearchAttributeIndexedValueType.KEYWORD: str,
    SearchAttributeIndexedValueType.INT: int,
    SearchAttributeIndexedValueType.DOUBLE: float,
    SearchAttributeIndexedValueType.BOOL: bool,
    SearchAttributeIndexedValueType.DATETIME: datetime,
    SearchAttributeIndexedValueType.KEYWORD_LIST: Sequence,
}


if TYPE_CHECKING or sys.version_info >= (3, 11):

    class SearchAttributePair(NamedTuple, Generic[T]):
        """A key and its value."""

        key: SearchAttributeKey[T]
        value: T

else:  # Python 3.10's NamedTuple cannot be generic

    class SearchAttributePair(NamedTuple):
        """A key and its value."""

        key: SearchAttributeKey[Any]
        value: Any


@dataclass(frozen=True)
class SearchAttributeUpdate(Generic[T]):
    """A key and its new value, or None to remove it."""

    key: SearchAttributeKey[T]
    value: T | None


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"search attribute {name!r} takes a str, not {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"search attribute {name!r}: a value holds a NUL character")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"search attribute {name!r}: a value is not valid Unicode") from None
    if len(encoded) > MAX_STRING_BYTES:
        raise ValueError(
            f"search attribute {name!r}: a value is over {MAX_STRING_BYTES} bytes (UTF-8)"
        )
    return value


def checked_value(key: SearchAttributeKey[Any], value: object) -> Any:
    """``value`` as a value of ``key`` (an int becomes a float for a float
    key, a naive datetime UTC, a keyword list a list).

    Raises TypeError for a value of another type, ValueError for one out of
    range (an int beyond 64 bits, a float that is not finite, a string over
    MAX_STRING_BYTES).
    """
    kind, name = key.indexed_value_type, key.name

    def wrong(expected: str) -> TypeError:
        return TypeError(
            f"search attribute {name!r} ({kind.name}) takes {expected}, "
            f"not {type(value).__name__} {value!r:.60}"
        )

    if kind in (SearchAttributeIndexedValueType.TEXT, SearchAttributeIndexedValueType.KEYWORD):
        return _string(name, value)
    if kind is SearchAttributeIndexedValueType.BOOL:
        if not isinstance(value, bool):
            raise wrong("a bool")
        return value
    if kind is SearchAttributeIndexedValueType.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an int")
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"search attribute {name!r}: {value} does not fit in 64 bits")
        return value
    if kind is SearchAttributeIndexedValueType.DOUBLE:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a float")
        if not math.isfinite(value):
            raise ValueError(f"search attribute {name!r}: {value} is not a finite number")
        return float(value)
    if kind is SearchAttributeIndexedValueType.DATETIME:
        if not isinstance(value, datetime):
            raise wrong("a datetime")
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise wrong("a sequence of str")
    return [_string(name, item) for item in value]


@dataclass(frozen=True)
class TypedSearchAttributes(Collection[SearchAttributePair[Any]]):
    """An execution's search attributes: pairs of key and value, one per name.

    Raises (when built) ValueError for two pairs of one name, and what
    ``checked_value`` raises for a value that does not suit its key.
    """

    search_attributes: Sequence[SearchAttributePair[Any]]

    empty: ClassVar[TypedSearchAttributes]
    """No search attributes."""

    def __post_init__(self) -> None:
        pairs: list[SearchAttributePair[Any]] = []
        seen: set[str] = set()
        for pair in self.search_attributes:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(f"expected a SearchAttributePair, not {pair!r:.60}")
            key, value = pair
            if not isinstance(key, SearchAttributeKey):
                raise TypeError(f"expected a SearchAttributeKey, not {key!r:.60}")
            if key.name in seen:
                raise ValueError(f"search attribute {key.name!r} is given twice")
            seen.add(key.name)
            pairs.append(SearchAttributePair(key, checked_value(key, value)))
        object.__setattr__(self, "search_attributes", tuple(pairs))

    def __len__(self) -> int:
        return len(self.search_attributes)

    def __iter__(self) -> Iterator[SearchAttributePair[Any]]:
        return iter(self.search_attributes)

    def __contains__(self, key: object) -> bool:
        """Whether a key (name and type alike), or a name, is present."""
        return any(pair.key == key or pair.key.name == key for pair in self.search_attributes)

    def __getitem__(self, key: SearchAttributeKey[T]) -> T:
        """The value of the key. Raises KeyError if its name is absent or
        holds a value of another type."""
        for pair in self.search_attributes:
            if pair.key.name == key.name:
                if pair.key.indexed_value_type is not key.indexed_value_type:
                    raise KeyError(
                        f"search attribute {key.name!r} is {pair.key.indexed_value_type.name}, "
                        f"not {key.indexed_value_type.name}"
                    )
                value: T = pair.value
                return value
        raise KeyError(key.name)

    @overload
    def get(self, key: SearchAttributeKey[T]) -> T | None: ...

    @overload
    def get(self, key: SearchAttributeKey[T], default: Any) -> Any: ...

    def get(self, key: SearchAttributeKey[T], default: Any = None) -> Any:
        """The value of the key, or ``default`` if absent (or of another type)."""
        try:
            return self[key]
        except KeyError:
            return default

    def updated(
        self, *changes: SearchAttributePair[Any] | SearchAttributeUpdate[Any]
    ) -> TypedSearchAttributes:
        """A copy with these pairs set (replacing their names' values) and
        the updates of value None removed."""
        by_name = {pair.key.name: pair for pair in self.search_attributes}
        for change in changes:
            if change.value is None:
                by_name.pop(change.key.name, None)
            else:
                by_name[change.key.name] = SearchAttributePair(change.key, change.value)
        return TypedSearchAttributes(list(by_name.values()))


TypedSearchAttributes.empty = TypedSearchAttributes(())
