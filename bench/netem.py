"""PostgreSQL some milliseconds away: a link with a netem delay, on
loopback-range addresses only, in network namespaces of the run's own.

The host routes all of 127.0.0.0/8 to its own loopback device, so a veth end
in the host's namespace cannot send replies to a 127.x peer. Both ends
therefore live in namespaces made for the run (``errands-bench-<token>-near``
for the bench's children, ``-far`` for the database's end), each with
``route_localnet`` set on its veth (so 127.x may cross it) and a netem qdisc
(``delay`` each way). Nothing else lives in the far namespace but a listening
socket: this process makes it there (a thread enters the namespace with
setns(2), which moves only that thread) and forwards each connection, from
its own event loop in the host's namespace, to the database's real address.
The children run under ``ip netns exec <near>`` and reach PostgreSQL at the
far end's address. Both namespaces (and with them the veth pair) are deleted
on exit, also on failure. Needs root, ``ip`` and ``tc`` (iproute2), and a
kernel with netem (CONFIG_NET_SCH_NETEM); with a delay of 0 no qdisc is
added (a check of the plumbing alone)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

NEAR_ADDRESS = "127.77.0.2"
FAR_ADDRESS = "127.77.0.1"
PREFIX_LENGTH = 30
NEAR_DEVICE = "eb-near"
FAR_DEVICE = "eb-far"
FORWARD_PORT = 5432
CLONE_NEWNET = 0x40000000
RTT_ROUNDS = 21
COMMAND_TIMEOUT_S = 30.0
FORWARD_CHUNK = 65536


class LinkUnavailable(Exception):
    """The delayed link could not be set up here (the message says why)."""


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError as e:
        raise LinkUnavailable(f"{argv[0]} is not installed") from e
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        if argv[0] == "tc" and "netem" in argv and "unknown" in said:
            raise LinkUnavailable(f"this kernel has no netem (tc said: {said})")
        raise LinkUnavailable(f"{' '.join(argv)} failed: {said}")


def _listen_in(namespace: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket in network namespace ``namespace``, made by a
    thread that enters it (setns moves only the calling thread)."""
    made: list[socket.socket | BaseException] = []

    def enter_and_listen() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns: {os.strerror(errno)}")
            finally:
                os.close(fd)
            made.append(socket.create_server((host, port)))
        except BaseException as e:
            made.append(e)

    thread = threading.Thread(target=enter_and_listen, name="bench-netns")
    thread.start()
    thread.join()  # the thread ends here, still in the far namespace: it is never reused
    if isinstance(made[0], BaseException):
        raise LinkUnavailable(f"no socket in {namespace}: {made[0]}") from made[0]
    return made[0]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(FORWARD_CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _forwarder(
    host: str, port: int
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Connect to ``host:port`` once the peer speaks (PostgreSQL's client
        speaks first; a bare connect, as the round-trip probe makes, costs no
        database connection), then copy both ways."""
        first = await reader.read(FORWARD_CHUNK)
        if not first:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return forward


RTT_PROBE = """
import socket, statistics, sys, time
host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for _ in range(rounds):
    began = time.perf_counter()
    socket.create_connection((host, port), timeout=10).close()
    times.append((time.perf_counter() - began) * 1000)
print(statistics.median(times))
"""


@dataclass
class Link:
    """The set-up link: run children under ``prefix``; they reach the
    database at ``url``."""

    delay_ms: float
    near: str
    url: str
    prefix: list[str] = field(default_factory=list)

    def describe(self) -> str:
        qdisc = (
            f"netem delay {self.delay_ms:g}ms on both veth ends" if self.delay_ms else "no qdisc"
        )
        return (
            f"children in network namespace {self.near} at {NEAR_ADDRESS}, PostgreSQL "
            f"forwarded from {FAR_ADDRESS}:{FORWARD_PORT} over a veth pair with {qdisc}"
        )

    async def connect_rtt_ms(self) -> float:
        """p50 of RTT_ROUNDS TCP connects from the near namespace to the far
        end (one round trip each: the kernel accepts)."""
        proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            sys.executable,
            "-c",
            RTT_PROBE,
            FAR_ADDRESS,
            str(FORWARD_PORT),
            str(RTT_ROUNDS),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the round-trip probe failed (status {proc.returncode})")
        return float(out)


def _through(url: str) -> tuple[str, str, int]:
    """(``url`` with host and port replaced by the far end's, its host, its port)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    if not host.startswith("127."):
        raise LinkUnavailable(f"the database must be on this machine (127.x), not {host}")
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += f"{FAR_ADDRESS}:{FORWARD_PORT}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), host, port


def _set_up(near: str, far: str, delay_ms: float, created: list[str]) -> None:
    for namespace in (near, far):
        _run("ip", "netns", "add", namespace)
        created.append(namespace)
    _run(
        "ip",
        "link",
        "add",
        NEAR_DEVICE,
        "netns",
        near,
        "type",
        "veth",
        "peer",
        "name",
        FAR_DEVICE,
        "netns",
        far,
    )
    for namespace, device, address in (
        (near, NEAR_DEVICE, NEAR_ADDRESS),
        (far, FAR_DEVICE, FAR_ADDRESS),
    ):
        _run("ip", "-n", namespace, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", device)
        _run(
            "ip",
            "netns",
            "exec",
            namespace,
            "sysctl",
            "-qw",
            f"net.ipv4.conf.{device}.route_localnet=1",
        )
        _run("ip", "-n", namespace, "link", "set", device, "up")
        if delay_ms:
            _run(
                "tc",
                "-n",
                namespace,
                "qdisc",
                "add",
                "dev",
                device,
                "root",
                "netem",
                "delay",
                f"{delay_ms:g}ms",
            )


def _tear_down(created: list[str]) -> None:
    for namespace in created:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


@contextlib.asynccontextmanager
async def delayed_link(url: str, delay_ms: float) -> AsyncIterator[Link]:
    """A link to the PostgreSQL of ``url`` (on this machine) with
    ``delay_ms`` of netem delay each way; torn down on exit.

    Raises LinkUnavailable when it cannot be set up (no netem, not root, no
    iproute2), after removing whatever it had made."""
    inside, host, port = _through(url)
    token = secrets.token_hex(3)
    near, far = f"errands-bench-{token}-near", f"errands-bench-{token}-far"
    created: list[str] = []
    server = None
    try:
        await asyncio.to_thread(_set_up, near, far, delay_ms, created)
        listening = await asyncio.to_thread(_listen_in, far, FAR_ADDRESS, FORWARD_PORT)
        server = await asyncio.start_server(_forwarder(host, port), sock=listening)
        yield Link(delay_ms, near, inside, ["ip", "netns", "exec", near])
    finally:
        if server is not None:
            server.close()
        await asyncio.to_thread(_tear_down, created)
