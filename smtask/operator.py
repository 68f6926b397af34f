"""The operator behind every smtask decorator: one SageMaker job per task instance, along the
road params -> job spec -> session -> job -> outputs. What differs from kind to kind is read
from the task's :class:`~smtask.kind.JobKind` (``job_kind``): see ``smtask.decorators``."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import Asset
from airflow.sdk.bases.decorator import DecoratedOperator
from airflow.sdk.definitions.context import context_merge

from smtask import lineage, local, naming, params, storage, waiting
from smtask.errors import ContainerFailed, JobFailed, ParamsError, SmtaskError, TaskInterrupted
from smtask.kill import Kills

if TYPE_CHECKING:
    from airflow.sdk import Context

    from smtask.kind import JobKind
    from smtask.kinds.common import StepContext


def check_step(decorator: str, step: Any) -> None:
    """The step names a folder of the run's artifacts and part of the job name: checked when
    the DAG is parsed."""
    if problem := naming.name_problem("step", step):
        raise TypeError(f"{decorator}: step {problem}")


class SageMakerJobOperator(Kills, DecoratedOperator):
    """Runs one SageMaker job per task instance.

    :param step: the key of this task's settings under the ``steps`` param.
    :param mode: ``local`` or ``sagemaker``; a run's conf ``mode`` still wins. Defaults to the
        ``mode`` param (``$SMTASK_MODE`` or ``local``).
    :param deferrable: hand the wait to a trigger (sagemaker mode), holding no worker slot
        while the job runs; the step setting ``deferrable`` does the same per run.
    """

    job_kind: ClassVar[JobKind]
    custom_operator_name: ClassVar[str]
    template_fields = DecoratedOperator.template_fields
    shallow_copy_attrs = ("python_callable",)

    def __init__(self, *, python_callable: Callable, step: str, mode: str | None = None,
                 deferrable: bool = False, op_args: Collection[Any] | None = None,
                 op_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        check_step(self.custom_operator_name, step)
        if mode is not None and mode not in params.MODES:
            raise TypeError(f"{self.custom_operator_name}(step={step!r}): mode must be one of "
                            f"{params.MODES}")
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs,
                         **kwargs)
        self.step, self.mode, self.deferrable = step, mode, deferrable
        dag = getattr(self, "dag", None)
        params.describe_step(dag, step, self.job_kind)  # the trigger form
        # its outputs as Assets (the decorator adds them for .expand(), which skips __init__)
        mine = {a.uri for a in self.outlets if isinstance(a, Asset)}
        self.outlets = [*self.outlets, *(a for a in lineage.step_assets(dag, step, self.job_kind)
                                         .values() if a.uri not in mine)]
        self.link_context: dict[str, Any] | None = None  # the run, for the links (lineage)
        self._lineage: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {})
        self.init_kills()

    def execute(self, context: Context) -> Any:
        self._executing = True  # from here on a kill interrupts the task (see on_kill)
        self._pending_kill = None
        try:
            return self._execute(context)
        except JobFailed as failed:  # a job that ran and failed is billed: say for how long
            self._log_usage(failed.usage, "sagemaker")
            raise
        finally:
            self._executing = False

    def _execute(self, context: Context) -> Any:
        run_params = self._params(context)
        step_ctx = self._step_context(context, run_params)
        context_merge(context, self.op_kwargs)
        kwargs = self.determine_kwargs(context)
        returned = self.python_callable(*self.op_args, **kwargs)
        job = self.job_kind.spec(step_ctx, returned, [*self.op_args, *kwargs.values()])
        self.log.info("%s job %s (%s mode): %s", self.job_kind.name, job["job_name"],
                      run_params["mode"], {k: v for k, v in job.items() if k != "tags"})
        self.link_context = lineage.link_context(run_params, job["job_name"])
        # when the task ends Airflow stores a URL for each of these: only this run's kind
        self.operator_extra_links = lineage.run_links(type(self).operator_extra_links,
                                                      self.link_context)
        return self._finished(context, job, self._run(job, run_params), run_params["mode"])

    def _finished(self, context: Context, job: Mapping[str, Any], result: dict[str, Any],
                  mode: str) -> dict[str, Any]:
        """The task's result; its outputs' Assets get an event whose extra holds the run's
        own URIs, and OpenLineage the job's datasets (smtask.lineage)."""
        self._lineage = (job, result)
        self._log_usage(result.get("usage"), mode)
        outputs = lineage.result_outputs(result)
        events: Any = context.get("outlet_events")
        for asset in (a for a in self.outlets if isinstance(a, Asset) and events is not None):
            output = lineage.asset_output(asset, self.step)
            if output is not None and output in outputs:
                events[asset].extra.update({"uri": outputs[output], "mode": mode,
                                            "run_id": context.get("run_id"),
                                            "job_name": result.get("job_name")})
        return result

    def _log_usage(self, used: Mapping[str, Any] | None, mode: str) -> None:
        """A finished job's seconds in the task log, as the SDK and the Amazon provider log
        them ("Training seconds", "Billable seconds")."""
        if not used:
            return
        self.log.info("%s seconds: %d%s", self.job_kind.name.capitalize(), used["seconds"],
                      f" on {used['instances']} instance(s)" if "instances" in used else "")
        if "billable_seconds" not in used:
            self.log.info("Billable seconds: those of its training jobs (each its own)")
            return
        note = (" (local mode: nothing is billed)" if mode == "local" else
                f" (managed spot training savings: {used['spot_savings_percent']}%)"
                if "spot_savings_percent" in used else "")
        self.log.info("Billable seconds: %d%s", used["billable_seconds"], note)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The job's inputs and outputs as OpenLineage datasets (the OpenLineage provider
        calls this when the task succeeded, as for the Amazon provider's operators)."""
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        job, result = self._lineage

        def datasets(uris: list[str]) -> list[Any]:
            return [Dataset(namespace=namespace, name=name)
                    for namespace, name in map(lineage.dataset, uris)]

        return OperatorLineage(inputs=datasets(lineage.inputs(job)),
                               outputs=datasets(lineage.outputs(result)))

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
        from smtask.sessions import spread_problem

        if spread := spread_problem(run_params):
            self.log.error("bad params: %s", spread)
            raise ParamsError(f"bad params: {spread}", [spread])
        return run_params

    def _step_context(self, context: Context, run_params: dict[str, Any]) -> StepContext:
        from smtask.kinds.common import StepContext

        ti = context["ti"]
        self.note_task(ti.dag_id, context["run_id"], storage.map_index(context), run_params,
                       self.step)
        instance: dict[str, Any] = {"dag_id": ti.dag_id, "run_id": context["run_id"],
                                    "task_id": ti.task_id, "map_index": storage.map_index(context)}
        return StepContext(
            step=self.step,
            params=run_params,
            job_name=naming.job_name(run_params["pipeline_name"], self.step, **instance,
                                     max_length=self.job_kind.max_name),
            prefix=storage.run_prefix(context, self.step, run_params),
            instance=naming.task_instance_id(**instance),
        )

    def _run(self, job: dict[str, Any], run_params: dict[str, Any]) -> dict[str, Any]:
        """Find this task instance's job by name (re-attach to a running one, reuse a
        completed one, rename past a failed one), else submit it; wait; return its outputs."""
        from smtask.kinds.common import clear_leftovers, put_model_code
        from smtask.sessions import open_session

        kind, cfg = self.job_kind, run_params["steps"][self.step]
        output = local.ContainerOutput(lambda line: self.log.info("%s", line))
        with open_session(run_params, output, self.step) as session:
            self._active = (session, job["job_name"])
            self.raise_pending_kill()  # a kill while the session opened: no job starts
            if kind.start is not None:
                return self._start(job, session, run_params)
            client, base = session.sagemaker_client, job["job_name"]
            passed: list[str] = []  # the status of each earlier job of this task instance
            with ThreadPoolExecutor(1, thread_name_prefix="smtask-upload") as beside:
                # the code a model of the job serves with, put while its job is looked for
                code = beside.submit(put_model_code, job.get("model_code"), session)
                name, existing = waiting.claim(
                    client, kind, lambda n: naming.attempt_name(base, n, kind.max_name),
                    rerun_failed=cfg.get("if_job_failed") != "fail",
                    rerun_completed=cfg.get("if_job_completed") == "rerun",
                    rerun_stopped=cfg.get("if_job_stopped") == "rerun", passed=passed.append)
                code.result()
            job = {**job, "job_name": name}
            self._active = (session, name)
            if self.link_context is not None:
                self.link_context["job_name"] = name
            ran = None  # a local job's run time (it ends inside submit())
            try:
                description = existing
                # the job this one replaces: each name past the first follows an ended one
                rerun = bool(passed) and passed[-1] in kind.api.done
                left_by = ("the completed job this rerun replaces" if rerun else
                           f"a {passed[-1].lower()} job" if passed else "")
                if existing is None and name != base and not session.local_mode:
                    clear_leftovers(session, kind.shared_outputs(job), self.log.info, left_by)
                if existing is None and rerun and job.get("checkpoints"):
                    # a rerun of a completed job trains anew, not from where it ended
                    if session.local_mode:  # the folder is emptied before it is mounted
                        job["checkpoints"] = {**job["checkpoints"], "fresh": True}
                    else:
                        clear_leftovers(session, [job["checkpoints"]["uri"]], self.log.info,
                                        left_by)
                if existing is None and session.local_mode:  # the job runs inside submit()
                    started = time.monotonic()
                    description = self._run_locally(job, session, cfg)
                    ran = time.monotonic() - started
                elif existing is None:
                    description = self._submit(job, session)
                elif waiting.status(kind, existing) in kind.api.done:
                    self.log.info("%s job %s already completed: reusing its outputs", kind.name, name)
                else:
                    self.log.info("re-attaching to %s job %s (%s)", kind.name, name,
                                  waiting.status(kind, existing))
                description = self._await(job, run_params, session, description, tail=lambda: (
                    None if session.local_mode else waiting.LogTail(
                        session.boto_session.client("logs"), kind, name, output)))
                description = self._complete(client, description)
            except ContainerFailed as exc:
                raise JobFailed(kind.name, name, exc.reason) from exc
            except SmtaskError:
                raise
            except Exception as exc:  # the SDK raises bare RuntimeErrors for container failures
                if not session.local_mode:
                    raise
                raise JobFailed(kind.name, name, f"{exc} ({output.failure(None)})") from exc
            finally:
                self._active = None
        return {**kind.outputs(job, description), **self._usage(job, description, ran)}

    def _usage(self, job: Mapping[str, Any], description: Mapping[str, Any],
               ran: float | None) -> dict[str, Any]:
        """``{"usage": ...}``: what the job used (:attr:`JobKind.usage`); a local job's own
        run time, on the instances it stood for, billed nothing. ``{}`` when unknown."""
        kind = self.job_kind
        if ran is not None:
            used = {"seconds": round(ran), "instances": job.get("instance_count", 1),
                    "billable_seconds": 0}
        else:
            used = waiting.usage_of(kind, description, self.log.warning)
        return {"usage": used} if used else {}

    def _start(self, job: dict[str, Any], session: Any, run_params: dict[str, Any]
               ) -> dict[str, Any]:
        """A kind that starts its own resource (a model version, an endpoint: ``start``):
        started or found, then waited for (or deferred to a trigger) as a job is."""
        kind = self.job_kind
        assert kind.start is not None
        try:
            job, description = kind.start(job, session, lambda line: self.log.info("%s", line))
            self._active = (session, job["job_name"])
            self.raise_pending_kill()
            if session.local_mode and local.killed(session):
                raise self.interrupted()
            description = self._await(job, run_params, session, description)
        except ContainerFailed as exc:
            raise JobFailed(kind.name, job["job_name"], exc.reason) from exc
        finally:
            self._active = None
        return kind.outputs(job, description)

    def _await(self, job: dict[str, Any], run_params: dict[str, Any], session: Any,
               description: dict[str, Any] | None,
               tail: Callable[[], waiting.LogTail | None] = lambda: None) -> dict[str, Any]:
        """The job's description once it is done: as it is, or waited for, or (sagemaker
        mode, ``deferrable``) deferred to a trigger while it runs. Local jobs run inside
        submit() or start(); only SageMaker's can be waited on elsewhere."""
        kind, cfg, name = self.job_kind, run_params["steps"][self.step], job["job_name"]
        if description is not None and waiting.status(kind, description) in kind.api.done:
            return description
        client = session.sagemaker_client
        if (self.deferrable or cfg.get("deferrable")) and not session.local_mode:
            # a job that already ended is collected here: deferring costs seconds
            description = description or waiting.find(client, kind, name)
            if description is None or waiting.status(kind, description) in kind.api.running:
                self._defer(job, run_params, cfg)
        return waiting.wait(client, kind, name, tail=tail(), timeout=cfg.get("wait_timeout_seconds"),
                            cap=cfg.get("poll_max_seconds", 30.0), known=description)

    def _submit(self, job: dict[str, Any], session: Any) -> dict[str, Any] | None:
        """Create the job on SageMaker. ``ResourceInUse`` means a job of this name exists: when
        an answer was lost (a 503 or a timeout after SageMaker created it) botocore's retry of
        the create meets this task instance's own job, which is re-attached to."""
        from botocore.exceptions import ClientError

        kind = self.job_kind
        assert kind.submit is not None
        try:
            return kind.submit(job, session)  # type: ignore[no-any-return]
        except ClientError as exc:
            if waiting.error_code(exc) != "ResourceInUse":
                raise
            description = waiting.adopt(session.sagemaker_client, kind, job["job_name"],
                                        job["tags"][naming.INSTANCE_TAG], exc)
            self.log.info("%s job %s was created, but the answer was lost: re-attaching to it "
                          "(%s)", kind.name, job["job_name"], waiting.status(kind, description))
            return description

    def _run_locally(self, job: dict[str, Any], session: Any, cfg: dict[str, Any]) -> dict[str, Any]:
        """Run the job in local containers within the step's time limits, as SageMaker would
        (:func:`smtask.local.time_limit`): past one, its containers are stopped and the task
        fails with the limit named."""
        kind = self.job_kind
        assert kind.submit is not None
        with local.time_limit(session, kind.runtime_limited, cfg) as limit:
            try:
                description = kind.submit(job, session)
            except Exception:
                if not limit.expired:
                    raise
        if limit.expired:
            raise JobFailed(kind.name, job["job_name"], limit.reason)
        return self._local_result(session, job["job_name"], description)

    def _local_result(self, session: Any, name: str, description: Any) -> dict[str, Any]:
        """A local job's end. The SDK's telemetry wrapper swallows any BaseException raised
        inside its calls (``finally: return``), a kill's included: look, don't trust."""
        kind = self.job_kind
        if local.killed(session):
            raise self.interrupted()
        description = description or waiting.find(session.sagemaker_client, kind, name)
        if description is None or waiting.status(kind, description) not in kind.api.done:
            state = "no job" if description is None else waiting.status(kind, description)
            raise JobFailed(kind.name, name, f"the local job did not complete ({state})")
        local.publish(session)  # only a completed job's outputs reach the artifacts
        return dict(description)

    def _defer(self, job: dict[str, Any], run_params: dict[str, Any], cfg: dict[str, Any]) -> None:
        from smtask.triggers import SageMakerJobTrigger

        self.defer(
            trigger=SageMakerJobTrigger(
                kind=self.job_kind.name, job=job,
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
        kind, job = self.job_kind, event["job"]
        self.link_context = lineage.link_context({**connection, "mode": "sagemaker"},
                                                 job["job_name"])
        if event["status"] == "Timeout":
            waiting.stop(sagemaker_client(connection), kind, job["job_name"])
        if event["status"] not in kind.api.done:  # a failed job is billed: say for how long
            self._log_usage(event["usage"] if isinstance(event.get("usage"), dict) else None,
                            "sagemaker")
            raise JobFailed(kind.name, job["job_name"], event["reason"])
        description = event["description"]
        if kind.complete is not None:  # the event holds too little: describe again
            client = sagemaker_client(connection)
            description = self._complete(client, waiting.find(client, kind, job["job_name"]) or {})
        result = kind.outputs(job, description)
        if isinstance(event.get("usage"), dict) and event["usage"]:
            result["usage"] = event["usage"]
        return self._finished(context, job, result, "sagemaker")

    def _complete(self, client: Any, description: dict[str, Any]) -> dict[str, Any]:
        """A kind whose completed job's description lacks its outputs (tuning: the best
        training job's model) completes it with more describes."""
        complete = self.job_kind.complete
        return dict(description) if complete is None else complete(client, description)

    def interrupted(self) -> TaskInterrupted:
        return TaskInterrupted(f"{self.custom_operator_name} task {self.task_id} (step "
                               f"'{self.step}') was killed; its job was stopped")
