"""The fallback for a Temporal server that refuses standalone activities: one
workflow per activity, which runs the activity and returns its result. Kept
in a module of its own with nothing but temporalio's workflow API, as
temporalio's workflow sandbox re-imports it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow


@dataclass
class Call:
    """One activity call: its name, argument and timeouts (in seconds)."""

    activity: str
    arg: Any
    start_to_close_s: float
    heartbeat_s: float | None = None


@workflow.defn(name="BenchActivity")
class RunActivity:
    """Run ``call.activity`` once (with the default retry policy) and return
    its result; a cancel of the workflow is passed on to the activity, and
    the workflow waits until the activity has seen it, as a standalone
    activity's cancel does."""

    @workflow.run
    async def run(self, call: Call) -> Any:
        return await workflow.execute_activity(
            call.activity,
            call.arg,
            start_to_close_timeout=timedelta(seconds=call.start_to_close_s),
            heartbeat_timeout=(
                None if call.heartbeat_s is None else timedelta(seconds=call.heartbeat_s)
            ),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
