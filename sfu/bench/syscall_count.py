"""The server's system calls, counted by ``perf stat`` on the syscall tracepoints.

``/proc/<pid>/io`` looks like the cheap way, but its ``syscr``/``syscw`` count only the
read/write family that goes through the VFS (``read``, ``write``, ``readv``, ...):
``recvfrom``, ``recvmsg``, ``sendmsg`` and ``sendmmsg`` on a UDP socket leave them
unchanged, so for a media server they count next to nothing. ``strace -c`` counts
everything but stops the process at every call (ptrace), which would change the CPU
figures it is measured beside.

So the runner starts the server under ``perf stat -I`` (:func:`perf_command`): the
kernel counts every syscall entry of the server's process and its threads (the
``raw_syscalls:sys_enter`` tracepoint, plus one ``syscalls:sys_enter_<name>`` per name
in :data:`SYSCALL_NAMES`) and perf appends each interval's counts to a file, which
:func:`read_counts` sums. Counting costs the server a tracepoint hit per syscall (no
stop, no copy), so the CPU figures beside it include that.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

INTERVAL_MS = 100
"""perf's reporting interval: the window's edges are known to within this."""
TOTAL_EVENT = "raw_syscalls:sys_enter"
SYSCALL_NAMES = (
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "epoll_wait",
    "epoll_pwait",
    "read",
    "write",
)
"""The syscalls counted one by one (the network path and the event loop's waits)."""
_PREFIX = "syscalls:sys_enter_"


class SyscallCountError(RuntimeError):
    """perf is missing, or its output is not what :func:`perf_command` asks for."""


@dataclass
class SyscallCounts:
    """Syscalls of the server counted from its start to ``elapsed`` (perf's clock)."""

    elapsed: float
    """Seconds from perf's start to the end of its latest interval."""
    total: int = 0
    by_name: dict[str, int] = field(default_factory=dict)


def perf_command(output: Path) -> list[str]:
    """The prefix that runs a command under ``perf stat``, writing to ``output``."""
    perf = shutil.which("perf")
    if perf is None:
        raise SyscallCountError("counting syscalls needs perf (Debian package linux-perf)")
    events = ",".join([TOTAL_EVENT, *(_PREFIX + name for name in SYSCALL_NAMES)])
    return [perf, "stat", "-I", str(INTERVAL_MS), "-x", ",", "-o", str(output), "-e", events, "--"]


def read_counts(output: Path) -> SyscallCounts:
    """Sum the whole intervals perf has written to ``output`` so far.

    A line is ``time,count,unit,event,run time,percent,...``; the latest interval is
    left out (perf may still be writing its lines), and ``<not counted>`` counts 0.
    """
    intervals: dict[float, list[tuple[str, int]]] = {}
    for line in output.read_text().splitlines(keepends=True):
        if not line.endswith("\n") or line.startswith("#") or not line.strip():
            continue
        parts = line.strip().split(",")
        try:
            elapsed = float(parts[0])
            event = parts[3]
        except (ValueError, IndexError) as exc:
            raise SyscallCountError(f"unexpected perf stat line: {line.strip()!r}") from exc
        count = int(parts[1]) if parts[1].isdigit() else 0
        intervals.setdefault(elapsed, []).append((event, count))
    if intervals:
        del intervals[max(intervals)]
    counts = SyscallCounts(elapsed=max(intervals, default=0.0))
    for lines in intervals.values():
        for event, count in lines:
            if event == TOTAL_EVENT:
                counts.total += count
            elif event.startswith(_PREFIX):
                name = event.removeprefix(_PREFIX)
                counts.by_name[name] = counts.by_name.get(name, 0) + count
    return counts
