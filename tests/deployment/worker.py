"""The hostname a Celery worker of tests/test_celery.py reports for its task instances
(``[core] hostname_callable``): its own name, as two machines' workers would differ."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("SMTASK_TEST_WORKER") or socket.getfqdn()
