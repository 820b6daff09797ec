"""Prometheus metrics of every pysfu process.

- :mod:`sfu.metrics.worker`: the media worker's figures, read at scrape time from the
  plain-int counters of the media objects (nothing on the packet path).
- :mod:`sfu.metrics.signaling`: WebSocket connections, errors by code, Redis round
  trips and errors.
- :mod:`sfu.metrics.exposition`: the ``/metrics`` body (served by the signaling app,
  or by :mod:`sfu.app.metrics_server` in a process without one).

The README's Operations section lists every metric; ``grafana/`` holds dashboards
whose queries ``tests/test_dashboards.py`` evaluates against a real Prometheus.
"""

from prometheus_client import disable_created_metrics

from sfu.metrics.exposition import render
from sfu.metrics.worker import WorkerMetrics

# ``_created`` series (one per counter and histogram) double what Prometheus stores and
# no dashboard reads them.
disable_created_metrics()

__all__ = ["WorkerMetrics", "render"]
