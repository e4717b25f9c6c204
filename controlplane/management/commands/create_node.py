from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from controlplane.models import Node, Policy


class Command(BaseCommand):
    help = "Register an inference node and print its token (shown only here, store it)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="node name: lowercase letters, digits and '-'")
        parser.add_argument("--host", default="")
        parser.add_argument("--policy", help="name of the policy to assign")
        parser.add_argument(
            "--rotate", action="store_true", help="the node exists: give it a new token"
        )

    def handle(self, *args, name, host, policy, rotate, **options):
        node = Node.objects.filter(name=name).first()
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
        token = node.rotate_token()
        node.save()
        self.stdout.write(token)
