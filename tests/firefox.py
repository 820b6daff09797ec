"""Helpers for driving the demo page in headless Firefox (Debian's /usr/bin/firefox-esr),
the counterpart of tests/browser.py for Chromium.

Every participant is its own Firefox process with its own throw-away profile, started
with Marionette enabled and driven with PyPI's ``marionette-driver`` (no geckodriver).
Its profile gives it fake media devices (a synthetic camera and microphone), no
permission prompt, autoplay, and host candidates on loopback.

A :class:`FirefoxPage` offers the part of Playwright's ``Page`` that tests/browser.py's
helpers call (``evaluate``, ``wait_for_function``, ``wait_for_timeout``, ``url``), so
``page_stats``, ``wait_for_stats``, ``page_state`` and ``decoding_video`` work on a
Firefox page as on a Chromium one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

FIREFOX_PATH = Path("/usr/bin/firefox-esr")
STARTUP_TIMEOUT = 30.0
QUIT_TIMEOUT = 10.0
SOCKET_TIMEOUT = 60.0
"""Seconds a Marionette command may take (its default, 360 s, would stall a failing run)."""
UI_TIMEOUT = 20.0
WINDOW_SIZE = (1600, 1200)
"""Big enough that three remote tiles stay in view (hidden tiles are paused)."""

PREFS: dict[str, bool | int | str] = {
    # Marionette listens on a free port and writes it to MarionetteActivePort in the
    # profile: no port to pick (and race for) in the test.
    "marionette.port": 0,
    # A synthetic camera and microphone, no permission prompt, playback without a gesture.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    # Host candidates on loopback, with their real addresses (no mDNS names).
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.default_address_only": False,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    # No first-run pages, no preloaded spare content process: less CPU and memory.
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "dom.ipc.processPrelaunch.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
}

# The page's uncaught exceptions, unhandled rejections and console errors, collected
# in the page itself (Marionette has no console event stream).
_COLLECT_ERRORS = """
    if (!window.__testErrors) {
        const errors = (window.__testErrors = []);
        window.addEventListener("error", (e) => errors.push(`pageerror: ${e.message}`));
        window.addEventListener("unhandledrejection", (e) =>
            errors.push(`pageerror: ${e.reason && e.reason.message || e.reason}`));
        const consoleError = console.error.bind(console);
        console.error = (...args) => {
            errors.push(`console.error: ${args.map(String).join(" ")}`);
            consoleError(...args);
        };
    }
"""


class FirefoxError(RuntimeError):
    pass


def firefox_available() -> bool:
    if not FIREFOX_PATH.exists():
        return False
    try:
        import marionette_driver  # noqa: F401
    except ImportError:
        return False
    return True


def write_user_js(profile: Path) -> None:
    lines = [
        f"user_pref({json.dumps(name)}, {json.dumps(value)});" for name, value in PREFS.items()
    ]
    (profile / "user.js").write_text("\n".join(lines) + "\n")


class FirefoxPage:
    """The one page of a Firefox process, over a Marionette session."""

    def __init__(self, marionette: Any) -> None:
        self.marionette = marionette

    @property
    def url(self) -> str:
        return self.marionette.get_url()

    def goto(self, url: str) -> None:
        """Open ``url``; leaving the demo page leaves its room (``pagehide``)."""
        self.marionette.navigate(url)

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        """Call the JavaScript function ``expression`` with ``arg`` in the page's own
        realm (not Marionette's sandbox: ``window.sfu`` is the page's object), await its
        result, and return it; a thrown error raises :class:`FirefoxError`."""
        script = f"""
            const [arg, resolve] = arguments;
            Promise.resolve()
                .then(() => ({expression})(arg))
                .then((value) => resolve({{ value }}),
                      (error) => resolve({{ error: String(error && error.stack || error) }}));
        """
        result = self.marionette.execute_async_script(script, script_args=(arg,), sandbox=None)
        if "error" in result:
            raise FirefoxError(f"{expression}: {result['error']}")
        return result.get("value")

    def wait_for_function(self, expression: str, timeout: float = UI_TIMEOUT * 1000) -> Any:
        """Poll ``expression`` (a JavaScript function) until it returns something truthy;
        ``timeout`` in milliseconds, as Playwright's."""
        deadline = time.monotonic() + timeout / 1000
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout / 1000:.0f}s waiting for {expression} on {self.url}"
                )
            time.sleep(0.2)

    def wait_for_timeout(self, milliseconds: float) -> None:
        time.sleep(milliseconds / 1000)

    def click(self, selector: str) -> None:
        """Click the first element matching the CSS ``selector`` (as Playwright's)."""
        self.evaluate("(selector) => document.querySelector(selector).click()", selector)

    @property
    def uncaught_errors(self) -> list[str]:
        """Uncaught exceptions and unhandled rejections since the page was opened."""
        errors = self.evaluate("() => window.__testErrors || []")
        return [e for e in errors if e.startswith("pageerror")]


def _wait_for_marionette_port(
    profile: Path, process: subprocess.Popen[bytes], log_path: Path
) -> int:
    port_file = profile / "MarionetteActivePort"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(port_file.read_text().strip())
        if process.poll() is not None:
            raise FirefoxError(
                f"firefox exited with {process.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        if time.monotonic() > deadline:
            raise FirefoxError(f"no Marionette port after {STARTUP_TIMEOUT:.0f}s")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End Firefox's process group (it and its content processes): SIGTERM when it is
    still running, SIGKILL for whatever is left after :data:`QUIT_TIMEOUT`."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=QUIT_TIMEOUT)
    # Content processes of the group may outlive the parent.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=QUIT_TIMEOUT)


@contextlib.contextmanager
def firefox() -> Iterator[FirefoxPage]:
    """One headless Firefox process with a fresh profile; yields its page.

    On a clean exit the page navigates away (the demo page leaves its room on
    ``pagehide``) and the Marionette session ends; then, and on any failure, the process
    group is terminated (killed if it does not quit) and the profile is deleted.
    """
    from marionette_driver.marionette import Marionette

    with tempfile.TemporaryDirectory(prefix="sfu-firefox-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp) / "profile"
        profile.mkdir()
        write_user_js(profile)
        log_path = Path(tmp) / "firefox.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    str(FIREFOX_PATH),
                    "--headless",
                    "--marionette",
                    "--remote-allow-system-access",
                    "--no-remote",
                    "--profile",
                    str(profile),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        try:
            port = _wait_for_marionette_port(profile, process, log_path)
            marionette = Marionette(
                host="127.0.0.1",
                port=port,
                startup_timeout=STARTUP_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
            )
            marionette.start_session()
            width, height = WINDOW_SIZE
            marionette.set_window_rect(width=width, height=height)
            page = FirefoxPage(marionette)
            yield page
            # A clean exit: leave the room and end the session before the process goes
            # (on a failure the process group is simply killed below).
            with contextlib.suppress(Exception):
                page.goto("about:blank")
            with contextlib.suppress(Exception):
                marionette.delete_session()
        finally:
            _stop(process)


@contextlib.contextmanager
def firefox_pages(count: int) -> Iterator[list[FirefoxPage]]:
    """``count`` Firefox processes (see :func:`firefox`) started and closed side by
    side: both are mostly waiting (a start takes 7-15 s on a loaded 2-core machine)."""

    def close(manager: contextlib.AbstractContextManager[FirefoxPage]) -> None:
        manager.__exit__(None, None, None)

    with ThreadPoolExecutor(count) as pool:
        managers = [firefox() for _ in range(count)]
        futures = [pool.submit(manager.__enter__) for manager in managers]
        pages: list[FirefoxPage] = []
        entered = []
        failure: BaseException | None = None
        for manager, future in zip(managers, futures, strict=True):
            try:
                pages.append(future.result())
            except Exception as exc:
                failure = failure or exc
                continue
            entered.append(manager)
        try:
            if failure is not None:
                raise failure
            yield pages
        finally:
            list(pool.map(close, entered))


def open_demo(
    page: FirefoxPage,
    server: str,
    room: str,
    name: str,
    *,
    publish: bool = True,
    simulcast: bool = True,
    identity: str | None = None,
) -> FirefoxPage:
    """Open the demo page on ``page`` and join ``room`` as ``name``; waits for the join.

    The page is opened without room parameters (the join form), the error collectors
    are installed, then it joins through ``window.sfu.join``, as the URL parameters
    would: so an error thrown while joining is collected too.
    """
    page.goto(f"{server}/")
    page.evaluate(f"() => {{ {_COLLECT_ERRORS} }}")
    page.evaluate(
        "(options) => { window.sfu.join(options); }",
        {
            "room": room,
            "name": name,
            "publish": publish,
            "simulcast": simulcast,
            "identity": identity,
        },
    )
    page.wait_for_function("() => window.sfu.participantId !== null")
    return page
