"""Every error errands raises, as one tree.

::

    ErrandsError
    ├── FailureError                 how an activity attempt or execution ended badly
    │   ├── ApplicationError         raised by activity code (or a plain exception, converted)
    │   ├── CancelledError           the activity was cancelled
    │   ├── TimeoutError             a timeout fired (see TimeoutType)
    │   └── TerminatedError          the execution was terminated
    ├── ActivityFailedError          result() of an execution that did not complete
    ├── ActivityAlreadyStartedError  start_activity() with an id that is taken
    ├── ActivityNotFoundError        no such id, or a stale task token
    ├── ActivityAlreadyClosedError   cancel / terminate of a closed execution
    └── StoreError                   the store failed: locked, gone, connection lost

``CancelledError`` and ``TimeoutError`` shadow ``asyncio.CancelledError`` and the
builtin ``TimeoutError``: refer to them qualified, as ``exceptions.CancelledError``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

__all__ = [
    "ActivityAlreadyClosedError",
    "ActivityAlreadyStartedError",
    "ActivityFailedError",
    "ActivityNotFoundError",
    "ApplicationError",
    "CancelledError",
    "ErrandsError",
    "FailureError",
    "StoreError",
    "TerminatedError",
    "TimeoutError",
    "TimeoutType",
]


class ErrandsError(Exception):
    """Base of every error errands raises."""

    @property
    def message(self) -> str:
        """The error's message (the first argument)."""
        return str(self.args[0]) if self.args else ""


class FailureError(ErrandsError):
    """Base of the errors that describe how an attempt or execution failed.

    These travel through the store: they are encoded when an attempt fails and
    decoded when a client reads the outcome.
    """

    def __init__(self, message: str = "", *details: Any) -> None:
        super().__init__(message)
        self.details: Sequence[Any] = details
        #: The remote stack trace, when this failure was decoded from the store.
        self.stack_trace: str = ""


class ApplicationError(FailureError):
    """Raised by activity code to fail an attempt, with control over retries.

    Args:
        message: What went wrong.
        details: Values (convertible by the payload converter) for the caller.
        type: A name for the kind of error, matched by
            ``RetryPolicy.non_retryable_error_types``. Defaults to None; a plain
            exception raised by an activity becomes an ApplicationError whose
            type is the exception's class name.
        non_retryable: End the execution FAILED at once, whatever the retry
            policy says. Defaults to False.
        next_retry_delay: Wait exactly this long before the next attempt,
            instead of the retry policy's backoff. Defaults to None.
    """

    def __init__(
        self,
        message: str = "",
        *details: Any,
        type: str | None = None,
        non_retryable: bool = False,
        next_retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message, *details)
        self.type = type
        self.non_retryable = non_retryable
        self.next_retry_delay = next_retry_delay

    def __repr__(self) -> str:
        return (
            f"ApplicationError({self.message!r}, type={self.type!r}, "
            f"non_retryable={self.non_retryable!r})"
        )


class CancelledError(FailureError):
    """Raised when an activity is cancelled.

    Inside a thread-pool or process-pool activity this is the exception that
    errands raises into the running code; as the cause of an
    ``ActivityFailedError`` it says the execution ended CANCELED. It constructs
    with no arguments, as ``PyThreadState_SetAsyncExc`` requires.
    """

    def __init__(self, message: str = "Cancelled", *details: Any) -> None:
        super().__init__(message, *details)


class TimeoutType(enum.IntEnum):
    """Which timeout fired (temporalio's numbering)."""

    START_TO_CLOSE = 1
    SCHEDULE_TO_START = 2
    SCHEDULE_TO_CLOSE = 3
    HEARTBEAT = 4


class TimeoutError(FailureError):  # Temporal's name: refer to it as exceptions.TimeoutError
    """Raised (as a cause) when a timeout ended an attempt or an execution.

    Args:
        message: Which timeout, in words.
        type: The ``TimeoutType`` that fired.
        last_heartbeat_details: Details of the last heartbeat that reached the store.
    """

    def __init__(
        self,
        message: str = "",
        *,
        type: TimeoutType | None = None,
        last_heartbeat_details: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.type = type
        self.last_heartbeat_details = last_heartbeat_details


class TerminatedError(FailureError):
    """Raised (as a cause) when an execution was terminated."""


class ActivityFailedError(ErrandsError):
    """Raised by ``result()`` when an execution failed, timed out, was cancelled
    or terminated. ``cause`` (also ``__cause__``) says which."""

    def __init__(self, message: str, *, cause: FailureError) -> None:
        super().__init__(message)
        self.cause = cause
        self.__cause__ = cause


class ActivityAlreadyStartedError(ErrandsError):
    """Raised by ``start_activity()`` when the id is running (conflict policy
    FAIL) or closed and the reuse policy refuses it."""

    def __init__(self, message: str, *, activity_id: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.activity_id = activity_id
        self.run_id = run_id


class ActivityNotFoundError(ErrandsError):
    """Raised when no execution has that id (or run id), or a task token is
    stale: its attempt timed out, was retried or its execution terminated."""


class ActivityAlreadyClosedError(ErrandsError):
    """Raised by ``cancel()`` / ``terminate()`` of an execution that already
    closed; nothing was changed."""


class StoreError(ErrandsError):
    """Raised when the store fails: the database is locked past its busy
    timeout, missing, not a database, of a newer schema, or the connection was
    lost. Raised ``from`` the driver's error."""
