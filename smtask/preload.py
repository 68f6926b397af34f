"""A long-lived worker imports smtask and the SageMaker SDK once, before it forks its tasks.

Every Airflow task process is forked from its worker. Without this, each one imports the
SDK modules its job uses when it executes (about 2.3 s, and a second of CPU, per task; the
Amazon provider's module costs a tenth of that), and a worker running many short tasks
spends its cores on imports. Airflow's Celery provider preloads its own expensive modules
the same way (``on_celery_import_modules``).

Under the CeleryExecutor, name this module's configuration in ``airflow.cfg``::

    [celery]
    celery_config_options = smtask.preload.CELERY_CONFIG

It is the provider's default configuration itself, and the worker's main process calls
:func:`preload` once at start (Celery's ``worker_init``), before it forks its pool. The
scheduler and the API server read the same option and import nothing more: the signal is
only sent in a worker. :func:`preload` can be called from any other long-lived parent too.
"""

from __future__ import annotations

import gc
import importlib
import logging
import pkgutil
import time
from typing import Any

from smtask.sdk import JOB_IMPORTS

log = logging.getLogger(__name__)

LAZY = JOB_IMPORTS  # the modules smtask imports only when a job runs (see smtask.sdk)


def smtask_modules() -> list[str]:
    """Every module of the smtask package, by name."""
    import smtask

    return sorted(info.name for info in pkgutil.walk_packages(smtask.__path__, "smtask."))


def preload() -> int:
    """Import every smtask module and every module smtask imports when a job runs; returns
    how many modules were imported. A module that fails to import is said in one line and
    skipped: the worker still starts (its other DAGs' tasks run), and an smtask task meets the
    same error, in its own log, when it runs."""
    import sys

    start, before = time.perf_counter(), len(sys.modules)
    try:
        names = [*LAZY, *smtask_modules()]
    except Exception as exc:  # noqa: BLE001 - walking smtask imports its packages
        log.warning("smtask: could not list smtask's modules: %r", exc)
        names = list(LAZY)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a preload never stops a worker
            log.warning("smtask: could not preload %s: %r", name, exc)
    try:  # botocore's models of the services the jobs call, read once (smtask.clients)
        from smtask.clients import read_service_data

        read_service_data()
    except Exception as exc:  # noqa: BLE001 - a preload never stops a worker
        log.warning("smtask: could not read botocore's service data: %r", exc)
    count = len(sys.modules) - before
    log.info("smtask: preloaded %d modules in %.1f s for the tasks this worker forks",
             count, time.perf_counter() - start)
    return count


def _on_worker_init(**_: Any) -> None:
    """Celery's worker_init, in a worker's main process before it forks its pool. As the
    Celery provider does for its own preload, what was imported is frozen out of the garbage
    collector's way, so forked tasks keep sharing its pages (the provider unfreezes the heap
    when the worker is ready)."""
    preload()
    gc.freeze()


def _celery_config() -> dict[str, Any]:
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
    from celery.signals import worker_init

    worker_init.connect(_on_worker_init, weak=False)
    # the provider's own object: with Airflow's multi-team executors, a team's Celery app
    # applies celery_config_options over its team's config unless they are this very object
    return DEFAULT_CELERY_CONFIG


def __getattr__(name: str) -> Any:  # PEP 562: Celery and Airflow are read only when asked
    if name == "CELERY_CONFIG":
        config = globals()["CELERY_CONFIG"] = _celery_config()
        return config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
