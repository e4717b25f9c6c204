import os
import re

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from controlplane.models import Node, Policy
from controlplane.tokens import hash_token

# A token given by the operator (declarative provisioning) is as strong as a generated one.
TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.~]{32,256}")


class Command(BaseCommand):
    help = "Register an inference node and print its token (shown only here, store it)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="node name: lowercase letters, digits and '-'")
        parser.add_argument("--host", default="")
        parser.add_argument("--policy", help="name of the policy to assign")
        parser.add_argument(
            "--rotate", action="store_true", help="the node exists: give it a new token"
        )
        parser.add_argument(
            "--token-from-env",
            metavar="VAR",
            help="use the token in environment variable VAR (32-256 URL-safe characters) "
            "instead of a generated one; not printed. A node that already has it is left as is.",
        )

    def _token_from_env(self, var: str) -> str:
        raw = os.environ.get(var)
        if raw is None:
            raise CommandError(f"--token-from-env: environment variable {var} is not set")
        if not TOKEN_RE.fullmatch(raw):
            raise CommandError(
                f"--token-from-env: {var} must be 32-256 characters of A-Z a-z 0-9 - _ . ~"
            )
        return raw

    def handle(self, *args, name, host, policy, rotate, token_from_env=None, **options):
        given = self._token_from_env(token_from_env) if token_from_env else None
        node = Node.objects.filter(name=name).first()
        if node is not None and given and node.token_hash == hash_token(given) and not policy:
            self.stdout.write(f"node {name!r} already has the token from ${token_from_env}")
            return
        if node is not None and not rotate:
            raise CommandError(f"node {name!r} exists; use --rotate for a new token")
        if node is None:
            node = Node(name=name, host=host)
        if policy:
            node.policy = Policy.objects.filter(name=policy).first()
            if node.policy is None:
                raise CommandError(f"no policy named {policy!r}")
        try:
            node.full_clean(exclude=["token_hash"])
        except ValidationError as exc:
            errors = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(errors) from None
        if given:
            node.token_hash = hash_token(given)
            node.save()
            self.stdout.write(f"node {name!r}: token set from ${token_from_env}")
            return
        token = node.rotate_token()
        node.save()
        self.stdout.write(token)
