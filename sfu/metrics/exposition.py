"""The ``/metrics`` body: this process's registry in the Prometheus text format.

Collection walks the media worker's objects, so it must run on the worker's event
loop thread: the signaling app's route (an ``async def``) and
:mod:`sfu.app.metrics_server` both call :func:`render` there. prometheus_client's own
``start_http_server`` would collect from another thread and race the packet path, so
it is not used.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


def render() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
