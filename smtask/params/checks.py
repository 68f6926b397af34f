"""Checking params: the top level, and each step against its kind's schema and checks (the
kinds are handed in: this module knows none of them), the code and images steps name, before
any job. A refusal names the step, the key and the rule, one problem a line."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from smtask.errors import ParamsError
from smtask.naming import key_path, name_problem, quoted
from smtask.params import form
from smtask.params.merge import NEVER, PROTECTED, deep_merge, override_problems, with_inherited
from smtask.params.schemas import (
    MODE_ENV,
    PLAIN_STEP,
    PLAIN_STEP_MAX_BYTES,
    SETTINGS_ENV,
    SETTINGS_MAX_BYTES,
    TOP_SCHEMA,
)
from smtask.paths import artifacts_root, stray_links

if TYPE_CHECKING:
    from smtask.kind import JobKind

__all__ = ["NEVER", "PROTECTED", "load_config", "refusal", "resolve", "validate"]


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


def validate(params: Mapping[str, Any], steps: Mapping[str, JobKind]) -> None:
    """Check the top level and every ``steps.<step>`` used by the DAG (step -> job kind), the
    steps' keys against the types their values here give them (:mod:`smtask.params.form`).

    Raises one :class:`ParamsError` that lists every problem as ``<key path>: <why>``.
    """
    _raise([*form.form_problems(params), *_problems(params, steps, form.typed_steps(params, steps))])


MAX_REFUSAL = 500  # characters of a refusal, in at most three lines


def refusal(problems: list[str]) -> str:
    """The refusal of bad params: the problems, one a line (``<key path>: <the rule>``), the
    first three of them, in under :data:`MAX_REFUSAL` characters."""
    shown = [" ".join(p.split()) for p in problems[:3]]  # one line whatever a value held
    width = MAX_REFUSAL // len(shown) - 40
    lines = [p if len(p) <= width else p[: width - 3] + "..." for p in shown]
    lines[0] = ("bad params: " if len(problems) == 1 else
                f"bad params ({len(problems)} problems): ") + lines[0]
    if len(problems) > 3:
        lines[-1] += f" (and {len(problems) - 3} more)"
    return "\n".join(lines)


def _raise(problems: list[str]) -> None:
    if problems:
        raise ParamsError(refusal(problems), problems)


def _problems(params: Mapping[str, Any], steps: Mapping[str, JobKind],
              typed: Mapping[str, Any]) -> list[str]:
    """Every problem of ``params``; ``typed``: step -> the types its defaults give its keys."""
    top = list(_schema_problems(params, TOP_SCHEMA, ()))
    problems = [*top]
    pipeline = params.get("pipeline_name")
    if isinstance(pipeline, str) and (problem := name_problem("pipeline", pipeline)):
        problems.append(f"pipeline_name: {problem}")
    steps_param = params.get("steps")
    configured: Mapping[str, Any] = steps_param if isinstance(steps_param, Mapping) else {}
    problems.extend(_local_model_problems(params))
    problems.extend(_artifacts_problems(params) if not top else ())
    bad_names = {s: p for s in sorted({*configured, *steps}) if (p := name_problem("step", s))}
    problems.extend(f"steps: step name {p}" for p in bad_names.values())
    problems.extend(_plain_step_problems(configured, steps, typed))
    for step, kind in sorted(steps.items()):
        if step in bad_names:
            continue
        if step not in configured:
            known = ", ".join(sorted(configured)) or "none"
            problems.append(f"steps.{step}: missing; the DAG's task uses this step (known: {known})")
            continue
        cfg = configured[step]
        shape = list(_schema_problems(cfg, step_schema(kind), ("steps", step)))
        if not shape and step in typed:
            shape = list(_schema_problems(cfg, typed[step], ("steps", step)))
        problems.extend(shape)
        if not shape:
            shape = [*(kind.form(step, cfg) if kind.form else ()),
                     *_settings_problems(step, kind, cfg)]
            problems.extend(shape)
        if not shape:  # what only the kind knows, and local mode's bound, once the form is right
            problems.extend(kind.check(step, cfg, params) if kind.check else ())
            problems.extend(_local_instance_problems(params, step, cfg))
        if not top and not shape:  # a path the schema refused is not looked up on disk
            problems.extend(_file_problems(params, step, cfg))
            problems.extend(_image_problems(params, step, kind, cfg))
    return list(dict.fromkeys(problems))  # a bad top-level image is named once


def step_schema(kind: JobKind) -> dict[str, Any]:
    """A step's full JSON schema (unknown keys refused)."""
    return {"type": "object", "additionalProperties": False, **kind.schema}


def resolve(defaults: Mapping[str, Any], run_conf: Mapping[str, Any] | None,
            steps: Mapping[str, JobKind]) -> dict[str, Any]:
    """The params a task runs with: ``defaults`` deep-merged with the run's conf, validated.

    A conf may only set steps the DAG knows (its default params' or its smtask tasks'): a
    misspelt step would otherwise be ignored while the run uses the defaults. It may not
    change a :data:`PROTECTED` key unless the author allows it, nor a :data:`NEVER` key.
    Top-level params of the DAG's author (not smtask's keys) pass through unchecked.
    """
    if run_conf is not None and not isinstance(run_conf, Mapping):
        raise ParamsError(f"the run's conf must be a JSON object, got {type(run_conf).__name__}")
    # the trigger form's fields (smtask.params.form) are the DAG's params beside the config's
    found = form.fields(defaults)
    defaults = {key: value for key, value in defaults.items() if key not in found}
    conf = dict(run_conf or {})
    _raise(list(_shape_problems(conf)))
    conf, problems = form.fold_fields(conf, defaults, found)
    problems = [*form.form_problems(defaults), *problems]  # the config's own (the DAG's parse too)
    if isinstance(conf.get("steps"), Mapping):
        default_steps = defaults.get("steps")
        known = {*(default_steps if isinstance(default_steps, Mapping) else ()), *steps}
        unknown = [s for s in conf["steps"] if s not in known]
        problems = [f"{key_path('steps', s)}: unknown step (known: "
                    f"{', '.join(sorted(known)) or 'none'})" for s in unknown]
        # reported once, here: the merged params hold no step the DAG lacks
        conf["steps"] = {s: v for s, v in conf["steps"].items() if s in known}
    params, inherited = with_inherited(deep_merge(defaults, conf), steps)
    # compared as the steps will run: a conf must not pick up a protected key (an image)
    # by pointing a tuning step at another training step
    inherited_defaults = with_inherited(dict(defaults), steps)[0]
    problems.extend(override_problems(inherited_defaults, params))
    problems.extend(inherited)
    own = {key for key in defaults if key not in TOP_SCHEMA["properties"]}
    _raise(problems + _problems({k: v for k, v in params.items() if k not in own}, steps,
                                form.typed_steps(inherited_defaults, steps)))
    return params


LOCAL_MAX_INSTANCES = 8  # local mode starts every instance of a job at once, on the worker
MAX_DEPTH = 32  # how deeply a conf may nest (settings, plain steps): Airflow serializes it


def _local_instance_problems(params: Mapping[str, Any], step: str,
                             cfg: Mapping[str, Any]) -> Iterable[str]:
    count = cfg.get("instance_count", 1)
    if params.get("mode") == "local" and count > LOCAL_MAX_INSTANCES:
        yield (f"steps.{step}.instance_count: {count}, at most {LOCAL_MAX_INSTANCES} in local "
               "mode (each instance is a container on this machine)")


def _text_problem(text: str) -> str | None:
    """Why no process, and no UTF-8 file or request, can take ``text``, or None."""
    if "\x00" in text:
        return "a NUL byte"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (no UTF-8 character)"
    return None


def _shape_problems(conf: Any) -> Iterable[str]:
    """NUL bytes (no process takes one in its arguments or environment), lone surrogates (no
    UTF-8: Airflow's API fails on them) and nesting deeper than :data:`MAX_DEPTH` (Airflow
    fails to serialize it, a merge would recurse), found without recursion."""
    stack: list[tuple[tuple[str, ...], Any, int]] = [((), conf, 0)]
    while stack:
        where, value, depth = stack.pop()
        at = key_path(*where) or "the run's conf"
        if depth > MAX_DEPTH:
            yield f"{key_path(*where[:4])}: nested more than {MAX_DEPTH} deep"
        elif isinstance(value, str) and (problem := _text_problem(value)):
            yield f"{at}: contains {problem}"
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and (problem := _text_problem(key)):
                    yield f"{at}: a key contains {problem}"
                else:
                    stack.append(((*where, str(key)), item, depth + 1))
        elif isinstance(value, list):
            stack.extend(((*where, str(i)), item, depth + 1) for i, item in enumerate(value))


def _image_problems(params: Mapping[str, Any], step: str, kind: JobKind, cfg: Any) -> Iterable[str]:
    """An image given as ``{"framework", ...}`` must resolve (for the step's kind); in local
    mode, a training step without code must name a built-in algorithm the local image stands
    in for, or an image of its own."""
    from smtask.images import (
        ALGORITHMS,
        LOCAL_FRAMEWORKS,
        LOCAL_IMAGE,
        algorithm_of,
        framework_of,
        is_aws_image,
        resolve_image,
    )

    key, given = (f"steps.{step}.image", cfg["image"]) if cfg.get("image") else \
        ("image", params.get("image"))
    try:
        resolve_image(key, given, scope=kind.image_scope, params=dict(params),
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
    if (kind.algorithm_images and local and "source_dir" not in cfg
            and not own and algorithm_of(given) is None):
        yield (f"steps.{step}: no source_dir, and {key} is no built-in algorithm the local "
               f"image stands in for ({', '.join(ALGORITHMS)}): give source_dir and "
               "entry_script, an algorithm image, or a local image of your own")


def _schema_problems(value: Any, schema: dict[str, Any], prefix: tuple[str, ...]) -> Iterable[str]:
    from smtask import schema as dialect

    for error in dialect.errors(value, schema):
        yield dialect.problem(error, prefix)


def _plain_step_problems(configured: Mapping[str, Any], steps: Mapping[str, Any],
                         typed: Mapping[str, Any]) -> Iterable[str]:
    """A plain task's step (``steps.data-source``): its keys typed from its defaults, unless
    the config's form makes it free-form; small either way."""
    for step in sorted(s for s in configured if s not in steps):
        yield from _schema_problems(configured[step], PLAIN_STEP, ("steps", step))
        if step in typed and isinstance(configured[step], Mapping):
            yield from _schema_problems(configured[step], typed[step], ("steps", step))
        size = len(json.dumps(configured[step]).encode())
        if size > PLAIN_STEP_MAX_BYTES:
            yield (f"{key_path('steps', step)}: {size} bytes as JSON, at most "
                   f"{PLAIN_STEP_MAX_BYTES}")


def _local_model_problems(params: Mapping[str, Any]) -> Iterable[str]:
    """The names of ``local.models`` are SageMaker's model names."""
    local = params.get("local")
    models = local.get("models") if isinstance(local, Mapping) else None
    for name in sorted(models) if isinstance(models, Mapping) else ():
        if problem := name_problem("model", name):
            yield f"local.models: model name {problem}"


def _settings_problems(step: str, kind: JobKind, cfg: Mapping[str, Any]) -> Iterable[str]:
    """The script reads its settings at the step's level: a key of the step's own may not be
    shadowed; the file stays small (it is part of every job's inputs and of the task log)."""
    if kind.settings != "never" and SETTINGS_ENV in cfg.get("environment", {}):
        yield (f"steps.{step}.environment.{SETTINGS_ENV}: set by smtask (the path of the "
               "settings file)")
    settings = cfg.get("settings")
    if not isinstance(settings, Mapping):
        return
    if kind.settings != "always" and "source_dir" not in cfg:
        yield f"steps.{step}.settings: only for a step that runs a script (source_dir)"
    own = kind.schema["properties"]
    for key in sorted(k for k in settings if k in own):
        yield (f"steps.{step}.settings.{key}: collides with the step's own key {key!r} (the "
               "script reads both at the same level of its config.json); rename it")
    size = len(json.dumps(settings).encode())
    if size > SETTINGS_MAX_BYTES:
        yield f"steps.{step}.settings: {size} bytes as JSON, at most {SETTINGS_MAX_BYTES}"


def _artifacts_problems(params: Mapping[str, Any]) -> Iterable[str]:
    """The run's artifacts root (local mode's ``local.artifacts``, by default
    ``$SMTASK_HOME/artifacts``; else ``artifacts``) must be a URI that names one place, and
    in local mode a folder or not yet there: a link on the way that leads nowhere (a loop, a
    dead end, which a write would follow) or a file would fail the run's first write, after
    its job."""
    key = "local.artifacts" if params.get("mode") == "local" else "artifacts"
    try:
        root = artifacts_root(params)
    except ParamsError:
        return  # sagemaker mode without s3:// artifacts: the mode's own check names it
    parsed = urlparse(root)
    if "?" in root or "#" in root:  # urlparse's query and fragment
        yield (f"{key}: {quoted(root)} holds '?' or '#', which end a URI's path (its outputs "
               "would go elsewhere): name another folder")
    elif not root.isascii():
        yield f"{key}: {quoted(root)} is not ASCII, as Airflow's assets need: name another folder"
    if parsed.scheme != "file":
        return
    # the deepest part of the path that is there: every write goes through it
    there = os.path.normpath(parsed.path)
    while not os.path.lexists(there) and os.path.dirname(there) != there:
        there = os.path.dirname(there)
    named = "" if there == os.path.normpath(parsed.path) else " (on the way to the folder named)"
    if os.path.lexists(there) and not os.path.exists(there):
        yield f"{key}: {quoted(there)}{named} is a link that leads nowhere (a loop or a dead end)"
    elif os.path.exists(there) and not os.path.isdir(there):
        yield f"{key}: {quoted(there)}{named} is not a folder"


def _worker_state(params: Mapping[str, Any]) -> list[Path]:
    """The folders of the worker's own state: SMTASK_HOME, Airflow's home (AIRFLOW_HOME, else
    ~/airflow, as Airflow takes it) and its config file's folder, local mode's artifacts."""
    from smtask.naming import smtask_home

    found = [smtask_home(), Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser()]
    if os.environ.get("AIRFLOW_CONFIG"):
        found.append(Path(os.environ["AIRFLOW_CONFIG"]).expanduser().parent)
    artifacts = str((params.get("local") or {}).get("artifacts") or "")
    if params.get("mode") == "local" and artifacts.startswith("file://"):
        found.append(Path(urlparse(artifacts).path))
    return [Path(os.path.realpath(path)) for path in found]  # a link loop: no traceback


def _file_problems(params: Mapping[str, Any], step: str, cfg: Any) -> Iterable[str]:
    """The code a step names must exist on the worker, inside the code root, before a job is
    created (called once the schema holds, so the keys are there and are strings)."""
    root = Path(params.get("code_root") or ".").resolve()
    for key in (k for k in ("code_path", "source_dir") if k in cfg):
        # resolved (.. and symlinks followed): code outside the root is never uploaded or mounted
        code = Path(os.path.realpath(root / cfg[key]))  # a link loop resolves, to no file
        if not code.is_relative_to(root):
            yield f"steps.{step}.{key}: {quoted(cfg[key])} is outside the code root {root}"
            return
        # the worker's own state (Airflow's config with its keys, its DB, the artifacts) is no
        # code, even inside the code root (./run keeps .smtask in the repository)
        for state in _worker_state(params):
            if code.is_relative_to(state) or state.is_relative_to(code):
                yield f"steps.{step}.{key}: {quoted(cfg[key])} holds the worker's own state {state}"
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
    try:
        strays = list(itertools.islice(stray_links(source), 6))
    except OSError as exc:  # its job would lack what cannot be read
        where = os.path.relpath(exc.filename, source) if exc.filename else "?"
        yield f"steps.{step}.source_dir: cannot read its {quoted(where)}: {exc.strerror}"
        return
    if strays:
        shown = ", ".join(f"{quoted(name, 40)} " + (f"-> {quoted(target, 40)}" if target
                                                      is not None else "(not a file)")
                          for name, target in strays[:5])
        yield (f"steps.{step}.source_dir: holds what its job would not get: {shown}"
               f"{', ...' if len(strays) > 5 else ''} (it gets a relative link to a file of the "
               f"folder, {quoted(str(source))})")
        return
    for key in ("entry_script", "code", "requirements"):
        if key not in cfg:
            continue
        if not Path(os.path.realpath(source / cfg[key])).is_relative_to(source.resolve()):
            yield f"steps.{step}.{key}: {quoted(cfg[key])} is outside {source}"
        elif not os.path.isfile(source / cfg[key]):
            yield f"steps.{step}.{key}: no file {cfg[key]} in {source}"
