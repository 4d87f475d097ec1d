"""Options shared by the client and the worker: retry policy, priority, id
policies, search attributes; the metric meter (temporalio keeps it here too)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from errands._metric_meter import (
    MetricAttributes,
    MetricCommon,
    MetricCounter,
    MetricGauge,
    MetricGaugeFloat,
    MetricHistogram,
    MetricHistogramFloat,
    MetricHistogramTimedelta,
    MetricMeter,
)
from errands._search_attributes import (
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

if TYPE_CHECKING:
    from errands.converter import Payload

__all__ = [
    "ActivityIDConflictPolicy",
    "ActivityIDReusePolicy",
    "MetricAttributes",
    "MetricCommon",
    "MetricCounter",
    "MetricGauge",
    "MetricGaugeFloat",
    "MetricHistogram",
    "MetricHistogramFloat",
    "MetricHistogramTimedelta",
    "MetricMeter",
    "Priority",
    "RawValue",
    "RetryPolicy",
    "SearchAttributeIndexedValueType",
    "SearchAttributeKey",
    "SearchAttributePair",
    "SearchAttributeUpdate",
    "TypedSearchAttributes",
]


@dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts are retried.

    The delay before attempt n+1 is
    ``min(initial_interval * backoff_coefficient ** (n - 1), maximum_interval)``,
    unless the failure carries ``ApplicationError.next_retry_delay``.
    """

    initial_interval: timedelta = timedelta(seconds=1)
    """Delay before the first retry. Default 1 s."""

    backoff_coefficient: float = 2.0
    """Each retry waits this many times longer than the one before. Default 2.0."""

    maximum_interval: timedelta | None = None
    """Longest delay between attempts. Default (None) is 100 x initial_interval."""

    maximum_attempts: int = 0
    """Attempts in all, the first included; 0 (the default) means unlimited."""

    non_retryable_error_types: Sequence[str] = field(default_factory=tuple)
    """ApplicationError types (a plain exception's class name) that end the
    execution FAILED at once."""

    def __post_init__(self) -> None:
        if self.initial_interval <= timedelta(0):
            raise ValueError("RetryPolicy.initial_interval must be positive")
        if self.backoff_coefficient < 1.0:
            raise ValueError("RetryPolicy.backoff_coefficient must be at least 1.0")
        if self.maximum_interval is not None and self.maximum_interval < self.initial_interval:
            raise ValueError("RetryPolicy.maximum_interval must not be below initial_interval")
        if self.maximum_attempts < 0:
            raise ValueError("RetryPolicy.maximum_attempts must be 0 (unlimited) or more")
        object.__setattr__(self, "non_retryable_error_types", tuple(self.non_retryable_error_types))

    def to_dict(self) -> dict[str, Any]:
        """This policy as plain JSON values (seconds as floats)."""
        return {
            "initial_interval": self.initial_interval.total_seconds(),
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": (
                None if self.maximum_interval is None else self.maximum_interval.total_seconds()
            ),
            "maximum_attempts": self.maximum_attempts,
            "non_retryable_error_types": list(self.non_retryable_error_types),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetryPolicy:
        """The policy ``to_dict`` wrote."""
        return cls(
            initial_interval=timedelta(seconds=d["initial_interval"]),
            backoff_coefficient=d["backoff_coefficient"],
            maximum_interval=(
                None if d["maximum_interval"] is None else timedelta(seconds=d["maximum_interval"])
            ),
            maximum_attempts=d["maximum_attempts"],
            non_retryable_error_types=tuple(d["non_retryable_error_types"]),
        )


@dataclass(frozen=True)
class Priority:
    """Which activities of a task queue run first.

    ``priority_key``: smaller runs first; None means the default, 3. Executions
    with the same key run in the order they became ready.
    """

    priority_key: int | None = None

    DEFAULT_KEY = 3

    def __post_init__(self) -> None:
        if self.priority_key is not None and (
            not isinstance(self.priority_key, int) or self.priority_key < 1
        ):
            raise ValueError("Priority.priority_key must be a positive int or None")

    @property
    def effective_key(self) -> int:
        """The key the store orders by (None becomes 3)."""
        return self.DEFAULT_KEY if self.priority_key is None else self.priority_key


class ActivityIDReusePolicy(enum.IntEnum):
    """Whether ``start_activity`` may reuse the id of a closed execution."""

    ALLOW_DUPLICATE = 1
    """Always (the default)."""
    ALLOW_DUPLICATE_FAILED_ONLY = 2
    """Only if the closed execution did not complete: FAILED, CANCELED,
    TERMINATED or TIMED_OUT."""
    REJECT_DUPLICATE = 3
    """Never: the id belongs to the closed execution until it is pruned."""


class ActivityIDConflictPolicy(enum.IntEnum):
    """What ``start_activity`` does when the id is RUNNING."""

    FAIL = 1
    """Raise ActivityAlreadyStartedError (the default)."""
    USE_EXISTING = 2
    """Return a handle to the running execution."""


@dataclass(frozen=True)
class RawValue:
    """A value left as its payload: what a dynamic activity receives, or what a
    caller passes to skip conversion."""

    payload: Payload
