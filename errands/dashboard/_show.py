"""How values look on the dashboard's pages: times, durations, payloads as
JSON cut short, failures. Every function returns plain text; the templates
escape it (Jinja2's autoescape), so nothing here writes HTML."""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from errands import _cli_output as text
from errands._lifecycle import retry_delay_s
from errands.common import Priority, RetryPolicy, TypedSearchAttributes
from errands.exceptions import FailureError

MAX_SHOWN_CHARS = 4_000
"""Longest payload text a page shows; the rest is left out, and said so."""


def when(value: datetime | None) -> str:
    """``2025-06-01 12:00:03.250Z``, or ``-``."""
    return text.when(value)


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago (or how far ahead) a time is: ``3.2 s ago``, ``in 5 min``."""
    if value is None:
        return ""
    now = now or datetime.now(timezone.utc)
    seconds = (now - value).total_seconds()
    span = abs(seconds)
    if span < 60:
        amount = f"{span:.1f} s"
    elif span < 3600:
        amount = f"{span / 60:.0f} min"
    elif span < 86_400:
        amount = f"{span / 3600:.1f} h"
    else:
        amount = f"{span / 86_400:.1f} d"
    return f"{amount} ago" if seconds >= 0 else f"in {amount}"


def duration(value: timedelta | None) -> str:
    """``250ms``, ``1.5s``, ``2h5m``, or ``-``."""
    return text.duration(value)


def pretty(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """A decoded value as indented JSON, cut at ``limit`` characters (saying
    how many were left out)."""
    try:
        shown = json.dumps(text.jsonable(value), indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        shown = repr(value)
    if len(shown) > limit:
        shown = f"{shown[:limit]}\n… ({len(shown) - limit:,} more characters not shown)"
    return shown


def failure(error: FailureError | None) -> str:
    """One line for a failure (``ValueError: bad input (non-retryable)``), or ``""``."""
    return "" if error is None else text.failure(error)


def failure_details(error: FailureError) -> str:
    """A failure's fields and its stack trace, for a closer look."""
    shown = pretty(text.failure_json(error))
    if error.stack_trace:
        shown += "\n\n" + error.stack_trace[-MAX_SHOWN_CHARS:]
    return shown


def count(n: int) -> str:
    """``1,234``."""
    return f"{n:,}"


def field_value(value: Any) -> str:
    """One described field as text: times with how long ago, durations in
    the options' syntax, enums by name, a retry policy in one line."""
    if value is None:
        return "-"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return f"{when(value)} ({ago(value)})"
    if isinstance(value, timedelta):
        return duration(value)
    if isinstance(value, RetryPolicy):
        return text.retry_policy(value)
    if isinstance(value, Priority):
        return str(value.priority_key) if value.priority_key is not None else "default"
    if isinstance(value, TypedSearchAttributes):
        return pretty(value) if len(value) else "-"
    if isinstance(value, FailureError):
        return failure(value)
    if isinstance(value, str):
        return value
    return pretty(value)


PLAIN_FIELDS_LEFT_OUT = {"input", "result", "has_result", "failure", "last_failure"}
"""Described fields a page shows in sections of their own."""


def described(desc: Any) -> list[tuple[str, str]]:
    """Every field of a description (but the payloads, shown apart), as
    (name, text), in the order the dataclass declares them."""
    return [
        (f.name, field_value(getattr(desc, f.name)))
        for f in dataclasses.fields(desc)
        if not f.name.startswith("_") and f.name not in PLAIN_FIELDS_LEFT_OUT
    ]


def retry_schedule(desc: Any, shown: int = 3) -> list[str]:
    """The delays before the attempts after the next one, as the retry
    policy would make them if each failed (``2s``, ``4s``, ...); empty when
    the execution is closed or has no attempts left."""
    policy = getattr(desc, "retry_policy", None)
    if policy is None or getattr(desc, "close_time", None) is not None:
        return []
    attempt = int(getattr(desc, "attempt", 1))
    out = []
    for n in range(attempt, attempt + shown):
        if policy.maximum_attempts and n >= policy.maximum_attempts:
            break
        out.append(duration(timedelta(seconds=retry_delay_s(policy, n, None))))
    return out
