"""``@sm_processing``, ``@sm_training``, ``@sm_tuning``, ``@sm_transform``: SageMaker jobs as
TaskFlow tasks.

The decorated function runs on the worker at execute time with its upstream XCom values and
returns only the dynamic part of the job (like ``@task.bash`` returns its command). Everything
static comes from the step's entry in the DAG params (``steps.<step>``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory
from airflow.sdk.definitions.context import context_merge

from smtask import naming, params, waiting
from smtask.errors import JobFailed, ParamsError, SmtaskError, TaskInterrupted, TaskShutdown

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator

    from smtask.steps import StepContext

_F = TypeVar("_F", bound=Callable[..., Any])
# Set by `smtask run` when it is interrupted: there a kill is always the user's.
KILL_STOPS_JOBS = False


def _check_step(decorator: str, step: Any) -> None:
    """The step names a folder of the run's artifacts and part of the job name: checked when
    the DAG is parsed."""
    problem = params.name_problem("step", step)
    if problem:
        raise TypeError(f"{decorator}: step {problem}")


class _SageMakerDecoratedOperator(DecoratedOperator):
    """Runs one SageMaker job per task instance: params -> job spec -> session -> job -> outputs.

    :param step: the key of this task's settings under the ``steps`` param.
    :param mode: ``local`` or ``sagemaker``; a run's conf ``mode`` still wins. Defaults to the
        ``mode`` param (``$SMTASK_MODE`` or ``local``).
    :param deferrable: hand the wait to a trigger (sagemaker mode), holding no worker slot
        while the job runs; the step setting ``deferrable`` does the same per run.
    """

    kind: ClassVar[str]
    custom_operator_name: ClassVar[str]
    max_name: ClassVar[int] = naming.MAX_JOB_NAME  # the API's limit on the job's name
    template_fields = DecoratedOperator.template_fields
    shallow_copy_attrs = ("python_callable",)

    def __init__(self, *, python_callable: Callable, step: str, mode: str | None = None,
                 deferrable: bool = False, op_args: Collection[Any] | None = None,
                 op_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        _check_step(self.custom_operator_name, step)
        if mode is not None and mode not in params.MODES:
            raise TypeError(f"@sm_{self.kind}(step={step!r}): mode must be one of {params.MODES}")
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs,
                         **kwargs)
        self.step, self.mode, self.deferrable = step, mode, deferrable
        params.describe_step(getattr(self, "dag", None), step, self.kind)  # the trigger form
        self._active: tuple[Any, str] | None = None
        self._executing = False
        self._ti_key: tuple[str, str, int] = ("", "", -1)
        self._on_kill = "auto"
        self._mode: str | None = None

    def execute(self, context: Context) -> Any:
        self._executing = True  # from here on a kill interrupts the task (see on_kill)
        try:
            return self._execute(context)
        finally:
            self._executing = False

    def _execute(self, context: Context) -> Any:
        run_params = self._params(context)
        step_ctx = self._step_context(context, run_params)
        context_merge(context, self.op_kwargs)
        kwargs = self.determine_kwargs(context)
        returned = self.python_callable(*self.op_args, **kwargs)
        job = self.build_spec(step_ctx, returned, [*self.op_args, *kwargs.values()])
        self.log.info("%s job %s (%s mode): %s", self.kind, job["job_name"], run_params["mode"],
                      {k: v for k, v in job.items() if k != "tags"})
        return self._run(job, run_params)

    def _params(self, context: Context) -> dict[str, Any]:
        """Validated for every smtask step of the DAG, so a typo in a later step fails the
        first task; the decorator's ``mode`` applies unless the run's conf sets one. The
        refusal shows three problems; the task log lists them all (up to 20)."""
        try:
            run_params = params.run_params(context)
        except ParamsError as exc:
            for problem in exc.problems[:20]:
                self.log.error("bad params: %s", problem)
            raise
        conf = getattr(context.get("dag_run"), "conf", None) or {}
        if self.mode and "mode" not in conf:
            run_params["mode"] = self.mode
        return run_params

    def _step_context(self, context: Context, run_params: dict[str, Any]) -> StepContext:
        from smtask import storage
        from smtask.steps import StepContext

        ti = context["ti"]
        # what on_kill needs to tell a user's kill from a shutdown
        self._ti_key = (ti.dag_id, context["run_id"], storage.map_index(context))
        self._mode = run_params["mode"]
        self._on_kill = run_params["steps"][self.step].get("on_kill", "auto")
        instance: dict[str, Any] = {"dag_id": ti.dag_id, "run_id": context["run_id"],
                                    "task_id": ti.task_id, "map_index": storage.map_index(context)}
        return StepContext(
            step=self.step,
            params=run_params,
            job_name=naming.job_name(run_params["pipeline_name"], self.step, **instance,
                                     max_length=self.max_name),
            prefix=storage.run_prefix(context, self.step, run_params),
            instance=naming.task_instance_id(**instance),
        )

    def build_spec(self, ctx: StepContext, returned: Any, upstream: list[Any]) -> dict[str, Any]:
        return self._module().spec(ctx, returned)

    @classmethod
    def _module(cls) -> Any:
        return importlib.import_module(f"smtask.steps.{cls.kind}")

    def _run(self, job: dict[str, Any], run_params: dict[str, Any]) -> dict[str, Any]:
        """Find this task instance's job by name (re-attach to a running one, reuse a
        completed one, rename past a failed one), else submit it; wait; return its outputs."""
        from smtask.local import ContainerFailed, ContainerOutput
        from smtask.sessions import open_session

        cfg = run_params["steps"][self.step]
        output = ContainerOutput(lambda line: self.log.info("%s", line))
        with open_session(run_params, output, self.step) as session:
            self._active = (session, job["job_name"])
            client, base = session.sagemaker_client, job["job_name"]
            name, existing = waiting.claim(client, self.kind,
                                           lambda n: naming.attempt_name(base, n, self.max_name),
                                           rerun_failed=cfg.get("if_job_failed") != "fail",
                                           rerun_completed=cfg.get("if_job_completed") == "rerun",
                                           rerun_stopped=cfg.get("if_job_stopped") == "rerun")
            job = {**job, "job_name": name}
            self._active = (session, name)
            from smtask.steps import put_model_code

            put_model_code(job.get("model_code"), session)  # the code a model of it serves with
            try:
                description = existing
                if existing is None and name != base and not session.local_mode:
                    from smtask.steps import clear_leftovers

                    clear_leftovers(session, getattr(self._module(), "shared_outputs",
                                                     lambda _: [])(job), self.log.info)
                if existing is None and session.local_mode:  # the job runs inside submit()
                    description = self._run_locally(job, session, cfg)
                elif existing is None:
                    description = self._submit(job, session)
                elif waiting.status(self.kind, existing) in waiting.DONE:
                    self.log.info("%s job %s already completed: reusing its outputs", self.kind, name)
                else:
                    self.log.info("re-attaching to %s job %s (%s)", self.kind, name,
                                  waiting.status(self.kind, existing))
                if description is None or waiting.status(self.kind, description) not in waiting.DONE:
                    # local jobs run inside submit(); only SageMaker's can be waited on elsewhere
                    if (self.deferrable or cfg.get("deferrable")) and not session.local_mode:
                        # a job that already ended is collected here: deferring costs seconds
                        description = description or waiting.find(client, self.kind, name)
                        if description is None or waiting.status(self.kind, description) in \
                                waiting.RUNNING:
                            self._defer(job, run_params, cfg)
                    tail = None if session.local_mode else waiting.LogTail(
                        session.boto_session.client("logs"), self.kind, name, output)
                    description = waiting.wait(client, self.kind, name, tail=tail,
                                               timeout=cfg.get("wait_timeout_seconds"),
                                               cap=cfg.get("poll_max_seconds", 30.0),
                                               known=description)
                description = self._complete(client, description)
            except ContainerFailed as exc:
                raise JobFailed(self.kind, name, exc.reason) from exc
            except SmtaskError:
                raise
            except Exception as exc:  # the SDK raises bare RuntimeErrors for container failures
                if not session.local_mode:
                    raise
                raise JobFailed(self.kind, name, f"{exc} ({output.failure(None)})") from exc
            finally:
                self._active = None
        return self._module().outputs(job, description)

    def _defer(self, job: dict[str, Any], run_params: dict[str, Any], cfg: dict[str, Any]) -> None:
        from smtask.triggers import SageMakerJobTrigger

        self.defer(
            trigger=SageMakerJobTrigger(
                kind=self.kind, job=job,
                aws_conn_id=run_params.get("aws_conn_id", "aws_default"),
                region_name=run_params.get("region_name"),
                timeout=cfg.get("wait_timeout_seconds"), poll_max=cfg.get("poll_max_seconds", 30.0),
                if_killed=cfg.get("on_kill", "auto")),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resumes a deferred task: the trigger's event says how the job ended."""
        from smtask.sessions import sagemaker_client  # no SDK: a resume only describes or stops

        # The run's params were validated before the task deferred; validating them again
        # would resolve any {"framework"} image, importing the SDK. Only the connection is read.
        connection = {key: context["params"].get(key) for key in ("aws_conn_id", "region_name")
                      if context["params"].get(key)}
        job = event["job"]
        if event["status"] == "Timeout":
            waiting.stop(sagemaker_client(connection), self.kind, job["job_name"])
        if event["status"] not in waiting.DONE:
            raise JobFailed(self.kind, job["job_name"], event["reason"])
        description = event["description"]
        if hasattr(self._module(), "complete"):  # the event holds too little: describe again
            client = sagemaker_client(connection)
            description = self._complete(client, waiting.find(client, self.kind,
                                                               job["job_name"]) or {})
        return self._module().outputs(job, description)

    def _complete(self, client: Any, description: dict[str, Any]) -> dict[str, Any]:
        """A kind whose completed job's description lacks its outputs (tuning: the best
        training job's model) completes it with more describes."""
        complete = getattr(self._module(), "complete", None)
        return dict(description) if complete is None else complete(client, description)

    def on_kill(self) -> None:
        """Airflow calls this when the task process gets SIGTERM: a user marked the task
        failed or cleared it, the run was stopped, or the worker is shutting down.

        Local mode: the job's compose processes and containers are stopped and the task
        interrupted at once, whatever it was doing. SageMaker mode: the step's ``on_kill``
        decides. ``auto`` (the default) asks Airflow for the task's state: no longer running
        means a user's action, SageMaker is asked to stop the job and the task fails
        (:class:`TaskInterrupted`, no retry); still running means a shutdown or restart, and
        the job is left running and the task ends (:class:`TaskShutdown`), to be retried if
        it may: the retry re-attaches to the job (also when Airflow cannot be asked). ``stop``
        always stops it; ``leave`` never does.
        """
        if not getattr(self, "_executing", False):
            return  # the task is not running its job (it finished, or never started)
        session, name = getattr(self, "_active", None) or (None, "")
        # Airflow's task runner lets the task go on after on_kill: ending it is ours to do,
        # else a shutdown waits for the job (hours) and a kill for the next poll.
        if session is not None and not session.local_mode:
            if self._user_killed():
                waiting.stop(session.sagemaker_client, self.kind, name)
                self.log.info("killed: asked SageMaker to stop %s job %s", self.kind, name)
                raise TaskInterrupted(f"{self.custom_operator_name} task {self.task_id} (step "
                                      f"'{self.step}') was killed; its job {name} was asked to stop")
            self.log.info("task process stopping: %s job %s is left running; the task's "
                          "retry re-attaches to it", self.kind, name)
            raise TaskShutdown(f"{self.custom_operator_name} task {self.task_id} (step "
                               f"'{self.step}') stopped by a shutdown; its {self.kind} job {name} "
                               "is left running for the task's retry to re-attach to")
        if session is None and getattr(self, "_mode", None) == "sagemaker" and \
                not self._user_killed():
            raise TaskShutdown(f"{self.custom_operator_name} task {self.task_id} (step "
                               f"'{self.step}') stopped by a shutdown before it started its job")
        if session is not None:
            if session.smtask_closing:
                return  # the session is already removing its containers; let it finish
            from smtask.local import stop

            session.smtask_killed = True  # the SDK may swallow the exception raised below
            removed = stop(session)
            self.log.info("killed: removed %d container(s) of %s job %s", len(removed), self.kind, name)
        raise self._interrupted()

    def _interrupted(self) -> TaskInterrupted:
        return TaskInterrupted(f"{self.custom_operator_name} task {self.task_id} (step "
                               f"'{self.step}') was killed; its job was stopped")

    def _submit(self, job: dict[str, Any], session: Any) -> dict[str, Any] | None:
        """Create the job on SageMaker. ``ResourceInUse`` means a job of this name exists: when
        an answer was lost (a 503 or a timeout after SageMaker created it) botocore's retry of
        the create meets this task instance's own job, which is re-attached to."""
        from botocore.exceptions import ClientError

        try:
            return self._module().submit(job, session)
        except ClientError as exc:
            if waiting.error_code(exc) != "ResourceInUse":
                raise
            description = waiting.adopt(session.sagemaker_client, self.kind, job["job_name"],
                                        job["tags"][waiting.INSTANCE_TAG], exc)
            self.log.info("%s job %s was created, but the answer was lost: re-attaching to it "
                          "(%s)", self.kind, job["job_name"], waiting.status(self.kind, description))
            return description

    def _run_locally(self, job: dict[str, Any], session: Any, cfg: dict[str, Any]) -> dict[str, Any]:
        """Run the job in local containers within the step's time limits, as SageMaker would
        (:func:`smtask.local.time_limit`): past one, its containers are stopped and the task
        fails with the limit named."""
        from smtask.local import time_limit

        with time_limit(session, self.kind, cfg) as limit:
            try:
                description = self._module().submit(job, session)
            except Exception:
                if not limit.expired:
                    raise
        if limit.expired:
            raise JobFailed(self.kind, job["job_name"], limit.reason)
        return self._local_result(session, job["job_name"], description)

    def _local_result(self, session: Any, name: str, description: Any) -> dict[str, Any]:
        """A local job's end. The SDK's telemetry wrapper swallows any BaseException raised
        inside its calls (``finally: return``), a kill's included: look, don't trust."""
        if session.smtask_killed:
            raise self._interrupted()
        description = description or waiting.find(session.sagemaker_client, self.kind, name)
        if description is None or waiting.status(self.kind, description) not in waiting.DONE:
            state = "no job" if description is None else waiting.status(self.kind, description)
            raise JobFailed(self.kind, name, f"the local job did not complete ({state})")
        from smtask.local import publish

        publish(session)  # only a completed job's outputs reach the artifacts
        return dict(description)

    def _user_killed(self) -> bool:
        """Whether the kill is a user's action (per the step's ``on_kill``, see on_kill)."""
        choice = getattr(self, "_on_kill", "auto")
        if KILL_STOPS_JOBS:
            return True
        if choice != "auto":
            return bool(choice == "stop")
        dag_id, run_id, map_index = getattr(self, "_ti_key", ("", "", -1))
        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            states = RuntimeTaskInstance.get_task_states(
                dag_id=dag_id, map_index=None if map_index < 0 else map_index,
                task_ids=[self.task_id], run_ids=[run_id]).get(run_id, {})
        except Exception as exc:  # noqa: BLE001 - cannot tell: the safe default applies
            self.log.warning("cannot ask Airflow why the task is killed (%s)", exc)
            return False
        state = states.get(self.task_id if map_index < 0 else f"{self.task_id}_{map_index}")
        self.log.info("task killed while its state is %s", state)
        return state is not None and str(getattr(state, "value", state)) != "running"


class _ProcessingOperator(_SageMakerDecoratedOperator):
    kind = "processing"
    custom_operator_name = "@sm_processing"


class _TrainingOperator(_SageMakerDecoratedOperator):
    kind = "training"
    custom_operator_name = "@sm_training"


class _TuningOperator(_SageMakerDecoratedOperator):
    kind = "tuning"
    custom_operator_name = "@sm_tuning"
    max_name = 32  # HyperParameterTuningJobName


class _TransformOperator(_SageMakerDecoratedOperator):
    kind = "transform"
    custom_operator_name = "@sm_transform"

    def build_spec(self, ctx: StepContext, returned: Any, upstream: list[Any]) -> dict[str, Any]:
        return self._module().spec(ctx, returned, upstream)


def _factory(operator: type[_SageMakerDecoratedOperator]) -> Callable[..., Any]:
    @overload
    def decorator(python_callable: _F, /) -> TaskDecorator: ...
    @overload
    def decorator(*, step: str, mode: str | None = None, **kwargs: Any) -> TaskDecorator: ...

    def decorator(python_callable: Callable | None = None, /, **kwargs: Any) -> TaskDecorator:
        if "step" not in kwargs:
            raise TypeError(f"{operator.custom_operator_name} needs step=: the key of this "
                            "task's settings under the 'steps' param")
        _check_step(operator.custom_operator_name, kwargs["step"])  # .expand() skips __init__
        return task_decorator_factory(python_callable=python_callable,
                                      decorated_operator_class=operator, **kwargs)

    decorator.__name__ = operator.custom_operator_name.lstrip("@")
    decorator.__doc__ = (f"Wrap a function into a SageMaker {operator.kind} task.\n\n"
                         ":param step: the key of this task's settings under ``steps``.\n"
                         ":param mode: ``local`` or ``sagemaker`` (default: the ``mode`` param).\n"
                         "Other keyword arguments go to the operator (``retries``, ``task_id``...).")
    return decorator


sm_processing = _factory(_ProcessingOperator)
sm_training = _factory(_TrainingOperator)
sm_tuning = _factory(_TuningOperator)
sm_transform = _factory(_TransformOperator)

