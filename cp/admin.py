"""Entry point for Celery's own CLI, for admins: ``celery -A cp.admin inspect active``.

Reads the same ``MYCELIAL_*`` settings as every other process; creating the app opens nothing.
The daemons' own commands (``inspect mycelial_config`` …, workers/admin_commands.py) are
registered here too, so that Celery's CLI knows their names; only daemons answer them.
"""

from __future__ import annotations

from cp.celery_app import make_celery
from cp.settings import get_settings
from workers.admin_commands import register_admin_commands

register_admin_commands()
app = make_celery(get_settings())
