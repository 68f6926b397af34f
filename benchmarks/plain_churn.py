"""Baseline for the parse benchmark: the example's shape written the way users write it
today (seed 004): plain @task bodies that build the SageMaker SDK jobs themselves. Only
parsed, never run; the bodies are elided because parsing never executes them."""

from __future__ import annotations

import json
from pathlib import Path

from airflow.sdk import dag, task

CONFIG = json.loads((Path(__file__).resolve().parent.parent / "config.json").read_text())


@dag(dag_id="churn_plain", schedule=None, params=CONFIG)
def churn_plain():
    @task(task_id="data-source")
    def data_source(**context) -> str:
        return "file:///data"

    @task
    def split(source: str, **context) -> dict:
        from sagemaker.core.processing import ScriptProcessor  # noqa: F401
        return {"outputs": {}}

    @task
    def train(splits: dict, **context) -> dict:
        from sagemaker.train.model_trainer import ModelTrainer  # noqa: F401
        return {}

    @task
    def predict(model: dict, splits: dict, **context) -> dict:
        from sagemaker.core.transformer import Transformer  # noqa: F401
        return {}

    @task
    def evaluate(predictions: dict, splits: dict) -> dict:
        return {}

    splits = split(data_source())
    evaluate(predict(train(splits), splits), splits)


churn_plain()
