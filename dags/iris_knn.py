"""Seed 001, use case 2, written with smtask: Iris data prep -> SageMaker's built-in k-NN
algorithm -> batch transform -> a check of the accuracy. Settings live in iris_knn.json
(the seed's training, model and transform configs, without the boilerplate).

    smtask run dags/iris_knn.py                                   # local: the k-NN stand-in
    smtask run dags/iris_knn.py -c '{"mode": "sagemaker"}'        # AWS's k-NN image

The training step names the algorithm, ``{"framework": "knn", "version": "1"}``, and no code;
in local mode the local image stands in for AWS's k-NN (same hyperparameters, input and
output formats; not the same algorithm).
"""

from __future__ import annotations

import json
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from smtask import pipeline_params, run_params, sm_training, sm_transform
from smtask.storage import read_text, run_prefix, write_text

CONFIG = Path(__file__).resolve().parent / "iris_knn.json"


@dag(dag_id="iris_knn", schedule=None, params=pipeline_params(CONFIG), tags=["smtask", "seed-001"])
def iris_knn():
    @task
    def data_prep() -> dict:
        """Iris as the seed prepares it: the label (species as 0, 1, 2) first, no header;
        70% to train on, the rest to score without its label. (The seed downloads the data
        set from UCI; scikit-learn ships the same 150 rows.)"""
        import numpy as np
        from sklearn.datasets import load_iris

        context = get_current_context()
        params = run_params(context)
        cfg = params["steps"]["data_prep"]
        iris = load_iris()
        species = np.array([{0: 2, 1: 1, 2: 0}[t] for t in iris.target])  # setosa 2 ... virginica 0
        rows = np.column_stack([species, iris.data])
        rows = rows[np.random.default_rng(cfg["seed"]).permutation(len(rows))]
        cut = int(len(rows) * (1 - cfg["test_fraction"]))
        train, test = rows[:cut], rows[cut:]

        def csv(table) -> str:
            return "".join(",".join(f"{v:g}" for v in row) + "\n" for row in table)

        folder = run_prefix(context, "data_prep")
        return {
            "train": write_text(f"{folder}/train/train.csv", csv(train), params).rsplit("/", 1)[0],
            "test": write_text(f"{folder}/test/test.csv", csv(test[:, 1:]), params).rsplit("/", 1)[0],
            "labels": write_text(f"{folder}/labels/test.csv", csv(test[:, :1]), params),
        }

    @sm_training(step="train_model")
    def train_model(data: dict):
        return {"train": data["train"]}

    @sm_transform(step="test_model")
    def test_model(model: dict, data: dict):
        return data["test"]

    @task
    def check_accuracy(predictions: dict, data: dict) -> dict:
        """k-NN answers one JSON line per row, ``{"predicted_label": 2.0}``."""
        params = run_params()
        labels = [float(v) for v in read_text(data["labels"], params).split()]
        lines = read_text(predictions["outputs"]["predictions"], params).splitlines()
        predicted = [json.loads(line)["predicted_label"] for line in lines if line.strip()]
        if len(predicted) != len(labels):
            raise ValueError(f"{len(predicted)} predictions for {len(labels)} labelled rows")
        accuracy = sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)
        result = {"metric": "accuracy", "value": round(accuracy, 4), "rows": len(labels)}
        print(f"METRIC {json.dumps(result)}")
        minimum = params["steps"]["check_accuracy"]["minimum"]
        if accuracy < minimum:
            raise ValueError(f"accuracy {accuracy:.3f} is below the minimum {minimum}")
        return result

    data = data_prep()
    check_accuracy(test_model(train_model(data), data), data)


iris_knn()
