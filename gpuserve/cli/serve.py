"""`gpuserve serve MODULE:ATTR`: plan the devices, build the replicas, serve HTTP."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gpuserve.deployment import prepare
from gpuserve.errors import GpuserveError
from gpuserve.loader import load_service
from gpuserve.service import Isolation
from gpuserve.settings import OpsRoutes, Settings

log = logging.getLogger("gpuserve")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a service over HTTP",
        description="Import MODULE:ATTR from the current directory, build its replicas on the "
        "planned devices and serve its APIs. Every flag also reads GPUSERVE_<FLAG> "
        "(e.g. GPUSERVE_PORT); flags win.",
    )
    p.add_argument("service", metavar="MODULE:ATTR", help="the @gpuserve.service class, e.g. app:Classifier")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 3000; 0 picks a free one)")
    p.add_argument("--backend", help="backend to use (default: the service's, else the best installed)")
    p.add_argument("--isolation", choices=[i.value for i in Isolation], help="replicas as threads or processes")
    p.add_argument("--executors", metavar="KIND",
                   help="where replicas run: thread, process, or an installed kind such as ray "
                   "(default: --isolation, else the service's)")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="with --executors ray, the Ray cluster's head (default: RAY_ADDRESS, else the cluster "
                   "`ray start` started on this machine, else a new local Ray)")
    p.add_argument("--workers", type=int, help="replicas to build (default: the service's workers=)")
    p.add_argument("--require-gpu", action="store_true", default=None,
                   help="fail instead of falling back to the CPU when no GPU can be used")
    p.add_argument("--cpu-devices", type=int, help="virtual CPU devices to spread CPU replicas over")
    p.add_argument("--instances-per-device", type=int, help="replicas per planned device (default 1)")
    p.add_argument("--max-body-size", type=int, help="largest request body in bytes (default 16 MiB)")
    p.add_argument("--timeout", type=float, help="default request deadline in seconds")
    p.add_argument("--queue-size", type=int, help="requests queued per API before 503 (default: derived)")
    p.add_argument("--drain-timeout", type=float,
                   help="on SIGTERM or Ctrl-C, seconds the whole stop may take: accepted requests finish "
                   "(what is left gets 503), then the replicas end (default 30)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false", default=None,
                   help="no log line per request (GPUSERVE_ACCESS_LOG=false)")
    p.add_argument("--max-streams", type=int,
                   help="streams open at once per streaming API, queued or running, before 503 (default 256)")
    p.add_argument("--stream-timeout", type=float,
                   help="seconds a stream may last, from its request's arrival (default 600); its first value "
                   "must come within --timeout")
    p.add_argument("--stream-gap-timeout", type=float,
                   help="seconds a stream may go without a value while its reader keeps up (default 60)")
    p.add_argument("--call-timeout", type=float,
                   help="seconds one model call may run before its replica counts as stuck: the call's "
                   "requests fail (504) and the replica is replaced (default: --timeout; an API's own "
                   "call_timeout= wins)")
    p.add_argument("--max-build-failures", type=int,
                   help="failed rebuilds of one replica in a row before the server counts as failed (default 5)")
    p.add_argument("--no-exit-on-failure", dest="exit_on_failure", action="store_false", default=None,
                   help="when the server has failed, stay up answering 503 with the reason instead of "
                   "exiting with status 1 (GPUSERVE_EXIT_ON_FAILURE=false)")
    limits = p.add_argument_group("requests and connections")
    limits.add_argument("--max-request-timeout", type=float,
                        help="the longest deadline a request may ask for with X-Request-Timeout; more is 400 "
                        "(default: --timeout)")
    limits.add_argument("--off-loop-decode-size", type=int,
                        help="bodies (KServe v2: JSON headers) of at least this many bytes are decoded in a helper "
                        "process, off the event loop (default 1 MiB; 0: never)")
    limits.add_argument("--backlog", type=int, help="connections the kernel may queue before they are accepted "
                        "(default 2048, capped by net.core.somaxconn)")
    limits.add_argument("--max-connections", type=int,
                        help="open connections served; more are answered 503 (default: from the open-file limit, "
                        "less room for the server's own files)")
    limits.add_argument("--header-timeout", type=float,
                        help="seconds a request's head may take from its first byte (default 10)")
    limits.add_argument("--body-timeout", type=float,
                        help="seconds a request's body may take after its head; then 408 (default 30)")
    limits.add_argument("--keepalive-timeout", type=float,
                        help="seconds an idle connection is kept open (default 75)")
    access = p.add_argument_group("who may call what")
    access.add_argument("--api-key", help="require 'Authorization: Bearer <key>' (prefer --api-key-file or "
                        "GPUSERVE_API_KEY: a flag shows in the process list)")
    access.add_argument("--api-key-file", help="a file of accepted keys, one per line ('#' starts a comment)")
    access.add_argument("--ops-routes", choices=[o.value for o in OpsRoutes],
                        help="who may read /stats, /metrics, /docs and /openapi.json: anyone (open), whoever "
                        "may call the APIs (key, the default), nobody (off)")
    access.add_argument("--allowed-hosts", help="comma-separated host names the Host header may carry; others "
                        "get 421 (default: any)")
    access.add_argument("--ssl-certfile", help="serve HTTPS with this certificate chain (PEM)")
    access.add_argument("--ssl-keyfile", help="the private key of --ssl-certfile (PEM)")
    access.add_argument("--debug-errors", action="store_true", default=None,
                        help="error bodies carry tracebacks and unredacted messages (paths, environment)")
    p.add_argument("--cpu-threads", type=int,
                   help="intra-op threads of the framework of each CPU replica (default: the cores this process "
                   "may use, less one for the event loop, shared by the CPU replicas; 0: the framework's own)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    flags = {k: v for k, v in vars(args).items() if k not in ("service", "run", "log_level", "command")}
    from gpuserve.runner import serve
    from gpuserve.server import create_app

    try:
        settings = Settings.from_sources(flags, os.environ)
        spec = load_service(args.service)
        deployment = prepare(spec, settings, os.environ)
    except GpuserveError as exc:
        print(f"gpuserve: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(deployment)
    except GpuserveError as exc:
        deployment.close()
        print(f"gpuserve: {exc}", file=sys.stderr)
        return 2

    try:
        failure = serve(app, settings)
    finally:
        deployment.close()  # e.g. leave the Ray cluster; the replicas have stopped
    if failure is not None:
        print(f"gpuserve: {failure}", file=sys.stderr)
        return 1
    return 0
