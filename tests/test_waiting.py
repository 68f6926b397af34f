"""Waiting rules, without a server: backoff, transient errors, failure reasons, timeouts."""

from __future__ import annotations

import re

import pytest
from botocore.exceptions import ClientError

from smtask import waiting
from smtask.errors import JobFailed
from smtask.kinds import KINDS
from smtask.kinds.training import KIND as TRAINING


def error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "DescribeTrainingJob")


class Client:
    """Answers describe_training_job from a script of statuses or errors."""

    def __init__(self, *script):
        self.script, self.calls, self.stopped = list(script), 0, []

    def describe_training_job(self, TrainingJobName):
        self.calls += 1
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return {"TrainingJobName": TrainingJobName, "TrainingJobStatus": step[0],
                "FailureReason": step[1]}

    def stop_training_job(self, TrainingJobName):
        self.stopped.append(TrainingJobName)


def test_polls_start_short_and_double_up_to_the_cap():
    sleeps = []
    client = Client(*[("InProgress", None)] * 7, ("Completed", None))
    waiting.wait(client, TRAINING, "job", first_poll=0.2, cap=3.0, sleep=sleeps.append)
    assert sleeps == [0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0]


def test_throttling_and_service_errors_are_retried_while_waiting(monkeypatch):
    monkeypatch.setattr(waiting, "retry_delay", lambda attempt: 0)  # call() binds time.sleep
    client = Client(error("ThrottlingException"), error("InternalFailure"), ("Completed", None))
    assert waiting.wait(client, TRAINING, "job", sleep=lambda s: None)["TrainingJobStatus"] == \
        "Completed"
    assert client.calls == 3


def test_other_api_errors_are_not_retried():
    client = Client(error("AccessDeniedException"))
    with pytest.raises(ClientError):
        waiting.wait(client, TRAINING, "job", sleep=lambda s: None)
    assert client.calls == 1


def test_failed_job_raises_with_its_failure_reason_and_name():
    with pytest.raises(JobFailed, match="training job job-1 failed: ClientError: bad channel"):
        waiting.wait(Client(("Failed", "ClientError: bad channel")), TRAINING, "job-1")


def test_a_job_being_deleted_fails_the_wait_at_once_and_a_retry_moves_past_it():
    client = Client(("InProgress", None), ("Deleting", None))
    with pytest.raises(JobFailed, match="job-1 failed: the job is being deleted .Deleting."):
        waiting.wait(client, TRAINING, "job-1", sleep=lambda s: None)
    assert client.calls == 2 and client.stopped == []


def test_timeout_stops_the_job():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    client = Client(("InProgress", None))
    with pytest.raises(JobFailed, match="after the 5 s wait_timeout_seconds"):
        waiting.wait(client, TRAINING, "job", timeout=5, sleep=sleep, clock=lambda: now[0])
    assert client.stopped == ["job"] and 5 <= now[0] < 6


class Jobs:
    """Training jobs by name: (status, failure reason, tags)."""

    def __init__(self, jobs):
        self.jobs = jobs

    def describe_training_job(self, TrainingJobName):
        if TrainingJobName not in self.jobs:
            raise error("ValidationException")
        status, reason, _ = self.jobs[TrainingJobName]
        return {"TrainingJobStatus": status, "FailureReason": reason,
                "TrainingJobArn": f"arn:training-job/{TrainingJobName}",
                "SecondaryStatus": "Stopped" if status == "Stopped" else status,
                "TrainingEndTime": "2026-12-01T10:00:00+00:00"}

    def list_tags(self, ResourceArn):
        return {"Tags": self.jobs[ResourceArn.rsplit("/", 1)[1]][2]}


SMTASK_STOPPED = [{"Key": waiting.STOPPED_TAG, "Value": "smtask"}]


def test_claim_moves_past_failed_jobs_and_stops_at_a_running_or_new_one():
    jobs = Jobs({"n1": ("Failed", "x", []), "n2": ("Stopped", None, SMTASK_STOPPED),
                 "n3": ("InProgress", None, [])})
    name, existing = waiting.claim(jobs, TRAINING, lambda n: f"n{n}")
    assert name == "n3" and existing["TrainingJobStatus"] == "InProgress"
    del jobs.jobs["n3"]
    assert waiting.claim(jobs, TRAINING, lambda n: f"n{n}") == ("n3", None)
    with pytest.raises(JobFailed, match="if_job_failed is 'fail'"):
        waiting.claim(jobs, TRAINING, lambda n: f"n{n}", rerun_failed=False)


def test_a_job_stopped_by_hand_stays_stopped_unless_the_step_says_rerun():
    jobs = Jobs({"n1": ("Stopped", None, [])})  # no smtask tag: someone else stopped it
    with pytest.raises(JobFailed, match=r"the job was stopped at 2026-12-01T10:00:00\+00:00, "
                       r"not by this task \(SecondaryStatus Stopped\).*if_job_stopped is 'fail'"):
        waiting.claim(jobs, TRAINING, lambda n: f"n{n}")
    assert waiting.claim(jobs, TRAINING, lambda n: f"n{n}", rerun_stopped=True) == ("n2", None)


def test_claim_reuses_a_completed_job_unless_told_to_rerun_it():
    jobs = {"n1": ("Completed", None)}

    class Jobs:
        def describe_training_job(self, TrainingJobName):
            if TrainingJobName not in jobs:
                raise error("ValidationException")
            status, reason = jobs[TrainingJobName]
            return {"TrainingJobStatus": status, "FailureReason": reason}

    assert waiting.claim(Jobs(), TRAINING, lambda n: f"n{n}")[0] == "n1"
    assert waiting.claim(Jobs(), TRAINING, lambda n: f"n{n}", rerun_completed=True) == ("n2", None)


def test_a_description_just_made_is_the_first_poll():
    """The SDK describes a training job right after creating it: the wait starts from that
    description, sleeps, and only then describes again."""
    sleeps: list[float] = []
    client = Client(("Completed", None))
    known = {"TrainingJobName": "job", "TrainingJobStatus": "InProgress"}
    done = waiting.wait(client, TRAINING, "job", first_poll=0.2, sleep=sleeps.append,
                        known=known)
    assert done["TrainingJobStatus"] == "Completed"
    assert (client.calls, sleeps) == (1, [0.2])
    client = Client(("InProgress", None))
    assert waiting.wait(client, TRAINING, "job", known={**known, "TrainingJobStatus":
                                                          "Completed"}) == \
        {**known, "TrainingJobStatus": "Completed"}
    assert client.calls == 0


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_each_kinds_api_is_sagemakers_own(kind):
    """The operations, fields and status words a kind declares are those of SageMaker's own
    API model (botocore's), so describe, stop, wait and the triggers read the right ones."""
    import boto3

    model = boto3.client("sagemaker", region_name="us-east-1").meta.service_model
    operations = {model.operation_model(name).name: model.operation_model(name)
                  for name in model.operation_names}
    by_snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower(): op for name, op in operations.items()}
    describe = by_snake[kind.api.describe]
    assert kind.api.name_arg in describe.input_shape.members
    if kind.api.stop:  # an endpoint, a model version: nothing of smtask's ever stops one
        assert kind.api.name_arg in by_snake[kind.api.stop].input_shape.members
    else:
        assert kind.start is not None and kind.name in ("register", "endpoint")
    out = describe.output_shape.members
    assert kind.api.arn in out
    statuses = set(out[kind.api.status].enum)
    assert kind.api.running | kind.api.done | kind.api.failed == statuses
    assert not kind.api.running & kind.api.done and not kind.api.done & kind.api.failed
