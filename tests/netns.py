"""Network namespaces for tests: a veth pair from the root namespace into a namespace
whose link the test can shape with ``tc`` (token bucket) or make lossy with nftables,
and a wrapper script that runs a program (Chromium) inside it.

Everything needs root (CAP_NET_ADMIN) and iproute2; :func:`netns_unavailable_reason`
says why not when a test has to skip. Addresses come from 198.18.0.0/15 (RFC 2544,
benchmarking), one /30 per link: ``198.18.x.1`` on the root side, ``198.18.x.2``
inside.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARK_NET = ipaddress.ip_network("198.18.0.0/15")
LOSS_TABLE = "sfu_loss"
"""The nftables table (inside a namespace) of :meth:`VethNamespace.drop_downlink`."""
NO_UDP_TABLE = "sfu_no_udp"
"""The nftables table (inside a namespace) of :meth:`VethNamespace.block_udp`."""


class NetnsError(RuntimeError):
    pass


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def nftables_unavailable_reason() -> str | None:
    """None when ``nft`` is installed (random loss rules), else why not."""
    if shutil.which("nft") is None:
        return "lossy-link tests need 'nft' (Debian package nftables)"
    return None


def netns_unavailable_reason() -> str | None:
    """None when this process can create namespaces, veth pairs and qdiscs, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespace tests need root (ip netns, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"network namespace tests need '{tool}' (Debian package iproute2)"
    name = f"sfuprobe-{uuid.uuid4().hex[:8]}"
    try:
        _run("ip", "netns", "add", name)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    _run("ip", "netns", "delete", name, check=False)
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _run("ip", "-4", "-o", "addr", "show").stdout
    networks = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            networks.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    return networks


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of 198.18.0.0/15 that no interface of the root namespace overlaps."""
    used = _used_networks()
    subnets = [ipaddress.ip_network(f"198.{18 + i // 256}.{i % 256}.0/30") for i in range(512)]
    random.shuffle(subnets)
    for subnet in subnets:
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NetnsError("no free /30 left in 198.18.0.0/15")


@dataclass
class VethNamespace:
    """A namespace reached from the root namespace over one veth pair."""

    namespace: str
    host_veth: str
    """the root-namespace end; its egress is the namespace's downlink"""
    inner_veth: str
    host_address: str
    inner_address: str
    _scripts: list[Path] = field(default_factory=list)

    def exec_args(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *cmd]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return _run(*self.exec_args(*cmd), check=check)

    def limit_downlink(
        self, rate: str = "300kbit", burst: str = "16kbit", latency: str = "100ms"
    ) -> None:
        """Token bucket on the root side's egress: what the namespace receives."""
        _run(
            "tc", "qdisc", "replace", "dev", self.host_veth, "root",
            "tbf", "rate", rate, "burst", burst, "latency", latency,
        )  # fmt: skip

    def unlimit_downlink(self) -> None:
        _run("tc", "qdisc", "del", "dev", self.host_veth, "root", check=False)

    def drop_downlink(self, percent: int) -> None:
        """Drop ``percent`` % of the UDP packets the namespace receives from the root
        side, at random (an nftables input chain inside the namespace: this kernel has
        no ``netem``). Replaces an earlier loss rule."""
        self.undrop_downlink()
        self.run("nft", "add", "table", "inet", LOSS_TABLE)
        self.run(
            "nft", "add", "chain", "inet", LOSS_TABLE, "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        )  # fmt: skip
        self.run(
            "nft", "add", "rule", "inet", LOSS_TABLE, "input",
            "ip", "saddr", self.host_address, "meta", "l4proto", "udp",
            "numgen", "random", "mod", "100", "<", str(percent), "counter", "drop",
        )  # fmt: skip

    def drop_uplink(self, percent: int) -> None:
        """Drop ``percent`` % of the UDP packets the namespace sends to the root side,
        at random, on the wire: a netdev egress chain on the namespace's veth end (an
        output chain would fail the sender's ``sendmsg`` with EPERM, and Chromium sends
        such packets again). Replaces an earlier loss rule, :meth:`drop_downlink`'s too."""
        self.undrop_downlink()
        self.run("nft", "add", "table", "netdev", LOSS_TABLE)
        self.run(
            "nft", "add", "chain", "netdev", LOSS_TABLE, "egress",
            f'{{ type filter hook egress device "{self.inner_veth}" priority 0 ; }}',
        )  # fmt: skip
        self.run(
            "nft", "add", "rule", "netdev", LOSS_TABLE, "egress",
            "ip", "daddr", self.host_address, "meta", "l4proto", "udp",
            "numgen", "random", "mod", "100", "<", str(percent), "counter", "drop",
        )  # fmt: skip

    def undrop_downlink(self) -> None:
        """Remove the loss rule of :meth:`drop_downlink` or :meth:`drop_uplink`."""
        for family in ("inet", "netdev"):
            self.run("nft", "delete", "table", family, LOSS_TABLE, check=False)

    def block_udp(self) -> None:
        """Drop every UDP packet into and out of the namespace (a network that allows
        only TCP); DNS is not needed, the tests use addresses."""
        self.run("nft", "add", "table", "inet", NO_UDP_TABLE)
        for hook in ("input", "output"):
            self.run(
                "nft", "add", "chain", "inet", NO_UDP_TABLE, hook,
                f"{{ type filter hook {hook} priority 0 ; policy accept ; }}",
            )  # fmt: skip
            self.run(
                "nft", "add", "rule", "inet", NO_UDP_TABLE, hook,
                "meta", "l4proto", "udp", "counter", "drop",
            )  # fmt: skip

    def blocked_udp_packets(self) -> int:
        """UDP packets :meth:`block_udp` dropped so far, both directions."""
        listing = self.run("nft", "list", "table", "inet", NO_UDP_TABLE, check=False).stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))

    def dropped_packets(self) -> int:
        """Packets the :meth:`drop_downlink` or :meth:`drop_uplink` rule has dropped so far
        (0 without one)."""
        listing = "".join(
            self.run("nft", "list", "table", family, LOSS_TABLE, check=False).stdout
            for family in ("inet", "netdev")
        )
        match = re.search(r"counter packets (\d+)", listing)
        return int(match.group(1)) if match else 0

    def qdisc(self) -> str:
        return _run("tc", "-s", "qdisc", "show", "dev", self.host_veth).stdout.strip()

    def wrapper(self, executable: str | Path, directory: str | Path | None = None) -> Path:
        """An executable script that runs ``executable "$@"`` inside the namespace (for
        Playwright's ``executable_path``); removed with the namespace."""
        fd, path = tempfile.mkstemp(prefix=f"{self.namespace}-", suffix=".sh", dir=directory)
        script = Path(path)
        with os.fdopen(fd, "w") as out:
            out.write(f'#!/bin/sh\nexec ip netns exec {self.namespace} {executable} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self._scripts.append(script)
        return script

    def delete(self) -> None:
        """Remove the qdisc, the veth pair (both ends go together), the namespace and
        the wrapper scripts; safe to call on a partly created link."""
        _run("ip", "link", "delete", self.host_veth, check=False)
        _run("ip", "netns", "delete", self.namespace, check=False)
        for script in self._scripts:
            script.unlink(missing_ok=True)
        self._scripts.clear()


@contextlib.contextmanager
def veth_namespace(prefix: str = "sfu") -> Iterator[VethNamespace]:
    """Create a namespace with ``lo`` up and a veth pair to the root namespace
    (unique names, a free /30 of 198.18.0.0/15); delete it all on exit, also when the
    creation or the test fails."""
    tag = uuid.uuid4().hex[:6]
    subnet = _free_subnet()
    host, inner = list(subnet.hosts())
    link = VethNamespace(
        namespace=f"{prefix}-{tag}",
        host_veth=f"{prefix}{tag}h"[:15],
        inner_veth=f"{prefix}{tag}n"[:15],
        host_address=str(host),
        inner_address=str(inner),
    )
    try:
        _run("ip", "netns", "add", link.namespace)
        _run(
            "ip", "link", "add", link.host_veth, "type", "veth",
            "peer", "name", link.inner_veth, "netns", link.namespace,
        )  # fmt: skip
        _run("ip", "addr", "add", f"{host}/{subnet.prefixlen}", "dev", link.host_veth)
        _run("ip", "link", "set", link.host_veth, "up")
        link.run("ip", "addr", "add", f"{inner}/{subnet.prefixlen}", "dev", link.inner_veth)
        link.run("ip", "link", "set", link.inner_veth, "up")
        link.run("ip", "link", "set", "lo", "up")
        link.run("ip", "route", "add", "default", "via", str(host))
        yield link
    finally:
        link.delete()
