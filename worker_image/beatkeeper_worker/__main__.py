"""`python -m beatkeeper_worker [celery worker options]`: the image's entrypoint."""

from beatkeeper_worker.main import main

raise SystemExit(main())
