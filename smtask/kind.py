"""What a job kind is: one declared object that holds everything the rest of smtask asks about
the kind (its params schema and checks, its SageMaker API and what its statuses mean, how it
builds, submits, completes and reads its job). Each kind's module ends with one; the registry,
``smtask.kinds.KINDS``, lists them; the decorators, provider info, params schemas, waiting and
triggers are made from them.

Imports nothing of Airflow or the SDK: the provider info reads the kinds while Airflow is
still configuring itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Problems = Iterable[str]


@dataclass(frozen=True)
class Api:
    """A kind's SageMaker API, and what its job's statuses mean (in the manner of the Amazon
    provider's ``waiters/sagemaker.json``: each operation has its own status words)."""

    describe: str  # describe_training_job
    name_arg: str  # TrainingJobName
    status: str  # TrainingJobStatus, in the description
    stop: str  # stop_training_job; "" for what a kill or a timeout never stops (an endpoint)
    arn: str  # TrainingJobArn, in the description
    log_group: str  # /aws/sagemaker/TrainingJobs
    running: frozenset[str] = frozenset({"InProgress", "Stopping"})
    done: frozenset[str] = frozenset({"Completed"})
    failed: frozenset[str] = frozenset({"Failed", "Stopped"})

    @classmethod
    def of_job(cls, resource: str, log_group: str = "", deleting: tuple[str, ...] = ()) -> Api:
        """The API of a SageMaker job resource named in CamelCase ("TrainingJob",
        "HyperParameterTuningJob"): its operations and description fields follow the name.
        A job that can be deleted (training, tuning) has ``deleting`` statuses too (Deleting,
        DeleteFailed): it will not complete, so a task waiting for it fails and a retry
        starts a new one."""
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", resource).lower()
        failed = {"Failed", "Stopped", *deleting}
        return cls(describe=f"describe_{snake}", name_arg=f"{resource}Name",
                   status=f"{resource}Status", stop=f"stop_{snake}", arn=f"{resource}Arn",
                   log_group=log_group or f"/aws/sagemaker/{resource}s",
                   failed=frozenset(failed))


@dataclass(frozen=True)
class Inherit:
    """A step of this kind may take another step's settings under its own (a tuning step,
    its ``training_step``): the key that names it, and the key that may not be in that step."""

    key: str  # training_step
    not_in_base: tuple[str, ...]  # the keys a base step may not have: training_step, tuning
    base: str  # what the base step must be, in words: "a training step"
    # (key, switch): the base step's key is taken only while the step's own switch, where it
    # sets one, is on (a tuning step turning spot off does not take the trainer's wait)
    only_with: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class JobKind:
    """One job kind. ``spec(ctx, returned, upstream)`` turns the step's settings and the user
    function's value into a job spec (plain JSON); ``submit(job, session)`` starts it (local
    mode: runs it to its end, returning its description); ``complete(client, description)``
    adds what a finished job's description lacks; ``outputs(job, description)`` is the task's
    result (plain JSON)."""

    name: str  # the kind, in the user's words: "training"
    decorator: str  # the decorator's name: "sm_training"
    api: Api
    # the step's params: its JSON schema (properties, required, dependencies), the image
    # scope a {"framework", ...} image resolves for, and the checks only this kind knows,
    # check(step, cfg, params) -> problems (called once the schema holds)
    schema: Mapping[str, Any]
    image_scope: str
    spec: Callable[..., dict[str, Any]]
    outputs: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    submit: Callable[[dict[str, Any], Any], Any] | None = None  # None: the kind has ``start``
    complete: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    check: Callable[[str, Mapping[str, Any], Mapping[str, Any]], Problems] | None = None
    # problems of the step's form (which keys go together): like the schema's, while one
    # stands no file or image is looked up and ``check`` waits
    form: Callable[[str, Mapping[str, Any]], Problems] | None = None
    max_name: int = 63  # the API's limit on the job's name
    event_keys: tuple[str, ...] = ()  # what of a finished job's description a trigger keeps
    # the output URIs every job of a task instance writes to (cleared before a rerun)
    shared_outputs: Callable[[dict[str, Any]], list[str]] = field(default=lambda job: [])
    algorithm_images: bool = False  # may run an image without code (a built-in algorithm)
    settings: str = "never"  # takes script settings: "always", "script" (with source_dir)
    runtime_limited: bool = False  # the job has its own max runtime (local mode enforces it)
    inherit: Inherit | None = None
    # the outputs a step of the kind makes, by name, from its config (each an Airflow Asset,
    # smtask.lineage); None: it makes none (a model version, an endpoint)
    assets: Callable[[Mapping[str, Any]], Iterable[str]] | None = None
    # what a finished SageMaker job used, read from its description (``seconds``,
    # ``instances``, ``billable_seconds``: see smtask.kinds.common.job_usage); None: nothing
    # a job bills by its run time (a model version, an endpoint)
    usage: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    # A kind whose resource is not one job named per task instance (a model version, an
    # endpoint) finds or starts it itself: start(job, session, log) -> (job, description),
    # the job's ``job_name`` then being what ``api.describe`` takes; the task waits (or
    # defers) until ``api.done``, as for a job. Local mode: start returns it done.
    start: Callable[[dict[str, Any], Any, Callable[[str], None]],
                    tuple[dict[str, Any], dict[str, Any] | None]] | None = None
