"""The embedded appliance: SQLite, in-memory channel layer, filesystem broker, no servers."""

import argparse
import os
import secrets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)


def ensure_demo_admin(data_dir) -> tuple[str, str]:
    """An admin account for the local operator, its password kept beside the embedded database."""
    from django.contrib.auth import get_user_model

    password_file = data_dir / "demo-admin-password"
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(12)
        password_file.write_text(password)
        password_file.chmod(0o600)
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(
        username="admin", defaults={"is_staff": True, "is_superuser": True}
    )
    if not user.check_password(password):
        user.set_password(password)
        user.save()
    return "admin", password


def run(args: argparse.Namespace) -> int:
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)  # the demo is the embedded mode, whatever the shell has set
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django
    from daphne.cli import CommandLineInterface
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    username, password = ensure_demo_admin(settings.DATA_DIR)
    url = f"http://{args.host}:{args.port}/"
    print(f"LiveUpdate dashboard: {url}  (login: {username} / {password})", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    CommandLineInterface().run(
        ["--bind", args.host, "--port", str(args.port), "controlplane.asgi:application"]
    )
    return 0
