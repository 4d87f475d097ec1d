"""Heartbeats of one attempt: the first goes to the store at once, then at
most one per throttle window (0.8 x heartbeat_timeout, else the worker's
default, never more than its maximum). The latest details win; whatever is
pending when the attempt ends is flushed before its outcome. A heartbeat the
store failed (an outage) is sent again after a backoff, unless newer details
replaced it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from errands._outage import Backoff
from errands.activity import ActivityCancellationDetails
from errands.exceptions import StoreError

if TYPE_CHECKING:
    from errands.worker._attempt import Attempt

logger = logging.getLogger("errands.worker")

_NOTHING: Sequence[Any] = ()


class Heartbeater:
    """Throttles and sends one attempt's heartbeats. Runs on the event loop."""

    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt
        env, task = attempt.env, attempt.task
        throttle = (
            0.8 * task.heartbeat_s if task.heartbeat_s is not None else env.default_throttle_s
        )
        self._throttle_s = min(throttle, env.max_throttle_s)
        self._pending: Sequence[Any] | None = None
        self._next_send = 0.0
        self._sending: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._backoff = Backoff()

    @property
    def throttle_s(self) -> float:
        """The most often details reach the store (after the first)."""
        return self._throttle_s

    def record(self, details: Sequence[Any]) -> None:
        """Take the activity's latest details; send now or when the window ends."""
        self._pending = details
        self._attempt.on_heartbeat()
        if self._sending is not None or self._timer is not None:
            return  # the send in flight, or the one scheduled, will take these
        delay = self._next_send - time.monotonic()
        if delay <= 0:
            self._start_send()
        else:
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._pending is not None and self._sending is None:
            self._start_send()

    def _start_send(self) -> None:
        self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            await self._send_pending()
        finally:
            self._sending = None
        if self._pending is not None and self._timer is None:
            delay = max(0.0, self._next_send - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    async def _send_pending(self) -> None:
        details, self._pending = self._pending, None
        if details is None:
            return
        attempt = self._attempt
        env, task = attempt.env, attempt.task
        self._next_send = time.monotonic() + self._throttle_s
        data: bytes | None
        try:
            data = await env.converter.encode(list(details))
        except (TypeError, ValueError) as e:
            logger.error(
                "heartbeat details of %r cannot be converted, not sent: %s", task.activity_id, e
            )
            data = None
        if data is not None and len(data) > env.max_payload_bytes:
            logger.error(
                "heartbeat details of %r are %d bytes, over the %d-byte limit; not sent",
                task.activity_id,
                len(data),
                env.max_payload_bytes,
            )
            data = None
        sent_at = time.monotonic()
        try:
            result = await env.store.heartbeat(task.run_id, task.serial, data)
        except StoreError as e:
            env.outage.failed(f"a heartbeat of activity {task.activity_id!r}", e)
            if self._pending is None:
                self._pending = details  # send them again, after a pause
            self._next_send = time.monotonic() + self._backoff.next()
            return
        except Exception:
            logger.exception("heartbeat of %r failed", task.activity_id)
            return
        self._backoff.reset()
        env.outage.passed()
        if not result.accepted:
            # Terminated, timed out or gone: stop the attempt; its outcome would be refused.
            attempt.request_cancel(
                ActivityCancellationDetails(not_found=True), needs_heartbeat=False
            )
            return
        if task.heartbeat_s is not None:
            attempt.arm_timeout(attempt.local_deadline(sent_at))
        if result.cancel_requested:
            attempt.request_cancel(
                ActivityCancellationDetails(cancel_requested=True), needs_heartbeat=True
            )
        elif result.pause_requested:
            attempt.request_cancel(ActivityCancellationDetails(paused=True), needs_heartbeat=True)

    async def flush(self) -> None:
        """Send pending details now (the attempt is ending)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sending is not None:
            await asyncio.shield(self._sending)
        if self._pending is not None:
            await self._send_pending()
