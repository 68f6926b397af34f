"""Params: config.json as DAG params, deep-merged with a run's conf, validated before any job.

The shape follows the "config.json as DAG params" pattern: top-level settings of the pipeline
and ``steps.<step>`` with each step's settings. Its parts:

- ``schemas``: the building blocks of the JSON schemas, and the top level's;
- ``merge``: a run's conf deep-merged into the defaults, and what a conf may not change;
- ``checks``: the checks, handed the DAG's steps' kinds (``smtask.kind.JobKind``);
- ``adapter``: the params as Airflow holds them (``Param``s, the trigger form) and as a task
  runs with them.

The names below load on first use: the kinds' declarations import ``params.schemas``, which
must not bring Airflow in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtask.params.adapter import (
        check_authors_params,
        dag_defaults,
        describe_step,
        or_null,
        parse_memo,
        pipeline_params,
        run_params,
        smtask_steps,
        trigger_schema,
    )
    from smtask.params.checks import load_config, refusal, resolve, validate
    from smtask.params.merge import NEVER, PROTECTED, deep_merge
    from smtask.params.schemas import MODE_ENV, MODES, SETTINGS_ENV, TOP_SCHEMA

_NAMES = {
    "check_authors_params": "adapter", "dag_defaults": "adapter", "describe_step": "adapter",
    "or_null": "adapter", "parse_memo": "adapter", "pipeline_params": "adapter", "run_params": "adapter",
    "smtask_steps": "adapter", "trigger_schema": "adapter", "NEVER": "merge",
    "PROTECTED": "merge", "deep_merge": "merge", "MODE_ENV": "schemas", "MODES": "schemas",
    "SETTINGS_ENV": "schemas", "TOP_SCHEMA": "schemas", "load_config": "checks",
    "refusal": "checks", "resolve": "checks", "validate": "checks",
}
__all__ = ["MODES", "MODE_ENV", "NEVER", "PROTECTED", "SETTINGS_ENV", "TOP_SCHEMA",
           "check_authors_params", "dag_defaults", "deep_merge", "describe_step", "load_config",
           "or_null", "parse_memo", "pipeline_params", "refusal", "resolve", "run_params",
           "smtask_steps", "trigger_schema", "validate"]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"smtask.params.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'smtask.params' has no attribute {name!r}")
