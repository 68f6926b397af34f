"""smtask: SageMaker jobs as ordinary Airflow tasks.

Public names load on first use (PEP 562): ``import smtask`` imports neither Airflow nor the
SageMaker SDK, so Airflow can read the provider info while it is still configuring itself.
The SageMaker SDK is imported only when a task executes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtask.decorators import (
        sm_endpoint,
        sm_processing,
        sm_register,
        sm_training,
        sm_transform,
        sm_tuning,
    )
    from smtask.errors import JobFailed, ParamsError, SmtaskError
    from smtask.lineage import output_asset
    from smtask.params import load_config, pipeline_params, run_params

_PUBLIC = {
    "JobFailed": "smtask.errors",
    "ParamsError": "smtask.errors",
    "SmtaskError": "smtask.errors",
    "load_config": "smtask.params",
    "output_asset": "smtask.lineage",
    "pipeline_params": "smtask.params",
    "run_params": "smtask.params",
}
# and a decorator per job kind (smtask.kinds.KINDS): smtask.decorators' sm_<kind>
__all__ = [
    "JobFailed",
    "ParamsError",
    "SmtaskError",
    "load_config",
    "output_asset",
    "pipeline_params",
    "run_params",
    "sm_endpoint",
    "sm_processing",
    "sm_register",
    "sm_training",
    "sm_transform",
    "sm_tuning",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    if name.startswith("sm_"):
        return getattr(importlib.import_module("smtask.decorators"), name)
    raise AttributeError(f"module 'smtask' has no attribute {name!r}")
