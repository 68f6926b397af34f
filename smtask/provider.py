"""Airflow provider info: registers ``@task.sm_processing`` and friends."""

from __future__ import annotations


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
