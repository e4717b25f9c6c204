"""The one settings module. Everything deployment-specific comes from the environment.

Embedded default (nothing set): SQLite in $LIVEUPDATE_DATA_DIR, the in-memory Channels layer and a
Celery broker on the local filesystem, so one command runs the whole appliance with no servers.
Production: DATABASE_URL=postgres://..., REDIS_URL=redis://... (Celery broker and Channels layer).
"""

from datetime import timedelta
from pathlib import Path
from typing import Any

import plotly
import redis.exceptions
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import (
    database_from_url,
    env_bool,
    env_int,
    env_list,
    env_str,
    persistent_secret_key,
    redis_url,
)
from nodeworker.protocol import broker as filesystem_broker
from nodeworker.protocol import telemetry as protocol_telemetry

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("LIVEUPDATE_DATA_DIR") or BASE_DIR / "var").resolve()

# The embedded default (no DATABASE_URL) is a single-user appliance on localhost: DEBUG on.
EMBEDDED = not env_str("DATABASE_URL")
DEBUG = env_bool("DEBUG", EMBEDDED)
SECRET_KEY = env_str("SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off, got an empty value")
    SECRET_KEY = persistent_secret_key(DATA_DIR / "secret_key")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "controlplane",
    "frontend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "controlplane.middleware.ApiJsonErrorsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: answers a locked-out login
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_from_url("DATABASE_URL", DATA_DIR / "liveupdate.sqlite3")}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Under ASGI a persistent connection is not reused across requests, it leaks until
    # CONN_MAX_AGE: a short load test exhausted max_connections. Requests share a pool instead.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"].setdefault(
        "pool", {"min_size": 1, "max_size": env_int("LIVEUPDATE_DB_POOL_SIZE", 8, minimum=1)}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIGRATION_MODULES = {"controlplane": "migrations"}

# Login throttling (django-axes): after LIVEUPDATE_LOGIN_FAILURE_LIMIT failed logins from one
# address, that address may not log in (dashboard or admin) for LIVEUPDATE_LOGIN_COOLOFF_S
# (429). Per address, not per user name: a name anyone can lock would lock its owner out too.
# Behind a reverse proxy every client shares the proxy's address: run it with the real one.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LIVEUPDATE_LOGIN_FAILURE_LIMIT", 10, minimum=1, maximum=1000)
AXES_COOLOFF_TIME = timedelta(
    seconds=env_int("LIVEUPDATE_LOGIN_COOLOFF_S", 900, minimum=1, maximum=30 * 86400)
)
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# Plotly.js is served from the installed plotly package: nothing is fetched from a CDN.
STATICFILES_DIRS = [("plotly", Path(plotly.__file__).resolve().parent / "package_data")]

REDIS_URL = redis_url("REDIS_URL")
CHANNEL_LAYERS: dict[str, dict[str, Any]]

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py's default 5 s read timeout equals channels_redis's 5 s BZPOPMIN: every
            # idle websocket consumer then dies with "Timeout reading"; give reads headroom.
            # retry_on_error: after a Redis restart the pooled connections are dead; one retry
            # reconnects instead of failing the next websocket handshake with a 500.
            # capacity: channels_redis keeps one queue per server process (all its sockets'
            # channels share it) and drops group messages once it holds this many unread; the
            # default 100 was reached within seconds by 50 viewers on one busy process. Drops
            # that still happen are seen by the consumers (gaps in controlplane.status's
            # sequence numbers) and the dashboard reloads.
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 30,
                        "retry_on_error": [redis.exceptions.ConnectionError],
                    }
                ],
                "prefix": env_str("LIVEUPDATE_CHANNEL_PREFIX") or "asgi",
                "capacity": 1000,
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = filesystem_broker.URL
    CELERY_RESULT_BACKEND = filesystem_broker.result_backend(DATA_DIR)
    filesystem_broker.make_folders(DATA_DIR)
CELERY_BROKER_TRANSPORT_OPTIONS = {} if REDIS_URL else filesystem_broker.transport_options(DATA_DIR)
CELERY_TASK_DEFAULT_QUEUE = "controlplane"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A node action requested while the broker restarts is retried for ~15 s, not failed at once.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 10,
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 2.0,
}

# The control plane's shortcuts past framework internals, each named here, run their plain
# framework path instead when listed (comma-separated) in LIVEUPDATE_PLAIN_FRAMEWORK. Only those
# a goal needs are kept, measured one by one by bench/framework_patches.py at the fleet
# benchmark's load (issue 19). Gone, each met the read goal (p99 < 50 ms at 100 reads/s) and the
# fleet's without it: the one-hop ASGI handler (with the rest gone: read p99 27/18/28 ms, 4.6 ms
# of CPU a read against 3.9), the orjson renderer, the cached serializer fields and filter forms,
# the count-free first page (0.1-0.4 ms of CPU a read each).
# - gc_freeze (controlplane.asgi): ~0.1 ms a read, but without it a full collection stops the
#   process for ~60 ms, which lands in the read p99: 44/82/70 ms without it against 24/20/20 ms
#   with it (the final state, 1 worker, three interleaved rounds, load 2-3); 85/54/88 ms at a
#   load of 5-14, with an ingest p99 of 106 ms once.
FRAMEWORK_SHORTCUTS = frozenset({"gc_freeze"})
LIVEUPDATE_PLAIN_FRAMEWORK = frozenset(env_list("LIVEUPDATE_PLAIN_FRAMEWORK", []))
if unknown := LIVEUPDATE_PLAIN_FRAMEWORK - FRAMEWORK_SHORTCUTS:
    raise ImproperlyConfigured(
        f"LIVEUPDATE_PLAIN_FRAMEWORK: {sorted(unknown)} not among {sorted(FRAMEWORK_SHORTCUTS)}"
    )

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an anonymous call gets 401 with "WWW-Authenticate: Token".
        "controlplane.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "controlplane.authentication.NodeTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "controlplane.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "controlplane.pagination.LimitOffsetPagination",
    "PAGE_SIZE": env_int("LIVEUPDATE_API_PAGE_SIZE", 50, minimum=1),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LiveUpdate control plane API",
    "DESCRIPTION": "Nodes, policies, checkpoints, telemetry and experiments of a LiveUpdate fleet.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG and SECURE_SSL_REDIRECT)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SECURE_SSL_REDIRECT else None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# Control plane: SLA watchdog, node liveness, telemetry retention, node actions.
LIVEUPDATE_SLA_INTERVAL_S = env_int("LIVEUPDATE_SLA_INTERVAL_S", 10, minimum=1)
LIVEUPDATE_SLA_INTERVALS = env_int("LIVEUPDATE_SLA_INTERVALS", 3, minimum=1)
LIVEUPDATE_NODE_DOWN_S = env_int("LIVEUPDATE_NODE_DOWN_S", 30, minimum=1)
# The longest an automatic override of a node's policy lasts (controlplane.overrides).
LIVEUPDATE_OVERRIDE_TTL_S = env_int(
    "LIVEUPDATE_OVERRIDE_TTL_S", 3600, minimum=60, maximum=7 * 86400
)
LIVEUPDATE_TELEMETRY_RAW_S = env_int("LIVEUPDATE_TELEMETRY_RAW_S", 86400, minimum=60)
LIVEUPDATE_TELEMETRY_BUCKET_S = env_int("LIVEUPDATE_TELEMETRY_BUCKET_S", 60, minimum=1)
LIVEUPDATE_TELEMETRY_KEEP_S = env_int("LIVEUPDATE_TELEMETRY_KEEP_S", 30 * 86400, minimum=3600)
# How far ahead of this server's clock a sample's time may be (a node's clock skew); a sample
# further ahead is refused (400), older than LIVEUPDATE_TELEMETRY_KEEP_S likewise.
LIVEUPDATE_TELEMETRY_MAX_SKEW_S = env_int(
    "LIVEUPDATE_TELEMETRY_MAX_SKEW_S", 300, minimum=1, maximum=86400
)
# A JSON body of the API (telemetry batches: nodeworker.protocol.telemetry.MAX_BATCH_BYTES).
LIVEUPDATE_API_MAX_BODY_BYTES = env_int(
    "LIVEUPDATE_API_MAX_BODY_BYTES", 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024
)
# Django's own cap on a body it reads whole: above every limit of the API's parsers.
DATA_UPLOAD_MAX_MEMORY_SIZE = (
    max(LIVEUPDATE_API_MAX_BODY_BYTES, protocol_telemetry.MAX_BATCH_BYTES) + 1024
)
# A node whose reported policy version or checkpoint differs from the desired one is sent the
# action again (controlplane.services.desired), at most once per this many seconds per action.
LIVEUPDATE_RECONCILE_RESEND_S = env_int("LIVEUPDATE_RECONCILE_RESEND_S", 60, minimum=1)
LIVEUPDATE_ACTION_TIMEOUT_S = env_int("LIVEUPDATE_ACTION_TIMEOUT_S", 600, minimum=1)
# Seconds a server process trusts a verified API token without looking it up again (the lag of
# a revocation or a role change in the other processes; controlplane.authentication). Off by
# default (issue 19): it saves a small read ~0.55 ms of CPU (3.1 -> 2.6 ms, median of 3 runs of
# bench/framework_patches.py); without it the read p99 at 100 reads/s was 20-24 ms (goal < 50).
LIVEUPDATE_TOKEN_CACHE_S = env_int("LIVEUPDATE_TOKEN_CACHE_S", 0, minimum=0)
# When set, /metrics wants "Authorization: Bearer <token>"; unset, it is open like most exporters.
LIVEUPDATE_METRICS_TOKEN = env_str("LIVEUPDATE_METRICS_TOKEN") or ""
