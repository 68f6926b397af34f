"""Merging a run's conf into the DAG's params, and what a conf may not change.

Airflow replaces a top-level param whole when a run's conf names it; smtask deep-merges, so a
run can override one hyperparameter without restating the ``steps`` tree. Whoever may trigger
a DAG must not be able to read the worker's files, pick the role or run a command: the keys
below are the DAG author's.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from smtask.naming import key_path, quoted

if TYPE_CHECKING:
    from smtask.kind import JobKind

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
                    "SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SMTASK_*", "DOCKER_*")
PROTECTED = ("role", "image", "artifacts", "aws_conn_id", "region_name", "local.image",
             "local.artifacts", "local.s3_endpoint", "local.models", "steps.*.image",
             "steps.*.model_name", "steps.*.command",
             *(f"steps.*.environment.{name}" for name in EXEC_ENVIRONMENT),
             # the deploy half: what serves where, and who approves it. A conf must not point
             # a run at another team's endpoint or group, pick the version an endpoint
             # serves, approve its own model or skip the approval an endpoint asks for.
             "steps.*.endpoint_name", "steps.*.model_package_arn", "steps.*.allow_unapproved",
             "steps.*.group", "steps.*.approval_status")
# What a run's conf may never change: where the code comes from, the rule itself, the form.
NEVER = ("code_root", "conf_may_override", "form")

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


def with_inherited(params: dict[str, Any], steps: Mapping[str, JobKind]
                   ) -> tuple[dict[str, Any], list[str]]:
    """Each step whose kind inherits (a tuning step naming its ``training_step``) gets that
    step's settings deep-merged under its own (a run's conf overriding the base step reaches
    it too). Returns the params and the problems (a missing or chained base step)."""
    configured = params.get("steps")
    if not isinstance(configured, Mapping):
        return params, []
    problems, merged = [], dict(configured)
    for step, kind in sorted(steps.items()):
        cfg, inherit = configured.get(step), kind.inherit
        source = cfg.get(inherit.key) if inherit and isinstance(cfg, Mapping) else None
        if inherit is None or source is None:
            continue
        base = configured.get(source) if isinstance(source, str) else None
        if source == step or not isinstance(base, Mapping):
            known = ", ".join(sorted(s for s in configured if s != step)) or "none"
            problems.append(f"{key_path('steps', step, inherit.key)}: "
                            f"{quoted(str(source))} is not another step of the params "
                            f"(known: {known})")
        elif any(key in base for key in inherit.not_in_base):
            problems.append(f"{key_path('steps', step, inherit.key)}: {quoted(source)} "
                            f"must be {inherit.base} (it has its own "
                            f"{' or '.join(inherit.not_in_base)})")
        else:
            own = cfg or {}
            dropped = {key for key, switch in inherit.only_with
                       if switch in own and not own[switch] and key not in own}
            merged[step] = deep_merge({k: v for k, v in base.items() if k not in dropped}, own)
    return {**params, "steps": merged}, problems


def allowed_overrides(params: Mapping[str, Any]) -> list[str]:
    """The author's ``conf_may_override`` patterns (what else it holds is the schema's)."""
    allowed = params.get("conf_may_override")
    return [a for a in allowed if isinstance(a, str)] if isinstance(allowed, list) else []


def override_problems(defaults: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[str]:
    """Each protected key whose value the run's conf changed."""
    allowed = allowed_overrides(defaults)
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
