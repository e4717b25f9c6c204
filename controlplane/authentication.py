"""Per-node token authentication (``Authorization: Node <token>``) for telemetry ingest."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from controlplane.models import Node, hash_token
from nodeworker.protocol import NODE_AUTH_SCHEME


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
