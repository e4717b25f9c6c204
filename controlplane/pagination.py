"""The API's pagination: DRF's limit/offset with a bounded limit."""

from rest_framework import pagination


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """``?limit=&offset=`` with ``count``, ``next``, ``previous``, ``results`` as DRF's."""

    # A larger ?limit= is served as this many (PostgreSQL refuses a LIMIT past bigint: a 500).
    max_limit = 1000
