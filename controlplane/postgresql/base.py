"""Django's PostgreSQL backend, its connection pool checking the connection it hands out with
check_pooled_connection instead of an empty query on every checkout.

Django 5.2 passes ``check=`` to the pool itself (the empty query when CONN_HEALTH_CHECKS, else
none) and a ``check`` in OPTIONS["pool"] is a TypeError (Django ticket #37075, fixed in a later
release): this wrapper builds the pool as Django 5.2 does, with this check.
"""

import select

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base
from psycopg import Connection
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool


def check_pooled_connection(conn: Connection) -> None:
    """Raise if ``conn`` is broken, without a round trip to the server when it is not.

    Django's CONN_HEALTH_CHECKS sends an empty query on every checkout: one more round trip a
    request, two wake-ups (the server's process and this one), several ms of a read's wall time
    on a loaded machine. A pooled connection sits idle in autocommit, so the server has nothing
    to say on it: when it closes it (a restart, pg_terminate_backend, a crash) the socket turns
    readable (its FATAL message, then EOF). Only then, or when the connection is not idle, the
    empty query decides; it raises on a dead connection and the pool opens a new one.
    """
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0) or conn.info.transaction_status != TransactionStatus.IDLE:
        ConnectionPool.check_connection(conn)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == base.NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's: it sets autocommit later on
            pool = ConnectionPool(
                kwargs=connect_kwargs,
                open=False,
                configure=self._configure_connection,
                check=check_pooled_connection,
                **({} if pool_options is True else pool_options),
            )
            # the first of concurrent threads to set it wins (the pool is not opened yet)
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]
