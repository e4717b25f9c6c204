"""Open websockets end with their user's access, not only at connect: logging out closes the
sockets of that session (4401), deactivating a user closes theirs (4401), and any other change
of the user (role groups, superuser flag, password) closes theirs with 4403, so that the
dashboard reconnects and the consumer checks the role again. Sent through the channel layer, so
it reaches every server process on Redis (the embedded default's in-memory layer: this process,
the one that serves the dashboard and the admin)."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import m2m_changed, post_save
from django.dispatch import receiver

log = logging.getLogger(__name__)

LOGGED_OUT = 4401
ACCESS_CHANGED = 4403
MESSAGE_TYPE = "access.revoked"


def user_group(user_id) -> str:
    return f"user.{user_id}"


def session_group(session_key: str) -> str:
    return f"session.{session_key}"


def close_sockets(group: str, code: int) -> None:
    """Best effort: a channel-layer outage is logged, never fails the logout or the save."""
    try:
        async_to_sync(get_channel_layer().group_send)(group, {"type": MESSAGE_TYPE, "code": code})
    except Exception as exc:  # noqa: BLE001 - see docstring
        log.warning("closing the websockets of %s failed: %s", group, exc)


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs) -> None:
    key = getattr(getattr(request, "session", None), "session_key", None)
    if key:
        close_sockets(session_group(key), LOGGED_OUT)


@receiver(post_save, sender=get_user_model())
def _user_saved(sender, instance, created, update_fields=None, **kwargs) -> None:
    if created or (update_fields is not None and set(update_fields) == {"last_login"}):
        return  # a login records its time: nothing about access changed
    close_sockets(user_group(instance.pk), ACCESS_CHANGED if instance.is_active else LOGGED_OUT)


@receiver(m2m_changed, sender=get_user_model().groups.through)
def _groups_changed(sender, instance, action, reverse, pk_set, **kwargs) -> None:
    if not action.startswith("post_"):
        return
    # user.groups.add(...) passes the user; group.user_set.add(...) the group and user ids
    for user_id in (pk_set or ()) if reverse else (instance.pk,):
        close_sockets(user_group(user_id), ACCESS_CHANGED)
