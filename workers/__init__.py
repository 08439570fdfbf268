"""The Mycelial daemon: a Celery worker on its own queue that applies configs and runs jobs."""
