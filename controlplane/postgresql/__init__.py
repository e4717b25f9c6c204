"""Django's PostgreSQL backend with a connection pool that checks connections without a query
(settings.DATABASES' ENGINE when DATABASE_URL is PostgreSQL)."""
