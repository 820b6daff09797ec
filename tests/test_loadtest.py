"""``sfu load-test``: a short CI scenario against the embedded server, table printed."""

from __future__ import annotations

import subprocess
import sys

from sfu.bench.loadtest import LoadTestResult, format_result, percentile


def test_percentile_is_nearest_rank():
    values = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert [percentile(values, f) for f in (0.2, 0.5, 0.95, 1.0)] == [0.1, 0.3, 0.5, 0.5]


def test_table_without_cpu_or_latencies():
    table = format_result(
        LoadTestResult(1, 1, 5.0, [], [], 100.0, 99.0, 1.0, None, None, "unavailable")
    )
    assert "join latency ms (0/2)  n/a" in table
    assert "server CPU µs/packet" in table and table.count("n/a") == 4


def test_load_test_against_the_embedded_server(sfu_server):
    command = [
        *(sys.executable, "-m", "sfu", "load-test", "--url", sfu_server),
        *("--publishers", "2", "--subscribers", "3", "--duration", "4", "--warmup", "1"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    print(run.stdout)
    assert run.returncode == 0, run.stderr
    rows = dict(line.split("  ", 1) for line in run.stdout.splitlines()[2:])
    rows = {name.strip(): value.strip() for name, value in rows.items()}
    assert rows["participants"] == "2 publishers, 3 subscribers"
    assert rows["join latency ms (5/5)"].startswith("p50 ")
    assert float(rows["packets/s received"]) > 2 * float(rows["packets/s sent"])
    assert float(rows["loss %"]) < 5
    if rows["server CPU from"] != "unavailable":  # the server's /metrics answered
        assert float(rows["server CPU µs/packet"]) > 0
