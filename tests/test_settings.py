"""A step's own settings as the script's config.json, requirements installed from wheels the
host downloads, framework processing (source dir + entry script), and seed 004's splitor
with its verbatim script: the params checks, and real containers in local mode."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import pytest
from conftest import ROOT, containers_with_label, kinds_of, run_dag, run_example, write_config

from smtask import params
from smtask.errors import ParamsError, SmtaskError

STEPS = kinds_of({"splitor": "processing", "trainer": "training", "transformer": "transform"})
SEED_SCRIPT_SHA256 = "09feb12a345276a0c97fb1d96869b3e25ac909ccd68101a5d7e194f4e915d119"


def path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(urlparse(uri).path)


@pytest.fixture
def defaults() -> dict:
    return params.load_config(ROOT / "config.json")


def problems(defaults: dict, conf: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        params.resolve(defaults, conf, STEPS)
    return str(caught.value)


# --- params -------------------------------------------------------------------------------

def test_settings_are_free_form_and_deep_merged_with_the_runs_conf(defaults):
    base = params.deep_merge(defaults, {"steps": {"splitor": {"settings": {
        "label_column": "label", "split_strategy": {"by": "timestamp", "datasets": {
            "test": {"equal": "2022-07"}}}}}}})
    merged = params.resolve(base, {"steps": {"splitor": {"settings": {"split_strategy": {
        "datasets": {"test": {"equal": "2022-06"}}}}}}}, STEPS)
    settings = merged["steps"]["splitor"]["settings"]
    assert settings["split_strategy"] == {"by": "timestamp",
                                          "datasets": {"test": {"equal": "2022-06"}}}
    assert settings["label_column"] == "label"


@pytest.mark.parametrize(("step", "key"), [("splitor", "outputs"), ("splitor", "code_path"),
                                           ("trainer", "hyperparameters"), ("trainer", "settings")])
def test_a_settings_key_that_shadows_a_step_key_is_refused_naming_step_and_key(defaults, step,
                                                                               key):
    message = problems(defaults, {"steps": {step: {"settings": {key: {}, "fine": 1}}}})
    assert f"steps.{step}.settings.{key}: collides with the step's own key '{key}'" in message
    assert "settings.fine" not in message


def test_settings_are_size_limited(defaults):
    message = problems(defaults, {"steps": {"splitor": {"settings": {"blob": "x" * 70_000}}}})
    assert "steps.splitor.settings: 70012 bytes as JSON, at most 65536" in message
    message = problems(defaults, {"steps": {"splitor": {"settings": {
        f"k{i}": i for i in range(101)}}}})
    assert "steps.splitor.settings: 101 keys, at most 100" in message


def test_settings_only_for_steps_that_run_a_script(defaults):
    message = problems(defaults, {"steps": {"transformer": {"settings": {"a": 1}}}})
    assert "steps.transformer.settings: unknown key" in message


def test_the_settings_path_variable_is_smtasks_own(defaults):
    message = problems(defaults, {"steps": {"splitor": {"environment": {
        "SMTASK_SETTINGS": "/tmp/x"}}}})
    assert "steps.splitor.environment.SMTASK_SETTINGS: set by smtask" in message


FRAMEWORK = {"code_path": None, "source_dir": "tests/scripts/framework", "code": "pkg/job.py"}


def test_framework_processing_needs_exactly_one_form(defaults):
    assert params.resolve(defaults, {"steps": {"splitor": FRAMEWORK}}, STEPS)
    both = problems(defaults, {"steps": {"splitor": {**FRAMEWORK, "code_path": "code/preprocess.py"}}})
    assert ("steps.splitor: code_path and source_dir + code both given; give either code_path "
            "(one script) or source_dir + code (framework processing)") in both
    neither = problems(defaults, {"steps": {"splitor": {"code_path": None}}})
    assert "steps.splitor.code_path: required key is missing (or give source_dir + code" in neither
    half = problems(defaults, {"steps": {"splitor": {**FRAMEWORK, "code": None}}})
    assert "steps.splitor.code: required with source_dir (framework processing)" in half
    half = problems(defaults, {"steps": {"splitor": {"code_path": None, "code": "x.py"}}})
    assert "steps.splitor.source_dir: required with code" in half
    script = problems(defaults, {"steps": {"splitor": {"requirements": "requirements.txt"}}})
    assert "steps.splitor.requirements: needs source_dir + code (framework processing)" in script


@pytest.mark.parametrize(("conf", "expected"), [
    ({"code": "missing.py"}, "steps.splitor.code: no file missing.py in"),
    ({"code": "../../../etc/passwd"}, "steps.splitor.code: '../../../etc/passwd' is outside"),
    ({"requirements": "nope.txt"}, "steps.splitor.requirements: no file nope.txt in"),
    ({"requirements": "../../../pyproject.toml"}, "steps.splitor.requirements: '../../../"),
    ({"source_dir": "../../etc"}, "steps.splitor.source_dir: '../../etc' is outside the code root"),
    ({"source_dir": "tests/nowhere"}, "steps.splitor.source_dir: no folder"),
], ids=["no-code", "code-outside", "no-requirements", "requirements-outside", "dir-outside",
        "no-dir"])
def test_framework_code_must_exist_inside_its_source_dir(defaults, conf, expected):
    assert expected in problems(defaults, {"steps": {"splitor": {**FRAMEWORK, **conf}}})


def test_a_source_dirs_links_must_be_ones_its_job_gets(defaults, tmp_path):
    """SageMaker mode uploads what a link points at, local mode mounts the folder, a model's
    sourcedir.tar.gz keeps the link: only a relative link to a file of the folder that the job
    gets too means the same in all three. Any other is refused before any job, naming the
    step, the key and each link (found by a hostile trial: a link to the .env, a loop)."""
    import os

    from smtask.paths import stray_links

    root, secret = tmp_path / "root", tmp_path / "credentials"
    code = root / "code"
    (code / "sub").mkdir(parents=True)
    for script in ("train.py", "preprocess.py"):
        (code / script).write_text("print('hi')\n")
    (code / ".git").mkdir()
    (code / ".git" / "hook").symlink_to("/etc/passwd")  # left out of the upload: not refused
    (code / "alias.py").symlink_to("train.py")  # relative, to a file of the folder: the job's
    (code / "sub" / "up.py").symlink_to("../train.py")  # up a level, still in the folder
    base = {**defaults, "code_root": str(root)}
    assert params.resolve(base, {}, STEPS)["steps"]["trainer"]["source_dir"] == "code"
    secret.write_text("aws_secret_access_key = x\n")
    (code / ".env").write_text("AWS_SECRET_ACCESS_KEY=x\n")
    (code / ".cache").symlink_to(".")  # ignored itself: a link through it is not the job's
    refused = {"creds": str(secret),  # absolute, out of the code root
               "up.txt": "../../credentials",  # relative, out of the folder
               "lib": "sub",  # a folder: not uploaded, not hashed
               "loop": "loop",  # no file at all (Path.resolve would raise)
               "settings.ini": ".env",  # the .env the upload leaves out, under another name
               "via.py": ".cache/train.py", "slash.py": "train.py/",  # not a folder
               "dead.py": "nowhere/../train.py",  # the OS finds no "nowhere"
               "back.py": "__pycache__/../train.py"}  # through a folder the tarball leaves out
    (code / "__pycache__").mkdir()
    (code / "..dots.py").write_text("")
    (code / "dots.py").symlink_to("..dots.py")  # a name that starts with "..": the job's
    for name, target in refused.items():
        (code / name).symlink_to(target)
    os.mkfifo(code / "pipe")  # not a file: its upload would read it for ever
    assert dict(stray_links(code)) == {**refused, "pipe": None}
    message = problems(base, {})
    assert message.startswith("bad params: steps.trainer.source_dir: holds what its job would "
                              "not get: '") and ", ..." in message
    assert "'creds' -> '" in message and "(it gets a relative link to a file of the" in message
    (code / "pipe").unlink()
    assert "alias.py" not in message and "hook" not in message and "up.py" not in message
    assert "dots.py" not in message
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:  # root reads a chmod 000 folder: the OS refuses here
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    for name in refused:
        (code / name).unlink()
    (code / "locked").mkdir()
    with mock.patch.object(os, "scandir", scandir):
        assert "steps.trainer.source_dir: cannot read its 'locked': Permission denied" in \
            problems(base, {})
    (root / "spin").symlink_to("spin")  # a conf naming a link loop: refused, no traceback
    assert "steps.trainer.source_dir: no folder" in problems(
        base, {"steps": {"trainer": {"source_dir": "spin"}}})


def test_local_artifacts_that_lead_nowhere_are_refused_before_any_job(defaults, tmp_path):
    """A link loop, a dead link or a file as local mode's artifacts would fail the run's first
    write, after its job ran (a loop was a RuntimeError traceback of Path.resolve, in the
    params' check itself): refused by the check, naming the key. A run's conf that points them
    at a loop gets the protected key's refusal, not a traceback."""
    from smtask.kinds.common import check_exists, check_uri
    from smtask.paths import confined

    (tmp_path / "spin").symlink_to("spin")
    (tmp_path / "gone").symlink_to("nowhere")
    (tmp_path / "file").write_text("")
    local = {**defaults, "mode": "local"}
    nowhere = "is a link that leads nowhere (a loop or a dead end)"
    for name, why in (("spin", nowhere), ("gone", nowhere), ("file", "is not a folder")):
        base = {**local, "local": {**local.get("local", {}), "artifacts": (tmp_path / name).as_uri()}}
        assert problems(base, {}) == f"bad params: local.artifacts: '{tmp_path / name}' {why}"
    # a part on the way: below a loop, a dead link or a file (found by a hostile trial: the
    # run followed a dead link and wrote under /nonexistent, or failed with a traceback)
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to("real")
    for uri, why in (("spin/sub", f"'{tmp_path}/spin' (on the way to the folder named) "
                      f"{nowhere}"),
                     ("gone/sub", f"'{tmp_path}/gone' (on the way to the folder named) "
                      f"{nowhere}"),
                     ("file/sub", f"'{tmp_path}/file' (on the way to the folder named) is "
                      "not a folder"),
                     ("file/", f"'{tmp_path}/file' is not a folder"),
                     ("x#y", "holds '?' or '#', which end a URI's path"),
                     ("x?y", "holds '?' or '#', which end a URI's path"),
                     ("ünï", "is not ASCII, as Airflow's assets need")):
        base = {**local, "local": {"artifacts": f"file://{tmp_path}/{uri}"}}
        said = problems(base, {})
        assert said.startswith("bad params: local.artifacts: ") and why in said, uri
    for fine in ("alias/sub", "real", "new/folder"):
        assert params.resolve({**local, "local": {"artifacts": f"file://{tmp_path}/{fine}"}}, {},
                              STEPS)
    # the default, $SMTASK_HOME/artifacts, is checked too
    with mock.patch.dict("os.environ", {"SMTASK_HOME": str(tmp_path / "home")}):
        (tmp_path / "home").mkdir()
        (tmp_path / "home" / "artifacts").symlink_to("/nonexistent-smtask-artifacts")
        said = problems({**local, "local": {}}, {})
        assert said.startswith("bad params: local.artifacts: '") and \
            said.endswith(nowhere)  # the path may be shortened
    conf = {"local": {"artifacts": (tmp_path / "spin").as_uri()}}
    assert "local.artifacts: a run's conf may not change it" in problems(local, conf)
    (tmp_path / "run").mkdir()
    assert params.resolve({**local, "local": {"artifacts": (tmp_path / "run").as_uri()}}, {}, STEPS)
    # a location a task's function returns, through a loop: "no file", no traceback
    with pytest.raises(SmtaskError, match=f"no file or folder {tmp_path}/spin/data"):
        check_exists("splitor", "input 'x'", check_uri("splitor", "input 'x'", f"{tmp_path}/spin/data"))
    with pytest.raises(SmtaskError, match=r"Symlink loop .* \(a link that leads back to itself\)"):
        confined(tmp_path / "spin" / "out", tmp_path)


def test_training_requirements_must_be_a_file_of_the_source_dir(defaults):
    message = problems(defaults, {"steps": {"trainer": {"requirements": "requirements.txt"}}})
    assert "steps.trainer.requirements: no file requirements.txt in" in message


def test_the_trigger_form_knows_the_new_keys():
    from smtask.kinds import processing
    from smtask.params import trigger_schema

    form = trigger_schema({"type": "object", "additionalProperties": False,
                           **processing.KIND.schema})
    assert {"settings", "source_dir", "code", "requirements"} <= set(form["properties"])
    assert "required" not in form


def test_pip_output_loses_credentials():
    from smtask.local.wheels import _redacted

    text = "Looking in indexes: https://user:s3cret@pypi.example/simple, https://tok@x.y/z"
    assert _redacted(text) == "Looking in indexes: https://***@pypi.example/simple, https://***@x.y/z"


# --- the function's return value ----------------------------------------------------------

def test_an_input_named_config_is_refused_naming_it(tmp_path, capfd):
    body = '''
@sm_processing(step="splitor")
def split():
    return {"config": "s3://bucket/x/", "data-source": "s3://bucket/y/"}
split()
'''
    result = run_dag(body, config=write_config(tmp_path, mode="local"))
    assert result.states["split"] == "failed"
    out = capfd.readouterr().out
    assert "TypeError: step 'splitor': input name 'config' is reserved" in out
    assert containers_with_label() == []


def test_a_channel_named_config_is_refused_naming_it(tmp_path, capfd):
    body = '''
@sm_training(step="trainer")
def train():
    return {"train": "s3://bucket/x/", "config": "s3://bucket/y/"}
train()
'''
    result = run_dag(body, config=write_config(tmp_path, mode="local"))
    assert result.states["train"] == "failed"
    assert "step 'trainer': channel name 'config' is reserved" in capfd.readouterr().out


def test_a_local_input_that_does_not_exist_fails_before_any_job(tmp_path, capfd):
    body = f'''
@sm_processing(step="splitor")
def split():
    return {{"data-source": "{tmp_path}/missing"}}
split()
'''
    result = run_dag(body, config=write_config(tmp_path, mode="local"))
    assert result.states["split"] == "failed"
    out = capfd.readouterr().out
    assert f"step 'splitor': input 'data-source': no file or folder {tmp_path}/missing" in out
    assert "docker-compose" not in out


# --- seed 004 -----------------------------------------------------------------------------

def seed_block() -> str | None:
    """The seed's preprocessing.py as the seed prints it, where the seeds are at hand."""
    for seed in sorted((ROOT.parent / "shared" / "seeds").glob("004_*.txt")):
        found = re.search(r"```python\n(# preprocessing\.py\n.*?)```", seed.read_text(), re.S)
        return found.group(1) if found else ""
    return None


def test_the_seeds_script_is_kept_verbatim():
    script = (ROOT / "code" / "preprocessing.py").read_bytes()
    assert hashlib.sha256(script).hexdigest() == SEED_SCRIPT_SHA256
    block = seed_block()
    assert block is None or block.encode() == script


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_seed004_splitor_splits_the_parquet_by_month_with_the_seeds_own_script(loopback_guard):
    import pandas as pd

    result = run_example("seed004_splitor")  # the example DAG file, unchanged
    results = result.xcom
    assert result.ok, results
    data = pd.read_parquet(path(results["data-source"]))
    months = data["timestamp"]
    expected = {"train": int(((months >= "2020-01") & (months <= "2021-12")).sum()),
                "test": int((months == "2022-07").sum())}
    assert expected["train"] > expected["test"] > 0 and len(data) > sum(expected.values())
    outputs = results["splitor"]["outputs"]
    for name, rows in expected.items():
        split = pd.read_csv(path(outputs[name]) / f"{name}.csv")
        assert len(split) == rows, name
        assert list(split.columns) == ["label", "a", "b"]  # label first, the month dropped
    assert containers_with_label() == []


# --- local containers ---------------------------------------------------------------------

FRAMEWORK_DAG = '''
@sm_processing(step="splitor")
def split():
    return {}
split()
'''


def host_pip_config() -> list[str]:
    done = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True,
                          text=True, check=False)
    values = [line.split("=", 1)[1].strip("'") for line in done.stdout.splitlines() if "=" in line]
    return [value for value in values if "/" in value]  # paths and index URLs


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_framework_processing_runs_a_source_dir_with_its_requirements_and_settings(
        tmp_path, loopback_guard, capfd):
    source = ROOT / "tests" / "scripts" / "framework"
    before = sorted(p.name for p in source.rglob("*"))
    config = write_config(tmp_path, steps={"splitor": {
        **FRAMEWORK, "requirements": "requirements.txt", "arguments": ["--flag", "1"],
        "outputs": {"report": {"source": "/opt/ml/processing/report"}},
        "settings": {"threshold": 0.5, "nested": {"a": 1, "b": 2}}}})
    conf = {"steps": {"splitor": {"settings": {"nested": {"b": 3}}}}}
    result = run_dag(FRAMEWORK_DAG, config=config, conf=conf)
    out = capfd.readouterr().out
    assert result.ok, out[-3000:]
    report = json.loads((path(result.xcom["split"]["outputs"]["report"]) / "report.json").read_text())
    assert report["helper"] == "hello from the source dir"
    assert report["tabulate"]  # installed from the requirements, with no index
    assert report["argv"] == ["--flag", "1"]
    config_seen = report["config"]
    assert set(config_seen) == {"pipeline_name", "mode", "steps"}
    assert config_seen["mode"] == "local" and config_seen["pipeline_name"] == "churn"
    assert list(config_seen["steps"]) == ["splitor"]  # this step's settings only
    step = config_seen["steps"]["splitor"]
    assert step["threshold"] == 0.5 and step["nested"] == {"a": 1, "b": 3}  # lifted, merged
    assert step["code"] == "pkg/job.py" and "settings" not in step
    assert report["settings_path"] == "/opt/ml/processing/input/config/config.json"
    assert report["settings_write"] == "OSError"  # read-only
    assert report["pip_env"]["PIP_NO_INDEX"] == "1"
    assert report["pip_env"]["PIP_FIND_LINKS"] == "/opt/smtask/wheels"
    seen = "\n".join(report["pip_config"])
    for value in host_pip_config():  # none of the host's pip configuration reaches the job
        assert value not in seen and value not in out, value
    assert sorted(p.name for p in source.rglob("*")) == before  # nothing unpacked beside it
    assert containers_with_label() == []


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_training_reads_its_settings_channel_and_installs_requirements(tmp_path, loopback_guard):
    body = '''
@task
def source():
    from airflow.sdk import get_current_context
    from smtask.storage import run_prefix, write_text
    folder = run_prefix(get_current_context(), "data")
    write_text(folder + "/data.csv", "x\\n1\\n")
    return folder

@sm_training(step="trainer")
def train(folder):
    return {"train": folder}
train(source())
'''
    config = write_config(tmp_path, steps={"trainer": {
        "source_dir": "tests/scripts/settings_train", "entry_script": "train.py",
        "requirements": "requirements.txt", "settings": {"features": ["a", "b"]}}})
    result = run_dag(body, config=config)
    assert result.ok, result.states
    with tarfile.open(path(result.xcom["train"]["model"])) as tar:
        seen = json.load(io.BytesIO(tar.extractfile("seen.json").read()))  # type: ignore[union-attr]
    assert seen["path"] == "/opt/ml/input/data/config/config.json"
    assert seen["config"]["steps"]["trainer"]["features"] == ["a", "b"]
    assert seen["config"]["steps"]["trainer"]["hyperparameters"]["max_depth"] == 6
    assert list(seen["config"]["steps"]) == ["trainer"]
    assert {"config", "train"} <= set(seen["channels"])
    assert seen["tabulate"] and seen["pip_env"]["PIP_NO_INDEX"] == "1"
    assert containers_with_label() == []
