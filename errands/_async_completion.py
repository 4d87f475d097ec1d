"""Async completion: finishing an attempt from outside the worker.

An activity calls ``activity.raise_complete_async()``; whoever holds its task
token (or its id) reports progress and the outcome through an
``AsyncActivityHandle``. The attempt's timeouts still run, and a stale token
(the attempt timed out, was retried, or the execution was terminated) is
refused with ``ActivityNotFoundError``, changing nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from errands import _lifecycle as lc
from errands._interceptor import (
    AsyncActivityReference,
    CompleteAsyncActivityInput,
    FailAsyncActivityInput,
    HeartbeatAsyncActivityInput,
    ReportCancellationAsyncActivityInput,
)
from errands.activity import ActivityCancellationDetails
from errands.exceptions import ActivityNotFoundError, CancelledError, ErrandsError
from errands.store import FailureReport

if TYPE_CHECKING:
    from errands.client import Client


class AsyncActivityCancelledError(ErrandsError):
    """Raised by ``AsyncActivityHandle.heartbeat()`` once cancellation of the
    activity was requested; ``details`` says why. The heartbeat was recorded."""

    def __init__(self, details: ActivityCancellationDetails) -> None:
        super().__init__("the activity was asked to cancel")
        self.details = details


class AsyncActivityHandle:
    """Report on an attempt that ``raise_complete_async()`` left open.

    Made by ``Client.get_async_activity_handle``: by task token (that one
    attempt), or by activity id (and run id): the attempt running when each
    call is made.
    """

    def __init__(
        self,
        client: Client,
        *,
        task_token: bytes | None = None,
        activity_id: str | None = None,
        run_id: str | None = None,
    ) -> None:
        if (task_token is None) == (activity_id is None):
            raise ValueError("give either task_token or activity_id (with an optional run_id)")
        if task_token is not None and run_id is not None:
            raise ValueError("run_id goes with activity_id, not with task_token")
        self._client = client
        self._task_token = task_token
        self._activity_id = activity_id
        self._run_id = run_id

    @property
    def task_token(self) -> bytes | None:
        """The token this handle was made with, if any."""
        return self._task_token

    def _reference(self) -> AsyncActivityReference:
        return AsyncActivityReference(self._task_token, self._activity_id, self._run_id)

    async def heartbeat(self, *details: Any) -> None:
        """Record a heartbeat (and extend the heartbeat timeout).

        Raises:
            AsyncActivityCancelledError: cancellation was requested (the
                heartbeat was recorded); report the outcome, e.g. with
                ``report_cancellation()``.
            ActivityNotFoundError: the token is stale or the attempt is gone.
        """
        await self._client._impl.heartbeat_async_activity(
            HeartbeatAsyncActivityInput(self._reference(), details)
        )

    async def complete(self, result: Any = None) -> None:
        """Complete the attempt (and the execution) with ``result``.

        Raises ActivityNotFoundError if the token is stale, ValueError if the
        result is over the payload limit, TypeError if it cannot be converted.
        """
        await self._client._impl.complete_async_activity(
            CompleteAsyncActivityInput(self._reference(), result)
        )

    async def fail(
        self, error: BaseException, *, last_heartbeat_details: Sequence[Any] = ()
    ) -> None:
        """Fail the attempt with ``error``; the retry policy applies as if the
        activity had raised it. ``last_heartbeat_details`` are recorded first.

        Raises ActivityNotFoundError if the token is stale.
        """
        await self._client._impl.fail_async_activity(
            FailAsyncActivityInput(self._reference(), error, last_heartbeat_details)
        )

    async def report_cancellation(self, *details: Any) -> None:
        """End the execution CANCELED (the activity accepted a cancel request).

        Raises ActivityNotFoundError if the token is stale.
        """
        await self._client._impl.report_cancellation_async_activity(
            ReportCancellationAsyncActivityInput(self._reference(), details)
        )


# The calls themselves, at the end of the client's interceptor chain.


async def _attempt(client: Client, ref: AsyncActivityReference) -> tuple[str, int]:
    """The run id and attempt serial the reference names; raises ActivityNotFoundError."""
    if ref.task_token is not None:
        try:
            run_id, attempt = lc.parse_task_token(ref.task_token)
        except ValueError as e:
            raise ActivityNotFoundError(str(e)) from None
        # A token names a run in any namespace: only this client's may be touched.
        records = await client.store.get_by_run_ids([run_id])
        if not records or records[0].namespace != client.namespace:
            raise ActivityNotFoundError(f"no run {run_id} in namespace {client.namespace!r}")
        return run_id, attempt
    if ref.activity_id is None:
        raise ValueError("an async activity reference needs a task token or an activity id")
    record = await client.store.describe(client.namespace, ref.activity_id, ref.run_id)
    if record.run_state not in (lc.RunState.STARTED, lc.RunState.CANCEL_REQUESTED):
        raise ActivityNotFoundError(
            f"activity {ref.activity_id!r} has no running attempt "
            f"({record.status.value}, {record.run_state and record.run_state.value})"
        )
    return record.run_id, record.serial


async def _payload(client: Client, values: Sequence[Any], what: str) -> bytes:
    data = await client.data_converter.encode(list(values))
    if len(data) > client.max_payload_bytes:
        raise ValueError(
            f"{what} is {len(data)} bytes encoded, over the "
            f"{client.max_payload_bytes}-byte payload limit"
        )
    return data


async def async_heartbeat(
    client: Client, ref: AsyncActivityReference, details: Sequence[Any]
) -> None:
    """``AsyncActivityHandle.heartbeat``, done; raises as it says."""
    run_id, attempt = await _attempt(client, ref)
    data = await _payload(client, details, "heartbeat details")
    result = await client.store.heartbeat(run_id, attempt, data)
    if not result.accepted:
        raise ActivityNotFoundError(_stale(run_id, attempt))
    if result.cancel_requested:
        raise AsyncActivityCancelledError(ActivityCancellationDetails(cancel_requested=True))


async def async_complete(client: Client, ref: AsyncActivityReference, result: Any) -> None:
    """``AsyncActivityHandle.complete``, done; raises as it says."""
    run_id, attempt = await _attempt(client, ref)
    data = await _payload(client, [result], "the result")
    if not await client.store.complete(run_id, attempt, data):
        raise ActivityNotFoundError(_stale(run_id, attempt))


async def async_fail(
    client: Client,
    ref: AsyncActivityReference,
    error: BaseException,
    last_heartbeat_details: Sequence[Any],
) -> None:
    """``AsyncActivityHandle.fail``, done; raises as it says."""
    if last_heartbeat_details:
        with contextlib.suppress(AsyncActivityCancelledError):  # failing anyway
            await async_heartbeat(client, ref, last_heartbeat_details)
    run_id, attempt = await _attempt(client, ref)
    encoded = await client.data_converter.encode_failure(error)
    status = await client.store.fail(run_id, attempt, FailureReport.of(encoded))
    if status is None:
        raise ActivityNotFoundError(_stale(run_id, attempt))


async def async_report_cancellation(
    client: Client, ref: AsyncActivityReference, details: Sequence[Any]
) -> None:
    """``AsyncActivityHandle.report_cancellation``, done; raises as it says."""
    run_id, attempt = await _attempt(client, ref)
    encoded = await client.data_converter.encode_failure(CancelledError("Cancelled", *details))
    if not await client.store.report_cancelled(run_id, attempt, encoded.data):
        raise ActivityNotFoundError(_stale(run_id, attempt))


def _stale(run_id: str, attempt: int) -> str:
    return (
        f"attempt {attempt} of run {run_id} is no longer running (it timed out, was "
        "retried, completed, or the execution was terminated)"
    )
