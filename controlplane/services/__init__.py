"""Control-plane logic as plain functions: views, admin, Celery tasks and commands call these."""
