"""The crash-recovery activity's body, shared by both systems' ``crash``
activities (each wraps it in its own ``@activity.defn``).

Attempt 1 heartbeats an increasing counter every 100 ms forever and writes
its pid and latest counter to ``attempt1.json``; the workload SIGKILLs its
worker. A later attempt writes when it started (``time.time()``), its pid and
the heartbeat details it was given to ``attempt<n>.json``, and returns."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TICK_S = 0.1
RESULT = "recovered"


def write_json(path: Path, value: object) -> None:
    """Write ``value`` to ``path`` whole (a reader never sees half a file)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(value))
    os.replace(part, path)


async def body(
    started: float,
    attempt: int,
    details: Sequence[Any],
    heartbeat: Callable[..., None],
    mark_dir: str,
) -> str:
    marks = Path(mark_dir)
    if attempt > 1:
        record = {"pid": os.getpid(), "at": started, "attempt": attempt, "details": list(details)}
        write_json(marks / f"attempt{attempt}.json", record)
        return RESULT
    k = 0
    while True:
        heartbeat(k)
        write_json(marks / "attempt1.json", {"pid": os.getpid(), "k": k, "at": time.time()})
        k += 1
        await asyncio.sleep(TICK_S)
