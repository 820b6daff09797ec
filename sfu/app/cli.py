"""The ``sfu`` command: ``sfu serve`` runs the embedded server, ``sfu token`` mints a token;
``sfu signaling`` / ``sfu worker`` run the two processes of a Redis cluster and
``sfu drain`` tells a cluster worker to drain.

Every ``serve`` flag overrides the :class:`~sfu.config.Settings` field of the same
name; what no flag sets still comes from ``SFU_*`` environment variables.

A server refuses to start without an API secret of its own unless ``--dev`` asks for
the development defaults (see :func:`sfu.config.exposure_problem`).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any

import uvloop
from pydantic import ValidationError

from sfu.access_token import mint_token
from sfu.app.embedded import embedded_app
from sfu.app.http_server import Server, server_config
from sfu.bench import loadtest
from sfu.config import Settings, exposure_problem, exposure_warnings
from sfu.loop_time import settle_heap
from sfu.worker import Worker

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_POLL_SECONDS = 0.05


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.run(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfu", description="A WebRTC SFU in Python.")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser(
        "serve",
        help="run signaling and one media worker in this process",
        description="Run signaling and one media worker in one process (no Redis).",
    )
    serve.set_defaults(command="serve", run=_serve)
    serve.add_argument("--host", help="HTTP/WebSocket bind address")
    serve.add_argument("--port", type=int, help="HTTP/WebSocket port")
    serve.add_argument(
        "--ice-address",
        dest="ice_addresses",
        action="append",
        metavar="ADDRESS",
        help="address to gather ICE candidates on (repeatable; default: every interface)",
    )
    serve.add_argument("--announced-ip", help="public address written into candidates")
    _add_webhooks(serve)
    _add_recording_dir(serve)
    _add_ice_ports(serve)
    _add_credentials(serve)
    _add_dev(serve)
    serve.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"))

    _add_cluster_commands(commands)

    token = commands.add_parser(
        "token", help="mint an access token", description="Print a signed access token."
    )
    token.set_defaults(command="token", run=_token)
    token.add_argument("--room", required=True)
    token.add_argument("--identity", required=True)
    token.add_argument("--name", help="display name (default: the identity)")
    token.add_argument("--no-publish", dest="can_publish", action="store_false")
    token.add_argument("--no-subscribe", dest="can_subscribe", action="store_false")
    token.add_argument("--ttl", type=int, default=6 * 3600, help="lifetime in seconds")
    _add_credentials(token)
    token.add_argument(
        "--dev",
        action="store_const",
        const=True,
        help="sign with the development secret (for a server started with --dev)",
    )

    load_test = commands.add_parser(
        "load-test",
        help="N publishers and M subscribers against a server, with a report",
        description=(loadtest.__doc__ or "").split("\n\n")[0],
    )
    load_test.set_defaults(command="load-test", run=loadtest.main)
    loadtest.configure_parser(load_test)
    return parser


def _add_ice_ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--udp-port",
        type=int,
        help="the one UDP port all media transports share (default 0: a free port)",
    )
    parser.add_argument(
        "--tcp-port", type=int, help="ICE-TCP port for clients without UDP (default: off)"
    )


def _add_cluster_commands(commands: Any) -> None:
    signaling = commands.add_parser(
        "signaling",
        help="run a stateless signaling node of a Redis cluster",
        description="Serve HTTP and /ws; rooms are placed on workers through Redis.",
    )
    signaling.set_defaults(command="signaling", run=_signaling)
    signaling.add_argument("--host", help="HTTP/WebSocket bind address")
    signaling.add_argument("--port", type=int, help="HTTP/WebSocket port")
    signaling.add_argument("--node-id", help="this node's id (default: random)")
    _add_redis(signaling)
    _add_credentials(signaling)
    _add_dev(signaling)

    worker = commands.add_parser(
        "worker",
        help="run one media worker of a Redis cluster",
        description="Forward media for the rooms Redis places here. SIGTERM drains.",
    )
    worker.set_defaults(command="worker", run=_worker)
    worker.add_argument("--worker-id", help="this worker's id (default: random)")
    worker.add_argument(
        "--ice-address",
        dest="ice_addresses",
        action="append",
        metavar="ADDRESS",
        help="address to gather ICE candidates on (repeatable; default: every interface)",
    )
    worker.add_argument("--announced-ip", help="public address written into candidates")
    _add_ice_ports(worker)
    worker.add_argument("--capacity", type=int, help="participants this worker accepts")
    _add_webhooks(worker)
    _add_credentials(worker)
    _add_recording_dir(worker)
    _add_redis(worker)

    drain = commands.add_parser(
        "drain",
        help="tell a cluster worker to drain",
        description="The worker takes no new rooms and exits once its rooms are empty.",
    )
    drain.set_defaults(command="drain", run=_drain)
    drain.add_argument("worker_id", help="the worker's id (see GET /api/workers)")
    drain.add_argument(
        "--timeout", type=float, help="seconds before remaining participants are moved"
    )
    _add_redis(drain)


def _add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="redis://host:port/db of the cluster")
    parser.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"))


def _add_webhooks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--webhook-url",
        dest="webhook_urls",
        action="append",
        metavar="URL",
        help="POST room events, signed with the API secret, to URL (repeatable)",
    )


def _add_recording_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recording-dir", help="directory recordings are written to (default: recording off)"
    )


def _add_credentials(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", help="API key (token issuer)")
    parser.add_argument("--api-secret", help="API secret (token signing key)")


def _add_dev(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dev",
        action="store_const",
        const=True,
        help="development mode: the published key and secret unless given, /api/dev-token, "
        "and 127.0.0.1 unless --host is given; never on a public server",
    )
    parser.add_argument(
        "--no-dev-tokens",
        dest="dev_tokens",
        action="store_const",
        const=False,
        help="do not serve /api/dev-token (in dev mode)",
    )


def _settings(args: argparse.Namespace, fields: Sequence[str]) -> Settings:
    overrides: dict[str, Any] = {
        field: getattr(args, field) for field in fields if getattr(args, field) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise SystemExit(f"sfu: bad setting: {problems}") from None


def _token(args: argparse.Namespace) -> int:
    settings = _settings(args, ("api_key", "api_secret", "dev"))
    problem = exposure_problem(settings)
    if problem is not None:
        print(f"sfu token: {problem}", file=sys.stderr)
        return 2
    try:
        token = mint_token(
            settings.api_key,
            settings.api_secret,
            room=args.room,
            identity=args.identity,
            name=args.name,
            can_publish=args.can_publish,
            can_subscribe=args.can_subscribe,
            ttl_seconds=args.ttl,
        )
    except ValueError as exc:
        print(f"sfu token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _check_exposure(command: str, settings: Settings) -> bool:
    """Say why a server must not start with ``settings``, or warn about what it will
    hand out; False if it must not start."""
    problem = exposure_problem(settings)
    if problem is not None:
        print(f"sfu {command}: {problem}", file=sys.stderr)
        return False
    for warning in exposure_warnings(settings):
        print(f"sfu {command}: WARNING: {warning}", file=sys.stderr, flush=True)
    return True


def _signaling(args: argparse.Namespace) -> int:
    from sfu.app.processes import run_signaling

    settings = _settings(
        args,
        (
            "host",
            "port",
            "node_id",
            "redis_url",
            "api_key",
            "api_secret",
            "dev",
            "dev_tokens",
            "log_level",
        ),
    )
    if not _check_exposure("signaling", settings):
        return 2
    _configure_logging(settings)
    uvloop.run(run_signaling(settings))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from sfu.app.processes import run_worker

    settings = _settings(
        args,
        (
            "worker_id",
            "ice_addresses",
            "announced_ip",
            "udp_port",
            "tcp_port",
            "capacity",
            "webhook_urls",
            "api_key",
            "api_secret",
            "recording_dir",
            "redis_url",
            "log_level",
        ),
    )
    # Webhooks are signed with the API secret: the published one would let anyone forge them.
    if settings.webhook_urls and not _check_exposure("worker", settings):
        return 2
    _configure_logging(settings)
    uvloop.run(run_worker(settings))
    return 0


def _drain(args: argparse.Namespace) -> int:
    from sfu.app.processes import drain_worker
    from sfu.cluster.backend import BackendUnavailable
    from sfu.worker_api import ProtocolError

    settings = _settings(args, ("redis_url", "log_level"))
    try:
        asyncio.run(drain_worker(settings, args.worker_id, args.timeout))
    except ProtocolError as exc:
        print(f"sfu drain: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except BackendUnavailable as exc:
        print(f"sfu drain: {exc}", file=sys.stderr)
        return 1
    print(f"worker {args.worker_id} is draining")
    return 0


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args,
        (
            "host",
            "port",
            "ice_addresses",
            "announced_ip",
            "webhook_urls",
            "recording_dir",
            "udp_port",
            "tcp_port",
            "api_key",
            "api_secret",
            "dev",
            "dev_tokens",
            "log_level",
        ),
    )
    if not _check_exposure("serve", settings):
        return 2
    _configure_logging(settings)
    return uvloop.run(_run_server(settings))


async def _run_server(settings: Settings) -> int:
    worker = Worker(settings)
    try:
        await worker.start()
    except OSError as exc:
        await worker.stop()
        print(f"sfu serve: {exc}", file=sys.stderr)
        return 2
    try:
        listener = _http_listener(settings.host, settings.port)
    except OSError as exc:
        await worker.stop()
        where = f"{settings.host} port {settings.port}"
        print(f"sfu serve: cannot listen on {where}: {exc}", file=sys.stderr)
        return 2
    server = Server(server_config(embedded_app(worker, settings), settings))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started and not serving.done():
        await asyncio.sleep(_POLL_SECONDS)
    if server.started:
        port = next(
            (sock.getsockname()[1] for listener in server.servers for sock in listener.sockets),
            settings.port,
        )
        print(f"SFU demo: {_demo_urls(settings.host, port)}", flush=True)
        settle_heap()
    await serving
    return 0


def _http_listener(host: str, port: int) -> socket.socket:
    """The HTTP server's listening socket, bound here so that a taken port is one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    return listener


def _demo_urls(host: str, port: int) -> str:
    """The URL(s) a person can open for a server bound to ``host``."""
    if host not in _WILDCARD_HOSTS:
        return _url(host, port)
    local = _url("127.0.0.1", port)
    lan = _lan_address()
    return local if lan is None else f"{local} (on this network: {_url(lan, port)})"


def _url(host: str, port: int) -> str:
    try:
        bracketed = ipaddress.ip_address(host).version == 6
    except ValueError:
        bracketed = False
    return f"http://[{host}]:{port}/" if bracketed else f"http://{host}:{port}/"


def _lan_address() -> str | None:
    """The address of the interface holding the default route, if there is one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address
