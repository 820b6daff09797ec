"""Headless Chromium through Playwright's async API, for tests that also run asyncio
clients (the SDK, agents) in the same event loop as the page they talk to."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from browser import CHROMIUM_ARGS, CHROMIUM_PATH

UI_TIMEOUT_MS = 20_000


@contextlib.asynccontextmanager
async def chromium(
    extra_args: list[str] | None = None, executable: str | Path = CHROMIUM_PATH
) -> AsyncIterator[Any]:
    """A persistent Chromium context (Playwright ``BrowserContext``), throw-away profile;
    ``executable``: e.g. a :meth:`netns.VethNamespace.wrapper` around Chromium."""
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(executable),
                headless=True,
                args=[*CHROMIUM_ARGS, *(extra_args or [])],
                viewport={"width": 1024, "height": 720},
            )
            try:
                yield context
            finally:
                await context.close()


async def open_demo(
    context: Any, server: str, room: str, name: str, identity: str, query: str = ""
) -> Any:
    """A page of ``context`` that joined ``room`` on the demo page; waits for the join.
    ``query``: more of the page's parameters (``&publish=0``)."""
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.uncaught_errors = errors
    await page.goto(f"{server}/?room={room}&name={name}&identity={identity}{query}")
    await page.wait_for_function("() => window.sfu.participantId !== null", timeout=UI_TIMEOUT_MS)
    return page
