"""API authentication: DRF tokens for people and automation (stored hashed, shown once;
verified tokens remembered for a few seconds when so configured), per-node tokens
(``Authorization: Node <token>``) for telemetry ingest."""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from controlplane.models import Node
from controlplane.tokens import hash_api_token, hash_token
from nodeworker.protocol import NODE_AUTH_SCHEME

# stored (hashed) key -> (monotonic expiry, user, token). Bounded: cleared whole when full.
_verified: dict[str, tuple[float, AbstractBaseUser, Token]] = {}
VERIFIED_MAX = 1024


class CachedTokenAuthentication(authentication.TokenAuthentication):
    """DRF's ``Authorization: Token <key>``, each verified key remembered for
    LIVEUPDATE_TOKEN_CACHE_S seconds by the server process (0, the default: none).

    The lookup (a query for the token and its user, and the user's role groups for a user who
    is not a superuser) costs a small read ~0.55 ms of CPU (bench/framework_patches.py). The
    price of turning the cache on is a lag: a deleted
    token, or a user deactivated or given another role, still works as before for up to that
    many seconds in the other server processes that verified it (in the process that made the
    change, at once: the signal handlers below). 0 looks every request up.
    """

    def authenticate_credentials(self, key):
        key = hash_api_token(key)  # what is stored
        ttl = settings.LIVEUPDATE_TOKEN_CACHE_S
        now = time.monotonic()
        hit = _verified.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        user, token = super().authenticate_credentials(key)
        if ttl > 0:
            if len(_verified) >= VERIFIED_MAX:
                _verified.clear()
            _verified[key] = (now + ttl, user, token)
        return user, token


def forget_user(user_id) -> None:
    for key, (_, user, _) in list(_verified.items()):
        if user.pk == user_id:
            _verified.pop(key, None)


@receiver(pre_save, sender=Token)
def _hash_new_token(sender, instance, raw=False, **kwargs) -> None:
    """However a token is created (the admin, ``Token.objects.create``, a shell), only its hash
    is stored; the object keeps the raw key in memory, so its creator sees it this once."""
    if instance._state.adding and not raw:
        instance.shown_once = instance.key or instance.generate_key()
        instance.key = hash_api_token(instance.shown_once)


@receiver(post_save, sender=Token)
def _show_new_token_once(sender, instance, created, **kwargs) -> None:
    if created and hasattr(instance, "shown_once"):
        instance.key = instance.shown_once


@receiver(post_delete, sender=Token)
def _token_deleted(sender, instance, **kwargs) -> None:
    _verified.pop(instance.key, None)


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def _user_saved(sender, instance, **kwargs) -> None:
    forget_user(instance.pk)


@receiver(m2m_changed, sender=get_user_model().groups.through)
def _groups_changed(sender, instance, reverse, pk_set, **kwargs) -> None:
    # user.groups.add(...) passes the user; group.user_set.add(...) the group and user ids
    for user_id in (pk_set or ()) if reverse else (instance.pk,):
        forget_user(user_id)


class NodePrincipal:
    """request.user for a node: authenticated, but holding no role (see controlplane.roles)."""

    is_authenticated = True
    is_anonymous = False
    is_superuser = False
    is_staff = False
    is_node = True

    def __init__(self, node: Node):
        self.node = node
        self.username = f"node:{node.name}"

    def __str__(self) -> str:
        return self.username


class NodeTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace") != NODE_AUTH_SCHEME:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Expected 'Authorization: Node <token>'.")
        node = Node.objects.filter(token_hash=hash_token(header[1].decode(errors="replace")))
        node = node.first()
        if node is None:
            raise exceptions.AuthenticationFailed("Invalid node token.")
        return NodePrincipal(node), node

    def authenticate_header(self, request) -> str:
        return NODE_AUTH_SCHEME


class NodeTokenScheme(OpenApiAuthenticationExtension):
    """Describes the node token in the OpenAPI schema."""

    target_class = NodeTokenAuthentication
    name = "nodeToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": f"'{NODE_AUTH_SCHEME} <token>': a node's token (telemetry ingest only).",
        }
