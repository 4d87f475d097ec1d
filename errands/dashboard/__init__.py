"""The dashboard: a live web console for one namespace of a store.

``errands dashboard`` serves it; ``create_app(client)`` returns it as an ASGI
app to mount in any Starlette or FastAPI app::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from errands.client import Client
    from errands.dashboard import create_app

    client = await Client.connect("postgresql://...")
    app = Starlette(routes=[Mount("/errands", app=create_app(client, token="s3cret"))])

Pages: activities (counts by status, a query box, facets, paging), one
activity (every described field, payloads, heartbeat details, the attempt
history, actions), queues and workers. They update themselves from the
store's change feed over Server-Sent Events. Needs the optional extra:
``pip install 'errands[dashboard]'`` (Starlette, Jinja2 and uvicorn).
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as e:  # pragma: no cover - the extra is part of the dev install
    raise ImportError(
        f"the dashboard needs the optional extra: pip install 'errands[dashboard]' ({e})"
    ) from e

from errands.dashboard._app import create_app

__all__ = ["create_app"]
