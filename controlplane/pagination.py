"""The API's pagination: DRF's limit/offset, no count query when the first page is all."""

from django.conf import settings
from rest_framework import pagination


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """``?limit=&offset=`` with ``count``, ``next``, ``previous``, ``results`` as DRF's.

    DRF counts the rows (a query), then reads the page. The first page is read first here: when
    it is not full it is the whole list, and its length is the count. A fleet's nodes and its
    open alerts fit in one page, so those reads are one query fewer. Other pages as DRF (its
    count first also keeps an offset past the end out of the page query)."""

    # A larger ?limit= is served as this many (PostgreSQL refuses a LIMIT past bigint: a 500).
    max_limit = 1000

    def paginate_queryset(self, queryset, request, view=None):
        plain = "pagination" in settings.LIVEUPDATE_PLAIN_FRAMEWORK
        if plain or self.get_offset(request) != 0:
            return super().paginate_queryset(queryset, request, view)
        self.request = request
        self.limit = self.get_limit(request)
        if self.limit is None:
            return None
        self.offset = 0
        page = list(queryset[: self.limit])
        self.count = len(page) if len(page) < self.limit else self.get_count(queryset)
        if self.count > self.limit and self.template is not None:
            self.display_page_controls = True
        return page
