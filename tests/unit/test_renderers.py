"""The API's orjson renderer writes what DRF's JSON renderer writes (but for NaN)."""

from __future__ import annotations

import decimal
import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone

from django.utils.translation import gettext_lazy
from rest_framework import renderers
from rest_framework.exceptions import ErrorDetail
from rest_framework.utils.serializer_helpers import ReturnDict, ReturnList

from controlplane.renderers import JSONRenderer

DATA = {
    "utc": datetime(2026, 11, 26, 3, 4, 5, 678000, tzinfo=UTC),
    "offset": datetime(2026, 11, 26, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    "naive": datetime(2026, 11, 26, 3, 4, 5),
    "day": date(2026, 11, 26),
    "decimal": decimal.Decimal("1.25"),
    "uuid": uuid.UUID(int=7),
    "lazy": gettext_lazy("This field is required."),
    "error": [ErrorDetail("Must be after start.", code="invalid")],
    "nested": ReturnDict({"a": ReturnList([1, 2.5, None, True], serializer=None)}, serializer=None),
    "tuple": (1, "two"),
    1: "an int key",
    "unicode": "héllo ✓ \u2028 \u2029",
    "floats": [0.1, 1e-7, 123456789.123, -0.0, 1e300],
}


def test_same_json_as_drf():
    ours = JSONRenderer().render(DATA)
    theirs = renderers.JSONRenderer().render(DATA)
    assert json.loads(ours) == json.loads(theirs)
    assert b"\\u2028" in ours and b"\\u2029" in ours
    assert b'"utc":"2026-11-26T03:04:05.678000Z"' in ours  # compact, DRF's datetime format
    assert b'"tuple":[1,"two"]' in ours


def test_indent_when_asked_and_nan_as_null():
    indented = JSONRenderer().render({"a": [1]}, "application/json; indent=4")
    assert indented == b'{\n  "a": [\n    1\n  ]\n}'
    assert JSONRenderer().render(None) == b""
    assert json.loads(JSONRenderer().render({"x": float("nan")})) == {"x": None}
