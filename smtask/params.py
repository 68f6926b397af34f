"""Params: config.json as DAG params, deep-merged with a run's conf, validated before any job.

The shape follows the "config.json as DAG params" pattern: top-level settings of the pipeline
and ``steps.<step>`` with each step's settings. Airflow replaces a top-level param whole when a
run's conf names it; :func:`resolve` deep-merges instead, so a run can override one
hyperparameter without restating the ``steps`` tree.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtask.errors import ParamsError
from smtask.schema import DIALECT, KEY, RULE, WHAT, key_path, quoted

_key_path = key_path

if TYPE_CHECKING:
    from airflow.sdk import Param

MODES = ("local", "sagemaker")
MODE_ENV = "SMTASK_MODE"

# Names that become path components and parts of AWS names: ASCII only, never "." or "..".
NAME_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "pipeline": (re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,29}"),
                 "1-30 of A-Z a-z 0-9 -, starting with a letter or digit"),
    "step": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"),
             "1-63 of A-Z a-z 0-9 _ -, starting with a letter or digit"),
    # processing inputs and outputs, training channels (SageMaker: [A-Za-z0-9.-_], at most 64)
    "data": (re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
             "1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..'"),
    # SageMaker's ModelName: ^[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$, at most 63
    "model": (re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"),
              "1-63 of A-Z a-z 0-9 -, starting and ending with a letter or digit "
              "(SageMaker's model names)"),
}


def _string(max_length: int, **schema: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **schema}


# SageMaker's own patterns, so that what its API would refuse fails here, named, before any job.
# Its ".*" (hyperparameters) admits no line terminator.
ONE_LINE = "^[^\n\r\u0085\u2028\u2029]*$"
_ONE_LINE_RULE = "is more than one line (SageMaker refuses line breaks in hyperparameters)"
# Tags: letters, digits, spaces and _ . : / = + - @ (AWS: [\p{L}\p{Z}\p{N}_.:/=+\-@]), no "aws:" key.
_TAG_TEXT = "[\\w .:/=+@\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000-]*$"
_TAG_RULE = "has a character AWS's tags refuse (letters, digits, spaces, _ . : / = + - @ only)"
_TAGS = {"type": "object", "maxProperties": 50,
         "propertyNames": {"minLength": 1, "maxLength": 128, "pattern": f"^(?!aws:){_TAG_TEXT}",
                           RULE: _TAG_RULE + "; a key may not start with aws:"},
         "additionalProperties": _string(256, pattern=f"^{_TAG_TEXT}", **{RULE: _TAG_RULE})}


def _environment(value_max: int, entries: int = 100) -> dict[str, Any]:
    """A job's environment as SageMaker takes it: names ``[A-Za-z_][A-Za-z0-9_]*``; values
    of any characters (they reach the job literally, in both modes), at most ``value_max``."""
    return {"type": "object", "maxProperties": entries,
            "propertyNames": {"maxLength": 256, "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                              RULE: "is not a variable name ([A-Za-z_][A-Za-z0-9_]*, as SageMaker "
                                    "takes them)"},
            "additionalProperties": _string(value_max)}


# Lengths as SageMaker's API allows them (where it says), so a huge string fails here, named.
_NAME = _string(256)
# An image URI, or an AWS image by framework (resolved with the SDK's image_uris.retrieve);
# one schema for both (not anyOf) so that an unknown key is named.
_IMAGE = {
    "type": ["string", "object"], "maxLength": 256, "required": ["framework"],
    "additionalProperties": False,
    "properties": {"framework": _string(64), "version": _string(64), "region": _string(64),
                   "py_version": _string(16)},
}
_PATH = _string(1024)
# a file:// URI names no host: file://data/x would mean /x to smtask and data/x to the SDK
_URI = _string(1024, pattern="^(s3://[^/]|file:///)",
               **{RULE: "is not an s3://bucket/... or file:///... URI"})
# a model's container environment (local.models, a transform's model): SageMaker's limits
_ENVIRONMENT = _environment(1024)
# an s3:// or file:/// URI, or a path (no scheme) relative to the config's folder
_URI_OR_PATH = _string(1024, pattern="^(s3://[^/]|file:///|[^:]*$)")
_POSITIVE = {"type": "integer", "minimum": 1}
_SIZE_LIMITS = ("maxLength", "maxItems", "maxProperties")  # their messages omit the limit

# What each top-level key may hold. Unknown keys are rejected: a typo must not pass silently.
TOP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["pipeline_name", "steps"],
    "additionalProperties": False,
    "properties": {
        "pipeline_name": {"type": "string"},  # its form: NAME_RULES["pipeline"]
        "mode": {"enum": list(MODES)},
        "role": _string(2048),
        "image": _IMAGE,
        "artifacts": _URI,
        "code_root": _PATH,
        "aws_conn_id": _NAME,
        "region_name": _NAME,
        "tags": _TAGS,
        "sdk_telemetry": {"type": "boolean"},
        "validate_role": {"type": "boolean"},
        "conf_may_override": {"type": "array", "maxItems": 100, "items": _string(256)},
        "local": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "image": _NAME,
                "artifacts": _URI,
                "s3_endpoint": _string(1024, pattern="^https?://"),
                # existing models for local mode: name -> model data + image (names:
                # NAME_RULES["model"]); SageMaker mode uses the models SageMaker has
                "models": {
                    "type": "object",
                    "maxProperties": 100,
                    "additionalProperties": {
                        "type": "object",
                        "required": ["model_data"],
                        "additionalProperties": False,
                        "properties": {"model_data": _URI_OR_PATH, "image": _NAME,
                                       "environment": _ENVIRONMENT},
                    },
                },
            },
        },
        "steps": {"type": "object", "additionalProperties": {"type": "object"}},
    },
}

# What a run's conf may not change unless the DAG's author lists it in "conf_may_override":
# who the job runs as, what image it runs, where it writes, with which credentials.
# Whoever may trigger a DAG must not be able to read the worker's files or pick the role.
# An existing model brings its own image (and, on SageMaker, its own role): choosing one is
# choosing what runs.
#
# The same goes for a job's command, and for the environment variables that make a shell, the
# dynamic loader, Python or pip run or load something else (the SDK's training driver is a
# bash script traced with ``set -x``: ``PS4`` or ``BASH_ENV`` would run a command in it), and
# for the serving contract's code location.
EXEC_ENVIRONMENT = ("BASH_ENV", "ENV", "PS4", "PROMPT_COMMAND", "SHELLOPTS", "BASHOPTS",
                    "BASH_FUNC_*", "LD_*", "PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                    "PYTHONINSPECT", "PYTHONUSERBASE", "PYTHONSAFEPATH", "PIP_*",
                    "SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SMTASK_*")
PROTECTED = ("role", "image", "artifacts", "aws_conn_id", "region_name", "local.image",
             "local.artifacts", "local.s3_endpoint", "local.models", "steps.*.image",
             "steps.*.model_name", "steps.*.command",
             *(f"steps.*.environment.{name}" for name in EXEC_ENVIRONMENT))
# What a run's conf may never change: where the code comes from, and the rule itself.
NEVER = ("code_root", "conf_may_override")

_COMMON_STEP_KEYS: dict[str, Any] = {
    "image": _IMAGE,
    "instance_type": _NAME,
    "instance_count": _POSITIVE,
    "volume_size_gb": _POSITIVE,
    "max_runtime_seconds": _POSITIVE,
    "environment": _ENVIRONMENT,
    "tags": _TAGS,
    # how the task waits (not sent to SageMaker)
    "wait_timeout_seconds": _POSITIVE,
    "poll_max_seconds": {"type": "number", "exclusiveMinimum": 0},
    "if_job_failed": {"enum": ["rerun", "fail"]},
    "if_job_stopped": {"enum": ["rerun", "fail"]},  # stopped by someone else (a person)
    "if_job_completed": {"enum": ["reuse", "rerun"]},
    "on_kill": {"enum": ["auto", "stop", "leave"]},  # sagemaker mode; local mode always stops
    "deferrable": {"type": "boolean"},
}

_CONTAINER_PATH = _string(256, pattern="^/opt/ml/")
_CONTAINER_ARGS = {"type": "array", "items": _string(256), "maxItems": 100}
# The script's own settings: free-form, handed to the container as a JSON file (see
# smtask.steps.settings_file); its serialized size is checked by _settings_problems.
_SETTINGS = {"type": "object", "maxProperties": 100, "propertyNames": {"maxLength": 256}}
SETTINGS_MAX_BYTES = 64 * 1024
SETTINGS_ENV = "SMTASK_SETTINGS"

# Each job kind's step settings; the decorator says which kind a step is.
STEP_SCHEMAS: dict[str, dict[str, Any]] = {
    "processing": {
        # one script (code_path: ScriptProcessor) or a source dir (source_dir + code:
        # FrameworkProcessor), exactly one of the two: see _form_problems
        "required": ["outputs"],
        "properties": {
            **_COMMON_STEP_KEYS,
            "environment": _environment(256),  # CreateProcessingJob's limits
            "code_path": _PATH,
            "source_dir": _PATH,
            "code": _PATH,
            "requirements": _PATH,
            "settings": _SETTINGS,
            "command": {**_CONTAINER_ARGS, "minItems": 1},
            "arguments": _CONTAINER_ARGS,
            "input_destination": _CONTAINER_PATH,
            "outputs": {  # names: NAME_RULES["data"]
                "type": "object",
                "minProperties": 1,
                "maxProperties": 10,
                "additionalProperties": {
                    "type": "object",
                    "required": ["source"],
                    "additionalProperties": False,
                    "properties": {"source": _CONTAINER_PATH},
                },
            },
        },
    },
    "training": {
        # without source_dir and entry_script the image is a built-in algorithm's
        "required": [],
        "dependencies": {"source_dir": ["entry_script"], "entry_script": ["source_dir"]},
        "properties": {
            **_COMMON_STEP_KEYS,
            "environment": _environment(512),  # CreateTrainingJob's limits
            "source_dir": _PATH,
            "entry_script": _PATH,
            "requirements": _PATH,
            # per channel the function returns: how SageMaker hands it to the container
            "channels": {
                "type": "object",
                "maxProperties": 20,
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "content_type": _NAME,
                        "input_mode": {"enum": ["File", "Pipe", "FastFile"]},
                        "s3_data_distribution": {"enum": ["FullyReplicated", "ShardedByS3Key"]},
                    },
                },
            },
            "settings": _SETTINGS,
            "hyperparameters": {
                "type": "object",
                "maxProperties": 100,
                "propertyNames": {"maxLength": 256, "pattern": ONE_LINE, RULE: _ONE_LINE_RULE},
                "additionalProperties": {"type": ["string", "number", "boolean"], "maxLength": 2500,
                                         "pattern": ONE_LINE, RULE: _ONE_LINE_RULE},
            },
        },
    },
    "transform": {
        "required": [],
        "properties": {
            **_COMMON_STEP_KEYS,
            # CreateTransformJob's limits; the model it creates gets the same environment
            "environment": _environment(1024, entries=16),
            "content_type": _NAME,
            "accept": _NAME,
            "split_type": {"enum": ["None", "Line", "RecordIO", "TFRecord"]},
            "assemble_with": {"enum": ["None", "Line"]},
            "strategy": {"enum": ["MultiRecord", "SingleRecord"]},
            "max_payload_mb": {"type": "integer", "minimum": 0, "maximum": 100},
            "max_concurrent_transforms": _POSITIVE,
            "model_name": {"type": "string"},  # an existing model; its form: NAME_RULES["model"]
            # inference code of the step's own, served instead of the training's script's
            "source_dir": _PATH,
            "entry_script": _PATH,
        },
        "dependencies": {"source_dir": ["entry_script"], "entry_script": ["source_dir"]},
    },
}


# A tuning step: a training step's settings (its own, or those of ``training_step``
# deep-merged under its own) plus the search. Names and limits as SageMaker's API has them.
TUNING_STRATEGIES = ("Random", "Grid", "Bayesian", "Hyperband")
LOCAL_STRATEGIES = ("Random", "Grid")  # local mode runs the trials itself
_TUNING_BLOCK: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["objective", "ranges"],
    "properties": {
        "objective": {
            "type": "object",
            "additionalProperties": False,
            "required": ["metric"],
            "properties": {"metric": _string(255, minLength=1),
                           "type": {"enum": ["Maximize", "Minimize"]}},
        },
        "metric_definitions": {
            "type": "array",
            "maxItems": 40,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "regex"],
                "properties": {"name": _string(255, minLength=1),
                               "regex": _string(500, minLength=1)},
            },
        },
        "ranges": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 30,
            "propertyNames": {"maxLength": 256},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["integer", "continuous", "categorical"]},
                    "min_value": {"type": "number"},
                    "max_value": {"type": "number"},
                    "values": {"type": "array", "minItems": 1, "maxItems": 30,
                               "items": {"type": ["string", "number", "boolean"],
                                         "maxLength": 256}},
                    "scaling_type": {"enum": ["Auto", "Linear", "Logarithmic",
                                              "ReverseLogarithmic"]},
                },
            },
        },
        "strategy": {"enum": list(TUNING_STRATEGIES)},
        "max_jobs": {"type": "integer", "minimum": 1, "maximum": 750},
        "max_parallel_jobs": {"type": "integer", "minimum": 1, "maximum": 100},
        "random_seed": {"type": "integer", "minimum": 0},
    },
}
STEP_SCHEMAS["tuning"] = {
    **STEP_SCHEMAS["training"],
    "required": [*STEP_SCHEMAS["training"].get("required", []), "tuning"],
    "properties": {
        **STEP_SCHEMAS["training"]["properties"],
        "training_step": {"type": "string"},  # its form: NAME_RULES["step"]
        "tuning": _TUNING_BLOCK,
    },
}


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a pipeline's config.json; relative paths in it resolve against its folder: its
    ``code_root`` (default ``.``), and the steps' code paths against the code root."""
    path = Path(path).resolve()
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ParamsError(f"cannot read pipeline config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ParamsError(f"pipeline config {path} must hold a JSON object")
    # where the steps' code is: the config's folder, or a folder relative to it
    root = config.get("code_root", ".")
    if isinstance(root, str):
        config["code_root"] = str((path.parent / root).resolve())
    config.setdefault("mode", os.environ.get(MODE_ENV, "local"))
    return config


def pipeline_params(path: str | os.PathLike[str]) -> dict[str, Param]:
    """DAG params from a config.json: one :class:`~airflow.sdk.Param` per top-level key, each
    with the JSON schema of its key, so the trigger form shows real fields and Airflow refuses
    a bad conf at trigger time (REST: 400). ``steps`` lists the config's steps; each smtask
    task adds its step's schema when the DAG is parsed (:func:`describe_step`). The schemas
    are partial (nothing required, ``null`` allowed) since a run's conf is deep-merged.

    ``mode`` defaults to ``$SMTASK_MODE`` (else ``local``) unless the file sets it. Use as
    ``@dag(params=pipeline_params(Path(__file__).parent / "config.json"))``.
    """
    from airflow.sdk import Param

    config = load_config(path)
    descriptions = {
        "mode": "local: Docker on the worker via LocalSession; sagemaker: SageMaker jobs",
        "steps": "per-step settings; a run's conf is deep-merged into them",
        "code_root": "where the steps' code is; a run's conf may never change it",
    }
    schemas = {key: trigger_schema(schema) for key, schema in TOP_SCHEMA["properties"].items()}
    steps: dict[str, Any] = config["steps"] if isinstance(config.get("steps"), dict) else {}
    # an unknown step is refused in one line that lists the known ones (propertyNames, not
    # additionalProperties: jsonschema's own text for that quotes the whole steps schema)
    schemas["steps"] = {"type": "object", "propertyNames": {"enum": sorted(steps), WHAT: "step"},
                        "properties": {step: PLAIN_STEP for step in steps}}
    for key in NEVER:
        if key in config:
            schemas[key] = {"const": config[key]}
    # Airflow checks a Param's schema against its metaschema on every dump(), and dumps params
    # to serialize and compare operators (each parse, each task): smtask's dialect is draft 7,
    # whose metaschema check takes a fifth of 2020-12's (the default) for the steps' schemas.
    return {key: Param(value, description=descriptions.get(key),
                       schema=_Schema({"$schema": DIALECT, KEY: key, **schemas.get(key, {})}))
            for key, value in config.items()}


# A plain task's step (not smtask's): free-form settings, kept small (they are part of every
# task's params and of the trigger form); see _plain_step_problems for the size in bytes.
PLAIN_STEP = {"type": ["object", "null"], "maxProperties": 100}
PLAIN_STEP_MAX_BYTES = 64 * 1024


class _Schema(dict):  # type: ignore[type-arg]
    """A Param's JSON schema, shared by the DAG's params and every task's copy of them.

    Airflow deep-copies the DAG's params into each task when the DAG is parsed; the schemas
    (every step's, for ``steps``) were most of what that copied. They are built at parse time
    (:func:`describe_step` completes ``steps``') and only read after, so one object serves all.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _Schema:
        return self


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


def describe_step(dag: Any, step: str, kind: str) -> None:
    """Give the DAG's ``steps`` param the schema of one smtask step (at parse time)."""
    param = dag.params.get_param("steps") if dag is not None and "steps" in dag.params else None
    schema = getattr(param, "schema", {})
    properties, names = schema.get("properties"), schema.get("propertyNames", {}).get("enum")
    if isinstance(properties, dict):
        step_schema = {"type": "object", "additionalProperties": False, **STEP_SCHEMAS[kind]}
        properties[step] = or_null(trigger_schema(step_schema))
    if isinstance(names, list) and step not in names:
        names.append(step)
        names.sort()


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` into ``base``: mappings merge key by key; anything else replaces.

    A ``null`` in ``override`` removes the key, so a run can fall back to a default.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def name_problem(kind: str, name: Any) -> str | None:
    """Why ``name`` cannot be a ``kind`` name (see :data:`NAME_RULES`), or None if it can."""
    pattern, rule = NAME_RULES[kind]
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    return None if pattern.fullmatch(name) else f"{quoted(name)} is not allowed: use {rule}"


def check_name(step: str, what: str, name: Any) -> str:
    """``name`` if it may be a ``what`` name of ``step`` (a processing input, a training
    channel: it becomes a path in the container); else a TypeError, like the other checks of
    the function's return value."""
    problem = name_problem("data", name)
    if problem:
        raise TypeError(f"step '{step}': {what} name {problem}")
    return str(name)


def validate(params: Mapping[str, Any], steps: Mapping[str, str]) -> None:
    """Check the top level and every ``steps.<step>`` used by the DAG (step -> job kind).

    Raises one :class:`ParamsError` that lists every problem as ``<key path>: <why>``.
    """
    _raise(_problems(params, steps), steps)


MAX_REFUSAL = 500  # characters of a refusal, in at most three lines


def refusal(problems: list[str]) -> str:
    """The refusal of bad params: the problems, one a line (``<key path>: <the rule>``), the
    first three of them, in under :data:`MAX_REFUSAL` characters."""
    shown = problems[:3]
    width = MAX_REFUSAL // len(shown) - 40
    lines = [p if len(p) <= width else p[: width - 3] + "..." for p in shown]
    lines[0] = ("bad params: " if len(problems) == 1 else
                f"bad params ({len(problems)} problems): ") + lines[0]
    if len(problems) > 3:
        lines[-1] += f" (and {len(problems) - 3} more)"
    return "\n".join(lines)


def _raise(problems: list[str], steps: Mapping[str, str] | None = None) -> None:
    if problems:
        raise ParamsError(refusal(problems), problems)


def _problems(params: Mapping[str, Any], steps: Mapping[str, str]) -> list[str]:
    top = list(_schema_problems(params, TOP_SCHEMA, ()))
    problems = [*top]
    pipeline = params.get("pipeline_name")
    if isinstance(pipeline, str) and (problem := name_problem("pipeline", pipeline)):
        problems.append(f"pipeline_name: {problem}")
    steps_param = params.get("steps")
    configured: Mapping[str, Any] = steps_param if isinstance(steps_param, Mapping) else {}
    problems.extend(_model_problems(params, steps, configured))
    bad_names = {s: p for s in sorted({*configured, *steps}) if (p := name_problem("step", s))}
    problems.extend(f"steps: step name {p}" for p in bad_names.values())
    problems.extend(_plain_step_problems(configured, steps))
    for step, kind in sorted(steps.items()):
        if step in bad_names:
            continue
        if step not in configured:
            known = ", ".join(sorted(configured)) or "none"
            problems.append(f"steps.{step}: missing; the DAG's task uses this step (known: {known})")
            continue
        schema = {"type": "object", "additionalProperties": False, **STEP_SCHEMAS[kind]}
        shape = list(_schema_problems(configured[step], schema, ("steps", step)))
        problems.extend(shape)
        problems.extend(_output_name_problems(step, kind, configured[step]))
        if not shape:
            form = list(_form_problems(step, kind, configured[step]))
            shape = form + list(_settings_problems(step, kind, configured[step]))
            problems.extend(shape)
        if kind in ("training", "tuning") and not shape:
            problems.extend(_driver_problems(step, configured[step]))
        if kind == "tuning" and not shape:
            problems.extend(_tuning_problems(step, configured[step], params.get("mode")))
        if not top and not shape:  # a path the schema refused is not looked up on disk
            problems.extend(_file_problems(params, step, kind, configured[step]))
            problems.extend(_image_problems(params, step, kind, configured[step]))
    return list(dict.fromkeys(problems))  # a bad top-level image is named once


_SCOPES = {"processing": "processing", "training": "training", "tuning": "training",
           "transform": "inference"}


def _image_problems(params: Mapping[str, Any], step: str, kind: str, cfg: Any) -> Iterable[str]:
    """An image given as ``{"framework", ...}`` must resolve (for the step's kind); in local
    mode, a training step without code must name a built-in algorithm the local image stands
    in for, or an image of its own."""
    from smtask.local import LOCAL_IMAGE
    from smtask.steps import (
        ALGORITHMS,
        LOCAL_FRAMEWORKS,
        algorithm_of,
        framework_of,
        is_aws_image,
        resolve_image,
    )

    key, given = (f"steps.{step}.image", cfg["image"]) if cfg.get("image") else \
        ("image", params.get("image"))
    try:
        resolve_image(key, given, scope=_SCOPES[kind], params=dict(params),
                      instance_type=cfg.get("instance_type", "ml.m5.large"))
    except ParamsError as exc:
        yield str(exc)
        return
    own = isinstance(cfg.get("image"), str) and not is_aws_image(cfg["image"])
    framework = framework_of(given)
    local = params.get("mode") == "local"
    local_image = (params.get("local") or {}).get("image") if isinstance(params.get("local"),
                                                                       Mapping) else None
    if local and not own and framework and framework not in LOCAL_FRAMEWORKS and \
            local_image in (None, LOCAL_IMAGE):
        yield (f"{key}: local mode has no stand-in for AWS's {framework} image (the local image "
               f"stands in for {', '.join(LOCAL_FRAMEWORKS)} and the built-in algorithms): "
               "extend it with what the job needs and name yours in local.image (README: "
               '"Extending the local image"), or run with mode: sagemaker')
        return
    if (kind in ("training", "tuning") and local and "source_dir" not in cfg
            and not own and algorithm_of(given) is None):
        yield (f"steps.{step}: no source_dir, and {key} is no built-in algorithm the local "
               f"image stands in for ({', '.join(ALGORITHMS)}): give source_dir and "
               "entry_script, an algorithm image, or a local image of your own")


def _schema_problems(value: Any, schema: dict[str, Any], prefix: tuple[str, ...]) -> Iterable[str]:
    from smtask import schema as dialect

    for error in dialect.errors(value, schema):
        yield dialect.problem(error, prefix)


def _plain_step_problems(configured: Mapping[str, Any], steps: Mapping[str, str]) -> Iterable[str]:
    """A plain task's step (``steps.data-source``): free-form, but small."""
    for step in sorted(s for s in configured if s not in steps):
        yield from _schema_problems(configured[step], PLAIN_STEP, ("steps", step))
        size = len(json.dumps(configured[step]).encode())
        if size > PLAIN_STEP_MAX_BYTES:
            yield (f"{_key_path('steps', step)}: {size} bytes as JSON, at most "
                   f"{PLAIN_STEP_MAX_BYTES}")


def _model_problems(params: Mapping[str, Any], steps: Mapping[str, str],
                    configured: Mapping[str, Any]) -> Iterable[str]:
    """Model names (``local.models``' keys, transform steps' ``model_name``) are SageMaker's.
    (Whether local mode has the model is checked by the transform task: a decorator's
    ``mode`` may differ from the params'.)"""
    local = params.get("local")
    models = local.get("models") if isinstance(local, Mapping) else None
    models = models if isinstance(models, Mapping) else {}
    for name in sorted(models):
        if problem := name_problem("model", name):
            yield f"local.models: model name {problem}"
    for step in sorted(s for s, kind in steps.items() if kind == "transform"):
        cfg = configured.get(step)
        name = cfg.get("model_name") if isinstance(cfg, Mapping) else None
        if not isinstance(name, str):
            continue  # absent, or the schema reports its type
        if problem := name_problem("model", name):
            yield f"steps.{step}.model_name: {problem}"


def _output_name_problems(step: str, kind: str, cfg: Any) -> Iterable[str]:
    """A processing output's name becomes a folder of the run's artifacts."""
    outputs = cfg.get("outputs") if kind == "processing" and isinstance(cfg, Mapping) else None
    for name in sorted(outputs) if isinstance(outputs, Mapping) else ():
        problem = name_problem("data", name)
        if problem:
            yield f"steps.{step}.outputs: output name {problem}"


def _form_problems(step: str, kind: str, cfg: Mapping[str, Any]) -> Iterable[str]:
    """A processing step runs one script (``code_path``) or a source dir (``source_dir`` +
    ``code``, with optional ``requirements``): exactly one of the two forms."""
    if kind != "processing":
        return
    script, framework = "code_path" in cfg, [k for k in ("source_dir", "code") if k in cfg]
    if script and framework:
        yield (f"steps.{step}: code_path and {' + '.join(framework)} both given; give either "
               "code_path (one script) or source_dir + code (framework processing)")
    elif not script and not framework:
        yield (f"steps.{step}.code_path: required key is missing (or give source_dir + code "
               "for framework processing)")
    elif framework and len(framework) == 1:
        missing = "code" if framework == ["source_dir"] else "source_dir"
        yield f"steps.{step}.{missing}: required with {framework[0]} (framework processing)"
    elif script and "requirements" in cfg:
        yield (f"steps.{step}.requirements: needs source_dir + code (framework processing); a "
               "code_path script runs as it is, in an image that holds its packages")


def _settings_problems(step: str, kind: str, cfg: Mapping[str, Any]) -> Iterable[str]:
    """The script reads its settings at the step's level: a key of the step's own may not be
    shadowed; the file stays small (it is part of every job's inputs and of the task log)."""
    if kind != "transform" and SETTINGS_ENV in cfg.get("environment", {}):
        yield (f"steps.{step}.environment.{SETTINGS_ENV}: set by smtask (the path of the "
               "settings file)")
    settings = cfg.get("settings")
    if not isinstance(settings, Mapping):
        return
    if kind != "processing" and "source_dir" not in cfg:
        yield f"steps.{step}.settings: only for a step that runs a script (source_dir)"
    own = STEP_SCHEMAS[kind]["properties"]
    for key in sorted(k for k in settings if k in own):
        yield (f"steps.{step}.settings.{key}: collides with the step's own key {key!r} (the "
               "script reads both at the same level of its config.json); rename it")
    size = len(json.dumps(settings).encode())
    if size > SETTINGS_MAX_BYTES:
        yield f"steps.{step}.settings: {size} bytes as JSON, at most {SETTINGS_MAX_BYTES}"


def _file_problems(params: Mapping[str, Any], step: str, kind: str, cfg: Any) -> Iterable[str]:
    """The code a step names must exist on the worker, inside the code root, before a job is
    created (called once the schema holds, so the keys are there and are strings)."""
    root = Path(params.get("code_root") or ".").resolve()
    for key in ("code_path", "source_dir"):
        # resolved (.. and symlinks followed): code outside the root is never uploaded or mounted
        if key in cfg and not (root / cfg[key]).resolve().is_relative_to(root):
            yield f"steps.{step}.{key}: {quoted(cfg[key])} is outside the code root {root}"
            return
    # os.path answers False for a name the OS refuses (e.g. too long) where Path would raise
    if "code_path" in cfg and not os.path.isfile(root / cfg["code_path"]):
        yield f"steps.{step}.code_path: no file {root / cfg['code_path']}"
    if "source_dir" not in cfg:
        return
    source = root / cfg["source_dir"]
    if not os.path.isdir(source):
        yield f"steps.{step}.source_dir: no folder {source}"
        return
    for key in ("entry_script", "code", "requirements"):
        if key not in cfg:
            continue
        if not (source / cfg[key]).resolve().is_relative_to(source.resolve()):
            yield f"steps.{step}.{key}: {quoted(cfg[key])} is outside {source}"
        elif not os.path.isfile(source / cfg[key]):
            yield f"steps.{step}.{key}: no file {cfg[key]} in {source}"


def resolve(defaults: Mapping[str, Any], run_conf: Mapping[str, Any] | None,
            steps: Mapping[str, str]) -> dict[str, Any]:
    """The params a task runs with: ``defaults`` deep-merged with the run's conf, validated.

    A conf may only set steps the DAG knows (its default params' or its smtask tasks'): a
    misspelt step would otherwise be ignored while the run uses the defaults. It may not
    change a :data:`PROTECTED` key unless the author allows it, nor a :data:`NEVER` key.
    Top-level params of the DAG's author (not smtask's keys) pass through unchecked.
    """
    if run_conf is not None and not isinstance(run_conf, Mapping):
        raise ParamsError(f"the run's conf must be a JSON object, got {type(run_conf).__name__}")
    conf = dict(run_conf or {})
    problems = []
    if isinstance(conf.get("steps"), Mapping):
        default_steps = defaults.get("steps")
        known = {*(default_steps if isinstance(default_steps, Mapping) else ()), *steps}
        unknown = [s for s in conf["steps"] if s not in known]
        problems = [f"{_key_path('steps', s)}: unknown step (known: "
                    f"{', '.join(sorted(known)) or 'none'})" for s in unknown]
        # reported once, here: the merged params hold no step the DAG lacks
        conf["steps"] = {s: v for s, v in conf["steps"].items() if s in known}
    params, inherited = with_training_steps(deep_merge(defaults, conf), steps)
    # compared as the steps will run: a conf must not pick up a protected key (an image)
    # by pointing a tuning step at another training step
    problems.extend(_override_problems(with_training_steps(dict(defaults), steps)[0], params))
    problems.extend(inherited)
    own = {key for key in defaults if key not in TOP_SCHEMA["properties"]}
    _raise(problems + _problems({k: v for k, v in params.items() if k not in own}, steps), steps)
    return params


def with_training_steps(params: dict[str, Any], steps: Mapping[str, str]
                        ) -> tuple[dict[str, Any], list[str]]:
    """Each tuning step that names a ``training_step`` gets that step's settings deep-merged
    under its own (a run's conf overriding the training step reaches the tuning step too).
    Returns the params and the problems (a missing or chained training step)."""
    configured = params.get("steps")
    if not isinstance(configured, Mapping):
        return params, []
    problems, merged = [], dict(configured)
    for step, kind in sorted(steps.items()):
        cfg = configured.get(step)
        source = cfg.get("training_step") if kind == "tuning" and isinstance(cfg, Mapping) else None
        if source is None:
            continue
        base = configured.get(source) if isinstance(source, str) else None
        if source == step or not isinstance(base, Mapping):
            known = ", ".join(sorted(s for s in configured if s != step)) or "none"
            problems.append(f"{_key_path('steps', step, 'training_step')}: "
                            f"{quoted(str(source))} is not another step of the params "
                            f"(known: {known})")
        elif "training_step" in base or "tuning" in base:
            problems.append(f"{_key_path('steps', step, 'training_step')}: {quoted(source)} "
                            "must be a training step (it has its own training_step or tuning)")
        else:
            merged[step] = deep_merge(base, cfg or {})
    return {**params, "steps": merged}, problems


# The SDK's training driver (ModelTrainer with source code, both modes) writes every
# hyperparameter into a shell file as ``export SM_HP_<NAME>='<value>'`` and sources it, quoting
# nothing: a quote in a value, or a name that is no shell name, would run as shell code.
DRIVER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _driver_problems(step: str, cfg: Mapping[str, Any]) -> Iterable[str]:
    """Hyperparameters (and tuned ones) that the SDK's training driver cannot pass on safely."""
    if "source_dir" not in cfg:
        return  # a built-in algorithm reads hyperparameters.json: no shell on the way
    ranges = (cfg.get("tuning") or {}).get("ranges") or {}
    values = [(f"hyperparameters.{_key_path(n)}", n, [v]) for n, v in
              (cfg.get("hyperparameters") or {}).items()]
    values += [(f"tuning.ranges.{_key_path(n)}", n, r.get("values") or []) for n, r in ranges.items()]
    for where, name, given in values:
        if not DRIVER_NAME.fullmatch(name):
            yield (f"steps.{step}.{where}: a script's hyperparameter name is A-Z a-z 0-9 _ - "
                   "only (the SDK's training driver exports it as a shell variable)")
        elif any(isinstance(v, str) and "'" in v for v in given):
            yield (f"steps.{step}.{where}: a script's hyperparameter may not contain ' (the "
                   "SDK's training driver writes it between single quotes into a shell file)")


def _tuning_problems(step: str, cfg: Mapping[str, Any], mode: Any) -> Iterable[str]:
    """What the schema cannot say about a tuning step (called once its shape is right)."""
    tuning, where = cfg["tuning"], f"steps.{step}.tuning"
    strategy = tuning.get("strategy", "Random")
    for name, spec in sorted(tuning["ranges"].items()):
        at, kind = f"{where}.ranges.{_key_path(name)}", spec["type"]
        numeric = {"min_value", "max_value", "scaling_type"} & spec.keys()
        if kind == "categorical":
            if "values" not in spec:
                yield f"{at}.values: required for a categorical range"
            for key in sorted(numeric):
                yield f"{at}.{key}: not allowed in a categorical range (give values)"
            continue
        if "values" in spec:
            yield f"{at}.values: not allowed in a numeric range (give min_value and max_value)"
        if "min_value" not in spec or "max_value" not in spec:
            yield f"{at}: a numeric range needs min_value and max_value"
            continue
        low, high, scaling = spec["min_value"], spec["max_value"], spec.get("scaling_type", "Auto")
        if kind == "integer" and not all(float(v).is_integer() for v in (low, high)):
            yield f"{at}: an integer range needs whole min_value and max_value, got {low}, {high}"
        if low > high:
            yield f"{at}.min_value: {low} is greater than max_value {high}"
        elif scaling == "Logarithmic" and low <= 0:
            yield f"{at}.scaling_type: Logarithmic needs min_value > 0, got {low}"
        elif scaling == "ReverseLogarithmic" and (kind != "continuous" or low < 0 or high >= 1):
            yield f"{at}.scaling_type: ReverseLogarithmic needs a continuous range in [0, 1)"
    if strategy == "Grid":
        for name in sorted(n for n, r in tuning["ranges"].items() if r["type"] != "categorical"):
            yield (f"{where}.ranges.{_key_path(name)}: the Grid strategy searches categorical "
                   "ranges only (as on SageMaker)")
    elif "max_jobs" not in tuning:
        yield f"{where}.max_jobs: required for the {strategy} strategy"
    if tuning.get("max_parallel_jobs", 1) > tuning.get("max_jobs", float("inf")):
        yield (f"{where}.max_parallel_jobs: {tuning['max_parallel_jobs']} is more than max_jobs "
               f"{tuning['max_jobs']}")
    if mode == "local" and strategy not in LOCAL_STRATEGIES:
        yield (f"{where}.strategy: local mode runs {' and '.join(LOCAL_STRATEGIES)} searches "
               f"only; {strategy} needs SageMaker (mode: sagemaker)")
    metric = tuning["objective"]["metric"]
    names = [d["name"] for d in tuning.get("metric_definitions", [])]
    if len(set(names)) != len(names):
        yield f"{where}.metric_definitions: a metric is defined twice"
    for i, definition in enumerate(tuning.get("metric_definitions", [])):
        try:
            re.compile(definition["regex"])
        except re.error as exc:
            yield f"{where}.metric_definitions.{i}.regex: not a regular expression ({exc})"
    if "entry_script" in cfg and metric not in names:
        # a script's metrics exist only through a regex; built-in algorithms define their own
        yield (f"{where}.objective.metric: {quoted(metric)} has no metric definition (add "
               '{"name": ..., "regex": ...} to metric_definitions)')


def _override_problems(defaults: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[str]:
    """Each protected key whose value the run's conf changed."""
    allowed = defaults.get("conf_may_override")
    allowed = [a for a in allowed if isinstance(a, str)] if isinstance(allowed, list) else []
    for pattern, never in [*((p, False) for p in PROTECTED), *((p, True) for p in NEVER)]:
        for path in sorted(_paths(pattern, defaults) | _paths(pattern, params)):
            if _get(params, path) == _get(defaults, path):
                continue
            if never:
                yield f"{path}: a run's conf may never change it (code is found where the DAG's " \
                      "author put it)"
            elif not any(fnmatch.fnmatchcase(path, a) for a in allowed):
                yield (f"{path}: a run's conf may not change it unless the DAG's author allows "
                       f'it ("conf_may_override": ["{pattern}"] in config.json)')


def _paths(pattern: str, params: Mapping[str, Any]) -> set[str]:
    """The dotted paths matching ``pattern`` that ``params`` has room for; a part with a
    wildcard (``*``, ``LD_*``) matches the keys there that fit it."""
    found = {""}
    for part in pattern.split("."):
        found = {f"{path}.{key}".lstrip(".") for path in found
                 for key in ([part] if "*" not in part else
                             (k for k in (_get(params, path) or {})
                              if isinstance(k, str) and fnmatch.fnmatchcase(k, part)))}
    return found


def _get(params: Any, path: str) -> Any:
    for key in path.split(".") if path else ():
        params = params.get(key) if isinstance(params, Mapping) else None
    return params


def smtask_steps(dag: Any) -> dict[str, str]:
    """The DAG's smtask steps, step -> job kind, mapped (``.expand``) tasks included."""
    found = {}
    for task in dag.tasks:
        # a mapped task holds its operator's class and constructor kwargs, not an operator
        kind = getattr(getattr(task, "operator_class", task), "kind", None)
        kwargs = getattr(task, "partial_kwargs", None)
        step = kwargs.get("step") if isinstance(kwargs, Mapping) else getattr(task, "step", None)
        if isinstance(step, str) and kind in STEP_SCHEMAS:
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

    problems = []
    for key in dag.params:
        if key in TOP_SCHEMA["properties"]:
            continue
        param = dag.params.get_param(key)
        try:
            param.resolve(conf[key]) if key in conf else param.resolve(suppress_exception=False)
        except ParamValidationError as exc:
            problems.append(f"param {key}: {str(exc).splitlines()[0]}")
    if problems:
        raise ParamsError("\n".join(problems))
