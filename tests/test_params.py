"""Params: deep-merge of a run's conf, and bad params rejected with the step and key named."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import kinds_of

from smtask import naming, params
from smtask.errors import ParamsError

ROOT = Path(__file__).resolve().parent.parent
STEPS = kinds_of({"splitor": "processing", "trainer": "training", "transformer": "transform"})


@pytest.fixture
def defaults() -> dict:
    return params.load_config(ROOT / "config.json")


def test_run_conf_overrides_one_nested_key_and_keeps_its_siblings(defaults):
    conf = {"steps": {"trainer": {"hyperparameters": {"max_depth": 2}}}}
    merged = params.resolve(defaults, conf, STEPS)
    assert merged["steps"]["trainer"]["hyperparameters"] == {
        **defaults["steps"]["trainer"]["hyperparameters"], "max_depth": 2}
    assert merged["steps"]["splitor"] == defaults["steps"]["splitor"]


def test_null_in_run_conf_falls_back_to_the_default(defaults):
    merged = params.resolve(defaults, {"steps": {"trainer": {"max_runtime_seconds": None}}}, STEPS)
    assert "max_runtime_seconds" not in merged["steps"]["trainer"]


def test_lists_in_run_conf_replace_rather_than_append(defaults):
    merged = params.resolve(defaults, {"steps": {"splitor": {"arguments": ["--seed", "1"]}}}, STEPS)
    assert merged["steps"]["splitor"]["arguments"] == ["--seed", "1"]


@pytest.mark.parametrize(("conf", "expected"), [
    ({"steps": {"trainer": {"instance_count": "two"}}},
     "steps.trainer.instance_count: 'two' is not of type 'integer'"),
    ({"steps": {"splitor": {"instnce_type": "ml.m5.large"}}},
     "steps.splitor.instnce_type: unknown key"),
    ({"steps": {"transformer": None}},
     "steps.transformer: missing; the DAG's task uses this step"),
    ({"steps": {"splitor": {"code_path": None}}},
     "steps.splitor.code_path: required key is missing"),
    ({"mode": "cloud"}, "mode: 'cloud' is not one of ['local', 'sagemaker']"),
    ({"steps": {"splitor": {"code_path": "code/missing.py"}}},
     "steps.splitor.code_path: no file"),
    ({"steps": {"trainer": {"entry_script": "nope.py"}}},
     "steps.trainer.entry_script: no file nope.py"),
    ({"steps": {"splitor": {"outputs": {"train": {"source": "/tmp/train"}}}}},
     "steps.splitor.outputs.train.source: '/tmp/train' is not a path under /opt/ml/"),
    ({"pipelin_name": "x"}, "pipelin_name: unknown key"),
    ({"steps": {"transformer": {"split_type": "Lines"}}},
     "steps.transformer.split_type: 'Lines' is not one of"),
], ids=["wrong-type", "unknown-step-key", "missing-step", "missing-required-key", "bad-mode",
        "code-not-found", "entry-script-not-found", "output-outside-opt-ml",
        "unknown-top-level-key", "bad-enum"])
def test_bad_params_are_rejected_naming_the_key(defaults, conf, expected):
    with pytest.raises(ParamsError) as excinfo:
        params.resolve(defaults, conf, STEPS)
    assert expected in str(excinfo.value)


def test_every_problem_is_reported_at_once(defaults):
    conf = {"steps": {"trainer": {"instance_count": 0, "bogus": 1}, "splitor": {"command": []}}}
    with pytest.raises(ParamsError) as excinfo:
        params.resolve(defaults, conf, STEPS)
    problems = excinfo.value.problems
    for key in ("steps.trainer.instance_count", "steps.trainer.bogus", "steps.splitor.command"):
        assert any(p.startswith(key) for p in problems), (key, problems)
    # the refusal itself: the first three, one a line, then how many more
    lines = str(excinfo.value).splitlines()
    assert len(lines) == 3 and len(str(excinfo.value)) < 500
    assert lines[0].startswith(f"bad params ({len(problems)} problems): ")
    assert lines[-1].endswith(f"(and {len(problems) - 3} more)")


def test_run_conf_that_is_not_an_object_is_rejected(defaults):
    with pytest.raises(ParamsError, match="must be a JSON object"):
        params.resolve(defaults, ["steps"], STEPS)  # type: ignore[arg-type]


def test_mode_defaults_to_the_environment(tmp_path, monkeypatch):
    config = json.loads((ROOT / "config.json").read_text())
    del config["mode"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("SMTASK_MODE", "sagemaker")
    assert params.load_config(tmp_path / "config.json")["mode"] == "sagemaker"
    monkeypatch.delenv("SMTASK_MODE")
    assert params.load_config(tmp_path / "config.json")["mode"] == "local"


def test_relative_code_paths_resolve_against_the_config_folder(defaults):
    assert defaults["code_root"] == str(ROOT)


def test_unreadable_config_is_a_params_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ParamsError, match="cannot read pipeline config"):
        params.load_config(tmp_path / "config.json")


# Names that must never become a path component or an AWS name.
HOSTILE_NAMES = ["..", ".", "../x", "../../../../../x", "/abs", "a/b", "x y", "name\n", "",
                 "a" * 300, "spl\u0456tor"]  # the last: a Cyrillic i, a look-alike
HOSTILE_IDS = ["dotdot", "dot", "parent", "deep-parent", "absolute", "slash", "space",
               "newline", "empty", "300-chars", "look-alike"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=HOSTILE_IDS)
def test_hostile_step_name_in_config_is_refused_naming_it(defaults, name):
    defaults["steps"][name] = {}
    with pytest.raises(ParamsError) as excinfo:
        params.resolve(defaults, {}, STEPS)
    assert f"steps: step name {ascii(name)[:40]}" in str(excinfo.value)


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=HOSTILE_IDS)
def test_hostile_output_name_is_refused_naming_it(defaults, name):
    conf = {"steps": {"splitor": {"outputs": {name: {"source": "/opt/ml/processing/x"}}}}}
    with pytest.raises(ParamsError) as excinfo:
        params.resolve(defaults, conf, STEPS)
    assert f"steps.splitor.outputs: output name {ascii(name)[:40]}" in str(excinfo.value)


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=HOSTILE_IDS)
def test_hostile_input_or_channel_name_is_refused_naming_the_step_and_it(name):
    with pytest.raises(TypeError) as excinfo:
        naming.check_name("trainer", "channel", name)
    assert f"step 'trainer': channel name {ascii(name)[:40]}" in str(excinfo.value)


@pytest.mark.parametrize("name", ["train", "data-source", "model.v2", "a_b", "A" * 64])
def test_input_and_channel_names_sagemaker_allows_are_accepted(name):
    assert naming.check_name("trainer", "channel", name) == name


def test_step_name_the_dag_uses_is_checked_too(defaults):
    with pytest.raises(ParamsError, match=r"steps: step name '\.\./x' is not allowed"):
        params.resolve(defaults, {}, {**STEPS, **kinds_of({"../x": "processing"})})


def test_pipeline_name_with_a_trailing_newline_is_refused(defaults):
    with pytest.raises(ParamsError, match=r"pipeline_name: 'churn\\n' is not allowed"):
        params.resolve(defaults, {"pipeline_name": "churn\n"}, STEPS)


def test_conf_naming_a_step_the_dag_lacks_is_refused_listing_the_known_steps(defaults):
    with pytest.raises(ParamsError) as excinfo:
        params.resolve(defaults, {"steps": {"trainr": {"max_depth": 3}}}, STEPS)
    assert ("steps.trainr: unknown step (known: data-source, evaluate, "
            "splitor, trainer, transformer)") in str(excinfo.value)


def test_conf_may_set_a_plain_tasks_step_from_the_config(defaults):
    merged = params.resolve(defaults, {"steps": {"evaluate": {"metric": "f1"}}}, STEPS)
    assert merged["steps"]["evaluate"]["metric"] == "f1"


def test_conf_may_set_a_step_the_dags_tasks_use_but_the_config_lacks(defaults):
    transformer = defaults["steps"].pop("transformer")
    merged = params.resolve(defaults, {"steps": {"transformer": transformer}}, STEPS)
    assert merged["steps"]["transformer"] == transformer


@pytest.mark.parametrize(("conf", "expected"), [
    ({"steps": {"trainer": {"image": "x" * 100_000}}},
     "steps.trainer.image: 100000 characters, at most 256"),
    ({"steps": {"splitor": {"code_path": "x" * 100_000}}},
     "steps.splitor.code_path: 100000 characters, at most 1024"),
    ({"steps": {"trainer": {"hyperparameters": {"note": "x" * 2501}}}},
     "steps.trainer.hyperparameters.note: 2501 characters, at most 2500"),
    ({"steps": {"transformer": {"environment": {"K": "x" * 1025}}}},
     "steps.transformer.environment.K: 1025 characters, at most 1024"),
    ({"steps": {"splitor": {"arguments": ["x" * 257]}}},
     "steps.splitor.arguments.0: 257 characters, at most 256"),
    ({"role": "x" * 100_000}, "role: 100000 characters, at most 2048"),
], ids=["image", "path", "hyperparameter", "environment", "argument", "role"])
def test_too_long_string_is_refused_in_one_short_line_naming_the_key(defaults, conf, expected):
    with pytest.raises(ParamsError) as excinfo:
        params.resolve(defaults, conf, STEPS)
    assert any(line.endswith(expected) for line in str(excinfo.value).splitlines())
    assert len(str(excinfo.value)) < 500


def test_map_with_too_many_entries_is_refused_naming_the_limit(defaults):
    conf = {"steps": {"trainer": {"tags": {f"k{i}": "v" for i in range(51)}}}}
    with pytest.raises(ParamsError, match=r"steps\.trainer\.tags: 51 keys, at most 50$"):
        params.resolve(defaults, conf, STEPS)


def test_path_the_os_refuses_is_reported_as_missing(defaults):
    with pytest.raises(ParamsError, match="steps.splitor.code_path: no file"):
        params.resolve(defaults, {"steps": {"splitor": {"code_path": "x" * 300}}}, STEPS)


def test_a_dag_authors_own_params_pass_beside_the_configs(defaults):
    merged = params.resolve({**defaults, "report_date": "2026-01-01"}, {"report_date": "x"}, STEPS)
    assert merged["report_date"] == "x"
    with pytest.raises(ParamsError, match="report_dat: unknown key"):
        params.resolve({**defaults, "report_date": "2026-01-01"}, {"report_dat": "x"}, STEPS)


@pytest.mark.parametrize(("conf", "refused"), [
    ({"role": "arn:aws:iam::1:role/admin"}, "role: a run's conf may not change it"),
    ({"artifacts": "s3://elsewhere/x"}, "artifacts: a run's conf may not change it"),
    ({"aws_conn_id": "prod"}, "aws_conn_id: a run's conf may not change it"),
    ({"local": {"artifacts": "file:///"}}, "local.artifacts: a run's conf may not change it"),
    ({"steps": {"trainer": {"image": "evil"}}}, "steps.trainer.image: a run's conf may not"),
    ({"code_root": "/"}, "code_root: a run's conf may never change it"),
    ({"code_root": None}, "code_root: a run's conf may never change it"),
    ({"conf_may_override": ["role"]}, "conf_may_override: a run's conf may never change it"),
], ids=["role", "artifacts", "connection", "local-artifacts", "step-image", "code-root",
        "code-root-removed", "the-rule-itself"])
def test_a_run_conf_may_not_change_what_the_author_protects(defaults, conf, refused):
    with pytest.raises(ParamsError, match=re.escape(refused)):
        params.resolve(defaults, conf, STEPS)


def test_the_author_opts_in_to_overrides_and_an_unchanged_value_is_no_override(defaults):
    allowing = {**defaults, "conf_may_override": ["role", "steps.*.image"]}
    merged = params.resolve(allowing, {"role": "arn:aws:iam::1:role/x",
                                       "steps": {"trainer": {"image": "mine"}}}, STEPS)
    assert merged["role"] == "arn:aws:iam::1:role/x"
    assert merged["steps"]["trainer"]["image"] == "mine"
    params.resolve(defaults, {"role": defaults["role"]}, STEPS)  # the same value: allowed


@pytest.mark.parametrize(("step", "key", "value"), [
    ("splitor", "code_path", "../../../../etc/passwd"),
    ("trainer", "source_dir", "/etc"),
    ("trainer", "entry_script", "../../etc/passwd"),
])
def test_code_must_stay_inside_the_code_root(defaults, step, key, value):
    with pytest.raises(ParamsError, match=rf"steps\.{step}\.{key}: .* is outside"):
        params.resolve(defaults, {"steps": {step: {key: value}}}, STEPS)


def test_a_file_uri_with_a_host_is_refused(defaults):
    with pytest.raises(ParamsError, match=r"local.artifacts: 'file://data/artifacts' is not an s3://bucket"):
        params.validate({**defaults, "local": {"artifacts": "file://data/artifacts"}}, STEPS)


@pytest.mark.parametrize("given,expected", [(None, "dags"), ("..", "."), ("../code", "code"),
                                            ("/abs/elsewhere", "/abs/elsewhere")])
def test_code_root_is_the_configs_folder_or_relative_to_it(tmp_path, given, expected):
    (tmp_path / "dags").mkdir()
    config = {"pipeline_name": "p", "steps": {}}
    if given is not None:
        config["code_root"] = given
    path = tmp_path / "dags" / "p.json"
    path.write_text(json.dumps(config))
    assert params.load_config(path)["code_root"] == str((tmp_path / expected).resolve())


def test_tasks_share_the_params_schemas_and_an_authors_own_param_is_still_checked(tmp_path):
    """Airflow deep-copies the DAG's params into every task at parse time, and checks each
    schema against the metaschema on every dump(): the steps' schemas are shared, and a
    task reads the defaults without that check; the author's own params are checked against
    a conf as Airflow checks them, with the key named."""
    import copy

    from airflow.sdk import DAG, Param

    from smtask import pipeline_params, sm_training
    from smtask.params import check_authors_params, dag_defaults

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pipeline_name": "p", "mode": "local", "steps": {"trainer": {}}}))
    params = {**pipeline_params(path), "threshold": Param(0.5, type="number")}
    with DAG("shared", schedule=None, params=params) as dag:
        sm_training(step="trainer", task_id="train")(lambda: {})()
    steps = dag.params.get_param("steps")
    assert copy.deepcopy(steps).schema is steps.schema
    assert dag.tasks[0].params.get_param("steps").schema is steps.schema
    assert "trainer" in steps.schema["properties"]  # the step's schema, added at parse time
    assert dag_defaults(dag) == {"pipeline_name": "p", "mode": "local", "code_root": str(tmp_path),
                                 "steps": {"trainer": {}}, "threshold": 0.5}
    check_authors_params(dag, {"threshold": 0.7})
    with pytest.raises(ParamsError, match="param threshold: .*'high' is not of type 'number'"):
        check_authors_params(dag, {"threshold": "high"})


def test_each_task_gets_its_own_copy_of_the_params_values_and_a_step_is_described_once(
        tmp_path, monkeypatch):
    """The DAG's param values are copied into each task as JSON (not by a generic deepcopy):
    a task that changes its copy in place changes no other's, and the copy still equals the
    DAG's and serializes as Airflow's own. The decorator and the operator's __init__ both
    ask for a step's schema and assets: made once per parse, still made for a second DAG."""
    import copy

    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from smtask import lineage, pipeline_params, sm_processing
    from smtask.params import adapter

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pipeline_name": "p", "mode": "local", "steps": {
        "prep": {"code": "prep.py", "outputs": {"train": {}}, "environment": {"A": "1"}}}}))
    (tmp_path / "prep.py").write_text("")
    made = {"schemas": 0, "assets": 0}
    real_schema, real_assets = adapter.step_schema, lineage._step_assets

    def counted(name, real):
        def call(*args):
            made[name] += 1
            return real(*args)
        return call

    monkeypatch.setattr(adapter, "step_schema", counted("schemas", real_schema))
    monkeypatch.setattr(lineage, "_step_assets", counted("assets", real_assets))
    for dag_id in ("first", "second"):
        with DAG(dag_id, schedule=None, params=pipeline_params(path)) as dag:
            sm_processing(step="prep", task_id="one")(lambda: {})()
    assert made == {"schemas": 2, "assets": 2}  # one per DAG, not one per ask
    assert [a.uri.rsplit("/", 3)[1:] for a in dag.tasks[0].outlets] == [["second", "prep", "train"]]

    mine = dag.tasks[0].params.get_param("steps").value
    theirs = dag.params.get_param("steps").value
    assert mine == theirs and mine is not theirs
    mine["prep"]["environment"]["A"] = "changed"  # a task that changes its own, in place
    assert theirs["prep"]["environment"]["A"] == "1"
    again = copy.deepcopy(dag.params).get_param("steps").value
    assert again == theirs and again["prep"] is not theirs["prep"]
    assert type(again["prep"]["environment"]) is dict
    serialized = DagSerialization.to_dict(dag)["dag"]["params"]
    assert dict(serialized)["steps"]["__class"] == "airflow.sdk.definitions.param.Param"


def test_a_schema_is_checked_against_the_metaschema_once_per_content(monkeypatch):
    """Airflow checks a Param's schema each time it resolves it (about ten dumps of the DAG's
    params per serialization, 95% of it): smtask's dialect checks each content once, and a
    schema the metaschema refuses is refused every time."""
    import copy

    from airflow.sdk import Param
    from jsonschema import SchemaError

    from smtask import schema

    checked: list[Any] = []
    real = schema._check_schema
    monkeypatch.setattr(schema, "_check_schema", lambda s, *a, **k: (checked.append(s), real(s)))
    schema._checked_schema.cache_clear()
    good = {"$schema": schema.DIALECT, "type": "object", "properties": {"a": {"type": "integer"}}}
    for _ in range(3):
        Param({"a": 1}, **copy.deepcopy(good)).resolve()
    assert len(checked) == 1
    with pytest.raises(ValueError, match="is not of type 'integer'"):
        Param({"a": 1.5}, **good).resolve()  # the value is still checked, every time
    bad = {"$schema": schema.DIALECT, "type": "objekt"}
    for _ in range(2):
        with pytest.raises(SchemaError):
            schema.Validator.check_schema(bad)
    assert len(checked) == 3


def test_an_authors_param_without_default_given_by_the_run_conf_passes(tmp_path):
    """A Param without a default (a required field of the trigger form, allowed with
    schedule=None) is given by the run's conf: Airflow accepts the run, so must smtask.
    (Before dag_defaults, params.dump() answered None for it and the conf's value won.)"""
    from airflow.sdk import DAG, Param

    from smtask import pipeline_params, sm_training

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pipeline_name": "p", "mode": "local", "steps": {"trainer": {}}}))
    with DAG("required", schedule=None,
             params={**pipeline_params(path), "threshold": Param(type="number")}) as dag:
        sm_training(step="trainer", task_id="train")(lambda: {})()
    merged = params.resolve(params.dag_defaults(dag), {"threshold": 0.7}, {})
    assert merged["threshold"] == 0.7


@pytest.mark.parametrize("conf", [
    {"steps": {"trainer": {"hyperparameters": {"max_depth": None}}}},
    {"steps": {"splitor": {"outputs": {"batch": None}}}},
    {"tags": {"project": None}},
], ids=["hyperparameter", "output", "tag"])
def test_a_null_that_smtask_accepts_is_accepted_by_the_trigger_schemas(conf):
    """README: the trigger form's schemas allow ``null`` (remove a key). smtask's own check
    accepts a null in a map (a hyperparameter, an output, a tag) and drops the key; Airflow's
    check of the same conf at trigger time (and in dag.test: ``smtask run``) refused it with
    "Invalid input for param steps: None is not of type ..." naming no step or key."""
    from airflow.sdk import DAG

    from smtask import pipeline_params, sm_processing, sm_training

    params.resolve(params.load_config(ROOT / "config.json"), conf, STEPS)  # smtask: fine
    with DAG("nulls", schedule=None, params=pipeline_params(ROOT / "config.json")) as dag:
        sm_processing(step="splitor", task_id="split")(lambda: {})()
        sm_training(step="trainer", task_id="train")(lambda: {})()
    for key, value in conf.items():
        dag.params.get_param(key).resolve(value)  # Airflow's check of the conf, per param


@pytest.mark.parametrize("image", [
    {"framework": "pytorch", "version": "2.1", "py_version": "py310"},
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.1.0-cpu-py310",
], ids=["by-framework", "by-uri"])
def test_local_mode_refuses_a_framework_it_has_no_stand_in_for_before_any_container(defaults,
                                                                                  image):
    config = params.deep_merge(defaults, {"steps": {"trainer": {"image": image}}})
    with pytest.raises(ParamsError) as refused:
        params.resolve(config, {}, STEPS)
    assert "steps.trainer.image: local mode has no stand-in for AWS's pytorch image" in \
        str(refused.value)
    assert 'README: "Extending the local image"' in str(refused.value)
    # with an image of one's own, or on SageMaker, it runs
    params.resolve(params.deep_merge(config, {"local": {"image": "my-torch:1"}}), {}, STEPS)
    params.resolve(params.deep_merge(config, {"mode": "sagemaker"}), {}, STEPS)


def test_local_mode_stands_in_for_the_scikit_learn_and_xgboost_images(defaults):
    for framework in ("sklearn", "xgboost"):
        params.resolve(params.deep_merge(defaults, {"steps": {"trainer": {
            "image": {"framework": framework, "version": "1.2-1" if framework == "sklearn"
                      else "1.7-1"}}}}), {}, STEPS)
