"""Local mode against real containers (Docker): each decorator, outputs chained through XCom,
a run-conf override reaching the job, a failing script, clean-up, and loopback only."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import ROOT, containers_with_label, local_state, run_dag, write_config
from test_cloud import moto_server, sagemaker  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker")]


def path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(urlparse(uri).path)


def model_summary(model_uri: str) -> dict:
    with tarfile.open(path(model_uri)) as tar:
        names = tar.getnames()
        assert "model.joblib" in names, names
        return json.load(tar.extractfile("training-summary.json"))  # type: ignore[arg-type]


SOURCE = '''
@task
def source():
    from sklearn.datasets import load_breast_cancer
    from smtask.storage import run_prefix, write_text
    from airflow.sdk import get_current_context
    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"})
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    folder = run_prefix(get_current_context(), "data-source")
    write_text(folder + "/data.csv", frame.to_csv(index=False))
    return folder
'''
TRAIN = SOURCE + '''
@sm_training(step="trainer")
def train(uri):
    return {"train": uri}

train(source())
'''
SPLIT_AND_TRAIN = SOURCE + '''
@sm_processing(step="splitor")
def split(uri):
    return {"data-source": uri}

@sm_training(step="trainer")
def train(splits):
    return {"train": splits["outputs"]["train"]}

train(split(source()))
'''
SPLIT_TRAIN_PREDICT = SPLIT_AND_TRAIN.replace("train(split(source()))", '''
@sm_transform(step="transformer")
def predict(model, splits):
    return splits["outputs"]["batch"]

splits = split(source())
predict(train(splits), splits)
''')


def test_example_pipeline_runs_every_job_in_containers_and_chains_outputs(tmp_path):
    """The README's main job: ``smtask run dags/churn.py`` in a fresh Airflow home."""
    env = {**os.environ, "SMTASK_HOME": str(tmp_path)}
    env.pop("AIRFLOW_HOME"), env.pop("AIRFLOW__CORE__DAGS_FOLDER")
    done = subprocess.run([sys.executable, "-m", "smtask.cli", "run", str(ROOT / "dags/churn.py")],
                          env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert (tmp_path / "airflow" / "airflow.db").exists()  # the project-local metadata DB
    assert "split 569 rows: train=426 test=143" in out  # processing container's own output
    assert "trained on 426 rows" in out  # training container's own output
    metric = json.loads(out.split("METRIC ", 1)[1].splitlines()[0])
    assert metric["metric"] == "accuracy" and metric["rows"] == 143 and metric["value"] > 0.9
    for step in ("splitor", "trainer", "transformer"):
        assert f'"job_name": "churn-{step}-' in out  # each step's outputs printed
    assert containers_with_label() == []


def test_processing_and_training_outputs_chain_through_xcom(tmp_path, loopback_guard):
    result = run_dag(SPLIT_AND_TRAIN, config=write_config(tmp_path))
    assert result.ok, result.states
    split, train = result.xcom["split"], result.xcom["train"]
    assert set(split["outputs"]) == {"train", "test", "batch"}
    for name, uri in split["outputs"].items():
        assert uri.endswith(f"/splitor/{name}") and result.xcom["source"] in uri.replace(
            f"splitor/{name}", "data-source")
    assert len((path(split["outputs"]["train"]) / "train.csv").read_text().splitlines()) == 427
    assert train["image"] == "smtask-local:latest"
    assert train["model"] == train["outputs"]["model"]
    assert model_summary(train["model"])["rows"] == 426  # trained on the split's train output
    assert train["job_name"].startswith("churn-trainer-")
    # packed at gzip's own level, not tarfile's 9 (11 times slower): the header's XFL byte
    # says 2 for level 9, 4 for level 1, 0 for the others
    assert path(train["model"]).read_bytes()[8] == 0


def test_run_conf_override_of_one_hyperparameter_changes_the_training_job(tmp_path,
                                                                          loopback_guard):
    conf = {"steps": {"trainer": {"hyperparameters": {"max_depth": 2}}}}
    result = run_dag(TRAIN, config=write_config(tmp_path), conf=conf)  # no split needed
    assert result.ok, result.states
    hps = model_summary(result.xcom["train"]["model"])["hyperparameters"]
    assert hps["max_depth"] == 2
    assert hps["n_estimators"] == 100  # the sibling default survived the deep merge


def test_transform_scores_with_the_upstream_model(tmp_path, loopback_guard):
    result = run_dag(SPLIT_TRAIN_PREDICT, config=write_config(tmp_path))
    assert result.ok, result.states
    predictions = path(result.xcom["predict"]["outputs"]["predictions"]) / "batch.csv.out"
    lines = predictions.read_text().split()
    assert len(lines) == 143 and set(lines) <= {"0", "1"}
    assert containers_with_label() == []


def test_failing_script_fails_its_task_with_the_scripts_error(tmp_path, loopback_guard, capfd):
    config = write_config(tmp_path, steps={"splitor": {"code_path": "tests/scripts/fails.py"}})
    result = run_dag(SPLIT_AND_TRAIN, config=config)
    assert result.states["split"] == "failed" and result.states["train"] == "upstream_failed"
    out = capfd.readouterr().out
    assert "JobFailed: processing job churn-splitor-" in out
    assert "failed: ValueError: no rows with a label in /opt/ml/processing/input/data-source" in out
    assert containers_with_label() == []


def test_an_earlier_attempts_outputs_are_replaced_not_merged(tmp_path):
    """A re-run of the same run and step publishes only its own outputs, by one rename, and
    only once its job completed: until then the earlier attempt's stay as they were."""
    from types import SimpleNamespace

    from smtask import local

    final = tmp_path / "out" / "train"
    final.mkdir(parents=True)
    (final / "stale.csv").write_text("old")
    produced = tmp_path / "job"
    produced.mkdir()
    (produced / "new.csv").write_text("new")
    lines: list[str] = []
    session = local_state(tmp_path / "scratch", artifacts=(tmp_path / "out").as_uri(),
                          step="splitor", output=SimpleNamespace(sink=lines.append))
    local.stage(session, produced, final.as_uri(), "train")
    assert sorted(p.name for p in final.iterdir()) == ["stale.csv"]
    local.publish(session)
    assert sorted(p.name for p in final.iterdir()) == ["new.csv"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["train"]  # no temporary name left
    assert any("replaced the outputs an earlier attempt" in line for line in lines)


def test_deferrable_steps_run_in_place_in_local_mode(tmp_path, loopback_guard, capfd):
    """Local jobs finish inside the task; there is nothing for a trigger to wait on."""
    config = write_config(tmp_path, steps={"splitor": {"deferrable": True},
                                           "trainer": {"deferrable": True}})
    result = run_dag(SPLIT_AND_TRAIN, config=config)
    assert result.ok, result.states
    captured = capfd.readouterr()
    assert "new_state=deferred" not in captured.out + captured.err


# --- artifacts on shared storage: s3:// through local.s3_endpoint (moto here) ---------------



def test_local_mode_keeps_its_artifacts_on_s3_through_its_endpoint(tmp_path, sagemaker):
    """What several workers share (README "More than one worker"): every output, a model
    included, is an s3:// object, put there only once its job completed."""
    from test_cloud import BUCKET, client

    s3 = client("s3")
    shared = {"artifacts": f"s3://{BUCKET}/shared", "s3_endpoint": client.endpoint}
    result = run_dag(SPLIT_TRAIN_PREDICT, config=write_config(tmp_path, local=shared))
    assert result.ok, result.states

    def keys(uri: str) -> list[str]:
        bucket, prefix = uri.removeprefix("s3://").split("/", 1)
        assert bucket == BUCKET, uri
        return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get(
            "Contents", [])]

    splits, model = result.xcom["split"]["outputs"], result.xcom["train"]["model"]
    assert all(uri.startswith(f"s3://{BUCKET}/shared/") and keys(uri) for uri in splits.values())
    assert keys(model) == [model.removeprefix(f"s3://{BUCKET}/")]
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(
            Bucket=BUCKET, Key=model.removeprefix(f"s3://{BUCKET}/"))["Body"].read())) as tar:
        assert "model.joblib" in tar.getnames()
    predictions = result.xcom["predict"]["outputs"]["predictions"]
    assert keys(predictions)  # the transform read the model and the batch from S3
    # a failed training publishes no model
    (tmp_path / "failing").mkdir()
    failing = write_config(tmp_path / "failing", local=shared, steps={"trainer": {
        "source_dir": "tests/scripts", "entry_script": "train_fails.py", "hyperparameters": {}}})
    failed = run_dag(SPLIT_AND_TRAIN, config=failing)
    assert failed.states == {"source": "success", "split": "success", "train": "failed"}
    written = keys(f"s3://{BUCKET}/shared/churn/{failed.dag_id}/")
    assert any("/splitor/" in k for k in written)
    assert not [k for k in written if "/trainer/" in k], written
    assert containers_with_label() == []
