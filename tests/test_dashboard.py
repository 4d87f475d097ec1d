"""The dashboard in a real browser (Debian's Chromium through Playwright), on
both stores: the list and its query, an activity's page and its attempts,
a completion shown live, actions one by one and by query, read-only mode,
the token, and values that try to run a script.

Given a store with activities (and, where the test says so, a worker in
another process), when a person uses the dashboard, then the page shows what
the store holds, and changes it only as asked.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from errands.client import ActivityExecutionStatus, Client
from errands.common import RetryPolicy
from tests import procs
from tests.browser import Browser, Tab, require_chromium, serving, serving_app
from tests.support import CEILING_S, describe_until, eventually

pytestmark = pytest.mark.timeout(180)

XSS = [
    "<script>window.__xss = 'script'</script>",
    '"><img src=x onerror="window.__xss = \'img\'">',
    "' onmouseover='window.__xss = 1' x='",
]
"""Values that would run a script if a page pasted them in unescaped."""

Status = ActivityExecutionStatus


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module."""
    require_chromium()
    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $ERRANDS_SCREENSHOTS (README's come from there),
    else the test's temporary directory."""
    folder = Path(os.environ.get("ERRANDS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest_asyncio.fixture
async def console(client: Client) -> AsyncIterator[str]:
    """The dashboard of the test's client, served on 127.0.0.1."""
    async with serving(client) as url:
        yield url


@pytest_asyncio.fixture
async def tab(browser: Browser, shots: Path, store_kind: str) -> AsyncIterator[Tab]:
    """A fresh page; afterwards, no dialog opened and no script failed on it."""
    page = await browser.tab(shots, store_kind)
    try:
        yield page
        assert page.dialogs == [], page.dialogs
        assert page.errors == [], page.errors
    finally:
        await page.close()


async def start_idle(client: Client, activity_type: str, ids: list[str], queue: str) -> None:
    """Start activities on a queue no worker serves: they stay Running."""
    for activity_id in ids:
        await client.start_activity(
            activity_type,
            {"id": activity_id},
            id=activity_id,
            task_queue=queue,
            start_to_close_timeout=timedelta(seconds=60),
        )


def link(url: str, **params: str) -> str:
    return f"{url}?{urllib.parse.urlencode(params)}"


async def test_the_list_counts_by_status_and_filters_with_a_query(
    client: Client, console: str, tab: Tab, task_queue: str
) -> None:
    # Given three resize and two mail activities, one of them terminated
    await start_idle(client, "resize", [f"img-{i}" for i in range(3)], task_queue)
    await start_idle(client, "send-mail", ["mail-0", "mail-1"], task_queue)
    await client.get_activity_handle("img-1").terminate("not needed")
    # When the list opens
    assert await tab.goto(f"{console}/activities") == 200
    # Then it shows the counts by status and every activity, newest first
    assert await tab.text("[data-count=All]") == "5"
    assert await tab.text("[data-count=Running]") == "4"
    assert await tab.text("[data-count=Terminated]") == "1"
    assert await tab.texts("td.id") == ["mail-1", "mail-0", "img-2", "img-1", "img-0"]
    assert "resize" in await tab.text("aside.facets")
    await tab.screenshot("activities")
    # When a query is typed in
    await tab.do(lambda page: page.fill("input[name=q]", "ActivityType = 'resize'"))
    await tab.click("form.query button")
    # Then only what it matches is listed and counted
    await tab.wait_text("[data-count=All]", "3")
    assert await tab.texts("td.id") == ["img-2", "img-1", "img-0"]
    # and a status count narrows it further
    await tab.click("a.count.terminated")
    await tab.wait_text("[data-count=All]", "1")
    assert await tab.texts("td.id") == ["img-1"]
    # and a facet of the whole list narrows it to one type
    await tab.goto(f"{console}/activities")
    await tab.click("aside.facets a:text-is('send-mail')")
    await tab.wait_text("[data-count=All]", "2")
    assert await tab.texts("td.id") == ["mail-1", "mail-0"]
    # and a query outside the language is shown as an error, not a crash
    await tab.goto(link(f"{console}/activities", q="ActivityType = "))
    assert "invalid query" in await tab.text("#query-error")


async def test_an_activity_shows_its_attempts_and_completes_live_from_a_worker_elsewhere(
    client: Client, db_url: str, console: str, tab: Tab, task_queue: str, tmp_path: Path
) -> None:
    # Given an activity that failed twice on a worker in another process and
    # now runs its third attempt, waiting for a file
    go = tmp_path / "go"
    handle = await client.start_activity(
        procs.fail_twice_then_wait,
        args=[str(go), "disk full"],
        id="report-7",
        task_queue=task_queue,
        start_to_close_timeout=timedelta(seconds=60),
        retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)),
    )
    with procs.Children(tmp_path) as children:
        await children.worker("worker", db_url, task_queue)
        await describe_until(
            handle,
            lambda d: d.attempt == 3 and d.run_state is not None and d.total_heartbeat_count >= 3,
            "attempt 3 running",
        )
        # When its page opens
        assert await tab.goto(link(f"{console}/activity", id="report-7")) == 200
        # Then it shows every attempt, each failure, the heartbeat details and the input
        assert await tab.text("#status") == "RUNNING"
        assert await tab.texts("li.attempt .outcome") == ["RUNNING", "FAILED", "FAILED"]
        failures = await tab.texts("li.attempt .failure")
        assert failures == [
            "Flaky: attempt 2 failed: disk full",
            "Flaky: attempt 1 failed: disk full",
        ]
        assert '"attempt": 3' in await tab.text("#heartbeat-details")
        assert "disk full" in await tab.text("#input")
        assert await tab.text("[data-field=attempt]") == "3"
        await tab.screenshot("activity")
        await tab.evaluate("window.__same_page = true")
        # When the worker completes it
        await tab.wait_updates()  # its stream is open, as a person's page would be
        go.touch()
        assert await handle.result() == "done"
        # Then the page shows it COMPLETED, without a reload
        await tab.wait_text("#status", "COMPLETED")
        assert await tab.evaluate("window.__same_page") is True
        assert await tab.texts("li.attempt .outcome") == ["COMPLETED", "FAILED", "FAILED"]
        assert '"done"' in await tab.text("#result")


async def test_cancel_pause_and_unpause_from_an_activity_page(
    client: Client, console: str, tab: Tab, task_queue: str
) -> None:
    await start_idle(client, "resize", ["img-a", "img-b"], task_queue)
    await tab.goto(link(f"{console}/activity", id="img-a"))
    # Pause: it waits, so it is paused at once
    await tab.click("button[data-action=pause]")
    await tab.wait_text("#status", "PAUSED")
    assert "Pause requested" in await tab.text("p.notice")
    assert (await client.get_activity_handle("img-a").describe()).status is Status.PAUSED
    assert await tab.count("button[data-action=pause]") == 0
    # Unpause
    await tab.click("button[data-action=unpause]")
    await tab.wait_text("#status", "RUNNING")
    assert (await client.get_activity_handle("img-a").describe()).status is Status.RUNNING
    # Cancel: a waiting one is canceled at once, and its actions go
    await tab.click("button[data-action=cancel]")
    await tab.wait_text("#status", "CANCELED")
    assert await tab.count("button[data-action]") == 0
    assert (await client.get_activity_handle("img-a").describe()).status is Status.CANCELED
    # The other one is untouched
    assert (await client.get_activity_handle("img-b").describe()).status is Status.RUNNING


async def test_a_bulk_cancel_by_query_says_how_many_first_and_changes_only_those(
    client: Client, console: str, tab: Tab, task_queue: str
) -> None:
    await start_idle(client, "resize", [f"img-{i}" for i in range(5)], task_queue)
    await start_idle(client, "send-mail", ["mail-0", "mail-1", "mail-2"], task_queue)
    await tab.goto(link(f"{console}/activities", q="ActivityType = 'resize'"))
    await tab.click("button[data-bulk=cancel]")
    # The confirmation says how many it will change
    assert await tab.text("section.confirm h1") == "Cancel 5 activities?"
    await tab.screenshot("confirm")
    await tab.click("#confirm")
    assert await tab.text("p.notice") == "Cancel: 5 activities changed."
    assert await tab.text("[data-count=Canceled]") == "5"
    counted = await client.count_activities("GROUP BY ExecutionStatus")
    assert {g.group_values[0]: g.count for g in counted.groups} == {"Running": 3, "Canceled": 5}
    # Update options by query: the other three move to another task queue
    await tab.goto(link(f"{console}/activities", q="ActivityType = 'send-mail'"))
    await tab.click("button[data-bulk=options]")
    assert await tab.text("section.confirm h1") == "Update options of 3 activities?"
    await tab.do(lambda page: page.fill("input[name=task_queue]", "elsewhere"))
    await tab.click("#confirm")
    assert await tab.text("p.notice") == "Update options: 3 activities changed."
    queues = await client.count_activities("GROUP BY TaskQueue")
    assert {g.group_values[0]: g.count for g in queues.groups} == {task_queue: 5, "elsewhere": 3}


async def test_the_list_updates_live_as_activities_start_and_close(
    client: Client, console: str, tab: Tab, task_queue: str
) -> None:
    await start_idle(client, "resize", ["img-0"], task_queue)
    await tab.goto(f"{console}/activities")
    await tab.wait_text("#live-state", "live")
    await start_idle(client, "resize", ["img-1", "img-2"], task_queue)
    await tab.wait_text("[data-count=Running]", "3")
    await client.get_activity_handle("img-2").terminate()
    await tab.wait_text("[data-count=Terminated]", "1")
    assert await tab.texts("td.id") == ["img-2", "img-1", "img-0"]


async def test_queues_and_workers_pages_show_the_backlog_and_the_registry(
    client: Client, db_url: str, console: str, tab: Tab, task_queue: str, tmp_path: Path
) -> None:
    await start_idle(client, "resize", ["img-0", "img-1"], task_queue + "-idle")
    with procs.Children(tmp_path) as children:
        await children.worker("worker", db_url, task_queue, max_concurrent=7)
        assert (
            await client.execute_activity(
                procs.echo,
                "hi",
                id="echo-1",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=30),
            )
            == "hi"
        )
        await tab.goto(f"{console}/queues")
        idle = f"tr[data-queue='{task_queue}-idle']"
        assert await tab.text(f"{idle} [data-field=scheduled]") == "2"
        assert await tab.text(f"{idle} [data-field=backlog]") == "2"
        assert await tab.text(f"tr[data-queue='{task_queue}'] [data-field=completed]") == "1"
        await tab.screenshot("queues")
        await tab.goto(f"{console}/workers")
        row = await tab.text("table.workers tbody tr")
        assert task_queue in row and "/ 7" in row
        await tab.screenshot("workers")


async def test_read_only_mode_shows_no_action_and_refuses_them(
    client: Client, tab: Tab, task_queue: str
) -> None:
    await start_idle(client, "resize", ["img-0"], task_queue)
    async with serving(client, read_only=True) as url:
        await tab.goto(link(f"{url}/activity", id="img-0"))
        assert await tab.text("#status") == "RUNNING"
        assert await tab.count("button[data-action]") == 0
        assert await tab.count("form[method=post]") == 0
        assert "read-only" in await tab.text("header")
        await tab.goto(f"{url}/activities")
        assert await tab.count("button[data-bulk]") == 0
        # A client that keeps no Prometheus metrics has no /metrics to serve
        assert await tab.goto(f"{url}/metrics") == 404
        # A POST made anyway (from the page's own origin) is refused
        status = await tab.evaluate(
            "fetch('/act', {method: 'POST', body: new URLSearchParams("
            "{id: 'img-0', action: 'cancel'})}).then(r => r.status)"
        )
        assert status == 403
    assert (await client.get_activity_handle("img-0").describe()).status is Status.RUNNING


async def test_values_that_hold_markup_are_shown_as_text_and_run_nothing(
    client: Client, db_url: str, console: str, tab: Tab, task_queue: str, tmp_path: Path
) -> None:
    # Given activities whose id, heartbeat details and failure messages hold markup
    handles = []
    for i, words in enumerate(XSS):
        handles.append(
            await client.start_activity(
                procs.fail_twice_then_wait,
                args=[str(tmp_path / "never"), words],
                id=f"{words}-{i}",
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)),
            )
        )
    with procs.Children(tmp_path) as children:
        await children.worker("worker", db_url, task_queue)
        for handle in handles:
            await describe_until(handle, lambda d: d.attempt == 3, "attempt 3")
        # When the list and each page open (and update live)
        await tab.goto(f"{console}/activities")
        assert sorted(await tab.texts("td.id")) == sorted(f"{w}-{i}" for i, w in enumerate(XSS))
        await tab.screenshot("xss-list")
        for i, words in enumerate(XSS):
            await tab.goto(link(f"{console}/activity", id=f"{words}-{i}"))
            # Then each value is there as text
            assert await tab.text("h1.activity-id") == f"{words}-{i}"
            assert json.dumps(words)[1:-1] in await tab.text("#heartbeat-details")
            failures = await tab.texts("li.attempt .failure")
            assert f"Flaky: attempt 2 failed: {words}" in failures
            await tab.wait_updates()  # and as its stream renders it again
            # and nothing ran: no script, no image, no handler
            assert await tab.evaluate("window.__xss") is None
            assert await tab.count("img") == 0
            assert await tab.count("script") == 1  # the dashboard's own
            assert await tab.count("[onerror], [onmouseover]") == 0


def test_an_event_carries_every_line_of_the_page_and_no_carriage_return() -> None:
    # A carriage return in a value would end the event's line early and let
    # the rest pass for a field of the stream.
    from errands.dashboard._live import event

    sent = event("update", "<td>a\revent: x</td>\n<td>b</td>")
    assert sent == "event: update\ndata: <td>a&#13;event: x</td>\ndata: <td>b</td>\n\n"


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_mounted_under_a_prefix_in_a_host_app_every_link_and_action_stays_under_it(
    client: Client, tab: Tab, task_queue: str
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from errands.dashboard import create_app

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("the host app")

    await start_idle(client, "resize", ["img-0"], task_queue)
    host = Starlette(routes=[Route("/", home), Mount("/ops/errands", app=create_app(client))])
    async with serving_app(host) as url:
        assert await tab.goto(f"{url}/ops/errands/") == 200
        assert (await tab.url()) == f"{url}/ops/errands/activities"
        await tab.wait_text("#live-state", "live")  # its script and its stream, under the prefix
        await tab.click("td.id a")
        await tab.click("button[data-action=cancel]")
        await tab.wait_text("#status", "CANCELED")
        assert (await tab.url()).startswith(f"{url}/ops/errands/activity?")
        await tab.click("nav.pages a:text-is('Queues')")
        assert (await tab.url()) == f"{url}/ops/errands/queues"


def _request(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, str], str]:
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=CEILING_S) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_with_a_token_every_request_needs_it_and_actions_need_the_same_origin(
    client: Client, browser: Browser, shots: Path, task_queue: str
) -> None:
    await start_idle(client, "resize", ["img-0"], task_queue)
    async with serving(client, token="s3cret") as url:
        # Without the token: refused, static files too
        for path in ("/activities", "/static/console.js", "/live/activities"):
            status, _, body = await asyncio.to_thread(_request, url + path)
            assert status == 401, path
        assert "token" in body
        # With it as a header: served
        status, headers, _ = await asyncio.to_thread(
            _request, url + "/activities", headers={"Authorization": "Bearer s3cret"}
        )
        assert status == 200
        assert "script-src 'self'" in headers["content-security-policy"]
        # ?token= sets a cookie and leaves the address bar
        status, headers, _ = await asyncio.to_thread(_request, url + "/activities?token=s3cret")
        assert status == 303 and headers["location"] == "/activities"
        assert "HttpOnly" in headers["set-cookie"] and "s3cret" not in headers["set-cookie"]
        # and never sends the browser to another site ("//evil.example/" is one)
        status, headers, _ = await asyncio.to_thread(_request, url + "//evil.example/?token=s3cret")
        assert status == 303 and headers["location"] == "/evil.example/"
        # A POST from another origin is refused, even with the token
        form = b"id=img-0&action=cancel&csrf=x"
        cross = {"Authorization": "Bearer s3cret", "Origin": "http://evil.example"}
        status, _, _ = await asyncio.to_thread(
            _request, url + "/act", method="POST", headers=cross, data=form
        )
        assert status == 403
        # and one from the same origin without the page's CSRF token too
        same = {"Authorization": "Bearer s3cret", "Origin": url}
        status, _, body = await asyncio.to_thread(
            _request, url + "/act", method="POST", headers=same, data=form
        )
        assert status == 403 and "stale" in body
        # In a browser, the printed address works from then on (the cookie)
        page = await browser.tab(shots, "token")
        try:
            assert await page.goto(f"{url}/?token=s3cret") == 200
            assert (await page.url()) == f"{url}/activities"
            await page.wait_text("#live-state", "live")
            await page.click("td.id a")
            await page.click("button[data-action=cancel]")
            await page.wait_text("#status", "CANCELED")
        finally:
            await page.close()
    assert (await client.get_activity_handle("img-0").describe()).status is Status.CANCELED


async def test_the_command_prints_its_address_serves_live_and_refuses_an_open_host_alone(
    db_url: str, client: Client, tab: Tab, task_queue: str, tmp_path: Path
) -> None:
    # An address other machines reach, without a token: refused, saying why
    refused = subprocess.run(
        [sys.executable, "-m", "errands", "dashboard", "--url", db_url, "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=CEILING_S,
        cwd=procs.REPO_ROOT,
        env={**os.environ, "ERRANDS_DASHBOARD_TOKEN": ""},
    )
    assert refused.returncode == 1
    assert "without a token" in refused.stderr and "--token" in refused.stderr
    # The default: 127.0.0.1, at the address it prints
    await start_idle(client, "resize", ["img-0"], task_queue)
    out = tmp_path / "dashboard.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "errands", "dashboard", "--url", db_url, "--port", "0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=procs.REPO_ROOT,
        )
    try:

        async def printed() -> bool:
            return "http://127.0.0.1:" in out.read_text()

        await eventually(printed, "the dashboard's address")
        address = out.read_text().split("http://", 1)[1].split()[0]
        assert await tab.goto(f"http://{address}activities") == 200
        assert await tab.texts("td.id") == ["img-0"]
        await tab.wait_text("#live-state", "live")
        # Without a token it answers only to this machine's names (a page of
        # another site whose name points here is refused: DNS rebinding)
        rebound = {"Host": "attacker.example:80"}
        status, _, _ = await asyncio.to_thread(
            _request, f"http://{address}activities", headers=rebound
        )
        assert status == 421
        # /metrics: Prometheus text, with the namespace's queue backlog
        status, headers, text = await asyncio.to_thread(_request, f"http://{address}metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert (
            f'errands_task_queue_backlog{{namespace="default",task_queue="{task_queue}"}} 1' in text
        )
        # Its live updates come from another process (this test's client)
        await client.get_activity_handle("img-0").terminate()
        await tab.wait_text("[data-count=Terminated]", "1")
    finally:
        proc.terminate()
        proc.wait(timeout=CEILING_S)
