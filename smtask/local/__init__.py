"""Local mode: the SDK's ``LocalSession``, corrected so that a job cannot hurt the machine and
behaves as it would on SageMaker. Each correction is pinned by a test:

- compose files (``compose``): host networking only, read-only inputs and code, every value
  literal, run with ``docker run`` (no docker-compose holding a job's output in memory);
- containers (``containers``): labelled with their session and owner; removed when the
  session ends, however it ends; a dead process's removed by the next session and by
  ``smtask cleanup``; nothing deleted while no engine answers;
- output (``output``): each line to the task log, bounded; a failure quotes the script's own
  error line; only regular files leave a job;
- outputs (``staging``): published only once the job completed, by one rename each;
- limits (``limits``): ``max_runtime_seconds`` and ``wait_timeout_seconds`` as SageMaker's;
- packages (``wheels``): a step's requirements from wheels the host's pip downloaded;
- serving (``serving``): a port of its own per server, the model's code as SageMaker gives
  it, a health wait that fails at once, an error answer that fails the transform;
- tuning (``tuning``): the search SageMaker would run;
- the session (``session``): all of the above around the SDK's ``LocalSession``, whose
  ``smtask`` attribute is smtask's state of it (``state.LocalState``).

Outside this package, local mode is asked for through the names below (imported on first
use: ``smtask.local.compose`` runs as a process of every job and must start light).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtask.local.containers import cleanup_orphans, stop
    from smtask.local.limits import time_limit
    from smtask.local.output import ContainerOutput
    from smtask.local.serving import scratch_copy, serve_on_own_port, serving_code
    from smtask.local.session import kill, killed, open_session, read_only_file, scratch_of
    from smtask.local.staging import publish, stage
    from smtask.local.state import DEFAULT_REGION, LOCAL_IMAGE
    from smtask.local.tuning import run_trials
    from smtask.local.wheels import install_from_wheels

_INTERFACE = {
    "cleanup_orphans": "containers", "stop": "containers", "time_limit": "limits",
    "ContainerOutput": "output", "publish": "staging", "stage": "staging",
    "scratch_copy": "serving", "serve_on_own_port": "serving", "serving_code": "serving",
    "kill": "session", "killed": "session", "open_session": "session",
    "read_only_file": "session", "scratch_of": "session", "DEFAULT_REGION": "state",
    "LOCAL_IMAGE": "state",
    "run_trials": "tuning", "install_from_wheels": "wheels",
}
__all__ = ["DEFAULT_REGION", "LOCAL_IMAGE", "ContainerOutput", "cleanup_orphans",
           "install_from_wheels", "kill", "killed", "open_session", "publish", "read_only_file",
           "run_trials", "scratch_copy", "scratch_of", "serve_on_own_port", "serving_code", "stage",
           "stop", "time_limit"]


def __getattr__(name: str) -> Any:
    if name in _INTERFACE:
        return getattr(importlib.import_module(f"smtask.local.{_INTERFACE[name]}"), name)
    raise AttributeError(f"module 'smtask.local' has no attribute {name!r}")
