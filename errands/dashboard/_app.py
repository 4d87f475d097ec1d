"""The dashboard's ASGI app: pages, their live streams, and the actions.

Pages are rendered on the server by Jinja2 with autoescaping on, so every
value (ids, payloads, failure messages) is escaped; the one script
(``static/console.js``, written for errands, no framework) swaps in the
live part of a page when the server pushes it, and nothing else.
"""

from __future__ import annotations

import contextlib
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from errands._query import quote_string, without_order
from errands.client import ActivityExecutionStatus, Client
from errands.dashboard import _actions, _pages, _show
from errands.dashboard._guard import Guard
from errands.dashboard._live import Live, stream
from errands.exceptions import ErrandsError, StoreError

NOTICES = {
    "cancel": "Cancellation requested.",
    "terminate": "Terminated.",
    "pause": "Pause requested.",
    "unpause": "Unpaused.",
    "reset": "Reset: the next attempt is attempt 1.",
    "retry_now": "The next attempt can run now.",
    "retry_now_idle": "It was not waiting to retry: nothing changed.",
    "options": "Options updated.",
}
"""What a page says after an action (by the action's name in its address)."""

STATUS_CLASS = {s: s.name.lower() for s in ActivityExecutionStatus}


@dataclass(frozen=True)
class Settings:
    """How one dashboard app runs."""

    read_only: bool
    csrf: str
    """The token every action's form carries (random per app)."""
    label: str
    """The store and namespace, for the header."""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("errands.dashboard", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        enable_async=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_show.when,
        ago=_show.ago,
        duration=_show.duration,
        pretty=_show.pretty,
        failure=_show.failure,
        failure_details=_show.failure_details,
        count=_show.count,
        status_class=lambda status: STATUS_CLASS.get(status, ""),
        quote=urllib.parse.quote,
    )
    env.globals.update(
        urlencode=urllib.parse.urlencode,
        bulk_actions=_actions.BULK,
        described=_show.described,
        retry_schedule=_show.retry_schedule,
        quote_string=quote_string,
    )
    return env


def create_app(
    client: Client,
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: Collection[str] | None = None,
) -> ASGIApp:
    """The dashboard of ``client``'s store and namespace, as an ASGI app to
    serve (``errands dashboard`` serves it with uvicorn) or to mount in a
    Starlette or FastAPI app (``Mount("/errands", app=create_app(client))``).

    ``read_only`` hides the actions and refuses them; with ``token`` every
    request must carry it (``?token=`` once, which sets a cookie, or an
    ``Authorization: Bearer`` header); ``allowed_hosts`` (host names without
    port) refuses requests for any other Host, as a defence against DNS
    rebinding when the dashboard has no token. Actions are POSTs that must
    come from the same origin and carry the page's CSRF token.

    Raises ValueError for an empty token.
    """
    if token is not None and not token:
        raise ValueError("the dashboard's token must not be empty")
    env = _environment()
    live = Live(client)
    settings = Settings(
        read_only=read_only,
        csrf=secrets.token_urlsafe(32),
        label=f"{getattr(client.store, 'label', type(client.store).__name__)} · "
        f"namespace {client.namespace}",
    )

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(_context(request, **context)), status)

    def fragment(request: Request, name: str, **context: Any) -> str:
        return env.get_template(name).render(_context(request, **context))

    def _context(request: Request, **context: Any) -> dict[str, Any]:
        return {
            "base": request.scope.get("root_path", ""),
            "settings": settings,
            "now": datetime.now(timezone.utc),
            "notice": NOTICES.get(request.query_params.get("done", ""), ""),
            "bulk_notice": bulk_notice(request.query_params),
            **context,
        }

    # -- pages

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/activities", 303)

    def _stream_url(request: Request, view: str, **params: str) -> str:
        kept = {k: v for k, v in params.items() if v}
        return f"{request.scope.get('root_path', '')}/live/{view}?" + urllib.parse.urlencode(kept)

    async def activities_view(request: Request) -> dict[str, Any]:
        query = request.query_params.get("q", "")
        page = _page_number(request.query_params.get("page", "0"))
        return {"view": await _pages.activities(client, query, page)}

    async def activity_view(request: Request) -> dict[str, Any]:
        activity_id = request.query_params.get("id", "")
        run_id = request.query_params.get("run") or None
        return {"view": await _pages.activity(client, activity_id, run_id)}

    async def queues_view(request: Request) -> dict[str, Any]:
        return {"queues": await _pages.queues(client)}

    async def workers_view(request: Request) -> dict[str, Any]:
        return {"workers": await _pages.workers(client)}

    views: dict[str, tuple[Callable[[Request], Awaitable[dict[str, Any]]], str]] = {
        "activities": (activities_view, "activities"),
        "activity": (activity_view, "activity"),
        "queues": (queues_view, "queues"),
        "workers": (workers_view, "workers"),
    }

    def page(view: str) -> Callable[[Request], Awaitable[Response]]:
        gather, template = views[view]

        async def endpoint(request: Request) -> Response:
            context = await gather(request)
            params = dict(request.query_params)
            params.pop("done", None)
            params.pop("n", None)
            status = 404 if getattr(context.get("view"), "missing", False) else 200
            return render(
                request,
                f"{template}.html",
                status,
                stream_url=_stream_url(request, view, **params),
                **context,
            )

        return endpoint

    async def live_stream(request: Request) -> Response:
        view = request.path_params["view"]
        if view not in views:
            return Response("no such page", 404, media_type="text/plain")
        gather, template = views[view]

        async def again() -> str:
            try:
                return fragment(request, f"_{template}_live.html", **await gather(request))
            except StoreError as e:
                return fragment(request, "_store_error.html", error=str(e))

        return StreamingResponse(
            stream(live, again, request.is_disconnected),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )

    # -- actions

    async def form_of(request: Request) -> dict[str, str] | None:
        """The POSTed form, if it carries this app's CSRF token."""
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        given = fields.get("csrf", "")
        if not secrets.compare_digest(given.encode(), settings.csrf.encode()):
            return None
        return fields

    def refused() -> Response:
        return Response(
            "This form is stale or was not sent from the dashboard: reload the page.",
            403,
            media_type="text/plain",
        )

    async def act(request: Request) -> Response:
        form = await form_of(request)
        if form is None:
            return refused()
        activity_id, run_id = form.get("id", ""), form.get("run") or None
        handle = client.get_activity_handle(activity_id, run_id=run_id)
        action = form.get("action", "")
        try:
            if action == "options":
                await _actions.update_options(handle, form)
                done = "options"
            else:
                done = await _actions.act(handle, action, form)
        except (ErrandsError, ValueError, TypeError) as e:
            view = await _pages.activity(client, activity_id, run_id)
            return render(
                request,
                "activity.html",
                409,
                view=view,
                error=f"{action.replace('_', ' ')} failed: {e}",
                stream_url=_stream_url(request, "activity", id=activity_id, run=run_id or ""),
            )
        params = {"id": activity_id, **({"run": run_id} if run_id else {}), "done": done}
        return RedirectResponse(
            f"{request.scope.get('root_path', '')}/activity?{urllib.parse.urlencode(params)}", 303
        )

    async def bulk_confirm(request: Request) -> Response:
        form = await form_of(request)
        if form is None:
            return refused()
        query, action = form.get("q", ""), form.get("action", "")
        try:
            count = await _actions.affected(client, without_order(query), action)
        except ValueError as e:
            return render(request, "message.html", 400, title="Cannot do that", message=str(e))
        return render(
            request,
            "confirm.html",
            query=query,
            action=action,
            label=_actions.BULK[action],
            count=count,
            form=form,
        )

    async def bulk(request: Request) -> Response:
        form = await form_of(request)
        if form is None:
            return refused()
        query, action = form.get("q", ""), form.get("action", "")
        try:
            changed = await _actions.bulk(client, without_order(query), action, form)
        except ValueError as e:
            return render(request, "message.html", 400, title="Cannot do that", message=str(e))
        params = {"q": query, "bulk": action, "n": str(changed)}
        return RedirectResponse(
            f"{request.scope.get('root_path', '')}/activities?{urllib.parse.urlencode(params)}",
            303,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Run when the dashboard is served on its own; a host app that mounts
        # it does not run a mounted app's lifespan: its streams end as their
        # browsers leave (or after MAX_STREAM_S, when they come back at once).
        yield
        await live.stop()

    async def metrics(request: Request) -> Response:
        # The client's runtime's Prometheus text (errands dashboard keeps one):
        # this process's store metrics and the namespace's queue backlog.
        try:
            text = client.runtime.prometheus_text()
        except RuntimeError:
            return Response(
                "This dashboard's client keeps no Prometheus metrics: connect it with a "
                "Runtime whose metrics are a PrometheusConfig (bind_address='' serves none "
                "of its own).",
                404,
                media_type="text/plain",
            )
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    if client.runtime._metrics is not None:
        client.runtime._metrics.watch_backlog(client.store, client.namespace)

    async def store_failed(request: Request, exc: Exception) -> Response:
        return render(request, "message.html", 503, title="The store failed", message=str(exc))

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Route("/activities", page("activities")),
            Route("/activity", page("activity")),
            Route("/queues", page("queues")),
            Route("/workers", page("workers")),
            Route("/metrics", metrics),
            Route("/live/{view}", live_stream),
            Route("/act", act, methods=["POST"]),
            Route("/bulk/confirm", bulk_confirm, methods=["POST"]),
            Route("/bulk", bulk, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("errands.dashboard", "static")])),
        ],
        exception_handlers={StoreError: store_failed},
        lifespan=lifespan,
    )
    return Guard(app, token=token, read_only=read_only, allowed_hosts=allowed_hosts)


def _page_number(text: str) -> int:
    try:
        return max(0, min(int(text), 10_000))
    except ValueError:
        return 0


def bulk_notice(params: Mapping[str, str]) -> str:
    """What the list says after a bulk action."""
    action = params.get("bulk", "")
    if action not in _actions.BULK:
        return ""
    label = _actions.BULK[action].removesuffix(" of")
    return f"{label}: {params.get('n', '0')} activities changed."
