"""A job's life after its spec: find it by name, wait for it, tail its logs, stop it.

Each kind says what its statuses mean (``JobKind.api``: running, done and failed as data);
which API errors are transient (retried while waiting) rather than fatal is shared by all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from smtask.errors import JobFailed
from smtask.kind import JobKind
from smtask.naming import INSTANCE_TAG

log = logging.getLogger(__name__)

# how an event loop runs a blocking call off the loop: run(fn, kwargs) -> fn(**kwargs)
Runner = Callable[[Callable[..., Any], dict[str, Any]], Awaitable[Any]]

TRANSIENT = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
             "ServiceUnavailable", "InternalFailure", "InternalServerError", "InternalError"}
NOT_FOUND = {"ValidationException", "ResourceNotFound", "ResourceNotFoundException"}


def error_code(exc: BaseException) -> str:
    """A botocore ClientError's code (``ResourceInUse``, ``ThrottlingException``...)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


_code = error_code


def transient(exc: BaseException) -> bool:
    """Whether a failed call is worth another try: throttling or a transient service error
    (``TRANSIENT``), or a connection error."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ClientError):
        return _code(exc) in TRANSIENT
    return isinstance(exc, ConnectionError | HTTPClientError)


def retry_delay(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th transient failure: 1, 2, 4 ... at most 20."""
    return min(0.5 * 2**attempt, 20)


def call(fn: Callable[..., Any], kwargs: dict[str, Any], *, attempts: int = 6,
         sleep: Callable[[float], None] = time.sleep) -> Any:
    """``fn(**kwargs)``, retrying throttling and transient service or connection errors."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(**kwargs)
        except Exception as exc:
            if not transient(exc) or attempt == attempts:
                raise
            log.warning("transient error from %s (attempt %d): %s", fn.__name__, attempt, exc)
            sleep(retry_delay(attempt))
    raise AssertionError("unreachable")


async def acall(fn: Callable[..., Any], kwargs: dict[str, Any], *, run: Runner,
                attempts: int = 6) -> Any:
    """:func:`call` for an event loop: each attempt is ``await run(fn, kwargs)`` (which runs
    the blocking call somewhere off the loop) and the pause between attempts an
    ``asyncio.sleep``, so a retry holds neither the loop nor a thread."""
    for attempt in range(1, attempts + 1):
        try:
            return await run(fn, kwargs)
        except Exception as exc:
            if not transient(exc) or attempt == attempts:
                raise
            log.warning("transient error from %s (attempt %d): %s", fn.__name__, attempt, exc)
            await asyncio.sleep(retry_delay(attempt))
    raise AssertionError("unreachable")


def status(kind: JobKind, description: dict[str, Any]) -> str:
    return str(description[kind.api.status])


def find(client: Any, kind: JobKind, job_name: str) -> dict[str, Any] | None:
    """The job's description, or None when no job has that name."""
    from botocore.exceptions import ClientError

    method, name_arg = kind.api.describe, kind.api.name_arg
    if not hasattr(client, method):  # the SDK's local client keeps no jobs of this kind
        return None
    try:
        return call(getattr(client, method), {name_arg: job_name})
    except ClientError as exc:
        if _code(exc) in NOT_FOUND:
            return None
        raise


async def afind(client: Any, kind: JobKind, job_name: str, *, run: Runner
                ) -> dict[str, Any] | None:
    """:func:`find` for an event loop; the describe goes through ``run`` (see :func:`acall`)."""
    from botocore.exceptions import ClientError

    method, name_arg = kind.api.describe, kind.api.name_arg
    if not hasattr(client, method):
        return None
    try:
        return await acall(getattr(client, method), {name_arg: job_name}, run=run)
    except ClientError as exc:
        if _code(exc) in NOT_FOUND:
            return None
        raise


# Set on a job smtask asks to stop (a kill, a wait timeout): a Stopped job without it was
# stopped by someone or something else (a person, SageMaker's max runtime).
STOPPED_TAG = "smtask:stopped-by"
END_TIMES = ("TrainingEndTime", "ProcessingEndTime", "TransformEndTime",
             "HyperParameterTuningEndTime", "LastModifiedTime")


def ended(kind: JobKind, description: dict[str, Any]) -> str:
    """Why a job ended Failed or Stopped, in SageMaker's words: its FailureReason; for a stop,
    when it happened and its SecondaryStatus (``MaxRuntimeExceeded``, ``Stopped``...)."""
    state, reason = status(kind, description), description.get("FailureReason")
    if state in ("Deleting", "DeleteFailed"):
        return f"the job is being deleted ({state}), not by this task: it will not complete"
    if state != "Stopped":
        return str(reason or f"the job ended {state}")
    when = next((description[k] for k in END_TIMES if description.get(k)), None)
    details = [f"SecondaryStatus {description['SecondaryStatus']}"] \
        if description.get("SecondaryStatus") else []
    details += [str(description[k]) for k in ("ExitMessage", "FailureReason") if description.get(k)]
    stamp = when.isoformat() if isinstance(when, datetime) else when
    return ("the job was stopped" + (f" at {stamp}" if stamp else "") + ", not by this task"
            + (f" ({'; '.join(details)})" if details else ""))


def stopped_by_smtask(client: Any, kind: JobKind, description: dict[str, Any]) -> bool:
    """Whether smtask itself asked SageMaker to stop the job (its tag says so)."""
    arn = description.get(kind.api.arn)
    if not arn or not hasattr(client, "list_tags"):
        return False
    tags = call(client.list_tags, {"ResourceArn": arn}).get("Tags", [])
    return any(t["Key"] == STOPPED_TAG for t in tags)


def claim(client: Any, kind: JobKind, name: Callable[[int], str], *,
          rerun_failed: bool = True, rerun_completed: bool = False,
          rerun_stopped: bool = False,
          passed: Callable[[str], None] = lambda status: None
          ) -> tuple[str, dict[str, Any] | None]:
    """The name this task's job has or gets, and the job already under it, if any.

    Names are ``name(1)``, ``name(2)``, ...: a running or completed job under one is this
    task's job (re-attach or reuse it); a failed one, or one smtask stopped (a kill, a wait
    timeout), moves on to the next name, unless ``rerun_failed`` is false, which fails the
    task instead. A job someone else stopped (a person, SageMaker's max runtime) fails the
    task unless ``rerun_stopped``: a job a person stopped stays stopped. With
    ``rerun_completed`` a completed one moves on too (a cleared task runs its job again).
    ``passed`` hears the status of each earlier job moved past, in order.
    """
    attempt = 1
    while True:
        job_name = name(attempt)
        description = find(client, kind, job_name)
        ended_as = kind.api.failed | (kind.api.done if rerun_completed else set())
        if description is None or status(kind, description) not in ended_as:
            return job_name, description
        current = status(kind, description)
        if current == "Stopped" and not stopped_by_smtask(client, kind, description):
            if not rerun_stopped:
                raise JobFailed(kind.name, job_name,
                                f"an earlier attempt's job: {ended(kind, description)}. "
                                "if_job_stopped is 'fail' (the default): a job stopped by hand "
                                "stays stopped; set it to 'rerun' to start a new one")
        elif current in kind.api.failed and not rerun_failed:
            raise JobFailed(kind.name, job_name, "an earlier attempt's job ended "
                            f"{current} and if_job_failed is 'fail': "
                            f"{description.get('FailureReason') or 'no reason given'}")
        log.info("%s job %s ended %s; this attempt starts a new one", kind.name, job_name, current)
        passed(current)
        attempt += 1


def adopt(client: Any, kind: JobKind, job_name: str, instance: str,
          refused: Exception) -> dict[str, Any]:
    """The job a create call was refused for (``refused``: it exists), if its tags say this
    task instance (``instance``) made it; else an error that says it is another's."""
    description = find(client, kind, job_name)
    if description is None:
        raise refused
    tags = {t["Key"]: t["Value"] for t in call(client.list_tags, {
        "ResourceArn": description[kind.api.arn]}).get("Tags", [])}
    if tags.get(INSTANCE_TAG) != instance:
        raise JobFailed(kind.name, job_name, "a job of this name exists that this task instance did "
                        f"not create (its {INSTANCE_TAG} tag is "
                        f"{tags.get(INSTANCE_TAG) or 'missing'}); it is left as it is")
    return description


def stop(client: Any, kind: JobKind, job_name: str) -> None:
    """Ask SageMaker to stop the job, tagged as stopped by smtask first (so that a retry tells
    it from a job a person stopped); a job that already ended is left as it is."""
    from botocore.exceptions import ClientError

    if not kind.api.stop:  # an endpoint: a kill never deletes it nor undoes its update
        log.info("%s %s is left as it is (smtask never stops one)", kind.name, job_name)
        return
    try:
        description = find(client, kind, job_name)
        arn = description.get(kind.api.arn) if isinstance(description, dict) else None
        if arn:
            call(client.add_tags, {"ResourceArn": arn,
                                   "Tags": [{"Key": STOPPED_TAG, "Value": "smtask"}]})
    except Exception as exc:  # noqa: BLE001 - the tag only tells a retry who stopped it
        log.warning("could not tag %s job %s as stopped by smtask: %s", kind.name, job_name, exc)
    try:
        call(getattr(client, kind.api.stop), {kind.api.name_arg: job_name})
    except ClientError as exc:
        if _code(exc) not in NOT_FOUND:
            raise


class LogTail:
    """Copies the job's CloudWatch log streams into ``sink``, from where it left off."""

    def __init__(self, logs_client: Any, kind: JobKind, job_name: str,
                 sink: Callable[[str], None]) -> None:
        self.client, self.group, self.prefix, self.sink = (logs_client, kind.api.log_group,
                                                           job_name, sink)
        self.tokens: dict[str, str | None] = {}

    def poll(self) -> None:
        from botocore.exceptions import ClientError

        try:
            streams = call(self.client.describe_log_streams, {
                "logGroupName": self.group, "logStreamNamePrefix": self.prefix})["logStreams"]
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:  # the group appears with the job's first line
                return
            raise
        for stream in sorted(streams, key=lambda s: s["logStreamName"]):
            name = stream["logStreamName"]
            kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamName": name,
                                      "startFromHead": True}
            if self.tokens.get(name):
                kwargs["nextToken"] = self.tokens[name]
            page = call(self.client.get_log_events, kwargs)
            for event in page["events"]:
                self.sink(f"[{name}] {event['message']}")
            self.tokens[name] = page.get("nextForwardToken")


def wait(client: Any, kind: JobKind, job_name: str, *, timeout: float | None = None,
         first_poll: float = 0.2, cap: float = 30.0, tail: LogTail | None = None,
         sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic,
         known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Poll from a short first interval, doubling to ``cap``, until the job ends.

    Returns the description of a Completed job. A Failed or Stopped job raises
    :class:`JobFailed` with SageMaker's FailureReason; past ``timeout`` seconds the job is
    stopped and :class:`JobFailed` raised. ``known``, a description just made, is the
    first poll's.
    """
    deadline = None if timeout is None else clock() + timeout
    delay = first_poll
    description = known
    while True:
        description = description or find(client, kind, job_name)
        if description is None:
            raise JobFailed(kind.name, job_name, "the job disappeared while waiting for it")
        if tail is not None:
            tail.poll()
        current = status(kind, description)
        if current in kind.api.done:
            return description
        if current in kind.api.failed:  # billed all the same: its usage goes in the log
            raise JobFailed(kind.name, job_name, ended(kind, description),
                            usage_of(kind, description, log.warning))
        if deadline is not None and clock() >= deadline:
            stop(client, kind, job_name)
            raise JobFailed(kind.name, job_name, f"still {current} after the {timeout:g} s "
                            "wait_timeout_seconds; " + ("the job was asked to stop"
                                                         if kind.api.stop else "it is left as it is"))
        sleep(delay if deadline is None else max(0.0, min(delay, deadline - clock())))
        delay = min(delay * 2, cap)
        description = None


def usage_of(kind: JobKind, description: Any, warn: Callable[[str], None]) -> dict[str, Any]:
    """What a finished job used (:attr:`JobKind.usage`), best effort: a description it cannot
    read is said in one line and gives ``{}``; it never fails a job that completed."""
    if kind.usage is None or not isinstance(description, dict):
        return {}
    try:
        return kind.usage(description)
    except Exception as exc:  # noqa: BLE001 - the figures are a report, not the result
        warn(f"the {kind.name} job's usage could not be read from its description: {exc!r}")
        return {}
