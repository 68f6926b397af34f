"""SageMaker's serving contract, in real containers: a model carries its code
(SAGEMAKER_PROGRAM, SAGEMAKER_SUBMIT_DIRECTORY) and the local model server calls the user's
model_fn, input_fn, predict_fn, output_fn or transform_fn as AWS's framework containers do,
with each image's defaults for the missing ones."""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import LOCAL_IMAGE, ROOT, containers_with_label, run_dag, write_config

# a serving container that fails is reported by the task, not as a stray thread's traceback
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker"),
              pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")]


def path(uri: str) -> Path:
    return Path(urlparse(uri).path)


def model_tar(folder: Path, files: dict[str, bytes]) -> Path:
    """A model.tar.gz of ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def code_tar(folder: Path, scripts: dict[str, str]) -> Path:
    """A sourcedir.tar.gz of ``scripts``, packed as smtask packs a source dir."""
    from smtask.kinds.common import pack

    source = folder / "source"
    source.mkdir(parents=True)
    for name, text in scripts.items():
        (source / name).write_text(textwrap.dedent(text))
    pack(source, folder / "sourcedir.tar.gz")
    return folder / "sourcedir.tar.gz"


WEIGHTS = json.dumps({"weights": [1.0, -1.0], "bias": 0.0}).encode()  # predicts x0 > x1
ROWS = [[3.0, 1.0], [0.0, 2.0], [5.0, 4.0], [1.0, 1.5]]
EXPECTED = [1, 0, 1, 0]
JSON_MODEL_FN = '''
import json, os
import numpy as np

class Linear:
    def __init__(self, weights, bias):
        self.w, self.b = np.array(weights), bias
    def predict(self, rows):
        return (np.atleast_2d(rows) @ self.w + self.b > 0).astype(int)

def model_fn(model_dir):
    with open(os.path.join(model_dir, "weights.json")) as f:
        return Linear(**json.load(f))
'''


def served(tmp_path: Path, scripts: dict[str, str] | None, data: dict[str, bytes], *,
           framework: str | None = None, program: str = "inference.py",
           transformer: dict | None = None) -> tuple[object, str]:
    """Batch-transform ``data`` (file name -> bytes) with a model whose code is ``scripts``;
    returns the run and the captured task log."""
    model = model_tar(tmp_path / "model", {"weights.json": WEIGHTS})
    result = {"job_name": "given", "model": model.as_uri(), "image": LOCAL_IMAGE,
              "framework": framework}
    if scripts is not None:
        result["code"] = {"program": program,
                          "submit_directory": code_tar(tmp_path / "code", scripts).as_uri()}
    inputs = tmp_path / "batch"
    inputs.mkdir()
    for name, content in data.items():
        (inputs / name).write_bytes(content)
    config = write_config(tmp_path, steps={"transformer": transformer or {}})
    body = f'''
@task
def model():
    return {result!r}

@sm_transform(step="transformer")
def predict(model):
    return {inputs.as_uri()!r}

predict(model())
'''
    return run_dag(body, config=config), ""


def predictions(result, name: str) -> bytes:
    return (path(result.xcom["predict"]["outputs"]["predictions"]) / f"{name}.out").read_bytes()


def failure(capfd) -> str:
    out = capfd.readouterr().out
    return next((line for line in out.splitlines() if "JobFailed:" in line), out[-3000:])


# --- the user's handlers ----------------------------------------------------------------------

def test_a_model_fn_with_the_images_default_handlers_scores_csv(tmp_path, loopback_guard):
    result, _ = served(tmp_path, {"inference.py": JSON_MODEL_FN},
                       {"rows.csv": "\n".join(",".join(map(str, r)) for r in ROWS).encode()},
                       framework="sklearn",
                       transformer={"content_type": "text/csv", "accept": "text/csv",
                                    "split_type": "Line", "strategy": "MultiRecord"})
    assert result.ok, result.states
    assert predictions(result, "rows.csv").split() == [b"1", b"0", b"1", b"0"]


def test_json_lines_in_and_out_one_record_a_request(tmp_path, loopback_guard):
    lines = "\n".join(json.dumps(r) for r in ROWS).encode()
    result, _ = served(tmp_path, {"inference.py": JSON_MODEL_FN}, {"rows.jsonl": lines},
                       framework="sklearn",
                       transformer={"content_type": "application/jsonlines",
                                    "accept": "application/jsonlines", "split_type": "Line",
                                    "strategy": "SingleRecord"})
    assert result.ok, result.states
    assert [json.loads(x) for x in predictions(result, "rows.jsonl").splitlines()] == EXPECTED


def test_npy_in_json_out_one_request_a_file(tmp_path, loopback_guard):
    buffer = io.BytesIO()
    np.save(buffer, np.array(ROWS))
    result, _ = served(tmp_path, {"inference.py": JSON_MODEL_FN}, {"rows.npy": buffer.getvalue()},
                       framework="sklearn",
                       transformer={"content_type": "application/x-npy",
                                    "accept": "application/json", "split_type": "None"})
    assert result.ok, result.states
    assert json.loads(predictions(result, "rows.npy")) == EXPECTED


def test_a_transform_fn_serves_alone(tmp_path, loopback_guard):
    script = JSON_MODEL_FN + '''
def transform_fn(model, request_body, content_type, accept):
    rows = json.loads(request_body)["rows"]
    return json.dumps({"labels": model.predict(rows).tolist(), "seen": content_type}), accept
'''
    result, _ = served(tmp_path, {"inference.py": script},
                       {"batch.json": json.dumps({"rows": ROWS}).encode()},
                       transformer={"content_type": "application/json",
                                    "accept": "application/json", "split_type": "None"})
    assert result.ok, result.states
    assert json.loads(predictions(result, "batch.json")) == {"labels": EXPECTED,
                                                             "seen": "application/json"}


def test_a_transform_fn_beside_an_input_fn_is_refused_as_aws_refuses_it(tmp_path, capfd):
    script = JSON_MODEL_FN + '''
def input_fn(body, content_type):
    return body

def transform_fn(model, body, content_type, accept):
    return body
'''
    result, _ = served(tmp_path, {"inference.py": script}, {"rows.csv": b"1,2\n"})
    assert result.states == {"model": "success", "predict": "failed"}
    assert "Cannot use transform_fn implementation in conjunction with input_fn" in failure(capfd)
    assert containers_with_label() == []


def test_a_model_fn_that_raises_fails_the_task_with_its_own_error(tmp_path, capfd):
    script = '''
def model_fn(model_dir):
    raise ValueError("cannot load: the weights are corrupted")
'''
    result, _ = served(tmp_path, {"inference.py": script}, {"rows.csv": b"1,2\n"})
    assert result.states["predict"] == "failed"
    line = failure(capfd)
    assert "ValueError: cannot load: the weights are corrupted" in line
    assert "serving container exited before it was healthy" in line


def test_a_handler_that_raises_on_a_request_fails_the_transform_and_publishes_nothing(
        tmp_path, capfd):
    script = JSON_MODEL_FN + '''
def predict_fn(data, model):
    raise RuntimeError("predict_fn cannot score row " + str(len(data)))
'''
    result, _ = served(tmp_path, {"inference.py": script}, {"rows.csv": b"1,2\n3,4\n"},
                       framework="sklearn")
    assert result.states["predict"] == "failed"
    line = failure(capfd)
    assert "RuntimeError: predict_fn cannot score row 2" in line  # the handler's own line
    assert "the model server answered 500" in line
    assert not (Path(tmp_path) / "smtask").exists() or not list(
        Path(tmp_path).rglob("rows.csv.out"))


# --- each image's defaults ----------------------------------------------------------------------

def test_aws_sklearn_image_has_no_default_model_fn(tmp_path, capfd):
    result, _ = served(tmp_path, {"inference.py": "X = 1\n"}, {"rows.csv": b"1,2\n"},
                       framework="sklearn")
    assert result.states["predict"] == "failed"
    assert "Please provide a model_fn implementation" in failure(capfd)


def test_a_sklearn_model_without_inference_code_fails_as_on_aws(tmp_path, capfd):
    result, _ = served(tmp_path, None, {"rows.csv": b"1,2\n"}, framework="sklearn")
    assert result.states["predict"] == "failed"
    assert "Please provide a model_fn implementation" in failure(capfd)


def test_smtask_images_default_model_fn_loads_model_joblib(tmp_path, loopback_guard):
    """smtask's own image keeps its model.joblib default, also under a module without model_fn
    (the example's code before it had one)."""
    from test_local_safety import constant_model

    model = constant_model(tmp_path, 7)
    scripts = {"inference.py": "print('imported, no model_fn')\n"}
    code = code_tar(tmp_path / "code", scripts)
    config = write_config(tmp_path, steps={"transformer": {}})
    result = {"job_name": "given", "model": model.as_uri(), "image": LOCAL_IMAGE,
              "code": {"program": "inference.py", "submit_directory": code.as_uri()}}
    (tmp_path / "batch").mkdir()
    (tmp_path / "batch" / "rows.csv").write_text("1\n2\n")
    run = run_dag(f'''
@task
def model():
    return {result!r}

@sm_transform(step="transformer")
def predict(model):
    return {(tmp_path / "batch").as_uri()!r}

predict(model())
''', config=config)
    assert run.ok, run.states
    assert (path(run.xcom["predict"]["outputs"]["predictions"]) / "rows.csv.out").read_text() \
        .split() == ["7", "7"]


def test_the_codes_requirements_are_installed_before_it_is_imported(tmp_path, loopback_guard):
    script = JSON_MODEL_FN + '''
import tabulate  # from requirements.txt

def output_fn(prediction, accept):
    return tabulate.tabulate([[int(p)] for p in prediction], tablefmt="plain"), accept
'''
    result, _ = served(tmp_path, {"inference.py": script, "requirements.txt": "tabulate\n"},
                       {"rows.csv": b"3,1\n0,2\n"}, framework="sklearn")
    assert result.ok, result.states
    assert predictions(result, "rows.csv").split() == [b"1", b"0"]


# --- training results carry their code -----------------------------------------------------------

TRAIN_AND_TRANSFORM = '''
@task
def data():
    from airflow.sdk import get_current_context
    from smtask.storage import run_prefix, write_text
    folder = run_prefix(get_current_context(), "data")
    grid = [x / 2 for x in range(13)]
    rows = [(1 if a > b else 0, a, b) for a in grid for b in grid if a != b]
    write_text(folder + "/train/train.csv", "".join(f"{l},{a},{b}\\n" for l, a, b in rows))
    write_text(folder + "/batch/batch.json",
               '{"instances": [[3.0, 1.0], [0.0, 2.0], [5.0, 1.0], [1.0, 4.0]]}')
    write_text(folder + "/csv/batch.csv", "3,1\\n0,2\\n5,1\\n1,4\\n")
    return folder

@sm_training(step="trainer")
def train(folder):
    return {"train": folder + "/train"}

@sm_transform(step="transformer")
def predict(model, folder):
    return folder + "/" + SUBFOLDER

d = data()
predict(train(d), d)
'''


def test_an_aws_style_script_trains_and_serves_with_its_own_handlers(tmp_path, loopback_guard):
    """model.pkl, JSON in and out: the handlers of the training's own script serve."""
    config = write_config(tmp_path, steps={
        "trainer": {"source_dir": "tests/scripts/serving/pkl_json", "entry_script": "train.py",
                    "hyperparameters": {}},
        "transformer": {"content_type": "application/json", "accept": "application/json",
                        "split_type": "None"}})
    result = run_dag(TRAIN_AND_TRANSFORM.replace("SUBFOLDER", '"batch"'), config=config)
    assert result.ok, result.states
    code = result.xcom["train"]["code"]
    assert code["program"] == "train.py" and code["submit_directory"].endswith("/sourcedir.tar.gz")
    with tarfile.open(path(code["submit_directory"])) as tar:
        assert tar.getnames() == ["train.py"]
    assert json.loads(predictions(result, "batch.json")) == {"predictions": EXPECTED}


def test_an_xgboost_script_mode_model_serves_with_its_model_fn(tmp_path, loopback_guard):
    config = write_config(tmp_path, steps={
        "trainer": {"image": {"framework": "xgboost", "version": "1.7-1"},
                    "source_dir": "tests/scripts/serving/xgb_script", "entry_script": "train.py",
                    "hyperparameters": {"num_round": 20}},
        "transformer": {"content_type": "text/csv", "accept": "text/csv"}},
        conf_may_override=[])
    config_json = json.loads(config.read_text())
    config_json["conf_may_override"] = ["steps.*.image"]
    config.write_text(json.dumps(config_json))
    result = run_dag(TRAIN_AND_TRANSFORM.replace("SUBFOLDER", '"csv"'), config=config)
    assert result.ok, result.states
    assert result.xcom["train"]["framework"] == "xgboost"
    scores = [float(x) for x in predictions(result, "batch.csv").split()]
    assert [int(s > 0.5) for s in scores] == EXPECTED


def test_the_example_trainer_serves_through_its_model_fn(tmp_path, loopback_guard, capfd):
    from conftest import run_example

    result = run_example("train_transform")
    assert result.ok, result.states
    assert result.xcom["training"]["code"]["program"] == "train.py"
    assert "ROOT" and ROOT.exists()
