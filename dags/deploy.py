"""Train -> evaluate -> register -> deploy if better -> invoke (seed 000's endpoint
deployment): the churn pipeline, whose model is registered in a model package group and
served by a real-time endpoint only when it beats the version the endpoint serves now.

    smtask run dags/deploy.py                 # local mode: the endpoint is a local container
    smtask endpoints invoke churn-endpoint --accept text/csv \
        -d "$(head -3 ~/.smtask/artifacts/churn-deploy/deploy/*/splitor/batch/batch.csv)"

The candidate's metric is compared with the metric recorded for the version the endpoint
serves (``smtask.endpoints.serving_version``): a better model is registered ``Approved`` and
deployed, a worse (or equal) one is registered ``Rejected`` and not deployed. The last task
invokes the endpoint, whichever version it serves, and checks its answer.
"""

from __future__ import annotations

import io
from pathlib import Path

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from smtask import (
    endpoints,
    pipeline_params,
    run_params,
    sm_endpoint,
    sm_processing,
    sm_register,
    sm_training,
    sm_transform,
)
from smtask.storage import read_text, run_prefix, write_text

CONFIG = Path(__file__).with_suffix(".json")


@dag(dag_id="deploy", schedule=None, params=pipeline_params(CONFIG), tags=["smtask", "example"])
def deploy():
    @task(task_id="data-source")
    def data_source() -> str:
        from sklearn import datasets

        context = get_current_context()
        params = run_params(context)
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
        """The candidate's accuracy on the held-out rows."""
        import pandas as pd

        params = run_params()
        label = params["steps"]["evaluate"]["label_column"]
        truth = pd.read_csv(io.StringIO(read_text(splits["outputs"]["test"], params)))[label]
        predicted = pd.Series(read_text(predictions["outputs"]["predictions"], params).split())
        accuracy = float((truth.to_numpy() == predicted.astype(float).astype(int).to_numpy())
                         .mean())
        return {"accuracy": round(accuracy, 4)}

    @sm_register(step="register")
    def register(model: dict, metrics: dict):
        """Approved when better than what the endpoint serves now, else Rejected."""
        params = run_params()
        serving = endpoints.serving_version(params["steps"]["deploy"]["endpoint_name"], params)
        best = (serving or {}).get("metrics", {}).get("accuracy")
        better = best is None or metrics["accuracy"] > best
        print(f"candidate accuracy {metrics['accuracy']}, serving {best}: "
              f"{'deploying it' if better else 'keeping the one serving'}")
        return {"model": model, "metrics": metrics,
                "approval_status": "Approved" if better else "Rejected"}

    @sm_endpoint(step="deploy", task_id="deploy")
    def deploy_if_approved(version: dict):
        if version["approval_status"] != "Approved":
            raise AirflowSkipException(f"version {version['version']} is "
                                       f"{version['approval_status']}: not deployed")
        return version

    @task(task_id="smoke-test", trigger_rule="none_failed")
    def smoke_test(splits: dict) -> dict:
        """Invoke the endpoint (whichever version it serves) with held-out rows."""
        import pandas as pd

        params = run_params()
        rows = params["steps"]["smoke-test"]["rows"]
        batch = read_text(splits["outputs"]["batch"], params).splitlines()[:rows]
        label = params["steps"]["evaluate"]["label_column"]
        truth = pd.read_csv(io.StringIO(read_text(splits["outputs"]["test"], params)))[label]
        answer = endpoints.invoke(params["steps"]["deploy"]["endpoint_name"],
                                  "\n".join(batch) + "\n", "text/csv", "text/csv", params)
        predicted = [int(float(v)) for v in answer.decode().split()]
        if len(predicted) != len(batch) or set(predicted) - {0, 1}:
            raise ValueError(f"the endpoint answered {answer[:200]!r} for {len(batch)} rows")
        accuracy = float((truth.to_numpy()[:len(batch)] == predicted).mean())
        print(f"ENDPOINT {len(predicted)} predictions, accuracy {accuracy:.3f}")
        return {"rows": len(predicted), "accuracy": accuracy}

    splits = split(data_source())
    model = train(splits)
    version = register(model, evaluate(predict(model, splits), splits))
    deploy_if_approved(version) >> smoke_test(splits)


deploy()
