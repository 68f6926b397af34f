"""Cloud mode against the Amazon provider's operators, in one run against one moto server:

- SageMaker API calls per job (counted where moto receives them, by job or model name);
- time from the task's start to the job's create call arriving.

smtask's three tasks and the provider's SageMakerProcessingOperator, SageMakerTrainingOperator
and SageMakerTransformOperator (raw request dicts, defaults otherwise) run in the same DAG,
under ``dag.test()``, after a warm-up task has imported both libraries (in a real worker each
task is a new process and pays its imports: about 2-3 s for the SageMaker SDK's modules).
moto completes every job at once, so the counts are a floor for both.
Usage: .venv/bin/python benchmarks/bench_cloud.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(tempfile.mkdtemp(prefix="smtask-bench-cloud-"))
REGION, BUCKET = "us-east-1", "smtask-bench"
ROLE = "arn:aws:iam::123456789012:role/bench"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bench:1"

DAG_FILE = '''
from airflow.sdk import dag, task
from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerProcessingOperator, SageMakerTrainingOperator, SageMakerTransformOperator)
from smtask import pipeline_params, sm_processing, sm_training, sm_transform

S3 = "s3://BUCKET"
ROLE, IMAGE = "ROLE_", "IMAGE_"

@dag(dag_id="bench_cloud", schedule=None, params=pipeline_params("CONFIG"))
def bench_cloud():
    @sm_processing(step="splitor")
    def split():
        return {"data-source": S3 + "/data/"}

    @sm_training(step="trainer")
    def train():
        return {"train": S3 + "/splits/train/"}

    @sm_transform(step="transformer")
    def predict():
        return {"data": S3 + "/splits/batch/",
                "model": {"job_name": "m", "model": S3 + "/m/model.tar.gz", "image": IMAGE}}

    @task
    def warm_up():
        """Pays the in-process start-up and both libraries' imports before any timed task."""
        import sagemaker.core.processing, sagemaker.core.transformer  # noqa: F401
        import sagemaker.train.model_trainer  # noqa: F401
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook  # noqa: F401

    first = warm_up()
    first >> [split(), train(), predict()]
    limits = {"MaxRuntimeInSeconds": 900}
    first >> SageMakerProcessingOperator(task_id="provider_processing", config={
        "ProcessingJobName": "provider-processing", "RoleArn": ROLE, "StoppingCondition": limits,
        "AppSpecification": {"ImageUri": IMAGE, "ContainerEntrypoint": ["python3",
                             "/opt/ml/processing/input/code/preprocess.py"]},
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1,
                                "InstanceType": "ml.m5.large", "VolumeSizeInGB": 30}},
        "ProcessingInputs": [
            {"InputName": "data-source", "S3Input": {"S3Uri": S3 + "/data/",
             "LocalPath": "/opt/ml/processing/input/data-source", "S3DataType": "S3Prefix",
             "S3InputMode": "File"}},
            {"InputName": "code", "S3Input": {"S3Uri": S3 + "/code/preprocess.py",
             "LocalPath": "/opt/ml/processing/input/code", "S3DataType": "S3Prefix",
             "S3InputMode": "File"}}],
        "ProcessingOutputConfig": {"Outputs": [
            {"OutputName": n, "S3Output": {"S3Uri": S3 + "/p/" + n,
             "LocalPath": "/opt/ml/processing/" + n, "S3UploadMode": "EndOfJob"}}
            for n in ("train", "test", "batch")]}})
    first >> SageMakerTrainingOperator(task_id="provider_training", config={
        "TrainingJobName": "provider-training", "RoleArn": ROLE, "StoppingCondition": limits,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        "HyperParameters": {"n_estimators": "100", "max_depth": "6"},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": S3 + "/splits/train/"}}}],
        "OutputDataConfig": {"S3OutputPath": S3 + "/t/"},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                           "VolumeSizeInGB": 30}})
    first >> SageMakerTransformOperator(task_id="provider_transform", config={
        "Model": {"ModelName": "provider-model", "ExecutionRoleArn": ROLE,
                  "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": S3 + "/m/model.tar.gz"}},
        "Transform": {"TransformJobName": "provider-transform", "ModelName": "provider-model",
                      "TransformInput": {"DataSource": {"S3DataSource": {
                          "S3DataType": "S3Prefix", "S3Uri": S3 + "/splits/batch/"}},
                          "ContentType": "text/csv", "SplitType": "Line"},
                      "TransformOutput": {"S3OutputPath": S3 + "/x/"},
                      "TransformResources": {"InstanceCount": 1,
                                             "InstanceType": "ml.m5.large"}}})

the_dag = bench_cloud()
'''


def main() -> None:
    os.environ.update({
        "AIRFLOW_HOME": str(HOME / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(HOME / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "SMTASK_HOME": str(HOME / "smtask"),
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"})
    (HOME / "dags").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   capture_output=True)

    import boto3
    from moto.core.responses import BaseResponse
    from moto.server import ThreadedMotoServer

    calls: list[tuple[float, str, str, str]] = []  # (time, service, action, job or model)
    real_call_action = BaseResponse.call_action

    def counted(response: BaseResponse) -> object:
        body = json.loads(response.body) if response.body and response.body[:1] in (b"{", "{") \
            else {}
        name = next((str(v) for k, v in body.items()
                     if k.endswith(("JobName", "ModelName")) and isinstance(v, str)), "")
        calls.append((time.time(), response.service_name or "", response._get_action(), name))
        return real_call_action(response)

    BaseResponse.call_action = counted  # type: ignore[method-assign]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
        "conn_type": "aws", "login": "bench", "password": "bench",
        "extra": {"region_name": REGION, "endpoint_url": endpoint}})
    try:
        # only the Airflow connection names moto: every client must take it from there
        s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
        s3.create_bucket(Bucket=BUCKET)
        for key in ("data/data.csv", "splits/train/train.csv", "splits/batch/batch.csv",
                    "code/preprocess.py", "m/model.tar.gz"):  # the provider checks inputs exist
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        config = json.loads((ROOT / "config.json").read_text())
        config.update(mode="sagemaker", role=ROLE, image=IMAGE, code_root=str(ROOT),
                      artifacts=f"s3://{BUCKET}/pipelines")
        (HOME / "config.json").write_text(json.dumps(config))
        source = (DAG_FILE.replace("BUCKET", BUCKET).replace("ROLE_", ROLE)
                  .replace("IMAGE_", IMAGE).replace("CONFIG", str(HOME / "config.json")))
        (HOME / "dags" / "bench_cloud.py").write_text(source)
        import runpy

        dag = runpy.run_path(str(HOME / "dags" / "bench_cloud.py"))["the_dag"]
        dag_run = dag.test()
        starts = {ti.task_id: ti.start_date.timestamp() for ti in dag_run.get_task_instances()}
        durations = {ti.task_id: ti.duration for ti in dag_run.get_task_instances()}
        states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    finally:
        server.stop()
    if any("success" not in s for s in states.values()):
        sys.exit(f"not every task succeeded: {states}")

    rows = [("processing", "split", "churn-splitor-", "provider_processing",
             ("provider-processing",)),
            ("training", "train", "churn-trainer-", "provider_training", ("provider-training",)),
            ("transform", "predict", "churn-transformer-", "provider_transform",
             ("provider-transform", "provider-model"))]
    print(f"{'job':<11} {'smtask calls':>12} {'provider calls':>15} {'ratio':>6}   "
          f"{'smtask to create':>16} {'provider to create':>18} {'ratio':>6}   "
          f"{'task time: smtask':>17} {'provider':>9}")
    for kind, ours, our_prefix, theirs, their_names in rows:
        mine = [c for c in calls if c[1] == "sagemaker" and c[3].startswith(our_prefix)]
        other = [c for c in calls if c[1] == "sagemaker" and c[3] in their_names]
        create = f"Create{kind.capitalize()}Job"
        t_mine = next(c[0] for c in mine if c[2] == create) - starts[ours]
        t_other = next(c[0] for c in other if c[2] == create) - starts[theirs]
        print(f"{kind:<11} {len(mine):>12} {len(other):>15} {len(mine) / len(other):>6.2f}   "
              f"{t_mine * 1000:>13.0f} ms {t_other * 1000:>15.0f} ms {t_mine / t_other:>6.2f}   "
              f"{durations[ours]:>15.1f} s {durations[theirs]:>7.1f} s")
        print(f"{'':<11} smtask: {', '.join(c[2] for c in mine)}")
        print(f"{'':<11} provider: {', '.join(c[2] for c in other)}")
    iam = [f"{c[1]}:{c[2]}" for c in calls if c[1] in ("iam", "sts")]
    print(f"IAM and STS calls in the whole run (3 smtask jobs, 3 provider jobs): {len(iam)} "
          f"{iam or ''}")


if __name__ == "__main__":
    main()
