"""The forwarding benchmark: ``python -m sfu.bench``.

For each scenario (``PxS``: P publishers, S subscribers, every subscriber receiving
every publisher) the runner starts load-generator processes, waits until media flows
on every track, lets it settle, then measures over ``--duration`` seconds:

- mode: ``plain`` (one VP8 stream per publisher), with ``--simulcast``
  ``simulcast``: every publisher sends three layers (160x120, 320x240, 640x480) and
  subscriber *i* caps every video track at layer ``i % 3``, so the subscribers are
  spread over all three layers (the JSON output has their "layer mix"); with
  ``--vp9-svc`` ``vp9-svc``: every publisher sends one VP9 SVC stream, Chromium's own
  ``L3T3_KEY`` packets at 640x480 (two spatial layers, three temporal ones) replayed
  from a capture, and subscriber *i* caps it at spatial layer ``i % 2``, which the SFU
  selects per subscriber from the one stream; or, with ``--pc-per-stream``,
  ``pc-per-stream``: plain VP8, but each subscriber receives each publisher on a
  PeerConnection (transport) of its own, a WHEP viewer pinned to that publisher (the
  way Janus's video room is loaded: a subscriber handle per feed), so ``PxS`` makes
  P*S subscribe transports instead of S;
- sockets: the UDP sockets the server holds at the end (one in the default single-port
  mode; one per transport with ``--socket-per-transport``, which starts the server
  with ``SFU_UDP_PORT_MIN``/``SFU_UDP_PORT_MAX``);
- packets in/s: what the publishers sent (what reached the server, on loopback; every
  simulcast layer counts);
- packets out/s: what the subscribers received;
- server CPU %: user + system time of the server process (all its threads) from
  ``/proc/<pid>/stat``, as a percentage of one core;
- wake-ups/s: how often the server's event-loop thread slept (waiting for a socket or
  a timer) and was woken again: its voluntary context switches, from
  ``/proc/<pid>/status``. On a virtual machine each costs far more CPU than the work
  it wakes up for, so this column explains much of the next one;
- µs/packet: server CPU time divided by the packets forwarded (received by subscribers);
- µs/packet in: server CPU time divided by the packets the publishers sent (what the
  server received); with layers spread over the subscribers the two differ by more
  than the subscriber count;
- syscalls/packet (with ``--count-syscalls``): every system call the server's process
  and its threads entered, over the packets forwarded; the server then runs under
  ``perf stat`` (:mod:`sfu.bench.syscall_count` says why not ``/proc/<pid>/io``) and the
  JSON output breaks the figure down by syscall;
- loss %: sequence gaps over expected packets at the subscribers.

Unless ``--server`` is given, the runner starts ``python -m sfu serve`` itself and stops
it at the end. Tokens are minted locally with the ``SFU_API_KEY``/``SFU_API_SECRET``
settings (the development defaults unless set; the spawned server runs with ``--dev``),
so that publishers get publish-only and subscribers subscribe-only grants: a server
given with ``--server`` must share them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import NamedTuple, TextIO
from urllib.parse import urlsplit, urlunsplit

from sfu.access_token import mint_token
from sfu.bench.loadgen import (
    LoadSpec,
    LoadStats,
    ParticipantSpec,
    SubscriberCounters,
    run_load_generator,
)
from sfu.bench.media import (
    SIMULCAST_CLIPS,
    VP9_SVC_CAPTURE,
    Clip,
    ClipParameters,
    VideoSource,
    Vp9Capture,
    is_cached,
    load_video,
)
from sfu.bench.syscall_count import SyscallCountError, SyscallCounts, perf_command, read_counts
from sfu.config import Settings

STARTUP_TIMEOUT = 30.0
"""Seconds for a spawned server to answer /healthz."""
CONNECT_TIMEOUT_BASE = 30.0
CONNECT_TIMEOUT_PER_PARTICIPANT = 0.5
"""Seconds allowed for everyone to join and media to flow on every track."""
STATS_TIMEOUT = 30.0
"""Seconds a load generator has to answer a stats request (on a busy 2-core machine
one connecting a hundred DTLS sessions has taken over 10)."""
LOAD_GENERATOR_BUSY_PERCENT = 85.0
"""Above this CPU use a load generator may be the bottleneck; the runner says so."""
BUSY_MACHINE_PERCENT = 5.0
"""Above this share of run-queue wait the runner warns that the machine is busy."""
PORT_RANGE = (20000, 60000)
"""``SFU_UDP_PORT_MIN``/``MAX`` of a spawned server with ``--socket-per-transport``."""
DEFAULT_MAX_PARTICIPANTS = 100
"""The server's default room size; a spawned server gets more when a scenario needs it."""

_SCENARIO = re.compile(r"(\d+)x(\d+)")


class BenchmarkError(RuntimeError):
    """The benchmark could not run (server, load generator or participants failed)."""


@dataclass(frozen=True)
class Scenario:
    publishers: int
    subscribers: int

    @classmethod
    def parse(cls, text: str) -> Scenario:
        match = _SCENARIO.fullmatch(text.strip())
        if match is None:
            raise argparse.ArgumentTypeError(f"expected PUBLISHERSxSUBSCRIBERS, got {text!r}")
        scenario = cls(int(match[1]), int(match[2]))
        if scenario.publishers < 1 or scenario.subscribers < 1:
            raise argparse.ArgumentTypeError("a scenario needs a publisher and a subscriber")
        return scenario

    def __str__(self) -> str:
        return f"{self.publishers}x{self.subscribers}"


@dataclass
class LayerMix:
    """The subscribers capped at one spatial layer (simulcast or SVC), and what each
    received on average."""

    max_spatial_layer: int
    subscribers: int
    packets_per_second: float
    """Per subscriber, all its tracks together."""
    megabits_per_second: float
    """Per subscriber, all its tracks together."""


@dataclass
class ScenarioResult:
    """What one scenario measured; rates are per second over ``duration``."""

    publishers: int
    subscribers: int
    mode: str
    """``plain``, ``simulcast``, ``vp9-svc`` or ``pc-per-stream``."""
    duration: float
    packets_in_per_second: float
    packets_out_per_second: float
    megabits_in_per_second: float
    megabits_out_per_second: float
    server_cpu_percent: float | None
    """Of one core; None when the server's process is unknown."""
    server_wakeups_per_second: float | None
    """Times the server's event-loop thread was woken from sleep; None when the
    server's process is unknown."""
    server_cpu_us_per_packet: float | None
    """Server CPU time per forwarded (received by a subscriber) packet."""
    server_cpu_us_per_received_packet: float | None
    """Server CPU time per packet the publishers sent (the server received)."""
    server_system_us_per_packet: float | None
    """The kernel's share of ``server_cpu_us_per_packet`` (mostly UDP sends; on
    loopback it includes delivering each datagram to the receiving socket)."""
    server_runqueue_wait_percent: float | None
    """Of the window, how long the server's event-loop thread waited for a CPU that
    other processes had: above a few percent the machine was busy, packets queued in
    socket buffers and the rates are less trustworthy than the CPU per packet."""
    delivered_percent: float | None
    """Packets out over packets in times subscribers (``plain``, ``pc-per-stream``;
    None for ``simulcast`` and ``vp9-svc``): below 100 some subscriptions stalled or were paused (by
    the allocator, with transport-cc), above 100 a backlog from before the window was
    drained in it."""
    server_udp_sockets: int | None
    """UDP sockets the server's process held at the end of the measurement."""
    server_syscalls_per_packet: float | None
    """System calls of the server per forwarded packet; None unless counted."""
    server_syscalls_per_packet_by_name: dict[str, float]
    """The same for each syscall of :data:`~sfu.bench.syscall_count.SYSCALL_NAMES`."""
    loss_percent: float
    load_generator_cpu_percent: float
    """Of one core, all load-generator processes together."""
    key_frame_requests: int
    """PLIs/FIRs the publishers received during the measurement."""
    layer_mix: list[LayerMix]
    """By spatial layer cap, lowest first; empty in plain mode."""


class CpuTimes(NamedTuple):
    """CPU seconds a process spent in user space and in the kernel, how often its main
    thread was woken from sleep, and how long that thread waited for a CPU."""

    user: float
    system: float
    wakeups: int
    runqueue_wait: float
    """Seconds the main thread was runnable but not running (``/proc/<pid>/schedstat``:
    other processes had the CPUs)."""

    @property
    def total(self) -> float:
        return self.user + self.system


@dataclass
class _Sample:
    time: float
    server_cpu: CpuTimes | None
    stats: LoadStats
    syscalls: SyscallCounts | None


@dataclass(frozen=True)
class _Server:
    url: str
    pid: int | None
    syscall_counts: Path | None = None
    """The ``perf stat`` output counting the server's syscalls, when counted."""


def process_cpu_times(pid: int) -> CpuTimes:
    """CPU times of process ``pid``, all its threads included, and the voluntary
    context switches of its main thread (Linux)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesized command name start at field 3 (state);
    # utime and stime are fields 14 and 15.
    rest = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    _, _, after = status.partition("\nvoluntary_ctxt_switches:")
    # schedstat: time on a CPU, time waiting on a run queue (ns), timeslices.
    waited = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    return CpuTimes(int(rest[11]) / ticks, int(rest[12]) / ticks, int(after.split()[0]), waited)


def udp_socket_count(pid: int) -> int:
    """How many UDP sockets process ``pid`` holds: its ``/proc/<pid>/fd`` sockets whose
    inodes ``/proc/<pid>/net/udp`` or ``udp6`` list."""
    inodes = set()
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            inodes.add(f"socket:[{line.split()[9]}]")
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd) in inodes
    return count


def _server_cpu(server: _Server) -> CpuTimes | None:
    if server.pid is None:
        return None
    try:
        return process_cpu_times(server.pid)
    except OSError as exc:
        raise BenchmarkError(f"cannot read the server's CPU time: {exc}") from exc


# --- the server -----------------------------------------------------------------------


def _websocket_url(url: str) -> str:
    """The signaling socket of the server at the http(s) base URL ``url``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise BenchmarkError(f"not an http(s) URL: {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _child_pid(pid: int) -> int | None:
    """The first child of process ``pid`` (the server that ``perf stat`` started)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else None


@contextlib.contextmanager
def _spawned_server(
    ice_address: str, environment: dict[str, str], count_syscalls: bool
) -> Iterator[_Server]:
    """``python -m sfu serve`` on a free loopback port, with ``environment`` added to
    ours and, with ``count_syscalls``, under ``perf stat``; stopped on exit."""
    host = "127.0.0.1"
    port = _free_port(host)
    command = [
        sys.executable,
        "-m",
        "sfu",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--ice-address",
        ice_address,
        "--dev",  # the tokens are minted with the development defaults
        "--log-level",
        "warning",
    ]
    url = f"http://{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="sfu-bench-") as tmp:
        log_path = Path(tmp) / "server.log"
        counts_path = Path(tmp) / "syscalls.csv" if count_syscalls else None
        if counts_path is not None:
            try:
                command = perf_command(counts_path) + command
            except SyscallCountError as exc:
                raise BenchmarkError(str(exc)) from exc
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **environment, "PYTHONUNBUFFERED": "1"},
            )

        def failure(reason: str) -> BenchmarkError:
            tail = log_path.read_text(errors="replace")[-4000:]
            return BenchmarkError(f"{shlex.join(command)}: {reason}\n{tail}")

        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not _healthy(url):
                if process.poll() is not None:
                    raise failure(f"exited with status {process.returncode}")
                if time.monotonic() > deadline:
                    raise failure(f"no answer on /healthz after {STARTUP_TIMEOUT:.0f} s")
                time.sleep(0.1)
            pid = process.pid if counts_path is None else _child_pid(process.pid)
            if pid is None:
                raise failure("perf stat started no server")
            yield _Server(url, pid, counts_path)
            if process.poll() is not None:
                raise failure(f"exited with status {process.returncode} during the run")
        finally:
            if process.poll() is None:
                # Under perf stat the server is perf's child: stop it, and perf ends.
                target = process.pid if counts_path is None else _child_pid(process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target or process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# --- load generators ------------------------------------------------------------------


class _LoadGenerators:
    """The load-generator processes of one scenario."""

    def __init__(self, specs: list[LoadSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._pipes: list[Connection] = []
        for spec in specs:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=run_load_generator, args=(spec, theirs), name="sfu-bench-loadgen"
            )
            process.start()
            theirs.close()
            self._processes.append(process)
            self._pipes.append(ours)

    def stats(self) -> LoadStats:
        """The counters of every process, summed; raises if a participant failed."""
        for pipe in self._pipes:
            self._send(pipe, "stats")
        total = LoadStats(time=time.monotonic(), cpu_seconds=0.0)
        for pipe, process in zip(self._pipes, self._processes, strict=True):
            if not pipe.poll(STATS_TIMEOUT):
                raise BenchmarkError(f"load generator {process.pid} does not answer")
            try:
                stats: LoadStats = pipe.recv()
            except EOFError as exc:
                raise BenchmarkError(
                    f"load generator {process.pid} exited ({process.exitcode})"
                ) from exc
            for field in fields(LoadStats):
                if field.name != "time":
                    setattr(
                        total, field.name, getattr(total, field.name) + getattr(stats, field.name)
                    )
        if total.errors:
            shown = "\n  ".join(total.errors[:5])
            raise BenchmarkError(f"{len(total.errors)} participant(s) failed:\n  {shown}")
        return total

    @staticmethod
    def _send(pipe: Connection, command: str) -> None:
        try:
            pipe.send(command)
        except OSError as exc:
            raise BenchmarkError(f"a load generator is gone: {exc}") from exc

    def stop(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for process in self._processes:
            process.join(timeout=15)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for pipe in self._pipes:
            pipe.close()


# --- progress -------------------------------------------------------------------------


class _Progress:
    """One status line rewritten in place (only on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._width = 0

    def show(self, text: str) -> None:
        if not self._live:
            return
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)

    def done(self) -> None:
        if self._live and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


# --- one scenario ---------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    processes: int
    audio: bool
    clips: tuple[VideoSource, ...]
    """The publishers' video clip, or one per simulcast layer (lowest first)."""
    ice_address: str
    spatial_layers: int = 1
    """The layers subscriber *i* is spread over (capped at ``i % spatial_layers``):
    the simulcast layers, or the spatial layers of the VP9 SVC stream."""
    transport_cc: bool = False
    """Subscribers take the transport-wide sequence number and send transport-cc
    feedback, as browsers do (the server then runs its send-side estimator)."""
    pc_per_stream: bool = False
    """Each subscriber receives each publisher on a transport of its own (WHEP)."""

    @property
    def mode(self) -> str:
        if isinstance(self.clips[0], Vp9Capture):
            return "vp9-svc"
        if len(self.clips) > 1:
            return "simulcast"
        return "pc-per-stream" if self.pc_per_stream else "plain"

    def participants(self, scenario: Scenario) -> int:
        """Participants (and so transports) of ``scenario``: one per publisher, one per
        subscriber, or with :attr:`pc_per_stream` one per subscriber and publisher."""
        subscribers = scenario.subscribers * (scenario.publishers if self.pc_per_stream else 1)
        return scenario.publishers + subscribers


def _load_specs(
    scenario: Scenario, server: _Server, options: Options, settings: Settings
) -> list[LoadSpec]:
    room = f"bench-{secrets.token_hex(4)}"

    def token(identity: str, publisher: bool) -> str:
        return mint_token(
            settings.api_key,
            settings.api_secret,
            room=room,
            identity=identity,
            can_publish=publisher,
            can_subscribe=not publisher,
        )

    layers = options.spatial_layers
    participants = [
        ParticipantSpec("publisher", token(f"pub-{i}", True)) for i in range(scenario.publishers)
    ]
    if options.pc_per_stream:
        participants += [
            ParticipantSpec("viewer", token(f"sub-{i}-pub-{j}", False), publisher=f"pub-{j}")
            for i in range(scenario.subscribers)
            for j in range(scenario.publishers)
        ]
    else:
        participants += [
            ParticipantSpec(
                "subscriber", token(f"sub-{i}", False), i % layers if layers > 1 else None
            )
            for i in range(scenario.subscribers)
        ]
    count = max(1, min(options.processes, len(participants)))
    return [
        LoadSpec(
            ws_url=_websocket_url(server.url),
            participants=participants[i::count],
            clips=options.clips,
            audio=options.audio,
            ice_address=options.ice_address,
            transport_cc=options.transport_cc,
            whep_url=f"{server.url}/whep/{room}",
        )
        for i in range(count)
    ]


def _sample(generators: _LoadGenerators, server: _Server) -> _Sample:
    stats = generators.stats()
    syscalls = None
    if server.syscall_counts is not None:
        try:
            syscalls = read_counts(server.syscall_counts)
        except (OSError, SyscallCountError) as exc:
            raise BenchmarkError(f"cannot read the server's syscall counts: {exc}") from exc
    return _Sample(time.monotonic(), _server_cpu(server), stats, syscalls)


def _wait_for_media(
    generators: _LoadGenerators, scenario: Scenario, options: Options, progress: _Progress
) -> None:
    tracks = 2 if options.audio else 1
    participants = options.participants(scenario)
    timeout = CONNECT_TIMEOUT_BASE + CONNECT_TIMEOUT_PER_PARTICIPANT * participants
    expected = scenario.publishers * tracks * scenario.subscribers
    deadline = time.monotonic() + timeout
    while True:
        stats = generators.stats()
        if stats.publishers_connected == scenario.publishers and stats.tracks_receiving == expected:
            return
        progress.show(
            f"[{scenario}] connecting: {stats.publishers_connected}/{scenario.publishers}"
            f" publishers, media on {stats.tracks_receiving}/{expected} subscribed tracks"
        )
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"[{scenario}] after {timeout:.0f} s only {stats.publishers_connected}"
                f"/{scenario.publishers} publishers connected and"
                f" {stats.tracks_receiving}/{expected} subscribed tracks carry media"
            )
        time.sleep(0.5)


def _rate(later: _Sample, earlier: _Sample, name: str) -> float:
    elapsed = later.time - earlier.time
    delta: float = getattr(later.stats, name) - getattr(earlier.stats, name)
    return delta / elapsed if elapsed > 0 else 0.0


def _cpu_percent(later: _Sample, earlier: _Sample) -> float | None:
    if later.server_cpu is None or earlier.server_cpu is None:
        return None
    return 100 * (later.server_cpu.total - earlier.server_cpu.total) / (later.time - earlier.time)


def layer_mix(
    start: Sequence[SubscriberCounters], end: Sequence[SubscriberCounters], elapsed: float
) -> list[LayerMix]:
    """Average receive rates of the subscribers by layer cap (uncapped ones left out)."""
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for before, after in zip(start, end, strict=True):
        if after.max_spatial_layer is not None:
            by_layer.setdefault(after.max_spatial_layer, []).append(
                (
                    after.packets_received - before.packets_received,
                    after.bytes_received - before.bytes_received,
                )
            )
    return [
        LayerMix(
            max_spatial_layer=layer,
            subscribers=len(counts),
            packets_per_second=sum(p for p, _ in counts) / len(counts) / elapsed,
            megabits_per_second=sum(b for _, b in counts) * 8 / 1e6 / len(counts) / elapsed,
        )
        for layer, counts in sorted(by_layer.items())
    ]


def _measure(
    generators: _LoadGenerators,
    server: _Server,
    scenario: Scenario,
    options: Options,
    progress: _Progress,
) -> tuple[_Sample, _Sample]:
    settle_until = time.monotonic() + options.warmup
    while time.monotonic() < settle_until:
        progress.show(f"[{scenario}] media flowing, settling for {options.warmup:.0f} s")
        time.sleep(min(0.5, max(0.0, settle_until - time.monotonic())))
    start = previous = _sample(generators, server)
    tick = 0.0
    while tick < options.duration:
        tick = min(tick + 1, options.duration)
        time.sleep(max(0.0, start.time + tick - time.monotonic()))
        current = _sample(generators, server)
        cpu = _cpu_percent(current, previous)
        progress.show(
            f"[{scenario}] {current.time - start.time:5.1f}/{options.duration:g} s"
            f"  in {_rate(current, previous, 'packets_sent'):7.0f} pps"
            f"  out {_rate(current, previous, 'packets_received'):7.0f} pps"
            f"  server CPU {'n/a' if cpu is None else f'{cpu:3.0f}%'}"
        )
        previous = current
    return start, previous


def run_scenario(
    scenario: Scenario, server: _Server, options: Options, progress: _Progress
) -> ScenarioResult:
    """Run one scenario against a running server and measure it."""
    specs = _load_specs(scenario, server, options, Settings())
    generators = _LoadGenerators(specs)
    try:
        _wait_for_media(generators, scenario, options, progress)
        start, end = _measure(generators, server, scenario, options, progress)
        sockets = None if server.pid is None else udp_socket_count(server.pid)
    finally:
        progress.done()
        generators.stop()
    elapsed = end.time - start.time
    packets_out = end.stats.packets_received - start.stats.packets_received
    expected = end.stats.packets_expected - start.stats.packets_expected
    cpu = system = wakeups = waited = None
    if end.server_cpu is not None and start.server_cpu is not None:
        cpu = end.server_cpu.total - start.server_cpu.total
        system = end.server_cpu.system - start.server_cpu.system
        wakeups = end.server_cpu.wakeups - start.server_cpu.wakeups
        waited = end.server_cpu.runqueue_wait - start.server_cpu.runqueue_wait
    packets_in = end.stats.packets_sent - start.stats.packets_sent
    delivered = None
    if options.mode in ("plain", "pc-per-stream") and packets_in:
        delivered = 100 * packets_out / (packets_in * scenario.subscribers)
    per_packet = 1e6 / packets_out if packets_out else None
    syscalls_per_packet = None
    by_name: dict[str, float] = {}
    if start.syscalls is not None and end.syscalls is not None and packets_out:
        # perf's own clock: the syscalls of its whole intervals over their span, per
        # packet forwarded per second over the runner's window.
        span = end.syscalls.elapsed - start.syscalls.elapsed
        if span > 0:
            packets_per_second = packets_out / elapsed
            syscalls_per_packet = (
                (end.syscalls.total - start.syscalls.total) / span / packets_per_second
            )
            by_name = {
                name: (count - start.syscalls.by_name.get(name, 0)) / span / packets_per_second
                for name, count in end.syscalls.by_name.items()
            }
    return ScenarioResult(
        publishers=scenario.publishers,
        subscribers=scenario.subscribers,
        mode=options.mode,
        duration=round(elapsed, 3),
        packets_in_per_second=_rate(end, start, "packets_sent"),
        packets_out_per_second=packets_out / elapsed,
        megabits_in_per_second=_rate(end, start, "octets_sent") * 8 / 1e6,
        megabits_out_per_second=_rate(end, start, "bytes_received") * 8 / 1e6,
        server_cpu_percent=None if cpu is None else 100 * cpu / elapsed,
        server_wakeups_per_second=None if wakeups is None else wakeups / elapsed,
        server_cpu_us_per_packet=None if cpu is None or per_packet is None else cpu * per_packet,
        server_cpu_us_per_received_packet=(
            None if cpu is None or not packets_in else cpu * 1e6 / packets_in
        ),
        server_system_us_per_packet=(
            None if system is None or per_packet is None else system * per_packet
        ),
        server_runqueue_wait_percent=None if waited is None else 100 * waited / elapsed,
        delivered_percent=delivered,
        server_udp_sockets=sockets,
        server_syscalls_per_packet=syscalls_per_packet,
        server_syscalls_per_packet_by_name=by_name,
        loss_percent=max(0.0, 100 * (expected - packets_out) / expected) if expected else 0.0,
        load_generator_cpu_percent=100
        * (end.stats.cpu_seconds - start.stats.cpu_seconds)
        / elapsed,
        key_frame_requests=end.stats.key_frame_requests - start.stats.key_frame_requests,
        layer_mix=layer_mix(
            start.stats.subscriber_counters, end.stats.subscriber_counters, elapsed
        ),
    )


# --- output ---------------------------------------------------------------------------

_COLUMNS = (
    ("publishers", "{:d}"),
    ("subscribers", "{:d}"),
    ("mode", "{}"),
    ("packets in/s", "{:.0f}"),
    ("packets out/s", "{:.0f}"),
    ("server CPU %", "{:.1f}"),
    ("wake-ups/s", "{:.0f}"),
    ("sockets", "{:d}"),
    ("syscalls/packet", "{:.3f}"),
    ("µs/packet", "{:.2f}"),
    ("µs/packet in", "{:.2f}"),
    ("loss %", "{:.2f}"),
)


def format_table(results: Sequence[ScenarioResult]) -> str:
    """A plain-text table of the scenarios, one row each."""
    rows = []
    for r in results:
        values = (
            r.publishers,
            r.subscribers,
            r.mode,
            r.packets_in_per_second,
            r.packets_out_per_second,
            r.server_cpu_percent,
            r.server_wakeups_per_second,
            r.server_udp_sockets,
            r.server_syscalls_per_packet,
            r.server_cpu_us_per_packet,
            r.server_cpu_us_per_received_packet,
            r.loss_percent,
        )
        rows.append(
            [
                "n/a" if value is None else fmt.format(value)
                for (_, fmt), value in zip(_COLUMNS, values, strict=True)
            ]
        )
    headers = [name for name, _ in _COLUMNS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sfu.bench",
        description="Measure the SFU's forwarding cost: server CPU per forwarded packet.",
    )
    parser.add_argument("--publishers", type=int, default=1, help="publishers (default 1)")
    parser.add_argument("--subscribers", type=int, default=10, help="subscribers (default 10)")
    parser.add_argument(
        "--scenario",
        action="append",
        type=Scenario.parse,
        metavar="PxS",
        help="P publishers x S subscribers, repeatable; replaces --publishers/--subscribers",
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, help="measured seconds per scenario (default 20)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds between media flowing everywhere and the measurement (default 3)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="benchmark this running server (its http URL) instead of spawning one",
    )
    parser.add_argument(
        "--server-pid", type=int, help="process id of the --server, for its CPU time"
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="load-generator processes (default 1)"
    )
    parser.add_argument("--audio", action="store_true", help="publishers add a 50 pps audio track")
    parser.add_argument(
        "--bitrate",
        type=int,
        default=3000,
        help="VP8 bitrate in kbit/s without --simulcast or --vp9-svc (default 3000)",
    )
    parser.add_argument(
        "--simulcast",
        action="store_true",
        help="publishers send three layers (~150 kbit/s, ~500 kbit/s, ~1.7 Mbit/s);"
        " subscriber i receives at most layer i %% 3",
    )
    parser.add_argument(
        "--vp9-svc",
        action="store_true",
        help="publishers send one VP9 SVC stream (Chromium's captured L3T3_KEY packets:"
        " 320x240 and 640x480, three temporal layers, ~370 kbit/s, a 4.9 s loop);"
        " subscriber i receives at most spatial layer i %% 2",
    )
    parser.add_argument(
        "--ice-address",
        default="127.0.0.1",
        help="address the load generators (and a spawned server) use for ICE",
    )
    parser.add_argument(
        "--transport-cc",
        action="store_true",
        help="subscribers negotiate transport-cc and send its feedback, as browsers do",
    )
    parser.add_argument(
        "--pc-per-stream",
        action="store_true",
        help="each subscriber receives each publisher on a PeerConnection of its own (WHEP"
        " viewers pinned to one publisher, as Janus's video room is loaded)",
    )
    parser.add_argument(
        "--socket-per-transport",
        action="store_true",
        help="start the server with a UDP socket per transport (SFU_UDP_PORT_MIN/MAX"
        f" {PORT_RANGE[0]}-{PORT_RANGE[1]}) instead of its single port",
    )
    parser.add_argument(
        "--count-syscalls",
        action="store_true",
        help="run the spawned server under perf stat and report its syscalls per packet",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def _clip(source: VideoSource, err: TextIO) -> Clip:
    if isinstance(source, ClipParameters) and not is_cached(source):
        err.write(f"encoding the {source.width}x{source.height} VP8 clip once (then cached)…\n")
        err.flush()
    return load_video(source)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    scenarios: list[Scenario] = args.scenario or [Scenario(args.publishers, args.subscribers)]
    if args.duration <= 0 or args.processes < 1:
        _parser().error("--duration and --processes must be positive")
    if args.pc_per_stream and (args.simulcast or args.vp9_svc):
        _parser().error("--pc-per-stream sends plain VP8: WHEP viewers have no layer caps")
    if args.simulcast and args.vp9_svc:
        _parser().error("--simulcast and --vp9-svc are two ways of sending layers: pick one")
    if args.server and (args.socket_per_transport or args.count_syscalls):
        _parser().error("--socket-per-transport and --count-syscalls need a spawned server")
    sources: tuple[VideoSource, ...] = (ClipParameters(bitrate=args.bitrate * 1000),)
    if args.simulcast:
        sources = SIMULCAST_CLIPS
    elif args.vp9_svc:
        sources = (Vp9Capture(str(VP9_SVC_CAPTURE)),)
    try:
        clips = [_clip(source, sys.stderr) for source in sources]
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"benchmark failed: no video clip: {exc}\n")
        return 1
    options = Options(
        duration=args.duration,
        warmup=args.warmup,
        processes=args.processes,
        audio=args.audio,
        clips=sources,
        ice_address=args.ice_address,
        spatial_layers=len(clips) if len(clips) > 1 else clips[0].spatial_layers,
        transport_cc=args.transport_cc,
        pc_per_stream=args.pc_per_stream,
    )
    environment = {}
    if args.socket_per_transport:
        environment["SFU_UDP_PORT_MIN"], environment["SFU_UDP_PORT_MAX"] = map(str, PORT_RANGE)
    largest = max(options.participants(scenario) for scenario in scenarios)
    if largest > DEFAULT_MAX_PARTICIPANTS:
        environment["SFU_MAX_PARTICIPANTS_PER_ROOM"] = str(largest)
    command = shlex.join(["python", "-m", "sfu.bench", *args_list])
    progress = _Progress(sys.stderr)
    try:
        with contextlib.ExitStack() as stack:
            if args.server:
                server = _Server(args.server.rstrip("/"), args.server_pid)
            else:
                server = stack.enter_context(
                    _spawned_server(options.ice_address, environment, args.count_syscalls)
                )
            results = []
            for scenario in scenarios:
                result = run_scenario(scenario, server, options, progress)
                if (result.server_runqueue_wait_percent or 0) > BUSY_MACHINE_PERCENT:
                    sys.stderr.write(
                        f"[{scenario}] warning: the server waited for a CPU"
                        f" {result.server_runqueue_wait_percent:.0f}% of the time: the"
                        " machine is busy\n"
                    )
                if (
                    result.load_generator_cpu_percent
                    > LOAD_GENERATOR_BUSY_PERCENT * options.processes
                ):
                    sys.stderr.write(
                        f"[{scenario}] warning: the load generators used"
                        f" {result.load_generator_cpu_percent:.0f}% CPU and may be the"
                        " bottleneck (try --processes)\n"
                    )
                results.append(result)
    except BenchmarkError as exc:
        progress.done()
        sys.stderr.write(f"benchmark failed: {exc}\n")
        return 1
    if args.json:
        report = {
            "command": command,
            "clips": [
                {
                    **asdict(source),
                    "codec": clip.codec,
                    "spatial_layers": clip.spatial_layers,
                    "loop_seconds": clip.duration,
                    "packets_per_second": clip.packets_per_second,
                    "megabits_per_second": clip.bits_per_second / 1e6,
                }
                for source, clip in zip(options.clips, clips, strict=True)
            ],
            "results": [asdict(r) for r in results],
        }
        print(json.dumps(report, indent=2))
    else:
        print(format_table(results))
        print(f"command: {command}")
    return 0
