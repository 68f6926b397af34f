"""The example pipeline, written with smtask: data source -> split -> train -> batch
transform -> evaluate. Static settings live in ../config.json; a run's conf overrides any key.

    smtask run dags/churn.py                       # local mode, Docker on this machine
    smtask run dags/churn.py -c '{"steps": {"trainer": {"hyperparameters": {"max_depth": 3}}}}'
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from smtask import pipeline_params, run_params, sm_processing, sm_training, sm_transform
from smtask.storage import read_text, run_prefix, write_text

CONFIG = Path(__file__).resolve().parent.parent / "config.json"


@dag(dag_id="churn", schedule=None, params=pipeline_params(CONFIG), tags=["smtask", "example"])
def churn():
    @task(task_id="data-source")
    def data_source() -> str:
        """A real tabular data set (scikit-learn's bundled breast cancer set), as one CSV."""
        from sklearn import datasets

        context = get_current_context()
        params = run_params(context)  # deep-merged with the run's conf, and validated
        cfg = params["steps"]["data-source"]
        bunch = getattr(datasets, f"load_{cfg['dataset']}")(as_frame=True)
        frame = bunch.frame.rename(columns={"target": cfg["label_column"]})
        frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
        folder = run_prefix(context, "data-source")
        write_text(f"{folder}/data.csv", frame.to_csv(index=False), params)
        return folder

    @sm_processing(step="splitor")
    def split(source: str):
        return {"data-source": source}

    @sm_training(step="trainer")
    def train(splits: dict):
        return {"train": splits["outputs"]["train"]}

    @sm_transform(step="transformer")
    def predict(model: dict, splits: dict):
        return splits["outputs"]["batch"]

    @task
    def evaluate(predictions: dict, splits: dict) -> dict:
        """Accuracy of the batch predictions against the held-out labels."""
        import pandas as pd

        params = run_params()
        label = params["steps"]["evaluate"]["label_column"]
        truth = pd.read_csv(io.StringIO(read_text(splits["outputs"]["test"], params)))[label]
        predicted = read_text(predictions["outputs"]["predictions"], params).split()
        if len(predicted) != len(truth):
            raise ValueError(f"{len(predicted)} predictions for {len(truth)} labelled rows")
        accuracy = float((truth.astype(str).to_numpy() == pd.Series(predicted).astype(float)
                          .astype(int).astype(str).to_numpy()).mean())
        result = {"metric": "accuracy", "value": round(accuracy, 4), "rows": len(truth)}
        print(f"METRIC {json.dumps(result)}")
        return result

    splits = split(data_source())
    evaluate(predict(train(splits), splits), splits)


churn()
