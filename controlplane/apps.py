from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _create_role_groups(sender, **kwargs) -> None:
    from controlplane.roles import ensure_groups

    ensure_groups()


class ControlPlaneConfig(AppConfig):
    name = "controlplane"
    verbose_name = "LiveUpdate control plane"

    def ready(self) -> None:
        # The role groups (viewer, operator, admin) exist as soon as the database is migrated.
        post_migrate.connect(_create_role_groups, sender=self)
        from controlplane import access, authentication  # noqa: F401  (signal receivers)
