"""The params as Airflow holds them: one ``Param`` per top-level key of config.json, whose
JSON schemas make the trigger form's fields and refuse a bad conf when a run is triggered,
and the params a task runs with (deep-merged, validated for every smtask step of the DAG)."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from smtask.errors import ParamsError
from smtask.params.checks import load_config, resolve, step_schema
from smtask.params.form import fields as form_fields
from smtask.params.form import form_problems, typed_step
from smtask.params.merge import NEVER, deep_merge
from smtask.params.schemas import PLAIN_STEP, TOP_SCHEMA
from smtask.schema import DIALECT, KEY, WHAT

if TYPE_CHECKING:
    from airflow.sdk import Param

    from smtask.kind import JobKind


# The trigger form's words for the top level; its infrastructure keys share a section.
DESCRIPTIONS = {
    "pipeline_name": "names the run's folder of artifacts and its jobs",
    "mode": "local: Docker on the worker via LocalSession; sagemaker: SageMaker jobs",
    "role": "the IAM role SageMaker's jobs run as",
    "image": "the jobs' image: a URI, or {\"framework\", \"version\"} for AWS's",
    "artifacts": "where the run's inputs and outputs go on S3 (sagemaker mode)",
    "aws_conn_id": "the Airflow connection to AWS",
    "region_name": "the AWS region of the jobs",
    "tags": "tags of every job",
    "local": "local mode's image, artifacts and models",
    "sdk_telemetry": "let the SageMaker SDK send its telemetry",
    "validate_role": "check the role before the first job",
    "steps": "advanced: every step's settings as JSON, deep-merged with the run's conf; a key "
             "given here wins over its field above",
}
INFRASTRUCTURE = "infrastructure"
ADVANCED = "advanced: every step's settings"


def pipeline_params(path: str | os.PathLike[str]) -> dict[str, Param]:
    """DAG params from a config.json: one :class:`~airflow.sdk.Param` per top-level key, each
    with the JSON schema of its key, so the trigger form shows real fields and Airflow refuses
    a bad conf at trigger time (REST: 400). ``steps`` lists the config's steps; each smtask
    task adds its step's schema when the DAG is parsed (:func:`describe_step`). The schemas
    are partial (nothing required, ``null`` allowed) since a run's conf is deep-merged.

    The settings a run usually changes get fields of their own (:mod:`smtask.params.form`),
    one section per step; the infrastructure keys have a section of theirs, and ``steps``
    stays the advanced JSON.

    ``mode`` defaults to ``$SMTASK_MODE`` (else ``local``) unless the file sets it. Use as
    ``@dag(params=pipeline_params(Path(__file__).parent / "config.json"))``.
    """
    from airflow.sdk import Param

    config = load_config(path)
    problems = [*form_problems(config)]
    if problems:
        raise ParamsError(f"pipeline config {path}: " + "; ".join(problems[:5]))
    schemas = {key: or_null(trigger_schema(schema))
               for key, schema in TOP_SCHEMA["properties"].items()}
    steps: dict[str, Any] = config["steps"] if isinstance(config.get("steps"), dict) else {}
    # an unknown step is refused in one line that lists the known ones (propertyNames, not
    # additionalProperties: jsonschema's own text for that quotes the whole steps schema);
    # each step is typed from its defaults until its task, if smtask's, gives its kind's schema
    schemas["steps"] = {"type": ["object", "null"],
                        "propertyNames": {"enum": sorted(steps), WHAT: "step"},
                        "properties": {step: _plain_schema(cfg, config.get("form"), step)
                                       for step, cfg in steps.items()}}
    for key in NEVER:
        if key in config:
            schemas[key] = {"const": config[key]}  # the form hides a const
    # Airflow checks a Param's schema against its metaschema on every dump(), and dumps params
    # to serialize and compare operators (each parse, each task): smtask's dialect is draft 7,
    # whose metaschema check takes a fifth of 2020-12's (the default) for the steps' schemas.
    made = {key: Param(_json(value), description=DESCRIPTIONS.get(key), schema=_Schema({
        "$schema": DIALECT, KEY: key, **schemas.get(key, {}),
        "section": ADVANCED if key == "steps" else INFRASTRUCTURE}))
        for key, value in config.items()}
    # the fields first, in the order of their steps; the infrastructure; steps last
    fields = {key: Param(_json(field.default), description=field.description, schema=_Schema({
        "$schema": DIALECT, KEY: ["steps", field.step, *field.path], **field.schema}))
        for key, field in form_fields(config).items()}
    return {**fields, **{k: v for k, v in made.items() if k != "steps"},
            **({"steps": made["steps"]} if "steps" in made else {})}


class _Json(dict):  # type: ignore[type-arg]
    """A Param's value that is a JSON object of the config (``steps``, a step's field).

    Airflow deep-copies the DAG's params into each task when the DAG is parsed (each parse,
    and each task's process parses), a generic ``deepcopy`` of every value: the whole
    ``steps`` config once per task, a sixth of smtask's part of a parse. A JSON tree is
    copied here as one, into plain dicts and lists below the top.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _Json:
        return _Json({key: _json_copy(value, memo) for key, value in self.items()})


def _json(value: Any) -> Any:
    return _Json(value) if type(value) is dict else value


def _json_copy(value: Any, memo: dict[int, Any]) -> Any:
    """A deep copy of a JSON value (dicts, lists, and immutable leaves); anything else by
    ``copy.deepcopy``."""
    kind = type(value)
    if kind is dict:
        return {key: _json_copy(item, memo) for key, item in value.items()}
    if kind is list:
        return [_json_copy(v, memo) for v in value]
    if kind in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value, memo)


def _plain_schema(cfg: Any, form: Any, step: str) -> dict[str, Any]:
    typed = typed_step(cfg, form, step, plain=True) if isinstance(cfg, Mapping) else None
    return PLAIN_STEP if typed is None else or_null(trigger_schema(typed))


class _Schema(dict):  # type: ignore[type-arg]
    """A Param's JSON schema, shared by the DAG's params and every task's copy of them.

    Airflow deep-copies the DAG's params into each task when the DAG is parsed; the schemas
    (every step's, for ``steps``) were most of what that copied. They are built at parse time
    (:func:`describe_step` completes ``steps``') and only read after, so one object serves all.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _Schema:
        return self


def parse_memo(dag: Any) -> dict[Any, Any]:
    """What this parse of ``dag`` made from its params once, for whoever asks again: each
    smtask task's step is described (and its assets made) by its decorator, for
    ``.expand()``, which skips the operator's ``__init__``, and again by that ``__init__``
    (twice the work: a sixth of smtask's part of a parse). Held by the ``steps`` param's
    schema (:func:`pipeline_params`' own), so it lives as long as this parse's params; a DAG
    whose params smtask did not make gets a new, empty dict each time."""
    param = dag.params.get_param("steps") if dag is not None and "steps" in dag.params else None
    schema = getattr(param, "schema", None)
    if not isinstance(schema, _Schema):
        return {}
    memo: dict[Any, Any] = schema.__dict__.setdefault("memo", {})
    return memo


def trigger_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` as a run's conf may meet it before the deep merge: nothing required, and
    ``null`` (which removes a key) allowed below the top level."""
    partial = {k: v for k, v in schema.items() if k not in ("required", "dependencies")}
    if isinstance(schema.get("properties"), Mapping):
        partial["properties"] = {key: or_null(trigger_schema(sub))
                                 for key, sub in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), Mapping):  # a map: null drops an entry
        partial["additionalProperties"] = or_null(trigger_schema(schema["additionalProperties"]))
    return partial


def or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or ``null``: a nullable ``type`` (and enum) where there is one, else anyOf.
    Smaller schemas cost less in the metaschema check Airflow makes on every dump()."""
    kind = schema.get("type")
    if kind is None or "const" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kinds = [kind] if isinstance(kind, str) else list(kind)
    nullable = {**schema, "type": kinds if "null" in kinds else [*kinds, "null"]}
    if "enum" in schema and None not in schema["enum"]:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def describe_step(dag: Any, step: str, kind: JobKind) -> None:
    """Give the DAG's ``steps`` param the schema of one smtask step (at parse time)."""
    memo = parse_memo(dag)
    if memo.get(("described", step)) is kind:
        return
    memo[("described", step)] = kind
    param = dag.params.get_param("steps") if dag is not None and "steps" in dag.params else None
    schema = getattr(param, "schema", {})
    properties, names = schema.get("properties"), schema.get("propertyNames", {}).get("enum")
    if isinstance(properties, dict):
        kinds = or_null(trigger_schema(step_schema(kind)))
        defaults = getattr(param, "value", None)
        defaults = defaults if isinstance(defaults, Mapping) else {}
        cfg = defaults.get(step)
        inherit = kind.inherit  # a tuning step's hyperparameters are its training step's too
        if inherit and isinstance(cfg, Mapping) and isinstance(cfg.get(inherit.key), str) and \
                isinstance(base := defaults.get(cfg[inherit.key]), Mapping):
            cfg = deep_merge(base, cfg)
        form = dag.params.get_param("form").value if "form" in dag.params else None
        typed = typed_step(cfg, form, step, plain=False) if isinstance(cfg, Mapping) else None
        # the kind's schema, and the types the step's defaults give its hyperparameters
        properties[step] = kinds if typed is None else \
            {"allOf": [kinds, or_null(trigger_schema(typed))]}
    if isinstance(names, list) and step not in names:
        names.append(step)
        names.sort()


def smtask_steps(dag: Any) -> dict[str, JobKind]:
    """The DAG's smtask steps, step -> job kind, mapped (``.expand``) tasks included."""
    from smtask.kind import JobKind

    found = {}
    for task in dag.tasks:
        # a mapped task holds its operator's class and constructor kwargs, not an operator
        kind = getattr(getattr(task, "operator_class", task), "job_kind", None)
        kwargs = getattr(task, "partial_kwargs", None)
        step = kwargs.get("step") if isinstance(kwargs, Mapping) else getattr(task, "step", None)
        if isinstance(step, str) and isinstance(kind, JobKind):
            found[step] = kind
    return found


def run_params(context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The params a task of this run sees: the DAG's defaults deep-merged with the run's conf,
    validated for every smtask step of the DAG. Use it in plain tasks instead of
    ``context["params"]``, where a run's conf replaces a top-level key whole."""
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    dag = context["dag"]
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    return resolve(dag_defaults(dag), conf, smtask_steps(dag))


def dag_defaults(dag: Any) -> dict[str, Any]:
    """The DAG's params' default values (``None`` for a Param without one, which a run's conf
    then gives). Airflow's ``params.dump()`` checks every value against its schema, first
    checking each schema against JSON Schema's metaschema: about 0.4 s per task for the
    steps' schemas. smtask's keys are validated by :func:`resolve` after the merge; Airflow
    checks a run's conf against every Param when the run is created."""
    from airflow.sdk.definitions._internal.types import is_arg_set

    values = {key: dag.params.get_param(key).value for key in dag.params}
    return {key: value if is_arg_set(value) else None for key, value in values.items()}


def check_authors_params(dag: Any, conf: Mapping[str, Any]) -> None:
    """The DAG author's own params (beside smtask's keys), as Airflow checks them when a run
    is created: a bad value in ``conf`` is refused here with the key named (``smtask run``,
    ``smtask validate``)."""
    from airflow.sdk.exceptions import ParamValidationError

    problems, fields = [], form_fields(dag_defaults(dag))
    for key in dag.params:
        if key in TOP_SCHEMA["properties"] or key in fields:  # smtask's: resolve() checks them
            continue
        param = dag.params.get_param(key)
        try:
            param.resolve(conf[key]) if key in conf else param.resolve(suppress_exception=False)
        except ParamValidationError as exc:
            problems.append(f"param {key}: {str(exc).splitlines()[0]}")
    if problems:
        raise ParamsError("\n".join(problems))
