"""CPU time and peak resident memory of processes, read from /proc (Linux).

A run measures the processes of its side: its own process and every
descendant (pool children, the multiprocessing manager, worker processes),
and the server's: Temporal's dev server, or the PostgreSQL backends that
serve the run's connections."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads); None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def peak_rss_bytes(pid: int) -> int | None:
    """``VmHWM`` of ``pid``: its peak resident set since it started (or since
    :func:`reset_peak_rss`); None once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss(pid: int) -> bool:
    """Restart ``pid``'s VmHWM from its current RSS (``clear_refs`` 5); False
    when the kernel refuses, and the peak then counts from the process's start."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_pids() -> list[int]:
    """This process and its descendants."""
    return [os.getpid(), *descendants(os.getpid())]


class CpuMeter:
    """CPU seconds that a set of processes spends between :meth:`start` and
    :meth:`stop`: this process tree, and the server's processes that
    ``server_pids()`` names (Temporal's server; the PostgreSQL backends
    serving the run). A process that appears in between counts from zero;
    one that exits in between is not counted (the workloads start their pools
    and connections before measuring)."""

    def __init__(self, server_pids: Callable[[], list[int]]) -> None:
        self.server_pids = server_pids
        self._before: dict[int, float] = {}
        self._server_seen = True

    def _sample(self) -> dict[int, float]:
        server = self.server_pids()
        samples = {pid: cpu_seconds(pid) for pid in server}
        self._server_seen = self._server_seen and all(v is not None for v in samples.values())
        samples.update({pid: cpu_seconds(pid) for pid in tree_pids()})
        return {pid: s for pid, s in samples.items() if s is not None}

    def start(self) -> None:
        self._server_seen = True
        self._before = self._sample()

    def stop(self) -> tuple[float, float | None]:
        """(CPU seconds of this process tree, of the server's processes or
        None when some are not on this machine) since start()."""
        server = set(self.server_pids())
        after = self._sample()
        spent = {pid: s - self._before.get(pid, 0.0) for pid, s in after.items()}
        server_s = sum(s for pid, s in spent.items() if pid in server)
        tree_s = sum(s for pid, s in spent.items() if pid not in server)
        return tree_s, server_s if self._server_seen else None


def peak_rss_mib(server_pid: int) -> tuple[float, float]:
    """(summed VmHWM of this process tree, the server's VmHWM) in MiB."""
    own = sum(peak_rss_bytes(pid) or 0 for pid in tree_pids())
    server = (peak_rss_bytes(server_pid) or 0) if server_pid else 0
    return own / MIB, server / MIB
