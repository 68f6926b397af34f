"""Airflow provider info: registers ``@task.sm_processing`` and friends, one per job kind of
the registry (``smtask.kinds.KINDS``).

Every Airflow process that reads the providers' info imports this module (the API server,
the scheduler, the DAG processor...): it registers the JSON Schema dialect of smtask's params
(:mod:`smtask.schema`), so that a refused conf reads as one line there too. It imports neither
Airflow nor the SDK (Airflow reads it while still configuring itself).
"""

from __future__ import annotations

from smtask import schema  # noqa: F401 - registers the params' dialect with jsonschema


def get_provider_info() -> dict:
    from smtask.kinds import KINDS

    return {
        "package-name": "smtask",
        "name": "smtask",
        "description": "SageMaker jobs as ordinary Airflow tasks.",
        "versions": ["0.1.0"],
        "task-decorators": [
            {"name": kind.decorator, "class-name": f"smtask.decorators.{kind.decorator}"}
            for kind in KINDS
        ],
    }
