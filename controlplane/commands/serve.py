import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--migrate", action="store_true", help="apply migrations before serving")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django
    from daphne.cli import CommandLineInterface
    from django.core.management import call_command

    django.setup()
    if args.migrate:
        call_command("migrate", interactive=False, verbosity=1)
    CommandLineInterface().run(
        ["--bind", args.host, "--port", str(args.port), "controlplane.asgi:application"]
    )
    return 0
