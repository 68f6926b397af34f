"""The trigger form: the knobs a run changes as typed fields of their own, one section per step,
nothing required; hyperparameters and plain steps typed from their defaults; and every
refusal one short line naming the step, the key and the rule (smtask.params.form)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import kinds_of

from smtask import params
from smtask.errors import ParamsError

ROOT = Path(__file__).resolve().parent.parent
STEPS = kinds_of({"splitor": "processing", "trainer": "training", "transformer": "transform"})
MAX_DEPTH = "steps.trainer.hyperparameters.max_depth"


def example_dag(config: Path = ROOT / "config.json") -> Any:
    """The example's params with its three smtask steps, as the DAG processor parses them."""
    from airflow.sdk import DAG

    from smtask import pipeline_params, sm_processing, sm_training, sm_transform

    with DAG("form", schedule=None, params=pipeline_params(config)) as dag:
        sm_processing(step="splitor", task_id="split")(lambda: {})()
        sm_training(step="trainer", task_id="train")(lambda: {})()
        sm_transform(step="transformer", task_id="predict")(lambda: {})()
    return dag


def trigger(dag: Any, conf: dict[str, Any]) -> None:
    """What Airflow checks when a run is triggered (REST 400, the form): every Param against
    the conf's value for it, else its default (on a copy: resolve() keeps the value)."""
    for key in dag.params:
        param = copy.deepcopy(dag.params.get_param(key))
        param.resolve(conf[key]) if key in conf else param.resolve()


def test_the_knobs_are_typed_fields_with_their_defaults_titles_and_a_section_per_step():
    dag = example_dag()
    fields = {key: dag.params.get_param(key) for key in dag.params if key.startswith("steps.")}
    depth = fields[MAX_DEPTH]
    assert (depth.value, depth.schema["type"], depth.schema["title"], depth.schema["section"],
            depth.schema["minimum"]) == (6, ["integer", "null"], "Maximum depth", "step trainer", 1)
    assert depth.description == "how deep each tree may grow"  # config.json's form gives both
    seed = fields["steps.trainer.hyperparameters.seed"]
    assert (seed.schema["type"], seed.schema["title"]) == (["integer", "null"], "seed")
    assert seed.description == "hyperparameter seed of step trainer (config.json: 7)"
    # each step's instances; label_column is wiring, the config's form takes it out
    assert {"steps.splitor.instance_type", "steps.trainer.instance_count",
            "steps.transformer.instance_type"} <= set(fields)
    assert "steps.trainer.hyperparameters.label_column" not in fields
    assert fields["steps.transformer.instance_type"].schema["type"] == ["string", "null"]


def test_no_field_is_required_and_the_infrastructure_has_its_own_section():
    """Airflow's form marks a field required when its schema has a type without null
    (isParamRequired.tsx): a conf is deep-merged, nothing is required."""
    dag = example_dag()
    for key in dag.params:
        schema = dag.params.get_param(key).schema
        kinds = schema.get("type")
        assert kinds is None or (isinstance(kinds, list) and "null" in kinds), (key, kinds)
    sections = {key: dag.params.get_param(key).schema.get("section") for key in dag.params}
    assert {sections[k] for k in ("pipeline_name", "mode", "role", "image", "artifacts",
                                  "aws_conn_id", "region_name", "tags", "local")} == \
        {"infrastructure"}
    assert sections["steps"] == "advanced: every step's settings"  # the JSON, last
    assert all(dag.params.get_param(k).description for k in dag.params
               if "const" not in dag.params.get_param(k).schema)  # shown: described
    assert dag.params.get_param("mode").schema["enum"] == ["local", "sagemaker", None]  # a select
    assert dag.params.get_param("form").schema.get("const")  # the form hides a const


@pytest.mark.parametrize("conf", [
    {MAX_DEPTH: "deep"},
    {"steps": {"trainer": {"hyperparameters": {"max_depth": "deep"}}}},
], ids=["field", "steps"])
def test_a_hyperparameter_is_typed_from_its_default_at_trigger_time_and_in_the_task(conf):
    from airflow.sdk.exceptions import ParamValidationError

    dag = example_dag()
    with pytest.raises(ParamValidationError) as refused:
        trigger(dag, conf)
    line = f"{MAX_DEPTH}: 'deep' is not of type 'integer'"
    assert str(refused.value).endswith(line), str(refused.value)
    with pytest.raises(ParamsError) as failed:  # smtask validate, the task's own check
        params.resolve(params.dag_defaults(dag), conf, STEPS)
    assert failed.value.problems == [line]


def test_a_field_reaches_the_job_as_the_same_key_under_steps_would():
    dag = example_dag()
    defaults = params.dag_defaults(dag)
    by_field = params.resolve(defaults, {MAX_DEPTH: 3}, STEPS)
    by_steps = params.resolve(defaults, {"steps": {"trainer": {"hyperparameters": {"max_depth": 3}}}},
                              STEPS)
    assert by_field == by_steps
    assert by_field["steps"]["trainer"]["hyperparameters"] == \
        {"n_estimators": 100, "max_depth": 3, "seed": 7, "label_column": "label"}
    assert not [key for key in by_field if key.startswith("steps.")]


def test_the_forms_whole_submission_applies_the_changed_field_and_the_explicit_steps_wins():
    """The form sends every param: each field at its default, ``steps`` whole. A changed
    field applies; where ``steps`` changes the same key too, ``steps`` wins (README)."""
    dag = example_dag()
    defaults = params.dag_defaults(dag)
    sent = {**defaults, MAX_DEPTH: 9, "steps.trainer.instance_count": None}
    assert params.resolve(defaults, sent, STEPS)["steps"]["trainer"]["hyperparameters"][
        "max_depth"] == 9
    both = params.deep_merge(sent, {"steps": {"trainer": {"hyperparameters": {"max_depth": 4}}}})
    assert params.resolve(defaults, both, STEPS)["steps"]["trainer"]["hyperparameters"][
        "max_depth"] == 4
    # a field at its default changes nothing, even where the conf's steps differ
    kept = params.deep_merge(defaults, {"steps": {"trainer": {"instance_count": 2}}})
    assert params.resolve(defaults, kept, STEPS)["steps"]["trainer"]["instance_count"] == 2


def test_a_key_named_like_a_field_that_is_none_is_refused():
    dag = example_dag()
    with pytest.raises(ParamsError) as refused:
        params.resolve(params.dag_defaults(dag), {"steps.trainer.image": "evil"}, STEPS)
    assert refused.value.problems[0].startswith(
        "'steps.trainer.image': no field of this DAG's form (fields: steps.splitor.instance_count")


def write(tmp_path: Path, **extra: Any) -> Path:
    config = json.loads((ROOT / "config.json").read_text())
    config.update(extra)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    shutil.copytree(ROOT / "code", tmp_path / "code")
    return path


def test_the_config_widens_a_type_offers_choices_and_takes_a_field_out(tmp_path):
    from airflow.sdk.exceptions import ParamValidationError

    dag = example_dag(write(tmp_path, form={
        "trainer.hyperparameters.max_depth": {"type": ["integer", "string"]},
        "trainer.hyperparameters.n_estimators": {"enum": [50, 100, 200]},
        "trainer.hyperparameters.seed": False}))
    assert "steps.trainer.hyperparameters.seed" not in dag.params
    assert dag.params.get_param("steps.trainer.hyperparameters.n_estimators").schema["enum"] == \
        [50, 100, 200, None]
    defaults = params.dag_defaults(dag)
    for conf in ({MAX_DEPTH: "auto"},
                 {"steps": {"trainer": {"hyperparameters": {"max_depth": "auto"}}}}):
        trigger(dag, conf)
        assert params.resolve(defaults, conf, STEPS)["steps"]["trainer"]["hyperparameters"][
            "max_depth"] == "auto"
    with pytest.raises(ParamValidationError, match="n_estimators: 70 is not one of"):
        trigger(dag, {"steps": {"trainer": {"hyperparameters": {"n_estimators": 70}}}})
    with pytest.raises(ParamsError, match="seed: 'x' is not of type 'integer'"):  # still typed
        params.resolve(defaults, {"steps": {"trainer": {"hyperparameters": {"seed": "x"}}}}, STEPS)


def test_a_plain_steps_keys_are_typed_from_their_defaults_unless_the_config_frees_it(tmp_path):
    from airflow.sdk.exceptions import ParamValidationError

    dag = example_dag()
    for conf, line in (
            ({"steps": {"evaluate": {"label_colum": "y"}}},
             "steps.evaluate.label_colum: unknown key (known keys: label_column, metric)"),
            ({"steps": {"evaluate": {"metric": 5}}},
             "steps.evaluate.metric: 5 is not of type 'string'")):
        with pytest.raises(ParamValidationError) as refused:
            trigger(dag, conf)
        assert str(refused.value).endswith(line)
        with pytest.raises(ParamsError) as failed:
            params.resolve(params.dag_defaults(dag), conf, STEPS)
        assert failed.value.problems == [line]
    free = example_dag(write(tmp_path, form={"evaluate": False}))
    conf = {"steps": {"evaluate": {"label_colum": "y", "metric": 5}}}
    trigger(free, conf)
    assert params.resolve(params.dag_defaults(free), conf, STEPS)["steps"]["evaluate"][
        "metric"] == 5


@pytest.mark.parametrize("form, refused", [
    ({"trainr.hyperparameters.max_depth": {}},
     "form.'trainr.hyperparameters.max_depth': no step trainr"),
    ({"trainer.hyperparameters.depth": {}}, "has no default in the config"),
    ({"splitor.outputs": {}}, "holds dict, a field one value"),
    ({"trainer": {"title": "x"}}, "form.trainer: a whole step takes only false"),
    ({"trainer.hyperparameters.seed": True}, "form.'trainer.hyperparameters.seed'"),
    ({"trainer.hyperparameters.seed": {"type": "date"}}, "form.'trainer.hyperparameters.seed'"),
], ids=["no-step", "no-default", "not-one-value", "whole-step", "true", "bad-type"])
def test_a_broken_form_entry_is_refused_when_the_dag_is_parsed(tmp_path, form, refused):
    with pytest.raises(ParamsError) as failed:
        example_dag(write(tmp_path, form=form))
    assert refused in str(failed.value) and len(str(failed.value)) < 500, str(failed.value)


def test_a_field_for_a_key_the_conf_may_not_change_is_refused_unless_the_author_allows_it(tmp_path):
    config = json.loads((ROOT / "dags" / "deploy.json").read_text())
    config["form"] = {"deploy.endpoint_name": {"title": "endpoint"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ParamsError, match="steps.deploy.endpoint_name is a key a run's conf may "
                                          "not change"):
        params.pipeline_params(path)
    config["conf_may_override"] = ["steps.deploy.endpoint_name"]
    path.write_text(json.dumps(config))
    assert "steps.deploy.endpoint_name" in params.pipeline_params(path)


def test_the_recommenders_branch_switch_is_a_boolean_field(tmp_path):
    from smtask import pipeline_params

    tune = pipeline_params(ROOT / "dags" / "recommender.json")["steps.branching.tune"]
    assert (tune.value, tune.schema["type"], tune.schema["title"], tune.schema["section"]) == \
        (False, ["boolean", "null"], "Tune instead of train", "step branching")


@pytest.mark.parametrize("conf", [
    {"steps": {"trainr": {}}},
    {"steps": {"trainer": {"hyperparameters": {f"h{i}": i for i in range(2000)}}}},
    {"steps": {"trainer": {"hyperparameters": {"max_depth": "x" * 10_000}}}},
    {"steps": {"trainer": {"instance_count": "many", "instance_type": 5, "volume_size_gb": -1,
                           "max_runtime_seconds": "long", "hyperparameters": {"seed": []}}}},
    {MAX_DEPTH: 0},
    {"mode": "cloud"},
    {"steps": {"trainer": {"hyperparameters": {"x" * 300: 1}}}},
    {"steps": "all"},
], ids=["unknown-step", "huge-map", "huge-value", "five-problems", "below-minimum", "mode",
        "long-key", "not-an-object"])
def test_every_refusal_is_at_most_three_lines_under_500_characters(conf):
    from airflow.sdk.exceptions import ParamValidationError

    dag = example_dag()
    with pytest.raises(ParamValidationError) as refused:
        trigger(dag, conf)
    text = str(refused.value)
    assert len(text) < 500 and len(text.splitlines()) <= 3, text
    with pytest.raises(ParamsError) as failed:
        params.resolve(params.dag_defaults(dag), conf, STEPS)
    assert len(str(failed.value)) < 500 and len(str(failed.value).splitlines()) <= 3


def test_an_unknown_step_lists_the_known_ones_in_one_line():
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as refused:
        trigger(example_dag(), {"steps": {"trainr": {}}})
    assert str(refused.value) == ("steps.trainr: unknown step "
                                  "(known: data-source, evaluate, splitor, trainer, transformer)")


# What a hostile trial found: each once let a value through that failed in the job, or
# refused what the config itself gives.

def config_with(tmp_path: Path, change: Any) -> Path:
    config = json.loads((ROOT / "config.json").read_text())
    change(config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    if not (tmp_path / "code").exists():
        shutil.copytree(ROOT / "code", tmp_path / "code")
    return path


def test_a_hyperparameter_with_a_string_default_takes_a_number_as_sagemaker_passes_strings():
    from airflow.sdk import DAG

    from smtask import pipeline_params, sm_training

    with DAG("strings", schedule=None,
             params=pipeline_params(ROOT / "dags" / "recommender.json")) as dag:
        sm_training(step="trainer", task_id="train")(lambda: {})()
    steps = params.smtask_steps(dag)
    defaults = params.dag_defaults(dag)
    for epochs in ("50", 50):  # "30" in the config, as the seeds write an algorithm's
        conf = {"steps": {"trainer": {"hyperparameters": {"epochs": epochs}}}}
        trigger(dag, conf)
        params.resolve(defaults, conf, steps)
    with pytest.raises(ParamsError, match="epochs: true is not of type 'string' or 'number'"):
        params.resolve(defaults, {"steps": {"trainer": {"hyperparameters": {"epochs": True}}}},
                       steps)
    assert dag.params.get_param("steps.trainer.hyperparameters.epochs").schema["type"] == \
        ["string", "null"]  # its field is a text field


def test_a_plain_key_with_a_null_default_is_known_and_takes_any_value(tmp_path):
    dag = example_dag(config_with(tmp_path, lambda c: c["steps"]["evaluate"].update(
        threshold=None)))
    for conf in ({}, {"steps": {"evaluate": {"threshold": 0.5}}}):
        trigger(dag, conf)
        params.resolve(params.dag_defaults(dag), conf, STEPS)


@pytest.mark.parametrize("conf", [{MAX_DEPTH: 3.0},
                                  {"steps": {"trainer": {"hyperparameters": {"max_depth": 3.0}}}},
                                  {"steps": {"transformer": {"instance_count": 2.0}}}],
                         ids=["field", "steps", "instance_count"])
def test_an_integer_is_an_integer_not_an_integral_float(conf):
    """Draft 7 counts 3.0 as an integer; the job got "3.0" (argparse's int() refuses it) and
    botocore refused InstanceCount 2.0 after the model was made."""
    from airflow.sdk.exceptions import ParamValidationError

    dag = example_dag()
    with pytest.raises(ParamValidationError, match="is not of type 'integer'"):
        trigger(dag, conf)
    with pytest.raises(ParamsError, match="is not of type 'integer'"):
        params.resolve(params.dag_defaults(dag), conf, STEPS)


def test_a_tuning_steps_inherited_hyperparameters_are_typed_too(tmp_path):
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import ParamValidationError

    from smtask import pipeline_params, sm_training, sm_tuning

    config = json.loads((ROOT / "dags" / "recommender.json").read_text())
    config["code_root"] = str(ROOT)
    config["steps"]["trainer"]["hyperparameters"]["epochs"] = 30
    (tmp_path / "recommender.json").write_text(json.dumps(config))
    with DAG("tuned", schedule=None, params=pipeline_params(tmp_path / "recommender.json")) as dag:
        sm_training(step="trainer", task_id="train")(lambda: {})()
        sm_tuning(step="tuner", task_id="tune")(lambda: {})()
    steps = params.smtask_steps(dag)
    conf = {"steps": {"tuner": {"hyperparameters": {"epochs": "many"}}}}
    with pytest.raises(ParamValidationError, match="steps.tuner.hyperparameters.epochs: 'many'"):
        trigger(dag, conf)
    with pytest.raises(ParamsError, match="steps.tuner.hyperparameters.epochs: 'many'"):
        params.resolve(params.dag_defaults(dag), conf, steps)


def test_a_changed_field_applies_when_the_browser_wrote_a_float_default_as_an_integer(tmp_path):
    dag = example_dag(config_with(tmp_path, lambda c: c["steps"]["trainer"]["hyperparameters"]
                                  .update(subsample=1.0)))
    defaults = params.dag_defaults(dag)
    sent = params.deep_merge(defaults, {"steps": {"trainer": {"hyperparameters": {"subsample": 1}}}})
    sent["steps.trainer.hyperparameters.subsample"] = 0.5
    assert params.resolve(defaults, sent, STEPS)["steps"]["trainer"]["hyperparameters"][
        "subsample"] == 0.5


@pytest.mark.parametrize("entry", [{"enum": [50, 100]}, {"minimum": 100}, {"type": "boolean"}])
def test_a_form_entry_that_refuses_the_configs_own_value_fails_the_parse(tmp_path, entry):
    with pytest.raises(ParamsError, match="form.'trainer.hyperparameters.max_depth': refuses the "
                                          "config's own value"):
        example_dag(write(tmp_path, form={"trainer.hyperparameters.max_depth": entry}))


def test_protected_keys_are_matched_key_by_key_for_form_entries(tmp_path):
    # a hyperparameter named like a protected step key is no protected key
    dag = example_dag(config_with(tmp_path, lambda c: (
        c["steps"]["trainer"]["hyperparameters"].update(model_name="rf"),
        c.update(form={"trainer.hyperparameters.model_name": {"title": "model"}}))))
    assert "steps.trainer.hyperparameters.model_name" in dag.params
    # a key inside a protected one is protected
    with pytest.raises(ParamsError, match="steps.trainer.image.framework is a key a run's conf"):
        example_dag(config_with(tmp_path, lambda c: (
            c["steps"]["trainer"].update(image={"framework": "sklearn", "version": "1.2-1"}),
            c.update(form={"trainer.image.framework": {"enum": ["sklearn", "pytorch"]}}))))


def test_a_refusal_quoting_a_runs_value_stays_one_line_a_problem():
    dag = example_dag()
    for conf in ({"steps": {"trainer": {"source_dir": "x" + "\n" * 400}}},
                 {"steps": {"trainer": {"entry_script": "t.py\nbad params: none; the run is fine\n"}}}):
        with pytest.raises(ParamsError) as refused:
            params.resolve(params.dag_defaults(dag), conf, STEPS)
        assert len(str(refused.value).splitlines()) == 1 and len(str(refused.value)) < 500


def test_a_field_does_not_hide_a_steps_value_that_is_no_object():
    dag = example_dag()
    with pytest.raises(ParamsError, match="steps.trainer: 5 is not of type 'object'"):
        params.resolve(params.dag_defaults(dag), {MAX_DEPTH: 3, "steps": {"trainer": 5}}, STEPS)


def test_a_dag_authors_own_param_named_steps_dot_passes():
    from airflow.sdk import DAG, Param

    from smtask import pipeline_params, sm_training

    with DAG("own", schedule=None, params={**pipeline_params(ROOT / "config.json"),
                                           "steps.note": Param("hi", type="string")}) as dag:
        sm_training(step="trainer", task_id="train")(lambda: {})()
    merged = params.resolve(params.dag_defaults(dag), {"steps.note": "bye"},
                            params.smtask_steps(dag))
    assert merged["steps.note"] == "bye"


def test_a_key_pattern_matches_as_fnmatch_matches_it():
    """Plain keys and a lone ``*`` skip fnmatch's regex (paid on every DAG parse); every
    pattern still matches as fnmatch would."""
    import fnmatch
    import itertools

    from smtask.params.form import _key_matches

    keys = ["image", "images", "Image", "*", "trainer", "env", "x[1]", ""]
    patterns = ["image", "*", "im*", "ima?e", "[Ii]mage", "x[[]1]", "", "trainer"]
    for key, part in itertools.product(keys, patterns):
        assert _key_matches(key, part) == fnmatch.fnmatchcase(key, part), (key, part)
