from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from controlplane.roles import ROLES, ensure_groups


class Command(BaseCommand):
    help = "Create the role groups (viewer, operator, admin) and optionally put users in them."

    def add_arguments(self, parser):
        parser.add_argument(
            "--grant",
            action="append",
            default=[],
            metavar="USER:ROLE",
            help=f"put USER in ROLE ({', '.join(ROLES)}); repeatable",
        )

    def handle(self, *args, grant, **options):
        created = ensure_groups()
        self.stdout.write(
            f"role groups: {', '.join(ROLES)} (created: {', '.join(created) or 'none'})"
        )
        users = get_user_model()
        for item in grant:
            username, _, role = item.partition(":")
            if role not in ROLES:
                raise CommandError(f"{item!r}: role must be one of {', '.join(ROLES)}")
            user = users.objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"{item!r}: no user named {username!r}")
            user.groups.add(Group.objects.get(name=role))
            self.stdout.write(f"{username}: {role}")
