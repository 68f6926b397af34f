"""What a kill of an smtask task does to its job (the operator's ``on_kill``).

Airflow sends the task process SIGTERM both when a user marks the task failed or clears it
and when a worker or scheduler shuts down, and calls ``on_kill`` for both. Local mode always
stops the job's containers. In sagemaker mode the step's ``on_kill`` decides (see
:meth:`Kills.on_kill`), unless the task's ``kill_mode`` says otherwise: ``smtask run``, which
never resumes a run, sets it to ``"stop"`` on the task it interrupts.
"""

from __future__ import annotations

from typing import Any

from smtask import local, waiting
from smtask.errors import TaskInterrupted, TaskShutdown


class Kills:
    """The kill half of :class:`smtask.operator.SageMakerJobOperator`."""

    kill_mode: str | None = None  # "stop": every kill stops the job (set by `smtask run`)

    def init_kills(self) -> None:
        self._active: tuple[Any, str] | None = None  # (session, job name) while it runs
        self._executing = False
        self._ti_key: tuple[str, str, int] = ("", "", -1)
        self._on_kill = "auto"
        self._mode: str | None = None
        self._pending_kill: BaseException | None = None  # a kill its signal could not raise

    def note_task(self, dag_id: str, run_id: str, map_index: int, run_params: dict[str, Any],
                  step: str) -> None:
        """What on_kill needs to tell a user's kill from a shutdown."""
        self._ti_key = (dag_id, run_id, map_index)
        self._mode = run_params["mode"]
        self._on_kill = run_params["steps"][step].get("on_kill", "auto")

    def on_kill(self) -> None:
        """See :meth:`_kill`. The exception it raises ends the task; where Python discards an
        exception raised in a signal handler (the signal landed in a finaliser or a weakref
        callback: "Exception ignored in ..."), the task raises it again at its next step
        (:meth:`raise_pending_kill`), so a kill is never lost."""
        outcome = self._kill()
        if outcome is not None:
            self._pending_kill = outcome
            raise outcome

    def raise_pending_kill(self) -> None:
        """Raise a kill's exception that its signal handler could not raise (see on_kill)."""
        pending = getattr(self, "_pending_kill", None)
        if pending is not None:
            raise pending

    def _kill(self) -> BaseException | None:
        """Airflow calls on_kill when the task process gets SIGTERM: a user marked the task
        failed or cleared it, the run was stopped, or the worker is shutting down.

        Local mode: the job's processes and containers are stopped and the task interrupted at
        once, whatever it was doing. SageMaker mode: the step's ``on_kill`` decides. ``auto``
        (the default) asks Airflow for the task's state: no longer running means a user's
        action, SageMaker is asked to stop the job and the task fails (:class:`TaskInterrupted`,
        no retry); still running means a shutdown or restart, and the job is left running and
        the task ends (:class:`TaskShutdown`), to be retried if it may: the retry re-attaches
        to the job (also when Airflow cannot be asked). ``stop`` always stops it; ``leave``
        never does.
        """
        op: Any = self
        if not getattr(self, "_executing", False):
            return None  # the task is not running its job (it finished, or never started)
        session, name = getattr(self, "_active", None) or (None, "")
        kind = op.job_kind
        # Airflow's task runner lets the task go on after on_kill: ending it is ours to do,
        # else a shutdown waits for the job (hours) and a kill for the next poll.
        if session is not None and not session.local_mode:
            if self._user_killed():
                waiting.stop(session.sagemaker_client, kind, name)
                if kind.api.stop:
                    op.log.info("killed: asked SageMaker to stop %s job %s", kind.name, name)
                    done = f"its job {name} was asked to stop"
                else:  # an endpoint: a kill never deletes it nor undoes its update
                    op.log.info("killed: %s %s is left as it is", kind.name, name)
                    done = f"its {kind.name} {name} is left as it is"
                return TaskInterrupted(f"{op.custom_operator_name} task {op.task_id} (step "
                                      f"'{op.step}') was killed; {done}")
            op.log.info("task process stopping: %s job %s is left running; the task's "
                        "retry re-attaches to it", kind.name, name)
            return TaskShutdown(f"{op.custom_operator_name} task {op.task_id} (step "
                               f"'{op.step}') stopped by a shutdown; its {kind.name} job {name} "
                               "is left running for the task's retry to re-attach to")
        if session is None and getattr(self, "_mode", None) == "sagemaker" and \
                not self._user_killed():
            return TaskShutdown(f"{op.custom_operator_name} task {op.task_id} (step "
                               f"'{op.step}') stopped by a shutdown before it started its job")
        if session is not None:
            removed = local.kill(session)
            if removed is None:
                return None  # the session is already removing its containers; let it finish
            op.log.info("killed: removed %d container(s) of %s job %s", len(removed), kind.name,
                        name)
        return op.interrupted()  # type: ignore[no-any-return]

    def _user_killed(self) -> bool:
        """Whether the kill is a user's action (per the step's ``on_kill``, see on_kill)."""
        op: Any = self
        choice = getattr(self, "_on_kill", "auto")
        if self.kill_mode == "stop":
            return True
        if choice != "auto":
            return bool(choice == "stop")
        dag_id, run_id, map_index = getattr(self, "_ti_key", ("", "", -1))
        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            states = RuntimeTaskInstance.get_task_states(
                dag_id=dag_id, map_index=None if map_index < 0 else map_index,
                task_ids=[op.task_id], run_ids=[run_id]).get(run_id, {})
        except Exception as exc:  # noqa: BLE001 - cannot tell: the safe default applies
            op.log.warning("cannot ask Airflow why the task is killed (%s)", exc)
            return False
        state = states.get(op.task_id if map_index < 0 else f"{op.task_id}_{map_index}")
        op.log.info("task killed while its state is %s", state)
        return state is not None and str(getattr(state, "value", state)) != "running"
