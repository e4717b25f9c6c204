"""Telemetry reads (time-bucketed range queries) and retention (downsampling, expiry).

Buckets are computed in the database (PostgreSQL in production, SQLite in the embedded mode),
so a month of per-second samples comes back as a few hundred points."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import NotSupportedError, connection, transaction
from django.db.models import (
    Avg,
    BigIntegerField,
    F,
    FilteredRelation,
    Func,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)

from controlplane.models import Alert, Node, NodeAction, NodeEvent, TelemetrySample

log = logging.getLogger(__name__)

# The most time buckets a range query returns, and so the most a client may ask for (max_points).
MAX_POINTS = 2000


class RangeError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


# The index of a timestamp's time bucket, floor(unix seconds / width), per database: {0} is the
# timestamp's SQL, the width the one parameter. PostgreSQL: date_part's double precision, not
# extract's numeric, which took the database twice the time over an hour of samples (exact to
# well under a microsecond at today's Unix times). SQLite: the whole seconds of the stored text
# ("YYYY-MM-DD HH:MM:SS.ffffff"), as its strftime('%s') rounds 49.999999 s up to 50.
BUCKET_SQL = {
    "postgresql": "floor(date_part('epoch', {0}) / %s)::bigint",
    "sqlite": "(CAST(strftime('%%s', substr({0}, 1, 19)) AS INTEGER) / %s)",
}


# A float, or null where it is infinite or NaN (JSON has neither): rows stored before the protocol
# bounded every metric may aggregate to those. (PostgreSQL's NaN equals itself; SQLite stores NaN
# as null already, and 9e999 is its infinity.)
FINITE_SQL = {
    "postgresql": "NULLIF(NULLIF(NULLIF({0}, 'Infinity'), '-Infinity'), 'NaN')",
    "sqlite": "NULLIF(NULLIF({0}, 9e999), -9e999)",
}


def _vendor_sql(templates: dict[str, str], vendor: str, sql: str) -> str:
    if vendor not in templates:
        raise NotSupportedError(f"telemetry range queries are not implemented for {vendor}")
    return templates[vendor].format(sql)


def bucket_sql(vendor: str, timestamp_sql: str) -> str:
    return _vendor_sql(BUCKET_SQL, vendor, timestamp_sql)


def finite_sql(vendor: str, float_sql: str) -> str:
    return _vendor_sql(FINITE_SQL, vendor, float_sql)


class EpochBucket(Func):
    """floor(unix seconds of a datetime / width): the index of its time bucket."""

    output_field = BigIntegerField()

    def __init__(self, expression, width: int):
        super().__init__(expression)
        self.width = int(width)

    def as_sql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return bucket_sql(connection.vendor, sql), [*params, self.width]


def bucket_count(start_s: float, end_s: float, width: int) -> int:
    """How many ``width``-second buckets (aligned to the Unix epoch) [start_s, end_s) touches."""
    return math.ceil(end_s / width) - math.floor(start_s / width)


def bucket_width(start: datetime, end: datetime, bucket_s: int | None, max_points: int) -> int:
    """The bucket width of a range query: ``bucket_s`` if it gives at most ``max_points`` buckets,
    else RangeError. Without it: span / max_points rounded up, or, when the range touches one
    bucket more (buckets are aligned to the epoch, so the first and last may be partial), the
    width of max_points - 1 buckets, which always fits."""
    start_s, end_s = start.timestamp(), end.timestamp()
    span = end_s - start_s
    if span <= 0:
        raise RangeError("end", "Must be after start.")
    if not 2 <= max_points <= MAX_POINTS:  # below 2, no width could always fit (see above)
        raise RangeError("max_points", f"Must be in [2, {MAX_POINTS}].")
    if bucket_s is not None:
        if bucket_count(start_s, end_s, bucket_s) > max_points:
            least = bucket_width(start, end, None, max_points)
            raise RangeError("bucket_s", f"Over {max_points} points: bucket_s={least} fits.")
        return bucket_s
    width = max(1, math.ceil(span / max_points))
    if bucket_count(start_s, end_s, width) > max_points:
        # a range touches at most ceil(span / width) + 1 buckets
        width = math.ceil(span / (max_points - 1))
    return width


def series(
    node: Node,
    start: datetime,
    end: datetime,
    metrics: list[str],
    bucket_s: int | None = None,
    max_points: int = MAX_POINTS,
) -> dict:
    """Average and maximum of each metric per time bucket in [start, end), as columns: ``t``
    (bucket starts, Unix seconds), ``n`` (samples per bucket), ``avg`` and ``max`` (metric ->
    one value per bucket, null where no sample had the metric).

    At most ``max_points`` buckets (bucket_width). Raises RangeError (with the field it concerns)
    for a bad range or too many points."""
    bucket_s = bucket_width(start, end, bucket_s, max_points)
    unknown = set(metrics).difference(TelemetrySample.METRICS)
    if unknown:  # the names go into the SQL
        raise ValueError(f"not telemetry metrics: {sorted(unknown)}")
    # Columns, not a dict per bucket: a chart's range is up to MAX_POINTS rows, and building,
    # then JSON-encoding, dicts per row cost several times the query. The SQL is written here,
    # not built by the ORM (which cost more CPU than running it), and the database returns every
    # column ready to send (bucket starts in seconds, infinities and NaN as null), so the
    # columns are the cursor's rows transposed, with no Python work per value.
    q = connection.ops.quote_name
    vendor = connection.vendor
    aggregates = ", ".join(
        f"{finite_sql(vendor, f'AVG({q(m)})')}, {finite_sql(vendor, f'MAX({q(m)})')}"
        for m in metrics
    )
    sql = (
        f"SELECT {bucket_sql(vendor, q('ts'))} * %s, SUM({q('n_samples')}), {aggregates}"
        f" FROM {q(TelemetrySample._meta.db_table)}"
        f" WHERE {q('node_id')} = %s AND {q('ts')} >= %s AND {q('ts')} < %s"
        " GROUP BY 1 ORDER BY 1"
    )
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(sql, [bucket_s, bucket_s, node.pk, adapt(start), adapt(end)])
        rows = cursor.fetchall()
    columns = zip(*rows, strict=True) if rows else [() for _ in range(2 + 2 * len(metrics))]
    t, n, *values = map(list, columns)
    return {
        "node": node.name,
        "start": start.timestamp(),
        "end": end.timestamp(),
        "bucket_s": bucket_s,
        "metrics": metrics,
        "t": t,
        "n": n,
        "avg": dict(zip(metrics, values[0::2], strict=True)),
        "max": dict(zip(metrics, values[1::2], strict=True)),
    }


def _isolated(what: str, node_id: int, step: Callable[[], int]) -> int | None:
    """One node's retention step in its own transaction (None: it failed, and was logged)."""
    try:
        with transaction.atomic():
            return step()
    except Exception:
        log.exception("retention: %s of node %s failed", what, node_id)
        return None


def downsample(now: datetime) -> dict[str, int]:
    """Replace raw samples older than LIVEUPDATE_TELEMETRY_RAW_S by one row per node, epoch and
    LIVEUPDATE_TELEMETRY_BUCKET_S bucket (metric means, the newest sample's tables and CPU),
    node by node, each in a transaction of its own: one node's data failing (logged) never stops
    another's. Returns {"folded": raw rows folded, "failed": nodes that failed}. The downsampled
    row keeps the bucket's lowest seq; the others' seqs are gone, so a node must not resend
    telemetry older than the raw window."""
    width = settings.LIVEUPDATE_TELEMETRY_BUCKET_S
    cutoff_s = (now.timestamp() - settings.LIVEUPDATE_TELEMETRY_RAW_S) // width * width
    cutoff = datetime.fromtimestamp(cutoff_s, tz=UTC)
    old = TelemetrySample.objects.filter(resolution_s=0, ts__lt=cutoff)
    folded = failed = 0
    for node_id in old.values_list("node_id", flat=True).distinct().order_by("node_id"):
        n = _isolated("downsampling", node_id, functools.partial(_downsample_node, node_id, cutoff))
        folded, failed = folded + (n or 0), failed + (n is None)
    return {"folded": folded, "failed": failed}


def _downsample_node(node_id: int, cutoff: datetime) -> int:
    width = settings.LIVEUPDATE_TELEMETRY_BUCKET_S
    raw = TelemetrySample.objects.filter(node_id=node_id, resolution_s=0, ts__lt=cutoff)
    # Rows ingested while this runs (id above the snapshot) wait for the next run.
    last_id = raw.aggregate(m=Max("id"))["m"]
    if last_id is None:
        return 0
    raw = raw.filter(id__lte=last_id)
    # dicts: the metric means' keys come from TelemetrySample.METRICS
    groups: list[Mapping[str, Any]] = list(
        raw.annotate(bucket=EpochBucket("ts", width))
        .values("epoch", "bucket")
        .annotate(
            first_seq=Min("seq"),
            last_seq=Max("seq"),
            n=Sum("n_samples"),
            **{m: Avg(m) for m in TelemetrySample.METRICS},
        )
        .order_by()
    )
    newest = Q()
    for g in groups:
        newest |= Q(epoch=g["epoch"], seq=g["last_seq"])
    detail = {
        (epoch, seq): (throttle, tables, cpu)
        for epoch, seq, throttle, tables, cpu in raw.filter(newest).values_list(
            "epoch", "seq", "throttle", "tables", "cpu_per_core"
        )
    }
    folded = raw.count()
    raw.delete()
    rows = []
    for g in groups:
        throttle, tables, cpu = detail[(g["epoch"], g["last_seq"])]
        rows.append(
            TelemetrySample(
                node_id=node_id,
                epoch=g["epoch"],
                seq=g["first_seq"],
                ts=datetime.fromtimestamp(g["bucket"] * width, tz=UTC),
                throttle=throttle,
                tables=tables,
                cpu_per_core=cpu,
                resolution_s=width,
                n_samples=g["n"],
                **{m: g[m] for m in TelemetrySample.METRICS},
            )
        )
    TelemetrySample.objects.bulk_create(rows, batch_size=500)
    return folded


def expire(now: datetime) -> dict[str, int]:
    """Delete telemetry, events, resolved alerts and finished actions older than
    LIVEUPDATE_TELEMETRY_KEEP_S, node by node in transactions of their own."""
    cutoff = now - timedelta(seconds=settings.LIVEUPDATE_TELEMETRY_KEEP_S)
    counts = {"samples": 0, "events": 0, "alerts": 0, "actions": 0, "failed": 0}
    tables = {
        "samples": TelemetrySample.objects.filter(ts__lt=cutoff),
        "events": NodeEvent.objects.filter(ts__lt=cutoff),
        "alerts": Alert.objects.filter(resolved_at__lt=cutoff),
        "actions": NodeAction.objects.filter(finished_at__lt=cutoff),
    }
    for node_id in Node.objects.order_by("pk").values_list("pk", flat=True):
        for name, rows in tables.items():
            n = _isolated(f"expiry of {name}", node_id, functools.partial(_delete, rows, node_id))
            counts[name] += n or 0
            counts["failed"] += n is None
    return counts


def _delete(rows, node_id: int) -> int:
    return rows.filter(node_id=node_id).delete()[0]


# A stored sample in the websocket's telemetry sample shape ("ts" in Unix seconds).
SAMPLE_PAYLOAD_FIELDS = (
    "seq",
    "ts",
    *TelemetrySample.METRICS,
    "throttle",
    "tables",
    "cpu_per_core",
)


def sample_payload(row: dict) -> dict:
    """A sample's SAMPLE_PAYLOAD_FIELDS (from ``values()``: no model instance to build) in the
    websocket's telemetry sample shape."""
    return {**row, "ts": row["ts"].timestamp()}


def _newest_sample_id() -> Subquery:
    """The id of the node's (OuterRef("pk")) newest sample by receipt, not by the node's clock
    (an index lookup)."""
    return Subquery(
        TelemetrySample.objects.filter(node=OuterRef("pk"), resolution_s=0)
        .order_by("-received_at", "-id")
        .values("pk")[:1]
    )


def with_latest_sample(nodes: QuerySet[Node]) -> QuerySet[Node]:
    """``nodes`` with the SAMPLE_PAYLOAD_FIELDS of each one's newest sample as ``latest_<field>``
    (``latest_pk`` None when it has none), joined in the same query: the node reads need no
    second round trip to the database for them."""
    newest = FilteredRelation("samples", condition=Q(samples__pk=F("newest_sample_id")))
    columns = {
        f"latest_{name}": F(f"latest_row__{name}") for name in ("pk", *SAMPLE_PAYLOAD_FIELDS)
    }
    return nodes.alias(newest_sample_id=_newest_sample_id(), latest_row=newest).annotate(**columns)


def latest_sample_of(node: Node) -> dict | None:
    """The sample_payload of the newest sample with_latest_sample joined to ``node``, or None."""
    row = {name: getattr(node, f"latest_{name}") for name in ("pk", *SAMPLE_PAYLOAD_FIELDS)}
    return None if row.pop("pk") is None else sample_payload(row)


def latest_samples() -> dict[int, TelemetrySample]:
    """node id -> its newest sample by receipt, not by the node's clock (one indexed lookup per
    node)."""
    ids = Node.objects.annotate(latest=_newest_sample_id()).values_list("latest", flat=True)
    samples = TelemetrySample.objects.filter(pk__in=[i for i in ids if i is not None])
    return {s.node_id: s for s in samples}
