"""Airflow provider info: registers ``@task.sm_processing`` and friends.

Every Airflow process that reads the providers' info imports this module (the API server,
the scheduler, the DAG processor...): it registers the JSON Schema dialect of smtask's params
(:mod:`smtask.schema`), so that a refused conf reads as one line there too.
"""

from __future__ import annotations

from smtask import schema  # noqa: F401 - registers the params' dialect with jsonschema


def get_provider_info() -> dict:
    return {
        "package-name": "smtask",
        "name": "smtask",
        "description": "SageMaker jobs as ordinary Airflow tasks.",
        "versions": ["0.1.0"],
        "task-decorators": [
            {"name": f"sm_{kind}", "class-name": f"smtask.decorators.sm_{kind}"}
            for kind in ("processing", "training", "tuning", "transform")
        ],
    }
