"""The API's JSON parsers: every body bounded in size (413), nesting (400) and strings (no NUL,
no lone surrogate: PostgreSQL stores neither), answered as JSON errors, never a 500. Numbers are
the fields' business (their bounds; JSON fields: controlplane.models.json_field_error)."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser

from nodeworker.protocol import telemetry as protocol_telemetry


class BodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "body_too_large"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser with the bounds above (the default parser of the API)."""

    allow_constants = False  # NaN, Infinity

    def max_bytes(self) -> int:
        return settings.LIVEUPDATE_API_MAX_BODY_BYTES

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        limit = self.max_bytes()
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise BodyTooLarge(f"A request body may hold at most {limit} bytes.")
        try:
            data = json.loads(
                raw, parse_constant=None if self.allow_constants else _refuse_constant
            )
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        except ValueError as exc:  # UnicodeDecodeError included
            raise ParseError(f"JSON parse error - {exc}") from None
        message = protocol_telemetry.json_value_error(
            data, protocol_telemetry.MAX_JSON_DEPTH, numbers=False
        )
        if message:
            raise ParseError(f"JSON value refused - {message}")
        return data


class TelemetryJSONParser(BoundedJSONParser):
    """Telemetry batches: NaN/Infinity literals parse, so that they get a field error
    (samples[1].p99_ms) from the protocol's validation."""

    allow_constants = True

    def max_bytes(self) -> int:
        return protocol_telemetry.MAX_BATCH_BYTES
