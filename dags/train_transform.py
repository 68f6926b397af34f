"""Seed 000's workflow ("SageMaker Workflow in Apache Airflow"): a training job, then a batch
transform with the model of that training job, which the transform task takes through XCom
(the SDK docs' ``transform_config_from_estimator(task_id="training")`` and
``xcom_pull(task_ids="training")``). Its settings are in ``train_transform.json`` beside it.

    smtask run dags/train_transform.py                     # local mode, Docker
    smtask run dags/train_transform.py -c '{"steps": {"training": {"hyperparameters": {"seed": 3}}}}'

The model it trains is the one ``dags/existing_model.py`` scores with as an existing model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from smtask import pipeline_params, run_params, sm_training, sm_transform
from smtask.storage import read_text, run_prefix, write_text

CONFIG = Path(__file__).resolve().with_suffix(".json")
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dag(dag_id="train_transform", schedule=None, params=pipeline_params(CONFIG),
     tags=["smtask", "example"])
def train_transform():
    @task
    def prepare() -> dict:
        """Iris (scikit-learn's bundled copy), split: train.csv (header, label column
        ``species``) for training, batch.csv (features only) to score, labels.csv to check."""
        import numpy as np
        from sklearn.datasets import load_iris

        context = get_current_context()
        params = run_params(context)
        cfg = params["steps"]["prepare"]
        iris = load_iris(as_frame=True)
        frame = iris.data.set_axis(FEATURES, axis=1).assign(species=iris.target)
        order = np.random.default_rng(cfg["seed"]).permutation(len(frame))
        cut = len(frame) - int(len(frame) * cfg["test_fraction"])
        train, test = frame.iloc[order[:cut]], frame.iloc[order[cut:]]
        folder = run_prefix(context, "prepare")
        write_text(f"{folder}/train/train.csv", train.to_csv(index=False), params)
        write_text(f"{folder}/batch/batch.csv",
                   test[FEATURES].to_csv(index=False, header=False), params)
        write_text(f"{folder}/labels.csv", test[["species"]].to_csv(index=False), params)
        return {"train": f"{folder}/train", "batch": f"{folder}/batch",
                "labels": f"{folder}/labels.csv"}

    @sm_training(step="training")
    def training(data: dict):
        return {"train": data["train"]}

    @sm_transform(step="transform")
    def transform(model: dict, data: dict):
        return data["batch"]  # the model is the training result passed in

    @task
    def evaluate(predictions: dict, data: dict) -> dict:
        """Accuracy of the batch predictions against the held-out labels."""
        import pandas as pd

        params = run_params()
        truth = pd.read_csv(io.StringIO(read_text(data["labels"], params)))["species"]
        predicted = read_text(predictions["outputs"]["predictions"], params).split()
        if len(predicted) != len(truth):
            raise ValueError(f"{len(predicted)} predictions for {len(truth)} labelled rows")
        hits = sum(int(float(p)) == t for p, t in zip(predicted, truth, strict=True))
        result = {"metric": "accuracy", "value": round(hits / len(truth), 4), "rows": len(truth),
                  "model": predictions["model_name"]}
        print(f"METRIC {json.dumps(result)}")
        return result

    data = prepare()
    evaluate(transform(training(data), data), data)


train_transform()
