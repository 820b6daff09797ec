"""The Grafana dashboards stay true: a real Prometheus (Debian's ``prometheus``) scrapes
a running server with a room of real clients, then every query of every dashboard is
evaluated through Prometheus's HTTP API; an invalid query, or one with no series,
fails. Every ``sfu_`` metric the server exports must appear on some dashboard."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server import free_port
from test_metrics import lossy_clients, scrape, total

from sfu.client import RoomClient, SyntheticVideoTrack, ToneAudioTrack, connect, dev_token

__all__ = ["lossy_clients"]  # a fixture used below, imported for pytest to find

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS = shutil.which("prometheus")
RATE_WINDOW = "20s"
"""Replaces Grafana's ``$__rate_interval``; scrapes are 1 s apart in this test."""
WAITING_FOR_DATA = ("sfu_redis_round_trip_seconds", "sfu_subscriber_estimated_bandwidth")
"""Metrics that have series but no observations yet on the embedded server: it has no
Redis bus, and no subscriber bandwidth estimator reports an estimate yet. Queries on
them may yield NaN (a series with no value); every other query must give a number."""


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) for every target of every panel."""
    queries = []
    for path in DASHBOARDS:
        document = json.loads(path.read_text())
        for panel in document["panels"]:
            for target in panel["targets"]:
                queries.append((path.name, panel["title"], target["expr"]))
    return queries


def test_dashboards_are_well_formed():
    assert {p.name for p in DASHBOARDS} == {
        "pysfu-overview.json",
        "pysfu-worker.json",
        "pysfu-quality.json",
    }
    uids = set()
    for path in DASHBOARDS:
        document = json.loads(path.read_text())
        uids.add(document["uid"])
        assert document["panels"], path
        for panel in document["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
            assert panel["targets"] and panel["gridPos"]["w"] <= 24
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert len(uids) == len(DASHBOARDS)


@pytest.fixture
def prometheus(sfu_server: str) -> Iterator[str]:
    """A Prometheus scraping ``sfu_server`` every second; yields its base URL."""
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus package is not installed (tests/run.sh installs it)")
    target = urllib.parse.urlsplit(sfu_server).netloc
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sfu-prometheus-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: sfu\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        log = (Path(tmp) / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while not _ready(url):
                assert process.poll() is None, (Path(tmp) / "prometheus.log").read_text()
                assert time.monotonic() < deadline, "prometheus not ready after 30 s"
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def query(prometheus_url: str, expr: str) -> dict[str, Any]:
    """Evaluate ``expr`` now; returns Prometheus's JSON answer (errors included)."""
    body = urllib.parse.urlencode({"query": expr}).encode()
    try:
        with urllib.request.urlopen(f"{prometheus_url}/api/v1/query", body, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:  # 400 for a bad query, with a JSON body
        return json.load(exc)


def _scraped_samples(prometheus_url: str) -> float:
    result = query(prometheus_url, "sum(sfu_rtp_sent_packets_total)")["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


async def test_every_dashboard_query_returns_data(sfu_server, prometheus, lossy_clients):
    room = f"dash-{uuid.uuid4().hex[:8]}"
    clients: list[RoomClient] = []
    try:
        for identity in ("ann", "ben"):
            token = await dev_token(sfu_server, room, identity)
            client = await connect(sfu_server, token, name=identity)
            clients.append(client)
            await client.publish_tracks(
                [(SyntheticVideoTrack(320, 240), "camera"), (ToneAudioTrack(), "microphone")]
            )
        # Media flows while Prometheus scrapes; then a third participant joins the room
        # with media, so that the join happens within the scraped time range.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 40
        while await asyncio.to_thread(_scraped_samples, prometheus) == 0:
            assert loop.time() < deadline, "Prometheus saw no forwarded packets after 40 s"
            await asyncio.sleep(1)
        token = await dev_token(sfu_server, room, "cat")
        clients.append(await connect(sfu_server, token, name="cat"))
        while True:
            await asyncio.sleep(2)
            _, samples = await asyncio.to_thread(scrape, sfu_server)
            if (
                total(samples, "sfu_join_latency_seconds_count") >= 1
                and total(samples, "sfu_rtt_seconds_count") > 0
                and total(samples, "sfu_rtcp_feedback_received_total", type="nack") > 0
            ):
                break
            assert loop.time() < deadline, "no RTT, NACK or join latency after 40 s"
        await asyncio.sleep(8)  # several scrapes of moving counters within RATE_WINDOW

        failures = []
        for dashboard, title, expr in dashboard_queries():
            promql = expr.replace("$__rate_interval", RATE_WINDOW)
            answer = await asyncio.to_thread(query, prometheus, promql)
            if answer.get("status") != "success":
                failures.append(f"{dashboard} / {title}: invalid: {answer.get('error')}: {expr}")
                continue
            series = answer["data"]["result"]
            if not series:
                failures.append(f"{dashboard} / {title}: no series: {expr}")
                continue
            values = [s["value"][1] for s in series]
            if all(v == "NaN" for v in values) and not any(m in expr for m in WAITING_FOR_DATA):
                failures.append(f"{dashboard} / {title}: only NaN: {expr}")
        assert not failures, "\n".join(failures)

        # The dashboards cover every worker and signaling metric the server exports.
        text, _ = await asyncio.to_thread(scrape, sfu_server)
        exported = set(re.findall(r"^# TYPE (sfu_\w+) ", text, re.MULTILINE))
        used = " ".join(expr for _, _, expr in dashboard_queries())
        assert {name for name in exported if name not in used} == set()
    finally:
        await asyncio.gather(*(client.leave() for client in clients))
