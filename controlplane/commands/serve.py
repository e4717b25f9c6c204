"""``liveupdate serve``: the control plane's ASGI server (HTTP, websockets, telemetry ingest).

uvicorn with ``--workers`` processes sharing one listening socket: Python runs one request at a
time per process (GIL), so one process per core is how the API, ingest and websocket fan-out use
the machine. Several workers need a shared channel layer (REDIS_URL): with the embedded in-memory
layer an event raised in one process would never reach the sockets of another.
"""

import argparse
import os

from controlplane.env import env_bool, env_int

WORKERS_ENV = "LIVEUPDATE_WEB_WORKERS"
ACCESS_LOG_ENV = "LIVEUPDATE_ACCESS_LOG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"server processes (default: ${WORKERS_ENV}, else 1); more than 1 needs REDIS_URL",
    )
    parser.add_argument("--migrate", action="store_true", help="apply migrations before serving")
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"a log line per request (default: ${ACCESS_LOG_ENV}, else on)",
    )


MAX_WORKERS = 64


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"liveupdate serve: --port must be in [0, 65535], got {args.port}")
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise SystemExit(f"liveupdate serve: --workers must be in [1, {MAX_WORKERS}]")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django
    import uvicorn
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    workers = args.workers if args.workers is not None else env_int(WORKERS_ENV, 1, minimum=1)
    if not 1 <= workers <= MAX_WORKERS:
        raise SystemExit(f"liveupdate serve: {WORKERS_ENV} must be in [1, {MAX_WORKERS}]")
    if workers > 1 and not settings.REDIS_URL:
        raise SystemExit(
            f"{workers} workers need a shared channel layer: set REDIS_URL (the embedded "
            "in-memory layer reaches only the sockets of its own process)"
        )
    if args.migrate:
        call_command("migrate", interactive=False, verbosity=1)
    access_log = args.access_log if args.access_log is not None else env_bool(ACCESS_LOG_ENV, True)
    uvicorn.run(
        "controlplane.asgi:application",
        host=args.host,
        port=args.port,
        workers=workers,
        lifespan="off",  # Channels' router has no lifespan protocol
        # Off, a request costs ~0.1 ms less CPU (formatting and writing the line); errors are
        # still logged by Django.
        access_log=access_log,
        ws="websockets-sansio",
        # Events are small JSON: compressing each frame for each socket cost more CPU than the
        # whole event forwarding, for a few hundred bytes saved.
        ws_per_message_deflate=False,
        # On SIGTERM open websockets are closed (1012) and requests get this long to finish.
        timeout_graceful_shutdown=10,
    )
    return 0
