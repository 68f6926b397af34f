"""The one exception family of smtask. Messages name the step and the key."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTerminated


class SmtaskError(AirflowException):
    """Base of every error smtask raises."""


class ParamsError(SmtaskError, AirflowFailException):
    """The params (config.json deep-merged with the run's conf) are invalid.

    Raised before any job is created; never retried, since a retry would read the same params.
    Its message shows the first three problems, one a line; ``problems`` holds them all.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class JobFailed(SmtaskError):
    """A SageMaker job ended Failed or Stopped, or its container exited non-zero. ``usage``:
    what a job that ran used (a failed job is billed too), when its description tells."""

    def __init__(self, kind: str, job_name: str, reason: str,
                 usage: dict[str, Any] | None = None) -> None:
        self.kind, self.job_name, self.reason, self.usage = kind, job_name, reason, usage or {}
        super().__init__(f"{kind} job {job_name} failed: {reason}")


class TaskInterrupted(AirflowTaskTerminated):
    """The task was killed (a signal) while it ran its job; the job was stopped.

    A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` on the way out
    (the SDK has many) may swallow it. Airflow fails the task without a retry.
    """


class TaskShutdown(BaseException):
    """The task process was told to stop by a shutdown (its worker or scheduler stopping)
    while its SageMaker job runs: the job is left running and the task ends now, so that the
    shutdown need not wait for the job; Airflow retries the task if it may, and the retry
    re-attaches to the job.

    A ``BaseException``, so that no ``except Exception`` on the way out swallows it, and not
    an ``AirflowTaskTerminated``, which Airflow fails without a retry.
    """


class ModelNotFound(SmtaskError, AirflowFailException):
    """A transform step's existing model does not exist (SageMaker's DescribeModel knows no
    model of that name). Raised before any transform job is created; not retried."""


class ContainerFailed(RuntimeError):
    """A local job's container exited non-zero; ``reason`` quotes its own last error line.

    A ``RuntimeError``, as the SDK's own container failures are, since it is raised inside the
    SDK's calls; the task turns it into :class:`JobFailed`.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class EngineUnreachable(SmtaskError):
    """The Docker engine does not answer: what it runs cannot be seen, stopped or removed."""


class OutputsNotWritten(SmtaskError):
    """A local job's outputs could not be copied to the artifacts (a full disk): nothing of
    them was published."""
