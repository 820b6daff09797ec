"""``sfu load-test``: N publishers and M subscribers against a running server.

It is the benchmark's machinery (:mod:`sfu.bench.runner`: pre-encoded VP8 replayed by
lean participants in load-generator processes) aimed at an operator's question
instead of a forwarding-cost measurement: how fast do people join, how much media
flows, is any lost, and what does it cost the server. It prints a live progress line
while it runs and a table at the end:

- join latency: socket open to the ``joined`` reply (p50/p95/p99/max);
- first media: socket open to a publisher's transport being up, or a subscriber's
  first packet;
- packets/s sent by the publishers and received by the subscribers, loss %;
- server CPU % and µs per forwarded packet, from ``--server-pid`` (``/proc``), the
  server this command spawned, or ``process_cpu_seconds_total`` on the server's
  ``/metrics``; ``n/a`` when none is available.

Tokens are minted locally with the API key and secret (``--api-key``/``--api-secret``
or ``SFU_API_KEY``/``SFU_API_SECRET``), which must be the server's.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from sfu.bench.loadgen import LoadStats
from sfu.bench.media import ClipParameters
from sfu.bench.runner import (
    BenchmarkError,
    Options,
    Scenario,
    _clip,
    _load_specs,
    _LoadGenerators,
    _Progress,
    _Server,
    _spawned_server,
    _wait_for_media,
    process_cpu_times,
)
from sfu.config import Settings

METRICS_TIMEOUT = 2.0
PROGRESS_INTERVAL = 1.0
LOG_PROGRESS_EVERY = 5
"""Without a terminal, every this many progress updates is printed as a line."""

CpuReader = Callable[[], float | None]
"""Returns the server's cumulative CPU seconds, or None when unknown."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="the server's http(s) base URL (default: spawn an embedded server)"
    )
    parser.add_argument("--publishers", type=int, default=2, help="publishers (default 2)")
    parser.add_argument("--subscribers", type=int, default=4, help="subscribers (default 4)")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="measured seconds (default 30)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds after media flows (default 2)"
    )
    parser.add_argument("--audio", action="store_true", help="publishers add an audio track")
    parser.add_argument(
        "--bitrate", type=int, default=1000, help="video bitrate in kbit/s (default 1000)"
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="load-generator processes (default 1)"
    )
    parser.add_argument("--server-pid", type=int, help="the server's process id, for its CPU")
    parser.add_argument(
        "--ice-address", default="127.0.0.1", help="address the participants use for ICE"
    )
    parser.add_argument("--api-key", help="API key (token issuer)")
    parser.add_argument("--api-secret", help="API secret (token signing key)")


@dataclass
class LoadTestResult:
    publishers: int
    subscribers: int
    duration: float
    join_latencies: list[float]
    media_latencies: list[float]
    packets_sent_per_second: float
    packets_received_per_second: float
    loss_percent: float
    server_cpu_percent: float | None
    server_cpu_us_per_packet: float | None
    cpu_source: str


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _metrics_cpu(url: str) -> CpuReader:
    """Reads ``process_cpu_seconds_total`` from the server's ``/metrics``."""

    def read() -> float | None:
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=METRICS_TIMEOUT) as response:
                text = response.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return None
        for line in text.splitlines():
            if line.startswith("process_cpu_seconds_total "):
                return float(line.split()[1])
        return None

    return read


def _pid_cpu(pid: int) -> CpuReader:
    return lambda: process_cpu_times(pid).total


class _LiveLine(_Progress):
    """The benchmark's in-place progress line on a terminal; a plain line every few
    updates otherwise, so a CI log still shows that the run is alive."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._log_stream = None if stream.isatty() else stream
        self._updates = 0

    def show(self, text: str) -> None:
        if self._log_stream is None:
            super().show(text)
            return
        self._updates += 1
        if self._updates % LOG_PROGRESS_EVERY == 1:
            self._log_stream.write(text + "\n")
            self._log_stream.flush()


def _cpu_reader(url: str, pid: int | None) -> tuple[CpuReader, str]:
    if pid is not None:
        return _pid_cpu(pid), f"/proc/{pid}"
    metrics = _metrics_cpu(url)
    if metrics() is not None:
        return metrics, f"{url}/metrics"
    return (lambda: None), "unavailable"


def run_load_test(
    args: argparse.Namespace, url: str, pid: int | None, progress: _LiveLine
) -> LoadTestResult:
    """Connect everyone, wait for media, measure for ``args.duration`` seconds."""
    scenario = Scenario(args.publishers, args.subscribers)
    options = Options(
        duration=args.duration,
        warmup=args.warmup,
        processes=args.processes,
        audio=args.audio,
        clips=(ClipParameters(bitrate=args.bitrate * 1000),),
        ice_address=args.ice_address,
    )
    credentials = {
        name: value
        for name, value in (("api_key", args.api_key), ("api_secret", args.api_secret))
        if value is not None
    }
    cpu, cpu_source = _cpu_reader(url, pid)
    specs = _load_specs(scenario, _Server(url, pid), options, Settings(**credentials))
    generators = _LoadGenerators(specs)
    try:
        _wait_for_media(generators, scenario, options, progress)
        time.sleep(options.warmup)
        start, start_cpu = generators.stats(), cpu()
        previous = start
        while (elapsed := time.monotonic() - start.time) < options.duration:
            time.sleep(min(PROGRESS_INTERVAL, options.duration - elapsed))
            current = generators.stats()
            progress.show(_progress_text(scenario, start, previous, current, options.duration))
            previous = current
        end, end_cpu = previous, cpu()
    finally:
        progress.done()
        generators.stop()
    elapsed = end.time - start.time
    received = end.packets_received - start.packets_received
    expected = end.packets_expected - start.packets_expected
    cpu_seconds = None if start_cpu is None or end_cpu is None else end_cpu - start_cpu
    return LoadTestResult(
        publishers=scenario.publishers,
        subscribers=scenario.subscribers,
        duration=elapsed,
        join_latencies=end.join_latencies,
        media_latencies=end.media_latencies,
        packets_sent_per_second=(end.packets_sent - start.packets_sent) / elapsed,
        packets_received_per_second=received / elapsed,
        loss_percent=max(0.0, 100 * (expected - received) / expected) if expected else 0.0,
        server_cpu_percent=None if cpu_seconds is None else 100 * cpu_seconds / elapsed,
        server_cpu_us_per_packet=(
            None if cpu_seconds is None or not received else 1e6 * cpu_seconds / received
        ),
        cpu_source=cpu_source,
    )


def _progress_text(
    scenario: Scenario, start: LoadStats, previous: LoadStats, current: LoadStats, total: float
) -> str:
    interval = current.time - previous.time or 1.0
    sent = (current.packets_sent - previous.packets_sent) / interval
    received = (current.packets_received - previous.packets_received) / interval
    expected = current.packets_expected - start.packets_expected
    lost = expected - (current.packets_received - start.packets_received)
    loss = 100 * max(0, lost) / expected if expected else 0.0
    return (
        f"[{scenario}] {current.time - start.time:5.1f}/{total:g} s"
        f"  sent {sent:7.0f} pps  received {received:7.0f} pps  loss {loss:5.2f}%"
    )


def format_result(result: LoadTestResult) -> str:
    """The final table: one metric per row."""

    def latency(values: list[float]) -> str:
        if not values:
            return "n/a"
        return "  ".join(
            f"{label} {1000 * value:.0f}"
            for label, value in (
                ("p50", percentile(values, 0.50)),
                ("p95", percentile(values, 0.95)),
                ("p99", percentile(values, 0.99)),
                ("max", max(values)),
            )
        )

    participants = result.publishers + result.subscribers
    rows = [
        ("participants", f"{result.publishers} publishers, {result.subscribers} subscribers"),
        ("measured", f"{result.duration:.1f} s"),
        (
            f"join latency ms ({len(result.join_latencies)}/{participants})",
            latency(result.join_latencies),
        ),
        (
            f"first media ms ({len(result.media_latencies)}/{participants})",
            latency(result.media_latencies),
        ),
        ("packets/s sent", f"{result.packets_sent_per_second:.0f}"),
        ("packets/s received", f"{result.packets_received_per_second:.0f}"),
        ("loss %", f"{result.loss_percent:.2f}"),
        (
            "server CPU %",
            "n/a" if result.server_cpu_percent is None else f"{result.server_cpu_percent:.1f}",
        ),
        (
            "server CPU µs/packet",
            "n/a"
            if result.server_cpu_us_per_packet is None
            else f"{result.server_cpu_us_per_packet:.2f}",
        ),
        ("server CPU from", result.cpu_source),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 40}"]
    lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``sfu load-test``; returns the exit status."""
    if args.publishers < 1 or args.subscribers < 1 or args.duration <= 0:
        sys.stderr.write("sfu load-test: needs a publisher, a subscriber and a duration\n")
        return 2
    progress = _LiveLine(sys.stderr)
    try:
        _clip(ClipParameters(bitrate=args.bitrate * 1000), sys.stderr)
        with contextlib.ExitStack() as stack:
            if args.url:
                url, pid = args.url.rstrip("/"), args.server_pid
            else:
                server = stack.enter_context(_spawned_server(args.ice_address, {}, False))
                url, pid = server.url, server.pid
            result = run_load_test(args, url, pid, progress)
    except BenchmarkError as exc:
        progress.done()
        sys.stderr.write(f"load test failed: {exc}\n")
        return 1
    print(format_result(result))
    return 0
