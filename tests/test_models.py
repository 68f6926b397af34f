"""Existing models: a transform that scores with a model the DAG does not manage (seed 001
use case 1), and the two example DAGs around models: ``dags/existing_model.py`` (existing
model -> SQL table) and ``dags/train_transform.py`` (seed 000: training -> transform).
Params and careless input here; local mode in real containers; sagemaker mode in
tests/test_cloud.py (moto)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tarfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import (
    LOCAL_IMAGE,
    ROOT,
    containers_with_label,
    kinds_of,
    run_dag,
    run_example,
    write_config,
)

from smtask import params
from smtask.errors import ParamsError

STEPS = kinds_of({"predict": "transform"})


def model_config(**overrides) -> dict:
    config = {"pipeline_name": "scores", "mode": "local", "code_root": str(ROOT),
              "steps": {"predict": {}}}
    return params.deep_merge(config, overrides)


# --- params ----------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "expected"), [
    ({"local": {"models": {"bad_name": {"model_data": "file:///m.tar.gz"}}}},
     "local.models: model name 'bad_name' is not allowed: use 1-63 of A-Z a-z 0-9 -"),
    ({"local": {"models": {"m" * 64: {"model_data": "file:///m.tar.gz"}}}},
     "local.models: model name 'mmmm"),
    ({"steps": {"predict": {"model_name": "census-"}}},
     "steps.predict.model_name: 'census-' is not allowed"),
    ({"steps": {"predict": {"model_name": "a\nb"}}},
     "steps.predict.model_name: 'a\\nb' is not allowed"),
    ({"local": {"models": {"m": {"modeldata": "file:///m.tar.gz"}}}},
     "local.models.m.modeldata: unknown key (known keys: environment, image, model_data)"),
    ({"local": {"models": {"m": {"image": "x"}}}},
     "local.models.m.model_data: required key is missing"),
    ({"local": {"models": {"m": {"model_data": "file://host/m.tar.gz"}}}},
     "local.models.m.model_data: 'file://host/m.tar.gz' does not match"),
    ({"steps": {"predict": {"model_name": 7}}},
     "steps.predict.model_name: 7 is not of type 'string'"),
], ids=["underscore", "too-long", "trailing-dash", "newline", "typo", "no-model-data",
        "file-uri-with-host", "not-a-string"])
def test_bad_model_settings_are_refused_naming_the_key(overrides, expected):
    with pytest.raises(ParamsError) as raised:
        params.resolve(model_config(**overrides), None, STEPS)
    assert expected in str(raised.value)


def test_model_names_sagemaker_allows_are_accepted():
    name = "Census-XGB-2021-08-03-23-25-30-873"
    config = model_config(local={"models": {name: {"model_data": "models/m.tar.gz"}}},
                          steps={"predict": {"model_name": name}})
    assert params.resolve(config, None, STEPS)["steps"]["predict"]["model_name"] == name


@pytest.mark.parametrize(("conf", "refused"), [
    ({"steps": {"predict": {"model_name": "other"}}}, "steps.predict.model_name"),
    ({"local": {"models": {"m": {"model_data": "file:///home/someone/else.tar.gz"}}}},
     "local.models"),
])
def test_a_run_conf_may_not_pick_the_model_unless_the_author_allows_it(conf, refused):
    config = model_config(local={"models": {"m": {"model_data": "models/m.tar.gz"}}},
                          steps={"predict": {"model_name": "m"}})
    with pytest.raises(ParamsError, match=f"{refused}: a run's conf may not change it"):
        params.resolve(config, conf, STEPS)
    allowed = {**config, "conf_may_override": ["local.models", "steps.*.model_name"]}
    params.resolve(allowed, conf, STEPS)


# --- what the function returns, checked before any job -------------------------------------

def returning(value: str, *, config: Path):
    return run_dag(f'''
@sm_transform(step="transformer")
def predict():
    return {value}
predict()
''', config=config)


@pytest.mark.parametrize(("returned", "expected"), [
    ('{"data": "file:///d", "model_name": "m", "modle": 1}',
     "step 'transformer': the function returned unknown key(s) modle (known: data, model, "
     "model_name)"),
    ('{"data": "file:///d", "model_name": "m", "model": {"job_name": "j", "model": "s3://b/m", '
     '"image": "i"}}', "step 'transformer': return either 'model' (a training result) or "
     "'model_name'"),
    ('{"data": "file:///d", "model_name": "../etc"}',
     "step 'transformer': model_name '../etc' is not allowed"),
    ('{"data": "file:///d", "model_name": "ghost"}',
     "steps.transformer: model 'ghost' is not in local.models (known: real, remote)"),
    ('{"data": "file:///d", "model_name": "real"}',
     "local.models.real.model_data: no file /nowhere/model.tar.gz (step 'transformer')"),
    ('{"data": "file:///d", "model_name": "remote"}',
     "local.models.remote.model_data: an s3:// model needs local.s3_endpoint in local mode"),
], ids=["unknown-key", "both", "hostile-name", "unknown-model", "missing-file", "s3-no-endpoint"])
def test_a_bad_existing_model_fails_naming_the_step_before_any_container(
        tmp_path, loopback_guard, capfd, returned, expected):
    config = write_config(tmp_path, local={"models": {
        "real": {"model_data": "file:///nowhere/model.tar.gz"},
        "remote": {"model_data": "s3://bucket/model.tar.gz"}}})
    result = returning(returned, config=config)
    assert result.states == {"predict": "failed"}
    assert expected in capfd.readouterr().out
    assert containers_with_label() == []


def test_an_s3_model_is_used_as_it_is_when_local_mode_has_an_s3_endpoint(tmp_path):
    from types import SimpleNamespace

    from smtask.errors import ParamsError
    from smtask.kinds import transform

    def ctx(local):
        return SimpleNamespace(params={"local": local}, step="transformer",
                               path=lambda where: tmp_path / where)

    where = "s3://bucket/model.tar.gz"
    assert transform._local_model_data(ctx({"s3_endpoint": "http://127.0.0.1:9"}), "m",
                                       where) == where
    with pytest.raises(ParamsError, match="an s3:// model needs local.s3_endpoint"):
        transform._local_model_data(ctx({}), "m", where)
    (tmp_path / "model.tar.gz").write_bytes(b"")
    assert transform._local_model_data(ctx({}), "m", "model.tar.gz") == \
        (tmp_path / "model.tar.gz").as_uri()


# --- local mode, in containers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def iris_model(tmp_path_factory) -> Path:
    """A model.tar.gz of a decision tree fitted on all of Iris (it predicts every Iris row's
    own class), fitted in the image: its scikit-learn is the server's, not the host's."""
    folder = tmp_path_factory.mktemp("iris-model")
    subprocess.run(["docker", "run", "--rm", "--network", "host", "-v", f"{folder}:/out",
                    LOCAL_IMAGE, "python3", "-c",
                    "import joblib; from sklearn.datasets import load_iris; "
                    "from sklearn.tree import DecisionTreeClassifier; "
                    "x, y = load_iris(return_X_y=True); "
                    "m = DecisionTreeClassifier(random_state=0).fit(x, y); assert m.score(x, y) == 1; "
                    "joblib.dump(m, '/out/model.joblib')"], check=True, capture_output=True)
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        tar.add(folder / "model.joblib", arcname="model.joblib")
    (folder / "model.joblib").unlink()
    return folder / "model.tar.gz"


def iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_returned_model_name_scores_with_the_registered_model_and_leaves_it_as_it_was(
        tmp_path, loopback_guard, iris_model):
    before = iris_model.read_bytes()
    config = write_config(tmp_path, local={"models": {"iris-tree": {
        "model_data": iris_model.as_uri(), "environment": {"SMTASK_MODEL": "iris-tree"}}}})
    result = run_dag('''
@task
def data():
    from airflow.sdk import get_current_context
    from sklearn.datasets import load_iris
    from smtask.storage import run_prefix, write_text
    folder = run_prefix(get_current_context(), "data")
    write_text(folder + "/rows.csv", load_iris(as_frame=True).data.to_csv(index=False, header=False))
    return folder

@sm_transform(step="transformer")
def predict(uri):
    return {"data": uri, "model_name": "iris-tree"}

predict(data())
''', config=config)
    assert result.ok, result.states
    out = result.xcom["predict"]
    assert out["model_name"] == "iris-tree"  # the result says which model scored
    from sagemaker.core.local.local_session import LocalSagemakerClient

    registered = LocalSagemakerClient._models["iris-tree"].primary_container
    assert registered["Image"] == LOCAL_IMAGE
    # the model's own environment, and local mode's: its server listens on loopback only
    assert registered["Environment"] == {"SMTASK_MODEL": "iris-tree",
                                         "SMTASK_BIND_ADDRESS": "127.0.0.1"}
    folder = Path(urlparse(out["outputs"]["predictions"]).path)
    predicted = [int(float(p)) for p in "".join(p.read_text() for p in folder.iterdir()).split()]
    assert predicted == list(iris()[1])
    assert iris_model.read_bytes() == before
    assert sorted(p.name for p in iris_model.parent.iterdir()) == ["model.tar.gz"]
    assert containers_with_label() == []


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_existing_model_example_loads_the_predictions_into_a_sqlite_table(
        tmp_path, loopback_guard, iris_model, monkeypatch):
    database = tmp_path / "results.db"
    monkeypatch.setenv("AIRFLOW_CONN_SMTASK_RESULTS",
                       json.dumps({"conn_type": "sqlite", "host": str(database)}))
    result = run_example("existing_model", local={
        "artifacts": (tmp_path / "artifacts").as_uri(),
        "models": {"iris-classifier": {"model_data": iris_model.as_uri()}}})
    assert result.ok, result.states
    assert result.xcom["predict"]["model_name"] == "iris-classifier"
    assert result.xcom["save_results"] == {"table": "iris_predictions", "rows": 150,
                                           "model_name": "iris-classifier"}
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT row_number, sepal_length, sepal_width, petal_length, "
                          "petal_width, predicted_class, model_name, run_id FROM iris_predictions "
                          "ORDER BY row_number").fetchall()
    features, classes = iris()
    assert [row[0] for row in rows] == list(range(150))
    for (_, *values, predicted, model, run_id), x, y in zip(rows, features, classes, strict=True):
        assert values == pytest.approx(list(x))  # each input row, in order
        assert predicted == y  # scored by the registered tree, which knows every Iris row
        assert (model, run_id) == ("iris-classifier", result.run_id)
    assert containers_with_label() == []


def test_existing_model_example_refuses_a_hostile_table_name_before_the_transform(
        tmp_path, loopback_guard, capfd):
    result = run_example("existing_model", local={"artifacts": (tmp_path / "a").as_uri()},
                         conf={"steps": {"save_results": {"table": "t; DROP TABLE x"}}})
    assert result.states["upload_data"] == "failed"
    assert result.states["predict"] != "success"
    assert "steps.save_results.table: 't; DROP TABLE x' is not a plain SQL table name" in \
        capfd.readouterr().out


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_train_transform_example_scores_with_the_model_its_training_made(tmp_path, loopback_guard):
    result = run_example("train_transform", local={"artifacts": (tmp_path / "a").as_uri()})
    assert result.ok, result.states
    training, transform = result.xcom["training"], result.xcom["transform"]
    # the transform's model is the one created from the training result, named like its job
    assert transform["model_name"] == transform["job_name"]
    assert training["model"].endswith("/training/model.tar.gz")
    folder = Path(urlparse(transform["outputs"]["predictions"]).path)
    predicted = "".join(p.read_text() for p in folder.iterdir()).split()
    evaluated = result.xcom["evaluate"]
    assert len(predicted) == evaluated["rows"] == 45  # 30 % of Iris held out
    assert evaluated["value"] >= 0.9
    assert containers_with_label() == []
