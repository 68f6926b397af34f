"""Cloud mode against a moto server over real HTTP on loopback: the request SageMaker
receives, waiting, failure reasons, retries that never duplicate a job, timeouts that stop
it, kill, CloudWatch logs in the task log, deferrable waiting, and the example DAG."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import DAGS, ROOT, run_dag, run_example, write_config

ACCOUNT, REGION, BUCKET = "123456789012", "us-east-1", "smtask-cloud-tests"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/smtask-test"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/smtask-sklearn:1"
STATUS = {"processing": "processing_job_status", "training": "training_job_status",
          "transform": "transform_job_status"}
JOBS = {"processing": "processing_jobs", "training": "training_jobs", "transform": "transform_jobs"}


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def framework_container_refuses(backend: Any, job: Any) -> str | None:
    """What AWS's scikit-learn or XGBoost serving container says of the transform job's model
    (moto runs no container): a scikit-learn model needs its inference code
    (SAGEMAKER_PROGRAM from the sourcedir.tar.gz of SAGEMAKER_SUBMIT_DIRECTORY), and any
    model naming a program must have it in that tarball."""
    import io
    import tarfile

    model = backend._models.get(job.model_name)
    container = (model.primary_container or {}) if model else {}
    image, env = container.get("Image", ""), container.get("Environment") or {}
    sklearn = "/sagemaker-scikit-learn:" in image
    if not sklearn and "/sagemaker-xgboost:" not in image:
        return None
    program, submit = env.get("SAGEMAKER_PROGRAM"), env.get("SAGEMAKER_SUBMIT_DIRECTORY")
    if not program:
        return ("AlgorithmError: NotImplementedError: Please provide a model_fn implementation. "
                "See documentation for model_fn at https://github.com/aws/sagemaker-python-sdk"
                if sklearn else None)  # XGBoost's image without a program: its algorithm mode
    try:
        bucket, key = (submit or "").removeprefix("s3://").split("/", 1)
        body = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            names = tar.getnames()
    except Exception as exc:  # noqa: BLE001 - the container cannot get the code
        return f"ClientError: cannot download SAGEMAKER_SUBMIT_DIRECTORY {submit}: {exc}"
    if program not in names:
        return f"AlgorithmError: ModuleNotFoundError: No module named {program[:-3]!r} ({names})"
    return None


def lost_answer() -> Exception:
    """What a create that did create raises, so that the caller never hears of it: moto
    answers 503, and botocore retries the create."""
    from moto.core.exceptions import JsonRESTError

    error = JsonRESTError("ServiceUnavailable", "the service is unavailable")
    error.code = 503
    return error


class FakeSageMaker:
    """moto's SageMaker backend (it lives in this process), steered per test: jobs can be
    created in a given state, flip to another later, and every create call is counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from moto.sagemaker.models import SageMakerModelBackend
        from moto.sagemaker.responses import SageMakerResponse

        self.requests: dict[str, list[dict[str, Any]]] = {}  # API action -> request bodies
        for action in ("create_processing_job", "create_training_job", "create_transform_job",
                       "create_model"):
            monkeypatch.setattr(SageMakerResponse, action,
                                self._record(action, getattr(SageMakerResponse, action)))
        self.creates: list[tuple[str, str]] = []
        self.initial: dict[str, tuple[str, str]] = {}  # kind -> (status, failure reason)
        self.after: dict[str, tuple[float, str]] = {}  # kind -> (seconds, status)
        self.on_complete: dict[str, Any] = {}  # kind -> callable(job) when it completes
        self.on_create: dict[str, Any] = {}  # kind -> callable(job) when it is created
        self.lose_answers: dict[str, int] = {}  # kind -> how many creates answer 503 (after creating)
        for kind in STATUS:
            method = f"create_{kind}_job"
            monkeypatch.setattr(SageMakerModelBackend, method,
                                self._wrap(kind, getattr(SageMakerModelBackend, method)))
        monkeypatch.setattr(SageMakerModelBackend, "create_model",
                            self._unique_model(SageMakerModelBackend.create_model))
        # endpoints, which moto creates InService at once and cannot update
        self.endpoint_seconds = 0.3  # how long an endpoint is Creating or Updating
        self.failing_updates: list[str] = []  # the FailureReason of each next update
        self.failing_creates: list[str] = []
        self.endpoint_calls: list[tuple[str, str, str]] = []  # (create|update, name, config)
        monkeypatch.setattr(SageMakerModelBackend, "create_endpoint",
                            self._creating(SageMakerModelBackend.create_endpoint))
        monkeypatch.setattr(SageMakerResponse, "update_endpoint", self._update_endpoint(),
                            raising=False)
        # SageMaker's ClientToken: a create repeated with the same token makes nothing new
        monkeypatch.setattr(SageMakerModelBackend, "create_model_package",
                            self._idempotent(SageMakerModelBackend.create_model_package))
        self.packages_created: list[str] = []
        self.timers: list[threading.Timer] = []  # cancelled when the test ends (close)

    def later(self, seconds: float, action: Any, *args: Any) -> None:
        """Run ``action`` in ``seconds``, unless the test has ended by then."""
        timer = threading.Timer(seconds, action, args)
        self.timers.append(timer)
        timer.start()

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()

    def _record(self, action: str, handler: Any) -> Any:
        def record(response: Any) -> Any:
            self.requests.setdefault(action, []).append(json.loads(response.body))
            return handler(response)

        return record

    def request(self, action: str) -> dict[str, Any]:
        """The one request body SageMaker received for ``action``."""
        (body,) = self.requests[action]
        return body

    @staticmethod
    def backend() -> Any:
        from moto.sagemaker.models import sagemaker_backends

        return sagemaker_backends[ACCOUNT][REGION]

    def job(self, kind: str, name: str) -> Any:
        return getattr(self.backend(), JOBS[kind])[name]

    @staticmethod
    def _unique_model(create: Any) -> Any:
        """moto replaces a model of the same name; SageMaker refuses the create."""
        def create_model(backend: Any, *args: Any, **kwargs: Any) -> Any:
            from moto.sagemaker.exceptions import ValidationError

            name = kwargs.get("model_name") or (args[0] if args else None)
            if name in backend._models:
                raise ValidationError(message="Cannot create already existing model "
                                              f'"{backend._models[name].arn}".')
            return create(backend, *args, **kwargs)

        return create_model

    def _wrap(self, kind: str, create: Any) -> Any:
        def create_job(backend: Any, *args: Any, **kwargs: Any) -> Any:
            from moto.sagemaker.exceptions import ResourceInUseException

            name = kwargs.get(f"{kind}_job_name") or (args[0] if args else None)
            if name in getattr(backend, JOBS[kind]):  # as SageMaker: names are unique
                raise ResourceInUseException(f"{kind} job {name} already exists")
            response = create(backend, *args, **kwargs)
            name = name or next(reversed(getattr(backend, JOBS[kind])))
            self.creates.append((kind, name))
            job = getattr(backend, JOBS[kind])[name]
            planned = self.initial.get(kind, ("Completed", ""))
            # a list plans one state per create call, in order
            status, reason = planned.pop(0) if isinstance(planned, list) else planned
            setattr(job, STATUS[kind], status)
            job.failure_reason = reason or None
            if kind == "transform" and status == "Completed":
                refused = framework_container_refuses(backend, job)
                if refused:  # as AWS's framework container would fail it
                    job.transform_job_status, job.failure_reason = "Failed", refused
                    status = "Failed"
            if kind in self.on_create:
                self.on_create[kind](job)
            if status == "Completed" and kind in self.on_complete:
                self.on_complete[kind](job)
            if kind in self.after:
                delay, later = self.after[kind]
                self.later(delay, self.flip, kind, name, later)
            if self.lose_answers.get(kind, 0) > 0:  # created, but the caller never hears it
                self.lose_answers[kind] -= 1
                raise lost_answer()
            return response

        return create_job

    def _creating(self, create: Any) -> Any:
        def create_endpoint(backend: Any, endpoint_name: str, endpoint_config_name: str,
                            tags: Any) -> Any:
            from moto.sagemaker.exceptions import ValidationError

            if endpoint_name in backend.endpoints:
                raise ValidationError(message="Cannot create already existing endpoint "
                                              f'"{backend.endpoints[endpoint_name].arn}".')
            endpoint = create(backend, endpoint_name, endpoint_config_name, tags)
            endpoint.endpoint_status = "Creating"
            self.endpoint_calls.append(("create", endpoint_name, endpoint_config_name))
            reason = self.failing_creates.pop(0) if self.failing_creates else None

            def settle() -> None:
                endpoint.endpoint_status = "Failed" if reason else "InService"
                endpoint.failure_reason = reason

            self.later(self.endpoint_seconds, settle)
            return endpoint

        return create_endpoint

    def _update_endpoint(self) -> Any:
        fake = self

        def update_endpoint(response: Any) -> Any:
            from moto.sagemaker.exceptions import ValidationError
            from moto.sagemaker.responses import ActionResult

            backend = response.sagemaker_backend
            name, config = (response._get_param("EndpointName"),
                            response._get_param("EndpointConfigName"))
            if name not in backend.endpoints:
                raise ValidationError(message=f"Could not find endpoint \"{name}\".")
            endpoint = backend.endpoints[name]
            if endpoint.endpoint_status != "InService":
                raise ValidationError(message=f"Cannot update in-progress endpoint \"{name}\" "
                                              f"({endpoint.endpoint_status}).")
            variants = backend.describe_endpoint_config(config)["ProductionVariants"]
            endpoint.endpoint_status = "Updating"
            endpoint.pending_deployment_summary = {"EndpointConfigName": config}
            fake.endpoint_calls.append(("update", name, config))
            fake.requests.setdefault("update_endpoint", []).append(json.loads(response.body))
            reason = fake.failing_updates.pop(0) if fake.failing_updates else None

            def settle() -> None:
                if reason is None:  # the new config serves
                    endpoint.endpoint_config_name = config
                    endpoint.production_variants = endpoint._process_production_variants(
                        variants)
                # a failed update: back InService on the old config, with the reason
                endpoint.failure_reason = reason
                endpoint.pending_deployment_summary = None
                endpoint.endpoint_status = "InService"

            fake.later(fake.endpoint_seconds, settle)
            return ActionResult({"EndpointArn": endpoint.arn})

        return update_endpoint

    def _idempotent(self, create: Any) -> Any:
        def create_model_package(backend: Any, *args: Any, **kwargs: Any) -> Any:
            token = kwargs.get("client_token")
            for package in backend.model_packages.values():
                if token and getattr(package, "client_token", None) == token:
                    return package.arn
            arn = create(backend, *args, **kwargs)
            self.packages_created.append(arn)
            return arn

        return create_model_package

    def flip(self, kind: str, name: str, status: str) -> None:
        job = self.job(kind, name)
        setattr(job, STATUS[kind], status)
        if status == "Completed" and kind in self.on_complete:
            self.on_complete[kind](job)


IAM_CALLS: list[str] = []  # IAM and STS requests moto received during a test


@pytest.fixture
def sagemaker(moto_server, monkeypatch, loopback_guard):
    """A reset moto, an Airflow AWS connection naming its endpoint (the only place that
    names it: no AWS_ENDPOINT_URL, so every client must take the connection's settings), a
    bucket. A test fails if smtask made any IAM or STS call."""
    import requests
    from botocore.client import BaseClient

    requests.post(f"{moto_server}/moto-api/reset", timeout=10)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE", raising=False)
    make_api_call = BaseClient._make_api_call

    def spied(self: Any, operation: str, params: Any) -> Any:
        if self.meta.service_model.service_name in ("iam", "sts"):
            IAM_CALLS.append(f"{self.meta.service_model.service_name}:{operation}")
        return make_api_call(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spied)
    IAM_CALLS.clear()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"region_name": REGION, "endpoint_url": moto_server}}),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(client, "endpoint", moto_server)
    client("s3").create_bucket(Bucket=BUCKET)
    fake = FakeSageMaker(monkeypatch)
    yield fake
    fake.close()
    assert IAM_CALLS == [], f"IAM or STS calls: {IAM_CALLS}"


def cloud_config(tmp_path, **steps: Any):
    return write_config(tmp_path, mode="sagemaker", role=ROLE, image=IMAGE,
                        artifacts=f"s3://{BUCKET}/pipelines", steps=steps)


def channel_uris(training_job: dict[str, Any]) -> dict[str, str]:
    """A training job's (described or requested) channels: name -> S3 URI."""
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in training_job["InputDataConfig"]}


def client(service: str = "sagemaker") -> Any:
    """A client of the test's own, straight at moto."""
    return boto3.client(service, region_name=REGION, endpoint_url=client.endpoint)  # type: ignore[attr-defined]


client.endpoint = ""  # type: ignore[attr-defined]


SPLIT = '''
@sm_processing(step="splitor")
def split():
    return {"data-source": "s3://smtask-cloud-tests/data/"}
split()
'''
TRAIN = '''
@sm_training(step="trainer")
def train():
    return {"train": "s3://smtask-cloud-tests/splits/train/"}
train()
'''
TRANSFORM = '''
@sm_transform(step="transformer")
def predict():
    return {"data": "s3://smtask-cloud-tests/splits/batch/",
            "model": {"job_name": "t", "model": "s3://smtask-cloud-tests/m/model.tar.gz",
                      "image": "IMAGE"}}
predict()
'''.replace("IMAGE", IMAGE)


# --- the request SageMaker receives --------------------------------------------------------

def test_processing_job_is_created_from_the_step_settings(tmp_path, sagemaker):
    result = run_dag(SPLIT, config=cloud_config(tmp_path, splitor={
        "instance_type": "ml.c5.xlarge", "instance_count": 2, "max_runtime_seconds": 600,
        "environment": {"LOG_LEVEL": "debug"}, "tags": {"team": "ml"}}))
    assert result.ok, result.states
    out = result.xcom["split"]
    job = sagemaker.request("create_processing_job")
    assert job["ProcessingJobName"] == out["job_name"]
    assert job["AppSpecification"]["ImageUri"] == IMAGE
    assert job["AppSpecification"]["ContainerEntrypoint"] == [
        "python3", "/opt/ml/processing/input/code/preprocess.py"]
    assert job["AppSpecification"]["ContainerArguments"][:2] == ["--label-column", "label"]
    assert job["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.c5.xlarge"
    assert job["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    assert job["RoleArn"] == ROLE
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 600
    assert job["Environment"] == {"LOG_LEVEL": "debug",
                                  "SMTASK_SETTINGS": "/opt/ml/processing/input/config/config.json"}
    inputs = {i["InputName"]: i["S3Input"] for i in job["ProcessingInputs"]}
    assert inputs["data-source"]["S3Uri"] == "s3://smtask-cloud-tests/data/"
    assert inputs["data-source"]["LocalPath"] == "/opt/ml/processing/input/data-source"
    prefix = f"s3://{BUCKET}/pipelines/churn/"
    # code uploaded by content, beside the pipelines' folders; the upload is the file itself
    code = inputs["code"]["S3Uri"].removeprefix(f"s3://{BUCKET}/")
    assert code.startswith("pipelines/_code/") and code.endswith("/preprocess.py")
    assert client("s3").get_object(Bucket=BUCKET, Key=code)["Body"].read() == \
        (ROOT / "code" / "preprocess.py").read_bytes()
    outputs = {o["OutputName"]: o["S3Output"]["S3Uri"]
               for o in job["ProcessingOutputConfig"]["Outputs"]}
    assert outputs == out["outputs"]
    assert all(uri.startswith(prefix) and uri.endswith(f"/splitor/{n}")
               for n, uri in outputs.items())
    assert {"team": "ml", "project": "smtask-example", "smtask:step": "splitor"}.items() <= \
        {t["Key"]: t["Value"] for t in job["Tags"]}.items()


def test_training_job_is_created_from_the_step_settings(tmp_path, sagemaker):
    result = run_dag(TRAIN, config=cloud_config(tmp_path, trainer={
        "instance_type": "ml.m5.2xlarge", "max_runtime_seconds": 1200}),
        conf={"steps": {"trainer": {"hyperparameters": {"max_depth": 2}}}})
    assert result.ok, result.states
    out = result.xcom["train"]
    job = sagemaker.request("create_training_job")
    assert job["TrainingJobName"] == out["job_name"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["ResourceConfig"]["InstanceType"] == "ml.m5.2xlarge"
    assert job["ResourceConfig"]["InstanceCount"] == 1
    assert job["RoleArn"] == ROLE
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 1200
    assert job["HyperParameters"]["max_depth"] == "2"
    assert job["HyperParameters"]["n_estimators"] == "100"
    channels = channel_uris(job)
    assert channels["train"] == "s3://smtask-cloud-tests/splits/train/"
    # the source dir (and ModelTrainer's drivers) uploaded by content
    assert channels["code"].startswith(f"s3://{BUCKET}/pipelines/_code/")
    assert channels["sm_drivers"].startswith(f"s3://{BUCKET}/pipelines/_code/")
    assert job["OutputDataConfig"]["S3OutputPath"].startswith(f"s3://{BUCKET}/pipelines/churn/")
    described = client().describe_training_job(TrainingJobName=out["job_name"])
    assert out["model"] == described["ModelArtifacts"]["S3ModelArtifacts"]
    assert out["model"].startswith(job["OutputDataConfig"]["S3OutputPath"])
    assert out["image"] == IMAGE
    assert {"Key": "smtask:step", "Value": "trainer"} in job["Tags"]


def test_transform_job_and_its_model_come_from_the_training_result(tmp_path, sagemaker):
    result = run_dag(TRANSFORM, config=cloud_config(tmp_path, transformer={
        "instance_type": "ml.c5.large", "instance_count": 2, "max_payload_mb": 10}))
    assert result.ok, result.states
    out = result.xcom["predict"]
    job = sagemaker.request("create_transform_job")
    model = sagemaker.request("create_model")
    assert job["TransformJobName"] == out["job_name"] and job["ModelName"] == model["ModelName"]
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://smtask-cloud-tests/m/model.tar.gz"
    assert model["ExecutionRoleArn"] == ROLE
    assert job["TransformResources"] == {"InstanceType": "ml.c5.large", "InstanceCount": 2}
    assert job["MaxPayloadInMB"] == 10
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == \
        "s3://smtask-cloud-tests/splits/batch/"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformOutput"]["S3OutputPath"] == out["outputs"]["predictions"]
    assert out["outputs"]["predictions"].endswith("/transformer/predictions")


# --- existing models (seed 001 use case 1) and the examples around models ----------------------

EXISTING = '''
@sm_transform(step="transformer")
def predict():
    return {"data": "s3://smtask-cloud-tests/splits/batch/", "model_name": "census-xgb-2021"}
predict()
'''


def existing_model(sagemaker: FakeSageMaker, name: str) -> dict[str, Any]:
    """A model made outside the DAG (not counted among the DAG's requests); its description."""
    client().create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/models/{name}/model.tar.gz"})
    sagemaker.requests.clear()
    return described_model(name)


def described_model(name: str) -> dict[str, Any]:
    description = client().describe_model(ModelName=name)
    description.pop("ResponseMetadata")
    return description


def put_s3(uri: str, body: str) -> None:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    client("s3").put_object(Bucket=bucket, Key=key, Body=body.encode())


def get_s3(uri: str) -> str:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def test_transform_with_an_existing_model_names_it_and_creates_no_model(tmp_path, sagemaker):
    before = existing_model(sagemaker, "census-xgb-2021")
    # an existing model brings its own image and role: the config needs neither
    config = write_config(tmp_path, mode="sagemaker", role=None, image=None,
                          artifacts=f"s3://{BUCKET}/pipelines",
                          steps={"transformer": {"environment": {"LOG_LEVEL": "debug"}}})
    result = run_dag(EXISTING, config=config)
    assert result.ok, result.states
    out = result.xcom["predict"]
    assert out["model_name"] == "census-xgb-2021"  # the result says which model scored
    assert "create_model" not in sagemaker.requests  # no CreateModel
    job = sagemaker.request("create_transform_job")
    assert job["TransformJobName"] == out["job_name"] and job["ModelName"] == "census-xgb-2021"
    assert job["Environment"] == {"LOG_LEVEL": "debug"}
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == \
        "s3://smtask-cloud-tests/splits/batch/"
    assert job["TransformOutput"]["S3OutputPath"] == out["outputs"]["predictions"]
    assert described_model("census-xgb-2021") == before  # never changed


def test_a_step_may_name_its_existing_model(tmp_path, sagemaker):
    existing_model(sagemaker, "census-xgb-2021")
    body = EXISTING.replace(', "model_name": "census-xgb-2021"', "")
    result = run_dag(body, config=cloud_config(tmp_path, transformer={
        "model_name": "census-xgb-2021"}))
    assert result.ok, result.states
    assert sagemaker.request("create_transform_job")["ModelName"] == "census-xgb-2021"
    assert "create_model" not in sagemaker.requests


def test_a_missing_existing_model_fails_naming_the_step_and_model_before_any_job(
        tmp_path, sagemaker, capfd):
    result = run_dag(EXISTING, config=cloud_config(tmp_path))
    assert result.states == {"predict": "failed"}
    assert "ModelNotFound: step 'transformer': model 'census-xgb-2021' cannot be used: " \
        "ValidationException: Could not find model" in capfd.readouterr().out
    assert sagemaker.creates == [] and sagemaker.requests == {}  # no job, no model


def test_existing_model_example_on_sagemaker_loads_the_predictions_into_sqlite(
        tmp_path, sagemaker, monkeypatch):
    import sqlite3

    from conftest import run_example
    from sklearn.datasets import load_iris

    existing_model(sagemaker, "iris-classifier")
    # moto runs no container: answer what a model would, one class per input row
    sagemaker.on_complete["transform"] = lambda job: put_s3(
        job.transform_output["S3OutputPath"] + "/batch.csv.out",
        "\n".join(str(i % 3) for i in range(150)) + "\n")
    database = tmp_path / "results.db"
    monkeypatch.setenv("AIRFLOW_CONN_SMTASK_RESULTS",
                       json.dumps({"conn_type": "sqlite", "host": str(database)}))
    result = run_example("existing_model", artifacts=f"s3://{BUCKET}/pipelines",
                         conf={"mode": "sagemaker"})
    assert result.ok, result.states
    assert "create_model" not in sagemaker.requests
    job = sagemaker.request("create_transform_job")
    assert job["ModelName"] == result.xcom["predict"]["model_name"] == "iris-classifier"
    uploaded = result.xcom["upload_data"]
    assert uploaded.startswith(f"s3://{BUCKET}/pipelines/existing-model/")
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == uploaded
    assert job["TransformInput"]["ContentType"] == "text/csv"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT sepal_length, sepal_width, petal_length, petal_width, "
                          "predicted_class FROM iris_predictions ORDER BY row_number").fetchall()
    features = load_iris().data
    assert len(rows) == 150
    for i, (*values, predicted) in enumerate(rows):
        assert values == pytest.approx(list(features[i])) and predicted == i % 3


def test_train_transform_example_on_sagemaker_transforms_with_the_trained_model(
        tmp_path, sagemaker):
    from conftest import run_example

    def transform_outputs(job: Any) -> None:
        # moto runs no container: "predict" the held-out labels, read beside the batch
        batch = job.transform_input["DataSource"]["S3DataSource"]["S3Uri"]
        labels = get_s3(batch.rsplit("/", 1)[0] + "/labels.csv").split()[1:]
        put_s3(job.transform_output["S3OutputPath"] + "/batch.csv.out", "\n".join(labels))

    sagemaker.on_complete["transform"] = transform_outputs
    result = run_example("train_transform", artifacts=f"s3://{BUCKET}/pipelines", image=IMAGE,
                         role=ROLE, conf={"mode": "sagemaker"})
    assert result.ok, result.states
    assert [kind for kind, _ in sagemaker.creates] == ["training", "transform"]
    prepared, training, transform = (result.xcom[t] for t in ("prepare", "training", "transform"))
    train_job = sagemaker.request("create_training_job")
    assert train_job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert train_job["HyperParameters"]["label_column"] == "species"
    channels = channel_uris(train_job)
    assert channels["train"] == prepared["train"]
    # the transform's model: created from the training result that came through XCom
    model, job = sagemaker.request("create_model"), sagemaker.request("create_transform_job")
    assert model["PrimaryContainer"]["ModelDataUrl"] == training["model"] == client(
        ).describe_training_job(TrainingJobName=training["job_name"])["ModelArtifacts"][
        "S3ModelArtifacts"]
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
    assert job["ModelName"] == model["ModelName"] == transform["model_name"]
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == prepared["batch"]
    assert result.xcom["evaluate"] == {"metric": "accuracy", "value": 1.0, "rows": 45,
                                       "model": transform["model_name"]}


# --- waiting and failure -------------------------------------------------------------------

def test_failed_job_fails_the_task_with_sagemakers_reason(tmp_path, sagemaker, capfd):
    sagemaker.initial["processing"] = ("Failed", "AlgorithmError: no rows with a label")
    result = run_dag(SPLIT, config=cloud_config(tmp_path))
    assert result.states == {"split": "failed"}
    out = capfd.readouterr().out
    assert "JobFailed: processing job churn-splitor-" in out
    assert "failed: AlgorithmError: no rows with a label" in out


def test_job_in_progress_is_waited_for_until_it_completes(tmp_path, sagemaker):
    sagemaker.initial["training"] = ("InProgress", "")
    sagemaker.after["training"] = (1.5, "Completed")
    started = time.monotonic()
    result = run_dag(TRAIN, config=cloud_config(tmp_path))
    assert result.ok, result.states
    assert time.monotonic() - started >= 1.5
    assert len(sagemaker.creates) == 1


def test_wait_timeout_stops_the_job_and_fails_the_task(tmp_path, sagemaker, capfd):
    sagemaker.initial["processing"] = ("InProgress", "")
    result = run_dag(SPLIT, config=cloud_config(tmp_path, splitor={"wait_timeout_seconds": 1}))
    assert result.states == {"split": "failed"}
    name = sagemaker.creates[0][1]
    assert client().describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == \
        "Stopped"
    assert "after the 1 s wait_timeout_seconds; the job was asked to stop" in \
        capfd.readouterr().out


def test_cloudwatch_log_lines_appear_in_the_task_log(tmp_path, sagemaker, capfd):
    logs = client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    logs.create_log_group(logGroupName=group)

    def write_logs(job: Any) -> None:
        stream = f"{job.training_job_name}/algo-1-1700000000"
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
            {"timestamp": int(time.time() * 1000), "message": f"epoch {i}: loss 0.{9 - i}"}
            for i in range(3)])

    sagemaker.initial["training"] = ("InProgress", "")
    sagemaker.after["training"] = (1.0, "Completed")
    sagemaker.on_complete["training"] = write_logs
    result = run_dag(TRAIN, config=cloud_config(tmp_path))
    assert result.ok, result.states
    out = capfd.readouterr().out
    for i in range(3):
        assert f"/algo-1-1700000000] epoch {i}: loss 0.{9 - i}" in out


# --- retries never duplicate a job ---------------------------------------------------------

RETRYING = '''
@sm_training(step="trainer", retries=1, retry_delay=0)
def train():
    return {"train": "s3://smtask-cloud-tests/splits/train/"}
train()
'''


@pytest.fixture
def crash_once(monkeypatch):
    """The first attempt dies at a chosen point (as a worker would), later ones run on."""
    import dataclasses

    from smtask import waiting
    from smtask.decorators import OPERATORS

    def install(where: str, kind: str = "training") -> list[int]:
        """``where``: in the wait ("wait") or once the job is done ("outputs"), of ``kind``;
        returns the calls made of it, one entry each."""
        operator = OPERATORS[kind]
        real = waiting.wait if where == "wait" else operator.job_kind.outputs
        calls: list[int] = []

        def once(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("worker lost its connection (first attempt)")
            return real(*args, **kwargs)

        if where == "wait":
            monkeypatch.setattr(waiting, "wait", once)
        else:
            monkeypatch.setattr(operator, "job_kind",
                                dataclasses.replace(operator.job_kind, outputs=once))
        return calls

    return install


def test_retry_reattaches_to_the_job_still_in_progress(tmp_path, sagemaker, crash_once):
    sagemaker.initial["training"] = ("InProgress", "")
    sagemaker.after["training"] = (1.0, "Completed")
    crash_once("wait")
    result = run_dag(RETRYING, config=cloud_config(tmp_path))
    assert result.ok, result.states
    assert len(sagemaker.creates) == 1  # one job across both attempts
    assert result.xcom["train"]["job_name"] == sagemaker.creates[0][1]


def test_retry_after_a_completed_job_reuses_it(tmp_path, sagemaker, crash_once):
    crash_once("outputs")
    result = run_dag(RETRYING, config=cloud_config(tmp_path))
    assert result.ok, result.states
    assert len(sagemaker.creates) == 1


def test_retry_after_a_failed_job_starts_a_new_one_under_a_new_name(tmp_path, sagemaker):
    sagemaker.initial["training"] = [("Failed", "CapacityError: no ml.m5.large available"),
                                     ("Completed", "")]
    result = run_dag(RETRYING, config=cloud_config(tmp_path))
    assert result.ok, result.states
    (_, first), (_, second) = sagemaker.creates
    assert second != first and second.endswith(f"-r2-{first[-8:]}")
    assert result.xcom["train"]["job_name"] == second


def test_if_job_failed_fail_refuses_to_rerun_a_failed_job(tmp_path, sagemaker):
    sagemaker.initial["training"] = ("Failed", "CapacityError")
    result = run_dag(RETRYING, config=cloud_config(tmp_path, trainer={"if_job_failed": "fail"}))
    assert result.states == {"train": "failed"}
    assert len(sagemaker.creates) == 1


# --- kill, deferrable ------------------------------------------------------------------------

def killed_operator(on_kill: str, states: Any) -> tuple[Any, Any, BaseException | None]:
    """A cloud training task in the middle of its job, killed; Airflow answers ``states``
    (or raises it) when asked for the task's state. Returns the stop call, the question and
    what on_kill raised (Airflow's task runner lets a task go on after its on_kill)."""
    from unittest import mock

    from airflow.sdk import DAG
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from smtask import sm_training

    def train():
        return {}

    with DAG("kill_check", schedule=None) as dag:
        sm_training(step="trainer")(train)()
    operator = dag.tasks[0]
    session = mock.Mock(local_mode=False)
    operator._active, operator._executing = (session, "churn-trainer-20261121-abcdef12"), True
    operator._ti_key, operator._on_kill = ("kill_check", "r1", -1), on_kill
    answer = mock.Mock(side_effect=states) if isinstance(states, Exception) else \
        mock.Mock(return_value=states)
    raised: BaseException | None = None
    with mock.patch.object(RuntimeTaskInstance, "get_task_states", answer):
        try:
            operator.on_kill()
        except BaseException as exc:  # noqa: BLE001 - what the task runner would see
            raised = exc
    return session.sagemaker_client.stop_training_job, answer, raised


@pytest.mark.parametrize("state", ["failed", "restarting", "success"])
def test_a_kill_by_a_users_action_stops_the_job_and_ends_the_task(state):
    from smtask.errors import TaskInterrupted

    stop, _, raised = killed_operator("auto", {"r1": {"train": state}})
    stop.assert_called_once_with(TrainingJobName="churn-trainer-20261121-abcdef12")
    assert isinstance(raised, TaskInterrupted)  # failed, no retry: the user ended it


def test_a_worker_shutdown_leaves_the_job_running_and_ends_the_task_for_its_retry():
    from airflow.sdk.exceptions import AirflowTaskTerminated

    from smtask.errors import TaskShutdown

    stop, asked, raised = killed_operator("auto", {"r1": {"train": "running"}})
    asked.assert_called_once()
    stop.assert_not_called()
    # the task ends now (the shutdown must not wait for the job), as a failure Airflow retries
    assert isinstance(raised, TaskShutdown) and not isinstance(raised, AirflowTaskTerminated)
    assert "churn-trainer-20261121-abcdef12 is left running" in str(raised)


def test_when_airflow_cannot_be_asked_the_job_is_left_running():
    from smtask.errors import TaskShutdown

    stop, _, raised = killed_operator("auto", ConnectionError("supervisor gone"))
    stop.assert_not_called()
    assert isinstance(raised, TaskShutdown)


def test_an_interrupted_smtask_run_always_stops_the_job(monkeypatch):
    from smtask.errors import TaskInterrupted
    from smtask.operator import SageMakerJobOperator

    monkeypatch.setattr(SageMakerJobOperator, "kill_mode", "stop")  # what `smtask run` sets
    stop, asked, raised = killed_operator("leave", {"r1": {"train": "running"}})
    asked.assert_not_called()
    stop.assert_called_once()
    assert isinstance(raised, TaskInterrupted)


def test_a_shutdown_before_the_session_opens_is_retried_in_sagemaker_mode():
    """Killed while still importing the SDK: no job yet, and a shutdown must not cost the
    task its retry."""
    from unittest import mock

    from airflow.sdk import DAG
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from smtask import sm_training
    from smtask.errors import TaskShutdown

    def train():
        return {}

    with DAG("early_kill", schedule=None) as dag:
        sm_training(step="trainer")(train)()
    operator = dag.tasks[0]
    operator._executing, operator._mode = True, "sagemaker"
    operator._ti_key = ("early_kill", "r1", -1)
    with mock.patch.object(RuntimeTaskInstance, "get_task_states",
                           return_value={"r1": {operator.task_id: "running"}}), \
            pytest.raises(TaskShutdown):
        operator.on_kill()


@pytest.mark.parametrize(("on_kill", "stopped"), [("stop", True), ("leave", False)])
def test_the_steps_on_kill_setting_decides_without_asking(on_kill, stopped):
    stop, asked, raised = killed_operator(on_kill, {"r1": {"train": "running"}})
    asked.assert_not_called()
    assert stop.called is stopped
    assert raised is not None


def test_deferrable_wait_runs_in_a_trigger_to_success(tmp_path, sagemaker, capfd):
    sagemaker.initial["training"] = ("InProgress", "")
    sagemaker.after["training"] = (1.0, "Completed")
    result = run_dag(TRAIN, config=cloud_config(tmp_path, trainer={"deferrable": True}))
    assert result.ok, result.states
    assert result.xcom["train"]["model"].endswith("/model.tar.gz")
    captured = capfd.readouterr()
    # the task gave up its slot while the trigger waited, then resumed to collect outputs
    assert "new_state=deferred" in captured.out + captured.err


def test_code_is_uploaded_once_per_content_across_jobs_and_runs(tmp_path, sagemaker, puts):
    config = cloud_config(tmp_path)
    assert run_dag(TRAIN, config=config).ok
    first = [key for key in puts if "/_code/" in key]
    assert first  # the source dir and the SDK's drivers, once
    puts.clear()
    assert run_dag(TRAIN, config=config, conf={"steps": {"trainer": {"hyperparameters": {
        "max_depth": 3}}}}).ok
    assert [key for key in puts if "/_code/" in key] == []  # nothing uploaded again
    code = client("s3").list_objects_v2(Bucket=BUCKET, Prefix="pipelines/_code/")
    assert {o["Key"] for o in code["Contents"]} >= set(first)


def test_the_source_dir_is_uploaded_as_the_sdk_uploads_it_without_secrets_or_bytecode(
        tmp_path, sagemaker, puts):
    """The SDK leaves ``.env``, ``.git``, ``__pycache__``, ... out of a source dir's upload;
    so does smtask (it uploads the code itself, once per content), and out of the code a
    model of the job carries. The SDK's drivers go up without the host's bytecode."""
    import io
    import tarfile

    from sagemaker.core.training.configs import SourceCode

    from smtask.kinds.common import SOURCE_IGNORED

    assert SOURCE_IGNORED == tuple(SourceCode.model_fields["ignore_patterns"].default)
    code = tmp_path / "project" / "src"
    (code / ".git").mkdir(parents=True)
    (code / ".git" / "config").write_text("[remote] url = https://token@example.com\n")
    (code / ".env").write_text("API_KEY=secret\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (code / "lib").mkdir()
    (code / "lib" / ".DS_Store").write_bytes(b"\0")
    (code / "lib" / "helpers.py").write_text("X = 1\n")
    (code / "train.py").write_text("print('training')\n")
    config = write_config(tmp_path, mode="sagemaker", role=ROLE, image=IMAGE,
                          artifacts=f"s3://{BUCKET}/pipelines", code_root=str(code.parent),
                          steps={"trainer": {"source_dir": "src", "entry_script": "train.py"}})
    result = run_dag(TRAIN, config=config)
    assert result.ok, result.states
    job = client().describe_training_job(TrainingJobName=result.xcom["train"]["job_name"])
    channels = channel_uris(job)
    def uploaded_under(uri: str) -> list[str]:
        prefix = uri.removeprefix(f"s3://{BUCKET}/").rstrip("/") + "/"
        return sorted(key.removeprefix(prefix) for key in puts if key.startswith(prefix))

    uploaded = {channel: uploaded_under(channels[channel]) for channel in ("code", "sm_drivers")}
    assert uploaded["code"] == ["lib/helpers.py", "train.py"]
    assert uploaded["sm_drivers"] and not [k for k in uploaded["sm_drivers"] if "pycache" in k]
    model_code = [key for key in puts if key.endswith("/sourcedir.tar.gz")]
    assert len(model_code) == 1
    body = client("s3").get_object(Bucket=BUCKET, Key=model_code[0])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert sorted(tar.getnames()) == ["lib", "lib/helpers.py", "train.py"]


def test_a_failed_upload_of_the_source_dir_fails_the_task_before_any_job(tmp_path, sagemaker,
                                                                         monkeypatch, capfd):
    """The source dir is uploaded beside the SDK building the job, not inside it: its
    upload's own error still fails the task, and no job is created."""
    from smtask.kinds import training

    real = training.upload_once

    def refuse_code(session, path, prefix, *args):
        if prefix.endswith("/_code"):
            if Path(path).is_dir() and (Path(path) / "train.py").is_file():  # the step's own
                raise PermissionError(f"test: no PUT allowed under {prefix}")
        return real(session, path, prefix, *args)

    monkeypatch.setattr(training, "upload_once", refuse_code)
    result = run_dag(TRAIN, config=cloud_config(tmp_path))
    assert result.states["train"] == "failed"
    assert sagemaker.creates == []
    captured = capfd.readouterr()
    assert "test: no PUT allowed under" in captured.out + captured.err


def test_a_deferrable_task_whose_job_already_ended_does_not_defer(tmp_path, sagemaker, capfd):
    result = run_dag(TRAIN, config=cloud_config(tmp_path, trainer={"deferrable": True}))
    assert result.ok, result.states  # moto's jobs are Completed when created
    captured = capfd.readouterr()
    assert "new_state=deferred" not in captured.out + captured.err


# --- the example, unchanged ------------------------------------------------------------------

def run_churn_on_moto(sagemaker: FakeSageMaker, conf: dict[str, Any] | None = None) -> Any:
    """The example DAG, unchanged, in sagemaker mode on moto: (the DAG, its dag run). moto
    runs no containers: when a job completes, write what the real one would have."""
    import runpy

    s3 = client("s3")

    def put(uri: str, body: str) -> None:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode())

    def processing_outputs(job: Any) -> None:
        for output in job.processing_output_config["Outputs"]:
            if output["OutputName"] == "test":
                put(output["S3Output"]["S3Uri"] + "/test.csv", "label,x\n1,0.5\n0,0.1\n1,0.7\n")

    def transform_outputs(job: Any) -> None:
        put(job.transform_output["S3OutputPath"] + "/batch.csv.out", "1\n0\n0\n")

    sagemaker.on_complete.update(processing=processing_outputs, transform=transform_outputs)
    config = json.loads((ROOT / "config.json").read_text())
    assert config["mode"] == "local"  # the example's default; the run's conf switches it
    # dag.test() needs the file in the dags folder: link the example there, unchanged
    link = DAGS / "churn_example.py"
    if not link.exists():
        link.symlink_to(ROOT / "dags" / "churn.py")
    dag = runpy.run_path(str(link))["churn"]()
    s3.create_bucket(Bucket=config["artifacts"].removeprefix("s3://").split("/")[0])
    from smtask.cli import in_process_run

    with in_process_run(link):  # the conf may not pick the artifacts
        return dag, dag.test(run_conf={"mode": "sagemaker", **(conf or {})})


def test_example_dag_runs_unchanged_in_sagemaker_mode(tmp_path, sagemaker, monkeypatch):
    from smtask.cli import xcom_results

    dag, dag_run = run_churn_on_moto(sagemaker)
    results = xcom_results(dag.dag_id, dag_run.run_id)
    assert str(getattr(dag_run.state, "value", dag_run.state)) == "success"
    assert results["evaluate"] == {"metric": "accuracy", "value": 0.6667, "rows": 3}
    assert [kind for kind, _ in sagemaker.creates] == ["processing", "training", "transform"]


def test_role_validation_makes_iam_calls_only_when_asked(tmp_path, sagemaker):
    """The spy that every cloud test ends with sees IAM calls when the SDK makes them."""
    config = cloud_config(tmp_path)
    result = run_dag(TRAIN, config=config, conf={"validate_role": True})
    assert result.states["train"] == "failed"  # moto cannot simulate a principal policy
    assert "iam:SimulatePrincipalPolicy" in IAM_CALLS
    IAM_CALLS.clear()


def test_a_run_conf_cannot_make_the_worker_upload_its_own_files(tmp_path, sagemaker, capfd):
    """The attack from a production deployment: a conf pointing the code at the worker's
    Airflow home and artifacts at a bucket of its choosing. Nothing is uploaded."""
    import os

    from airflow.sdk.exceptions import ParamValidationError

    client("s3").create_bucket(Bucket="attacker")
    secret = tmp_path / "airflow-home"
    secret.mkdir()
    (secret / "airflow.cfg").write_text("fernet_key = secret\n")
    with pytest.raises(ParamValidationError, match="param code_root"):  # refused when triggered
        run_dag(SPLIT, config=cloud_config(tmp_path), conf={"code_root": str(secret)})
    reach = os.path.relpath(secret / "airflow.cfg", ROOT)  # from the code root, with ../
    conf = {"artifacts": "s3://attacker/loot", "role": ROLE + "-admin",
            "steps": {"splitor": {"code_path": reach, "image": "evil:latest"}}}
    result = run_dag(SPLIT, config=cloud_config(tmp_path), conf=conf)
    assert result.states["split"] == "failed"
    out = capfd.readouterr().out
    for refused in ("artifacts: a run's conf may not change it", "role: a run's conf may not",
                    "steps.splitor.image: a run's conf may not",
                    "steps.splitor.code_path: '../", "is outside the code root"):
        assert refused in out
    assert client("s3").list_objects_v2(Bucket="attacker").get("KeyCount") == 0
    assert sagemaker.creates == []


def test_code_outside_the_code_root_is_refused(tmp_path, sagemaker, capfd):
    conf = {"steps": {"splitor": {"code_path": "../../../../etc/passwd"}}}
    result = run_dag(SPLIT, config=cloud_config(tmp_path), conf=conf)
    assert result.states["split"] == "failed"
    assert "steps.splitor.code_path: '../../../../etc/passwd' is outside the code root" in \
        capfd.readouterr().out
    assert sagemaker.creates == []


def test_the_author_may_allow_a_run_to_pick_the_image(tmp_path, sagemaker):
    config = write_config(tmp_path, mode="sagemaker", role=ROLE, image=IMAGE,
                          artifacts=f"s3://{BUCKET}/pipelines", conf_may_override=["steps.*.image"])
    other = IMAGE.replace(":1", ":2")
    result = run_dag(SPLIT, config=config, conf={"steps": {"splitor": {"image": other}}})
    assert result.ok, result.states
    assert sagemaker.request("create_processing_job")["AppSpecification"]["ImageUri"] == other


# --- step settings, framework processing, local paths (issue 8) ----------------------------

@pytest.fixture
def puts(monkeypatch) -> list[str]:
    """The keys of every S3 upload made from this process."""
    from botocore.client import BaseClient

    keys: list[str] = []
    make_api_call = BaseClient._make_api_call

    def spied(self: Any, operation: str, params: Any) -> Any:
        if operation in ("PutObject", "CreateMultipartUpload"):
            keys.append(params["Key"])
        return make_api_call(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spied)
    return keys


def s3_text(uri: str) -> str:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def test_processing_settings_reach_the_job_as_the_config_input(tmp_path, sagemaker, puts):
    settings = {"label_column": "label", "split_strategy": {"by": "timestamp"}}
    config = cloud_config(tmp_path, splitor={"settings": settings})
    assert run_dag(SPLIT, config=config).ok
    job = sagemaker.request("create_processing_job")
    inputs = {i["InputName"]: i["S3Input"] for i in job["ProcessingInputs"]}
    assert inputs["config"]["LocalPath"] == "/opt/ml/processing/input/config"
    assert inputs["config"]["S3Uri"].startswith(f"s3://{BUCKET}/pipelines/_settings/")
    assert job["Environment"]["SMTASK_SETTINGS"] == "/opt/ml/processing/input/config/config.json"
    uploaded = json.loads(s3_text(inputs["config"]["S3Uri"]))
    assert uploaded["pipeline_name"] == "churn" and uploaded["mode"] == "sagemaker"
    assert list(uploaded["steps"]) == ["splitor"]  # not the other steps' settings
    step = uploaded["steps"]["splitor"]
    assert step["label_column"] == "label" and step["split_strategy"] == {"by": "timestamp"}
    assert step["outputs"]["train"] == {"source": "/opt/ml/processing/train"}
    # once per content: a second run with the same settings uploads nothing under _settings
    puts.clear()
    sagemaker.requests.clear()
    assert run_dag(SPLIT, config=config).ok
    assert [key for key in puts if "/_settings/" in key] == []
    # a run's conf changes the settings: a new file
    assert run_dag(SPLIT, config=config, conf={"steps": {"splitor": {"settings": {
        "label_column": "y"}}}}).ok
    last = sagemaker.requests["create_processing_job"][-1]
    uri = {i["InputName"]: i["S3Input"]["S3Uri"] for i in last["ProcessingInputs"]}["config"]
    assert json.loads(s3_text(uri))["steps"]["splitor"]["label_column"] == "y"


def test_training_settings_reach_the_job_as_the_config_channel(tmp_path, sagemaker):
    config = cloud_config(tmp_path, trainer={"settings": {"features": ["a", "b"]}})
    assert run_dag(TRAIN, config=config).ok
    job = sagemaker.request("create_training_job")
    channels = channel_uris(job)
    assert channels["config"].startswith(f"s3://{BUCKET}/pipelines/_settings/")
    assert job["Environment"]["SMTASK_SETTINGS"] == "/opt/ml/input/data/config/config.json"
    uploaded = json.loads(s3_text(channels["config"]))
    assert uploaded["steps"]["trainer"]["features"] == ["a", "b"]
    assert uploaded["steps"]["trainer"]["hyperparameters"]["max_depth"] == 6


def test_a_settings_key_that_shadows_a_step_key_fails_before_any_job(tmp_path, sagemaker, capfd):
    config = cloud_config(tmp_path, splitor={"settings": {"outputs": {}}})
    result = run_dag(SPLIT, config=config)
    assert result.states["split"] == "failed"
    assert "steps.splitor.settings.outputs: collides with the step's own key 'outputs'" in \
        capfd.readouterr().out
    assert sagemaker.creates == []


FRAMEWORK_STEP = {"code_path": None, "source_dir": "tests/scripts/framework",
                  "code": "pkg/job.py", "requirements": "requirements.txt"}


def test_framework_processing_runs_the_sdks_runproc_over_the_packed_source_dir(
        tmp_path, sagemaker, puts):
    import io
    import tarfile

    config = cloud_config(tmp_path, splitor=FRAMEWORK_STEP)
    assert run_dag(SPLIT, config=config).ok
    job = sagemaker.request("create_processing_job")
    assert job["AppSpecification"]["ContainerEntrypoint"] == [
        "/bin/bash", "/opt/ml/processing/input/entrypoint/runproc.sh"]
    inputs = {i["InputName"]: i["S3Input"] for i in job["ProcessingInputs"]}
    assert set(inputs) == {"data-source", "config", "code", "entrypoint"}
    code, entrypoint = inputs["code"]["S3Uri"], inputs["entrypoint"]["S3Uri"]
    assert code.startswith(f"s3://{BUCKET}/pipelines/_code/") and code.endswith("/")
    assert inputs["code"]["LocalPath"] == "/opt/ml/processing/input/code/"
    assert entrypoint == code + "runproc.sh"
    runproc = s3_text(entrypoint)
    assert "tar -xzf sourcedir.tar.gz" in runproc
    assert "install_requirements.py requirements.txt" in runproc
    assert 'python3 pkg/job.py "$@"' in runproc  # the entry script by its path in source_dir
    bucket, key = (code + "sourcedir.tar.gz").removeprefix("s3://").split("/", 1)
    body = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert {"helper.py", "requirements.txt", "pkg/job.py"} <= set(tar.getnames())
    s3_text(code + "install_requirements.py")  # the SDK's installer beside it
    assert any("/_code/" in key for key in puts)
    # once per content: the same code again is not uploaded again
    puts.clear()
    assert run_dag(SPLIT, config=config, conf={"steps": {"splitor": {"arguments": ["-v"]}}}).ok
    assert [key for key in puts if "/_code/" in key] == []
    assert {i["InputName"]: i["S3Input"]["S3Uri"] for i in sagemaker.requests[
        "create_processing_job"][-1]["ProcessingInputs"]}["code"] == code


def test_a_function_returning_an_input_named_config_fails_before_any_job(tmp_path, sagemaker,
                                                                         capfd):
    body = SPLIT.replace('{"data-source"', '{"config": "s3://smtask-cloud-tests/c/", "data-source"')
    result = run_dag(body, config=cloud_config(tmp_path))
    assert result.states["split"] == "failed"
    assert "step 'splitor': input name 'config' is reserved" in capfd.readouterr().out
    assert sagemaker.creates == []


LOCAL_PATHS = '''
@sm_processing(step="splitor")
def split():
    return {"data-source": "DATA", "extra": "file://EXTRA"}

@sm_training(step="trainer")
def train(_):
    return {"train": "DATA"}

@sm_transform(step="transformer")
def predict(_):
    return {"data": "file://EXTRA",
            "model": {"job_name": "t", "model": "s3://smtask-cloud-tests/m/model.tar.gz",
                      "image": "IMAGE"}}

predict(train(split()))
'''


def test_local_paths_are_uploaded_once_per_content(tmp_path, sagemaker, puts):
    data, extra = tmp_path / "data", tmp_path / "extra.csv"
    (data / "part").mkdir(parents=True)
    (data / "part" / "a.csv").write_text("x\n1\n")
    extra.write_text("y\n2\n")
    body = LOCAL_PATHS.replace("DATA", str(data)).replace("EXTRA", str(extra)).replace(
        "IMAGE", IMAGE)
    config = cloud_config(tmp_path)
    result = run_dag(body, config=config)
    assert result.ok, result.states
    processing = sagemaker.request("create_processing_job")
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in processing["ProcessingInputs"]}
    training = sagemaker.request("create_training_job")
    channels = channel_uris(training)
    transform = sagemaker.request("create_transform_job")
    scored = transform["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    prefix = f"s3://{BUCKET}/pipelines/_data/"
    assert inputs["data-source"].startswith(prefix) and inputs["data-source"].endswith("/")
    assert channels["train"] == inputs["data-source"]  # the same content, the same upload
    assert inputs["extra"].startswith(prefix) and inputs["extra"].endswith("/extra.csv")
    assert scored == inputs["extra"]
    assert s3_text(inputs["data-source"] + "part/a.csv") == "x\n1\n"
    assert s3_text(inputs["extra"]) == "y\n2\n"
    assert sorted(k for k in puts if "/_data/" in k and not k.endswith(".complete")) == sorted(
        [inputs["data-source"].removeprefix(f"s3://{BUCKET}/") + "part/a.csv",
         inputs["extra"].removeprefix(f"s3://{BUCKET}/")])
    puts.clear()
    assert run_dag(body, config=config).ok  # a second run: nothing uploaded again
    assert [key for key in puts if "/_data/" in key] == []


def test_a_local_path_that_does_not_exist_fails_before_any_job(tmp_path, sagemaker, capfd):
    body = LOCAL_PATHS.replace("DATA", str(tmp_path / "nowhere")).replace(
        "EXTRA", str(tmp_path / "x")).replace("IMAGE", IMAGE)
    result = run_dag(body, config=cloud_config(tmp_path))
    assert result.states["split"] == "failed"
    assert f"step 'splitor': input 'data-source': no file or folder {tmp_path}/nowhere" in \
        capfd.readouterr().out
    assert sagemaker.creates == []


def test_seed004_example_runs_in_sagemaker_mode(tmp_path, sagemaker, monkeypatch):
    config = json.loads((ROOT / "dags" / "seed004_splitor.json").read_text())
    client("s3").create_bucket(Bucket=config["artifacts"].removeprefix("s3://").split("/")[0])
    result = run_example("seed004_splitor", conf={"mode": "sagemaker"})
    results = result.xcom
    assert result.ok, results
    job = sagemaker.request("create_processing_job")
    assert job["AppSpecification"]["ContainerEntrypoint"] == [
        "python3", "/opt/ml/processing/input/code/preprocessing.py"]
    inputs = {i["InputName"]: i["S3Input"] for i in job["ProcessingInputs"]}
    assert set(inputs) == {"data-source", "config", "code"}
    assert inputs["data-source"]["S3Uri"] == results["data-source"]
    assert inputs["data-source"]["LocalPath"] == "/opt/ml/processing/input/data-source"
    assert inputs["config"]["LocalPath"] == "/opt/ml/processing/input/config"
    seen = json.loads(s3_text(inputs["config"]["S3Uri"]))["steps"]["splitor"]
    assert seen["data_destination"] == inputs["data-source"]["LocalPath"]
    assert seen["split_strategy"]["datasets"]["test"] == {"equal": "2022-07"}
    outputs = {o["OutputName"]: o["S3Output"] for o in job["ProcessingOutputConfig"]["Outputs"]}
    assert {n: o["LocalPath"] for n, o in outputs.items()} == {
        "train": "/opt/ml/processing/train", "test": "/opt/ml/processing/test"}
    assert results["splitor"]["outputs"] == {n: o["S3Uri"] for n, o in outputs.items()}
    bucket, key = (results["data-source"] + "/part-0000.parquet").removeprefix("s3://").split("/", 1)
    body = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body[:4] == b"PAR1"  # the data source wrote parquet to S3


RESUME = r'''
import json, sys, types
from airflow.sdk import DAG
from moto import mock_aws
import boto3
from smtask import pipeline_params, sm_training
from smtask.errors import JobFailed

with DAG("resume", schedule=None, params=pipeline_params(sys.argv[1])) as dag:
    sm_training(step="trainer", task_id="train")(lambda: {})()
operator = dag.tasks[0]
context = {"dag": dag, "dag_run": types.SimpleNamespace(conf={}), "params": dag.params}
job = {"job_name": "resume-trainer-1", "image": "i", "artifacts": "s3://b/pipelines"}
from botocore.client import BaseClient
make_api_call, calls = BaseClient._make_api_call, []

def spied(self, operation, params):  # moto has no StopTrainingJob
    calls.append(operation)
    return {} if operation == "StopTrainingJob" else make_api_call(self, operation, params)

BaseClient._make_api_call = spied
with mock_aws():
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_training_job(
        TrainingJobName=job["job_name"], RoleArn="arn:aws:iam::123456789012:role/r",
        AlgorithmSpecification={"TrainingImage": "i", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://b/o"}, StoppingCondition={"MaxRuntimeInSeconds": 9},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1})
    done = operator.execute_complete(context, {"status": "Completed", "job": job, "description":
        sm.describe_training_job(TrainingJobName=job["job_name"])})
    try:
        operator.execute_complete(context, {"status": "Timeout", "job": job, "reason": "late",
                                            "description": {}})
    except JobFailed as exc:
        failed = str(exc)
print(json.dumps({"model": done["model"], "failed": failed, "calls": calls,
                  "sdk": sorted(m for m in sys.modules if m.split(".")[0] == "sagemaker")}))
'''


def test_a_deferred_task_resumes_without_importing_the_sdk(tmp_path):
    """The resume (``execute_complete``) is a new task process: it describes or stops the job
    with a plain client, and never pays the SDK's import (~2 s), even for a step whose image
    the SDK's tables resolve."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_CONN"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               AIRFLOW_CONN_AWS_DEFAULT=json.dumps({"conn_type": "aws",
                                                    "extra": {"region_name": REGION}}))
    # an image resolved by the SDK's tables: the resume must not resolve it again
    config = cloud_config(tmp_path, trainer={"image": {"framework": "sklearn",
                                                       "version": "1.2-1"}})
    done = subprocess.run([sys.executable, "-c", RESUME, str(config)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == "s3://b/o/resume-trainer-1/output/model.tar.gz"
    assert "late" in result["failed"]
    assert result["calls"][-1] == "StopTrainingJob"  # the Timeout event stopped the job
    assert result["sdk"] == []


# --- the serving contract: a model carries its code (issue 15) -------------------------------------

SKLEARN = {"framework": "sklearn", "version": "1.2-1"}
TRAIN_THEN_TRANSFORM = '''
@sm_training(step="trainer")
def train():
    return {"train": "s3://smtask-cloud-tests/splits/train/"}

@sm_transform(step="transformer")
def predict(model):
    return "s3://smtask-cloud-tests/splits/batch/"

predict(train())
'''


def tarball_names(uri: str) -> list[str]:
    import io
    import tarfile

    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return sorted(tar.getnames())


def test_a_model_of_a_script_carries_its_code_as_the_sdks_model_does(tmp_path, sagemaker, puts):
    config = cloud_config(tmp_path, trainer={"image": SKLEARN},
                          transformer={"environment": {"LOG_LEVEL": "debug"}})
    result = run_dag(TRAIN_THEN_TRANSFORM, config=config)
    assert result.ok, result.states
    env = sagemaker.request("create_model")["PrimaryContainer"]["Environment"]
    code = result.xcom["train"]["code"]
    assert env == {"SAGEMAKER_PROGRAM": "train.py",
                   "SAGEMAKER_SUBMIT_DIRECTORY": code["submit_directory"],
                   "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": REGION,
                   "LOG_LEVEL": "debug"}
    assert code["submit_directory"].startswith(f"s3://{BUCKET}/pipelines/_code/")
    assert code["submit_directory"].endswith("/sourcedir.tar.gz")
    # the source dir itself, its entries at the archive's root, as the SDK packs it
    expected = sorted(p.relative_to(ROOT / "code").as_posix()
                      for p in (ROOT / "code").rglob("*") if "__pycache__" not in p.parts)
    assert tarball_names(code["submit_directory"]) == expected
    model = sagemaker.request("create_model")["PrimaryContainer"]["Image"]
    assert "/sagemaker-scikit-learn:1.2-1" in model  # the training's framework image serves
    # once per content: a second run puts no new tarball
    puts.clear()
    assert run_dag(TRAIN_THEN_TRANSFORM, config=config).ok
    assert not [k for k in puts if k.endswith("sourcedir.tar.gz")]


def test_a_framework_model_without_its_program_fails_its_transform_as_on_aws(
        tmp_path, sagemaker, capfd):
    """moto plays AWS's scikit-learn container: with no model_fn to call, the job fails."""
    image = f"683313688378.dkr.ecr.{REGION}.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
    body = TRANSFORM.replace(IMAGE, image)
    result = run_dag(body, config=cloud_config(tmp_path))
    assert result.states == {"predict": "failed"}
    assert "Please provide a model_fn implementation" in capfd.readouterr().out


def test_a_transform_step_may_serve_with_inference_code_of_its_own(tmp_path, sagemaker):
    config = cloud_config(tmp_path, trainer={"image": SKLEARN}, transformer={
        "source_dir": "tests/scripts/serving/pkl_json", "entry_script": "train.py"})
    result = run_dag(TRAIN_THEN_TRANSFORM, config=config)
    assert result.ok, result.states
    env = sagemaker.request("create_model")["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_PROGRAM"] == "train.py"
    assert env["SAGEMAKER_SUBMIT_DIRECTORY"] != result.xcom["train"]["code"]["submit_directory"]
    assert tarball_names(env["SAGEMAKER_SUBMIT_DIRECTORY"]) == ["train.py"]


def test_a_built_in_algorithms_model_carries_no_code(tmp_path, sagemaker):
    config = cloud_config(tmp_path, trainer={
        "image": {"framework": "knn", "version": "1"}, "source_dir": None, "entry_script": None,
        "hyperparameters": {"k": 3, "feature_dim": 2, "predictor_type": "classifier",
                            "sample_size": 10}})
    result = run_dag(TRAIN_THEN_TRANSFORM, config=config)
    assert result.ok, result.states
    assert "code" not in result.xcom["train"]
    assert sagemaker.request("create_model")["PrimaryContainer"]["Environment"] == {}


def test_a_named_pipe_is_not_uploaded_and_its_read_never_starts(tmp_path):
    """Reading a FIFO blocks until a writer comes: a local path in sagemaker mode holding
    one fails the task before any upload, naming it (found by a hostile trial)."""
    import os
    from types import SimpleNamespace

    from smtask.errors import SmtaskError
    from smtask.kinds.common import upload_once

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.csv").write_text("1\n")
    os.mkfifo(tmp_path / "data" / "feed")
    session = SimpleNamespace(s3_client=None)  # any S3 call would fail: none is made
    with pytest.raises(SmtaskError, match=r"not uploaded: .*feed is not a file"):
        upload_once(session, str(tmp_path / "data"), "s3://bucket/_data")
    with pytest.raises(SmtaskError, match=r"not uploaded: .*feed is not a file"):
        upload_once(session, str(tmp_path / "data" / "feed"), "s3://bucket/_data")
