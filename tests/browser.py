"""A real browser for the dashboard's tests: Debian's Chromium, driven by
Playwright's sync API on a thread of its own (the tests' event loop serves
the dashboard meanwhile), one browser per test module.

Never a browser Playwright downloads: ``/usr/bin/chromium`` (``.ci/run``
installs it). Without it the tests skip, or fail with
ERRANDS_REQUIRE_BROWSER=1 (as in .ci/run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from errands.client import Client

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WAIT_MS = 15_000
"""Longest a page waits for what a test expects (generous: the machine is shared)."""

Job = tuple[Callable[[Any], Any], "concurrent.futures.Future[Any]"]


def require_chromium() -> None:
    """Skip without Debian's Chromium; fail with ERRANDS_REQUIRE_BROWSER=1
    (as in .ci/run, which installs it)."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("ERRANDS_REQUIRE_BROWSER") == "1":
            pytest.fail(message + ": .ci/run should have installed it")
        pytest.skip(message)


class Browser:
    """Headless Chromium on its own thread; ``run`` hands it work."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="playwright", daemon=True)
        self._thread.start()
        self._ready.result(timeout=60)

    def _main(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=FLAGS
                )
                self._ready.set_result(None)
                while (job := self._jobs.get()) is not None:
                    fn, future = job
                    if not future.set_running_or_notify_cancel():
                        continue
                    try:
                        future.set_result(fn(browser))
                    except BaseException as e:
                        future.set_exception(e)
                browser.close()
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            raise

    async def run(self, fn: Callable[[Any], T]) -> T:
        """``fn(browser)`` on the browser's thread."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=60)

    async def tab(self, shots: Path, name: str) -> Tab:
        """A new page in a context of its own (its own cookies)."""

        def open_tab(browser: Any) -> Any:
            context = browser.new_context(viewport={"width": 1360, "height": 900})
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            return page

        return Tab(self, await self.run(open_tab), shots, name)


class Tab:
    """One page, every call made on the browser's thread. It records the
    dialogs that opened (none should) and the page's script errors."""

    def __init__(self, browser: Browser, page: Any, shots: Path, name: str) -> None:
        self.browser = browser
        self.page = page
        self.shots = shots
        self.name = name
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    async def do(self, fn: Callable[[Any], T]) -> T:
        """``fn(page)`` on the browser's thread."""
        return await self.browser.run(lambda _: fn(self.page))

    async def goto(self, url: str) -> int:
        response = await self.do(lambda page: page.goto(url))
        return int(response.status) if response is not None else 0

    async def url(self) -> str:
        return str(await self.do(lambda page: page.url))

    async def text(self, selector: str) -> str:
        return str(await self.do(lambda page: page.locator(selector).first.inner_text()))

    async def texts(self, selector: str) -> list[str]:
        return list(await self.do(lambda page: page.locator(selector).all_inner_texts()))

    async def count(self, selector: str) -> int:
        return int(await self.do(lambda page: page.locator(selector).count()))

    async def click(self, selector: str) -> None:
        await self.do(lambda page: page.locator(selector).first.click())

    async def wait_text(self, selector: str, text: str) -> None:
        """Wait until the element's text is ``text`` (as the live updates bring it)."""
        from playwright.sync_api import expect

        await self.do(
            lambda page: expect(page.locator(selector).first).to_have_text(text, timeout=WAIT_MS)
        )

    async def wait_updates(self, count: int = 1) -> None:
        """Wait until the page has swapped in ``count`` live updates."""
        script = f"Number(document.getElementById('live').dataset.updates || 0) >= {count}"
        await self.do(lambda page: page.wait_for_function(script))

    async def evaluate(self, script: str) -> Any:
        return await self.do(lambda page: page.evaluate(script))

    async def screenshot(self, what: str) -> Path:
        """Write ``<what>-<name>.png`` into the screenshots folder."""
        path = self.shots / f"{what}-{self.name}.png"
        await self.do(lambda page: page.screenshot(path=str(path), full_page=True))
        return path

    async def close(self) -> None:
        await self.do(lambda page: page.context.close())


@contextlib.asynccontextmanager
async def serving(client: Client, **options: Any) -> AsyncIterator[str]:
    """The dashboard of ``client`` (``create_app(client, **options)``), served
    by uvicorn on this event loop at a free port of 127.0.0.1; its base URL."""
    from errands.dashboard import create_app

    async with serving_app(create_app(client, **options)) as url:
        yield url


@contextlib.asynccontextmanager
async def serving_app(app: Any) -> AsyncIterator[str]:
    """An ASGI app served by uvicorn on this event loop at a free port of
    127.0.0.1; its base URL."""
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
