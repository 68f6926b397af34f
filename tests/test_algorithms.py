"""Built-in algorithms: images given as {"framework", "version"}, training without source code,
per-channel settings; on moto the job SageMaker receives; in Docker the local stand-ins
(k-NN, XGBoost, linear-learner, factorization machines) trained and scored for real."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import ROOT, kinds_of, local_state, run_dag, run_example, write_config
from test_cloud import BUCKET, client, cloud_config, moto_server, sagemaker  # noqa: F401

from smtask import params
from smtask.errors import ParamsError
from smtask.kinds import training

KNN_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/knn:1"
KNN = {"image": {"framework": "knn", "version": "1"},
       "hyperparameters": {"k": 3, "feature_dim": 4, "predictor_type": "classifier",
                           "sample_size": 150}}


def problems(steps: dict[str, Any], kinds: dict[str, str], **top: Any) -> str:
    config = json.loads((ROOT / "config.json").read_text())
    config.update(code_root=str(ROOT), **top)
    config = {key: value for key, value in config.items() if value is not None}
    config["steps"].update(steps)
    with pytest.raises(ParamsError) as caught:
        params.resolve(config, {}, kinds_of(kinds))
    return str(caught.value)


# --- images as {"framework", "version"} -----------------------------------------------------

def test_an_image_given_by_framework_resolves_with_the_sdks_tables_and_no_network(loopback_guard):
    from smtask.images import resolve_image

    given = {"framework": "knn", "version": "1"}
    resolved = resolve_image("image", given, scope="training",
                             params={"mode": "sagemaker", "region_name": "us-east-1"})
    assert resolved == KNN_IMAGE
    # the image's own region wins; seed 004's spec, in a China region
    assert resolve_image("image", {"framework": "xgboost", "version": "1.5-1",
                                   "region": "cn-north-1"}, scope="inference", params={}) == \
        "450853457545.dkr.ecr.cn-north-1.amazonaws.com.cn/sagemaker-xgboost:1.5-1"
    # processing: the SDK has no processing scope for sklearn; its training image serves
    assert "sagemaker-scikit-learn:1.2-1" in resolve_image(
        "image", {"framework": "sklearn", "version": "1.2-1"}, scope="processing",
        params={"region_name": "us-east-1"})


@pytest.mark.parametrize(("image", "message"), [
    ({"framework": "knnn", "version": "1"}, "steps.knn.image: unknown framework 'knnn'"),
    ({"framework": "xgboost", "version": "0.1"}, "steps.knn.image: Unsupported xgboost version: 0.1"),
    ({"framework": "knn", "flavour": "1"}, "steps.knn.image.flavour: unknown key"),
    ({"version": "1"}, "steps.knn.image.framework: required key is missing"),
])
def test_a_bad_image_spec_fails_before_any_job_naming_the_key(image, message):
    assert message in problems({"knn": {**KNN, "image": image}}, {"knn": "training"})


def test_a_bad_top_level_image_spec_is_named_once():
    text = problems({}, {"trainer": "training", "splitor": "processing"},
                    image={"framework": "tensorflow", "version": "0.0"})
    assert text.count("image: Unsupported tensorflow version") == 1


def test_an_image_spec_needs_a_region_in_sagemaker_mode():
    text = problems({"knn": KNN}, {"knn": "training"}, mode="sagemaker", region_name=None)
    assert 'steps.knn.image: an image given as {"framework", ...} needs a region' in text


def test_source_dir_and_entry_script_go_together():
    text = problems({"t": {"source_dir": "code"}}, {"t": "training"})
    assert "steps.t.entry_script: required with source_dir" in text


def test_a_runs_conf_may_change_source_dir_alone():
    """source_dir and entry_script go together in the merged params, not in a conf's form."""
    from jsonschema import Draft7Validator

    schema = params.trigger_schema({"type": "object", **training.KIND.schema})
    assert not list(Draft7Validator(schema).iter_errors({"source_dir": "code"}))


def test_channel_settings_take_only_the_apis_values():
    text = problems({"knn": {**KNN, "channels": {"train": {"input_mode": "Stream",
                                                           "compression": "Gzip"}}}},
                    {"knn": "training"})
    assert "steps.knn.channels.train.compression: unknown key" in text
    assert "steps.knn.channels.train.input_mode: 'Stream' is not one of" in text


def test_local_training_without_code_needs_an_algorithm_the_local_image_stands_in_for():
    text = problems({"t": {"image": {"framework": "kmeans", "version": "1"}}}, {"t": "training"})
    assert "steps.t: no source_dir, and steps.t.image is no built-in algorithm" in text


def test_local_mode_runs_an_algorithm_image_as_train_in_the_local_image():
    """AWS's algorithm URIs and framework specs become the local image, told the algorithm;
    SageMaker runs an image without an entrypoint as `<image> train`: so does local mode."""
    from smtask.images import algorithm_of
    from smtask.kinds.common import StepContext
    from smtask.local.compose import harden

    assert algorithm_of("404615174143.dkr.ecr.us-east-2.amazonaws.com/knn:1") == "knn"
    assert algorithm_of("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1") \
        == "xgboost"
    assert algorithm_of({"framework": "linear-learner"}) == "linear-learner"
    assert algorithm_of("my-registry/knn:1") is None
    ctx = StepContext(step="knn", params={"mode": "local", "steps": {"knn": {
        "image": KNN_IMAGE}}, "local": {"image": "mine:1"}}, job_name="j", prefix="file:///p")
    assert ctx.image("training") == "mine:1"
    session = local_state(Path("/nonexistent"))
    hardened = harden({"services": {"algo-1": {"image": "mine:1"}}}, session)
    assert hardened["services"]["algo-1"]["command"] == "train"
    script = harden({"services": {"algo-1": {"entrypoint": ["python3", "x.py"]}}}, session)
    assert "command" not in script["services"]["algo-1"]


# --- sagemaker mode (moto): the job SageMaker receives -------------------------------------

KNN_TRAIN = '''
@sm_training(step="knn")
def train():
    return {"train": "s3://smtask-cloud-tests/iris/train/", "test": "s3://smtask-cloud-tests/iris/test/"}
train()
'''


def test_a_builtin_algorithm_job_carries_the_image_channels_and_string_hyperparameters(
        tmp_path, sagemaker):  # noqa: F811 (the fixture)
    channels = {"train": {"content_type": "text/csv", "input_mode": "Pipe",
                          "s3_data_distribution": "ShardedByS3Key"},
                "test": {"content_type": "application/x-recordio-protobuf"}}
    result = run_dag(KNN_TRAIN, config=cloud_config(tmp_path, knn={
        **KNN, "channels": channels, "hyperparameters": {**KNN["hyperparameters"],
                                                          "index_metric": "COSINE"}}))
    assert result.ok, result.states
    job = sagemaker.request("create_training_job")
    algorithm = job["AlgorithmSpecification"]
    assert algorithm["TrainingImage"] == KNN_IMAGE == result.xcom["train"]["image"]
    assert "ContainerEntrypoint" not in algorithm and "ContainerArguments" not in algorithm
    assert job["HyperParameters"] == {"k": "3", "feature_dim": "4", "predictor_type": "classifier",
                                      "sample_size": "150", "index_metric": "COSINE"}
    got = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    assert set(got) == {"train", "test"}  # no code, no ModelTrainer drivers
    assert got["train"]["ContentType"] == "text/csv" and got["train"]["InputMode"] == "Pipe"
    assert got["train"]["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert got["test"]["ContentType"] == "application/x-recordio-protobuf"
    assert got["test"]["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated"
    listed = client("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])
    assert not [o["Key"] for o in listed if "/_code/" in o["Key"]]  # nothing uploaded


def test_channel_settings_for_a_channel_the_function_did_not_return_fail_before_any_job(
        tmp_path, sagemaker, capfd):  # noqa: F811
    result = run_dag(KNN_TRAIN, config=cloud_config(tmp_path, knn={
        **KNN, "channels": {"validation": {"content_type": "text/csv"}}}))
    assert result.states == {"train": "failed"}
    assert "steps.knn.channels names ['validation'], which the function did not return" in \
        capfd.readouterr().out
    assert sagemaker.creates == []


def test_iris_knn_dag_on_sagemaker_creates_the_seeds_jobs(tmp_path, sagemaker):  # noqa: F811
    """Seed 001 use case 2 in sagemaker mode: moto runs no containers, so the transform's
    output is written when its job completes (the labels, as a perfect k-NN would answer)."""

    s3 = client("s3")
    config = json.loads((ROOT / "dags" / "iris_knn.json").read_text())
    bucket = config["artifacts"].removeprefix("s3://").split("/")[0]
    s3.create_bucket(Bucket=bucket)

    def transform_outputs(job: Any) -> None:
        data = job.transform_input["DataSource"]["S3DataSource"]["S3Uri"]
        labels_key = urlparse(data.rstrip("/").rsplit("/", 1)[0] + "/labels/test.csv").path[1:]
        labels = s3.get_object(Bucket=bucket, Key=labels_key)["Body"].read().decode().split()
        out = urlparse(job.transform_output["S3OutputPath"])
        s3.put_object(Bucket=out.netloc, Key=out.path.strip("/") + "/test.csv.out",
                      Body="".join(json.dumps({"predicted_label": float(v)}) + "\n"
                                   for v in labels).encode())

    sagemaker.on_complete["transform"] = transform_outputs
    result = run_example("iris_knn", conf={"mode": "sagemaker"})
    results = result.xcom
    assert result.ok, results
    assert results["check_accuracy"] == {"metric": "accuracy", "value": 1.0, "rows": 45}
    training = sagemaker.request("create_training_job")
    assert training["AlgorithmSpecification"]["TrainingImage"] == KNN_IMAGE
    assert training["HyperParameters"] == {"predictor_type": "classifier", "feature_dim": "4",
                                           "k": "3", "sample_size": "150"}
    (channel,) = training["InputDataConfig"]
    assert channel["ContentType"] == "text/csv" and channel["InputMode"] == "File"
    assert training["ResourceConfig"]["VolumeSizeInGB"] == 1
    model = sagemaker.request("create_model")
    assert model["PrimaryContainer"]["Image"] == KNN_IMAGE  # the training result's image
    transform = sagemaker.request("create_transform_job")
    assert transform["TransformInput"]["ContentType"] == "text/csv"
    assert transform["TransformOutput"]["Accept"] == "application/jsonlines"


# --- local mode: the stand-ins in real containers -----------------------------------------

def _csv(features: np.ndarray, labels: np.ndarray | None = None) -> str:
    rows = features if labels is None else np.column_stack([labels, features])
    return "".join(",".join(f"{v:g}" for v in row) + "\n" for row in rows)


def _data(tmp_path: Path, files: dict[str, str | bytes]) -> dict[str, str]:
    """Each ``name/file`` written under tmp_path; returns {name: folder URI}."""
    folders = {}
    for name, content in files.items():
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        folders[name.split("/")[0]] = path.parent.as_uri()
    return folders


STAND_IN = '''
@sm_training(step="algo")
def train():
    return CHANNELS

@sm_transform(step="score")
def score(model):
    return "BATCH"

score(train())
'''


def _run_stand_in(tmp_path: Path, algo: dict[str, Any], score: dict[str, Any],
                  channels: dict[str, str], batch: str) -> tuple[Any, str]:
    body = STAND_IN.replace("CHANNELS", repr(channels)).replace("BATCH", batch)
    config = write_config(tmp_path, steps={"algo": algo, "score": score})
    result = run_dag(body, config=config)
    assert result.ok, result.states
    predictions = Path(urlparse(result.xcom["score"]["outputs"]["predictions"]).path)
    return result, "".join(p.read_text() for p in sorted(predictions.iterdir()))


def _separable(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two well separated clouds in 5 dimensions: any fair learner scores ~100%."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows).astype(float)
    centres = np.where(labels[:, None] == 1, 2.0, -2.0)
    return centres + rng.normal(0, 0.7, (rows, 5)), labels




@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_iris_knn_dag_runs_the_knn_stand_in_and_scores_well_above_chance(tmp_path, loopback_guard):
    result = run_example("iris_knn", conf={"mode": "local"})
    results = result.xcom
    assert result.ok, results
    check = results["check_accuracy"]
    assert check["rows"] == 45 and check["value"] >= 0.9  # chance is 1/3
    assert results["train_model"]["image"] == "smtask-local:latest"


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_xgboost_stand_in_trains_on_csv_and_answers_csv_scores(tmp_path, loopback_guard, capfd):
    x, y = _separable(240, 1)
    channels = _data(tmp_path, {"train/t.csv": _csv(x[:160], y[:160]),
                                "validation/v.csv": _csv(x[160:200], y[160:200]),
                                "batch/b.csv": _csv(x[200:])})
    algo = {"image": {"framework": "xgboost", "version": "1.7-1"},
            "hyperparameters": {"num_round": 5, "objective": "binary:logistic", "max_depth": 2,
                                "eta": 0.5, "eval_metric": "auc"},
            "channels": {"train": {"content_type": "text/csv"},
                         "validation": {"content_type": "text/csv"}}}
    _, out = _run_stand_in(tmp_path, algo, {}, {k: channels[k] for k in ("train", "validation")},
                           channels["batch"])
    scores = np.array([float(line) for line in out.split()])
    assert len(scores) == 40 and ((scores > 0.5) == y[200:]).mean() >= 0.95
    log = capfd.readouterr().out
    assert "[4]#011train-auc:" in log and "#011validation-auc:" in log


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_linear_learner_stand_in_classifies_a_separable_set(tmp_path, loopback_guard, capfd):
    x, y = _separable(240, 2)
    channels = _data(tmp_path, {"train/t.csv": _csv(x[:200], y[:200]), "batch/b.csv": _csv(x[200:])})
    algo = {"image": "382416733822.dkr.ecr.us-east-1.amazonaws.com/linear-learner:1",
            "hyperparameters": {"predictor_type": "binary_classifier", "feature_dim": 5,
                                "mini_batch_size": 20, "epochs": 5},
            "channels": {"train": {"content_type": "text/csv"}}}
    _, out = _run_stand_in(tmp_path, algo, {"accept": "application/jsonlines"},
                           {"train": channels["train"]}, channels["batch"])
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == 40 and set(answers[0]) == {"score", "predicted_label"}
    assert np.mean([a["predicted_label"] == t for a, t in zip(answers, y[200:], strict=True)]) >= 0.95
    assert "#quality_metric: host=algo-1, train binary_classification_accuracy <score>=" in \
        capfd.readouterr().out


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_factorization_machines_stand_in_learns_from_sparse_recordio(tmp_path, loopback_guard):
    """Seeds 002/003's shape: one-hot user + item, RecordIO-protobuf, sparse tensors."""
    import scipy.sparse

    from smtask.recordio import write_spmatrix_to_sparse_tensor

    rng = np.random.default_rng(3)
    users, items = 30, 20
    pairs = [(u, i) for u in range(users) for i in range(items)]
    pairs = [pairs[j] for j in rng.permutation(len(pairs))][:480]
    likes = np.array([float(u % 2 == i % 2) for u, i in pairs])  # taste: a user x item factor
    matrix = scipy.sparse.lil_matrix((len(pairs), users + items), dtype="float32")
    for row, (u, i) in enumerate(pairs):
        matrix[row, u] = matrix[row, users + i] = 1
    matrix = matrix.tocsr()
    train, batch = io.BytesIO(), io.BytesIO()
    write_spmatrix_to_sparse_tensor(train, matrix[:400], likes[:400])
    write_spmatrix_to_sparse_tensor(batch, matrix[400:])
    channels = _data(tmp_path, {"train/train.protobuf": train.getvalue(),
                                "batch/batch.protobuf": batch.getvalue()})
    algo = {"image": {"framework": "factorization-machines", "version": "1"},
            "hyperparameters": {"feature_dim": users + items, "num_factors": 4,
                                "predictor_type": "binary_classifier", "epochs": 30,
                                "mini_batch_size": 50, "factors_lr": 0.05, "linear_lr": 0.05,
                                "bias_lr": 0.05, "factors_init_sigma": 0.1},
            "channels": {"train": {"content_type": "application/x-recordio-protobuf"}}}
    score = {"content_type": "application/x-recordio-protobuf", "split_type": "RecordIO",
             "accept": "application/jsonlines"}
    _, out = _run_stand_in(tmp_path, algo, score, {"train": channels["train"]}, channels["batch"])
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == 80
    assert np.mean([a["predicted_label"] == t for a, t in zip(answers, likes[400:], strict=True)]) \
        >= 0.9


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_missing_required_hyperparameter_fails_the_job_naming_it(tmp_path, loopback_guard, capfd):
    channels = _data(tmp_path, {"train/t.csv": "1,5.1,3.5,1.4,0.2\n0,6.2,3.4,5.4,2.3\n"})
    body = f'''
@sm_training(step="algo")
def train():
    return {{"train": "{channels["train"]}"}}
train()
'''
    config = write_config(tmp_path, steps={"algo": {
        "image": {"framework": "knn", "version": "1"},
        "hyperparameters": {"k": 1, "predictor_type": "classifier", "sample_size": 2},
        "channels": {"train": {"content_type": "text/csv"}}}})
    result = run_dag(body, config=config)
    assert result.states == {"train": "failed"}
    assert "failed: ClientError: Missing required hyperparameter(s): feature_dim" in \
        capfd.readouterr().out


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_tuning_a_builtin_algorithm_reads_its_metric_lines(tmp_path, loopback_guard):
    """@sm_tuning over the k-NN stand-in, objective test:accuracy with no metric definition:
    the tuner reads the line the stand-in prints as AWS's k-NN does. k=3 beats k=100 (a vote
    over nearly all 105 points is a guess)."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(5).permutation(150)
    channels = _data(tmp_path, {"train/t.csv": _csv(x[order[:105]], y[order[:105]]),
                                "test/t.csv": _csv(x[order[105:]], y[order[105:]])})
    body = f'''
from smtask import sm_tuning

@sm_tuning(step="tuner")
def tune():
    return {channels!r}

tune()
'''
    config = write_config(tmp_path, steps={"tuner": {
        **KNN, "hyperparameters": {**KNN["hyperparameters"], "sample_size": 200},
        "channels": {"train": {"content_type": "text/csv"}, "test": {"content_type": "text/csv"}},
        "tuning": {"objective": {"metric": "test:accuracy", "type": "Maximize"},
                   "strategy": "Grid", "max_parallel_jobs": 2,
                   "ranges": {"k": {"type": "categorical", "values": [100, 3]}}}}})
    result = run_dag(body, config=config)
    assert result.ok, result.states
    out = result.xcom["tune"]
    assert out["hyperparameters"] == {"k": "3"}
    assert out["objective"]["metric"] == "test:accuracy" and out["objective"]["value"] >= 0.9
