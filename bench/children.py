"""Child processes of the bench: ``python -m bench <subcommand> ...`` started
together, each saying ``ready`` on stdout once it runs, stopped with SIGTERM.

The idle and fleet workloads measure their children's CPU from /proc, so
every measured party is a process of its own; ``prefix`` runs them under
another command (``ip netns exec NS`` puts them in a network namespace; it
execs, so the pid stays the child's)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence

from bench.workloads import REPO_ROOT, WORKER_READY_TIMEOUT_S

STOP_TIMEOUT_S = 30.0
"""A child still running this long after SIGTERM is killed."""


class Child:
    """One running child; ``lines()`` reads what it says after ``ready``."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: Sequence[str]) -> None:
        self.proc = proc
        self.argv = list(argv)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, timeout_s: float) -> str:
        """Its next stdout line; RuntimeError when it exits first."""
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not raw:
            status = await self.proc.wait()
            raise RuntimeError(f"{' '.join(self.argv[:2])} exited (status {status})")
        return raw.decode().strip()

    async def ready(self) -> None:
        """Wait until it says ``ready``; RuntimeError if it says anything else."""
        line = await self.line(WORKER_READY_TIMEOUT_S)
        if line != "ready":
            raise RuntimeError(f"{self.argv[0]} child did not start (said {line!r})")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def started(
    argvs: Sequence[Sequence[str]], prefix: Sequence[str] = ()
) -> AsyncIterator[list[Child]]:
    """Start ``python -m bench <argv>`` for every argv at once and wait until
    each said ``ready``; stop them all on exit."""
    children: list[Child] = []
    try:
        for argv in argvs:
            children.append(await spawn(argv, prefix))
        await asyncio.gather(*(c.ready() for c in children))
        yield children
    finally:
        await asyncio.gather(*(c.stop() for c in children))


async def spawn(argv: Sequence[str], prefix: Sequence[str] = ()) -> Child:
    """Start ``python -m bench <argv>`` (not waiting for its ``ready``)."""
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "bench", *argv, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT
    )
    return Child(proc, argv)


def worker_argv(url: str, task_queue: str, slots: int) -> list[str]:
    """A worker child (bench.workloads.serve) serving bench.activities.ALL."""
    return ["worker", "--url", url, "--task-queue", task_queue, "--slots", str(slots)]
