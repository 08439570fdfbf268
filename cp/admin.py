"""Entry point for Celery's own CLI, for admins: ``celery -A cp.admin inspect active``.

Reads the same ``MYCELIAL_*`` settings as every other process; creating the app opens nothing.
"""

from __future__ import annotations

from cp.celery_app import make_celery
from cp.settings import get_settings

app = make_celery(get_settings())
