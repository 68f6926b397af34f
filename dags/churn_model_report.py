"""Scheduled on a new model: each successful run of the churn example's trainer is an event
of the Asset ``<artifacts>/churn/churn/trainer/model`` (smtask declares each step's outputs
as Assets),
whose extra says where that run's model is. This DAG runs on it and reports the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import dag, get_current_context, task

from smtask import output_asset

CONFIG = Path(__file__).resolve().parent.parent / "config.json"  # the churn DAG's
MODEL = output_asset(CONFIG, "churn", "trainer")  # as dags/churn.py's train task declares it


@dag(dag_id="churn_model_report", schedule=[MODEL], tags=["smtask", "example"])
def churn_model_report():
    @task
    def report() -> list[dict[str, Any]]:
        """The new models: each event's URI, run and job (smtask's asset event extra)."""
        events = get_current_context()["triggering_asset_events"][MODEL]
        models = [{key: event.extra.get(key) for key in ("uri", "mode", "run_id", "job_name")}
                  for event in events]
        for model in models:
            print(f"new churn model {model['uri']} from run {model['run_id']}")
        return models

    report()


churn_model_report()
