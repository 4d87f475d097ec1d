"""errands' side of the crash-recovery workload (the other activities are
bench.activities', shared with ``python -m bench``)."""

from __future__ import annotations

import time

from bench.compare import _crash
from errands import activity


@activity.defn
async def crash(mark_dir: str) -> str:
    """See :mod:`bench.compare._crash`."""
    started = time.time()
    info = activity.info()
    return await _crash.body(
        started, info.attempt, info.heartbeat_details, activity.heartbeat, mark_dir
    )
