"""``errands dashboard``: serve the web console (``errands.dashboard``) with
uvicorn until SIGINT / SIGTERM, on 127.0.0.1 unless told otherwise.

A dashboard shows every activity's arguments and results and can cancel
and terminate them, so one that other machines can reach must have a
token: a non-loopback ``--host`` without one is refused.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import urllib.parse
from dataclasses import dataclass

from errands import _cli_output as out
from errands.client import Client
from errands.runtime import PrometheusConfig, Runtime, TelemetryConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780

logger = logging.getLogger("errands.cli")


class DashboardSetupError(ValueError):
    """The dashboard cannot be served as asked; the message says why."""


@dataclass(frozen=True)
class DashboardOptions:
    """What ``errands dashboard`` was asked to serve."""

    url: str | None
    namespace: str
    host: str
    port: int
    read_only: bool
    token: str | None


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check(options: DashboardOptions) -> None:
    """Refuse what would be unsafe or cannot work.

    Raises DashboardSetupError for a non-loopback host without a token or
    an empty token.
    """
    if options.token is not None and not options.token.strip():
        raise DashboardSetupError("--token must not be empty")
    if options.token is None and not is_loopback(options.host):
        raise DashboardSetupError(
            f"refusing to serve the dashboard on {options.host} without a token: anyone who "
            "can reach that address could read every activity's arguments and results and "
            "cancel or terminate them. Pass --token SECRET (or set $ERRANDS_DASHBOARD_TOKEN), "
            f"or keep the default --host {DEFAULT_HOST}."
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=128)
    except OSError as e:
        raise DashboardSetupError(f"cannot listen on {host}:{port}: {e}") from e


def address(host: str, port: int, token: str | None) -> str:
    """The address to open, with the token if there is one."""
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    query = "" if token is None else "?" + urllib.parse.urlencode({"token": token})
    return f"http://{shown}:{port}/{query}"


async def serve(options: DashboardOptions) -> None:
    """Serve the dashboard until a signal stops it.

    Raises DashboardSetupError (see ``check``), ImportError without the
    dashboard extra, and what Client.connect raises.
    """
    check(options)
    try:
        import uvicorn

        from errands.dashboard import create_app
        from errands.dashboard._guard import LOOPBACK_NAMES
    except ImportError as e:
        raise ImportError(
            f"the dashboard needs the optional extra: pip install 'errands[dashboard]' ({e})"
        ) from e
    # Metrics kept for the dashboard's /metrics (no server of their own).
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address="")))
    client = await Client.connect(options.url, namespace=options.namespace, runtime=runtime)
    try:
        sock = _bind(options.host, options.port)
        port = sock.getsockname()[1]
        app = create_app(
            client,
            read_only=options.read_only,
            token=options.token,
            # Without a token, answer only to this machine's names: a page of
            # another site whose name points at 127.0.0.1 is refused.
            allowed_hosts=LOOPBACK_NAMES if options.token is None else None,
        )
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
        )
        out.line(
            f"errands dashboard of {getattr(client.store, 'label', 'the store')} "
            f"(namespace {options.namespace}){' read-only' if options.read_only else ''}: "
            f"{address(options.host, port, options.token)}"
        )
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await client.close()
        runtime.close()
