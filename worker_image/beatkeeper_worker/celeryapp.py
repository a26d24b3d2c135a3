"""The worker's app built from the environment, for Celery's own tools.

celery -A beatkeeper_worker.celeryapp inspect active
celery -A beatkeeper_worker.celeryapp flower
"""

from __future__ import annotations

import os

from beatkeeper_worker.app import create_app
from beatkeeper_worker.settings import WorkerSettings

app = create_app(WorkerSettings.from_env(os.environ))
