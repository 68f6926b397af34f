"""Seed 001, use case 1 ("Orchestrate an existing SageMaker model"): upload the data to
score, run a batch transform with a model that already exists (not managed by this DAG,
never changed by it), and load the predictions into a SQL table (SQLite through an Airflow
connection, where the seed used Redshift). Its settings are in ``existing_model.json``.

- sagemaker mode: ``steps.predict.model_name`` names a model SageMaker has; no model is
  created. A missing model fails the task before any transform job.
- local mode: ``local.models`` registers the model under that name from a ``model.tar.gz``
  and an image; ``dags/train_transform.py`` trains one that fits (see README).

The table's connection (``smtask_results``, conn type ``sqlite``, the database file as its
host) is fixed here, not in the params: whoever triggers a run does not pick where it writes.

    AIRFLOW_CONN_SMTASK_RESULTS='{"conn_type": "sqlite", "host": "/tmp/results.db"}' \\
        smtask run dags/existing_model.py
"""

from __future__ import annotations

import re
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from smtask import pipeline_params, run_params, sm_transform
from smtask.storage import read_text, run_prefix, write_text

CONFIG = Path(__file__).resolve().with_suffix(".json")
RESULTS_CONN_ID = "smtask_results"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def results_table(params: dict) -> str:
    """The table name from ``steps.save_results.table``: it goes into SQL, so only a plain
    identifier passes."""
    table = params["steps"]["save_results"].get("table")
    if not isinstance(table, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", table):
        raise ValueError(f"steps.save_results.table: {table!r} is not a plain SQL table name "
                         "(1-63 of A-Z a-z 0-9 _, not starting with a digit)")
    return table


@dag(dag_id="existing_model", schedule=None, params=pipeline_params(CONFIG),
     tags=["smtask", "example"])
def existing_model():
    @task
    def upload_data() -> str:
        """The rows to score (the seed uploads a local CSV): Iris's features, no header."""
        from sklearn.datasets import load_iris

        context = get_current_context()
        params = run_params(context)
        results_table(params)  # a bad table name fails here, before the transform runs
        frame = load_iris(as_frame=True).data
        folder = run_prefix(context, "upload_data")
        write_text(f"{folder}/batch.csv", frame.to_csv(index=False, header=False), params)
        return folder

    @sm_transform(step="predict")
    def predict(data: str):
        return data  # the model: steps.predict.model_name (an existing model)

    @task
    def save_results(predictions: dict, data: str) -> dict:
        """One row per scored input row: the run, the row's number, its features and the
        prediction. A retry replaces the run's rows instead of adding them again."""
        from airflow.providers.sqlite.hooks.sqlite import SqliteHook

        context = get_current_context()
        params = run_params(context)
        table = results_table(params)
        rows = [line.split(",") for line in read_text(data, params).split()]
        predicted = read_text(predictions["outputs"]["predictions"], params).split()
        if len(predicted) != len(rows):
            raise ValueError(f"{len(predicted)} predictions for {len(rows)} rows")
        run_id = context["run_id"]
        records = [(run_id, number, *map(float, row), int(float(label)), predictions["model_name"])
                   for number, (row, label) in enumerate(zip(rows, predicted, strict=True))]
        hook = SqliteHook(sqlite_conn_id=RESULTS_CONN_ID)
        columns = ["run_id", "row_number", *FEATURES, "predicted_class", "model_name"]
        hook.run(f"CREATE TABLE IF NOT EXISTS {table} (run_id TEXT, row_number INTEGER, "
                 + ", ".join(f"{name} REAL" for name in FEATURES)
                 + ", predicted_class INTEGER, model_name TEXT)")
        hook.run(f"DELETE FROM {table} WHERE run_id = ?", parameters=(run_id,))
        hook.insert_rows(table, records, target_fields=columns)
        print(f"loaded {len(records)} predictions into {table}")
        return {"table": table, "rows": len(records), "model_name": predictions["model_name"]}

    data = upload_data()
    save_results(predict(data), data)


existing_model()
