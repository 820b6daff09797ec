"""Shared pytest configuration and fixtures."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Fuzz tests draw the same examples on every run unless asked otherwise, so a CI run is
# reproducible; `HYPOTHESIS_PROFILE=explore` draws fresh ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# --- browser tests: markers, the embedded server fixture ---------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives the demo page in headless Chromium against a live server"
    )


@pytest.fixture(scope="module")
def sfu_server() -> Iterator[str]:
    """Base URL of ``python -m sfu serve`` started on a free port for this module.

    The value is a ``str`` (``http://127.0.0.1:<port>``) with a ``log()`` method giving the
    server's output; a failing test that used it gets that output in its report.
    """
    from server import serve_module

    yield from serve_module()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("sfu_server")
    if report.failed and server is not None and hasattr(server, "log"):
        report.sections.append(("sfu server output", server.log() or "(empty)"))


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """For tests that time the server from this process (a bystander's pings): after a
    thousand tests this process's heap is large, and a full collection of it (100 ms and
    more) would be blamed on the server. Frozen, a collection walks only what the test
    allocates."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
