"""The deferrable trigger on a real event loop, without a server: one client per connection
and region, describes off the loop, transient errors retried, and the event the task
resumes with."""

from __future__ import annotations

import asyncio
import datetime
import gc
import threading
import weakref
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from smtask import triggers, waiting
from smtask.triggers import SageMakerJobTrigger


def error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "DescribeTrainingJob")


class Client:
    """Answers describe_training_job from a script of statuses or errors, and notes the
    thread of every call."""

    def __init__(self, *script: Any) -> None:
        self.script, self.threads, self.thread_names = list(script), [], set()

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        self.threads.append(threading.get_ident())
        self.thread_names.add(threading.current_thread().name.rsplit("_", 1)[0])
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return {"TrainingJobName": TrainingJobName, "TrainingJobStatus": step,
                "CreationTime": datetime.datetime.now(datetime.UTC),
                "ModelArtifacts": {"S3ModelArtifacts": f"s3://b/{TrainingJobName}/model.tar.gz"},
                **({"FailureReason": "AlgorithmError: boom"} if step == "Failed" else {})}


@pytest.fixture
def built(monkeypatch) -> list[tuple[str | None, str | None]]:
    """An empty client cache whose clients are ``Client``s; lists each client built."""
    calls: list[tuple[str | None, str | None]] = []
    monkeypatch.setattr(triggers, "_clients", {})
    monkeypatch.setattr(triggers, "_building", {})
    monkeypatch.setattr(waiting, "retry_delay", lambda attempt: 0)

    def build(aws_conn_id: str | None, region_name: str | None) -> Client:
        calls.append((aws_conn_id, region_name))
        return Client("Completed")

    monkeypatch.setattr(triggers, "_build", build)
    return calls


def trigger(name: str = "job-1", **kwargs: Any) -> SageMakerJobTrigger:
    return SageMakerJobTrigger(**{"kind": "training", "job": {"job_name": name, "spec": 1},
                                  "aws_conn_id": "aws_default", "region_name": "us-east-1",
                                  **kwargs})


async def first_event(t: SageMakerJobTrigger) -> dict[str, Any]:
    async for event in t.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def events(*ts: SageMakerJobTrigger) -> list[dict[str, Any]]:
    async def gather() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(first_event(t) for t in ts)))

    return asyncio.run(gather())


def use(client: Client) -> None:
    """Makes ``client`` the cached client of aws_default in us-east-1."""
    triggers._clients[("aws_default", "us-east-1")] = client


def no_wait(sleep: Any, record: list[float] | None = None) -> Any:
    """An ``asyncio.sleep`` that returns at once, noting the seconds asked for."""
    async def instant(seconds: float) -> None:
        if record is not None:
            record.append(seconds)
        await sleep(0)

    return instant


def test_triggers_with_the_same_connection_and_region_share_one_client(built):
    events(*(trigger(f"job-{i}") for i in range(5)))
    events(trigger("job-later"))  # a later trigger, on another loop, too
    assert built == [("aws_default", "us-east-1")]


def test_another_connection_or_region_gets_a_client_of_its_own(built):
    events(trigger(), trigger(region_name="eu-west-1"), trigger(aws_conn_id="other"))
    assert sorted(built, key=str) == [("aws_default", "eu-west-1"),
                                      ("aws_default", "us-east-1"), ("other", "us-east-1")]


def test_the_client_is_built_off_the_event_loop(built, monkeypatch):
    threads = []

    def build(aws_conn_id: str | None, region_name: str | None) -> Client:
        threads.append(threading.get_ident())
        return Client("Completed")

    monkeypatch.setattr(triggers, "_build", build)
    events(trigger())
    assert threads and threading.get_ident() not in threads


def test_describes_never_run_on_the_event_loop_thread(built, monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", no_wait(asyncio.sleep))
    client = Client("InProgress", "InProgress", "Completed")
    use(client)
    loop_threads = []

    async def run() -> dict[str, Any]:
        loop_threads.append(threading.get_ident())
        return await first_event(trigger())

    assert asyncio.run(run())["status"] == "Completed"
    assert len(client.threads) == 3 and loop_threads[0] not in client.threads


def test_describes_of_many_triggers_share_one_bounded_pool(built, monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", no_wait(asyncio.sleep))
    client = Client("InProgress", *["InProgress", "Completed"] * 100)
    use(client)
    events(*(trigger(f"job-{i}") for i in range(50)))
    assert client.thread_names == {"smtask-trigger"}
    assert len(set(client.threads)) <= triggers.THREADS


def test_transient_errors_are_retried(built):
    client = Client(error("ThrottlingException"), EndpointConnectionError(endpoint_url="http://x"),
                    error("InternalFailure"), "Completed")
    use(client)
    assert events(trigger())[0]["status"] == "Completed"
    assert len(client.threads) == 4


def test_other_api_errors_are_not_retried(built):
    client = Client(error("AccessDeniedException"))
    use(client)
    with pytest.raises(ClientError, match="AccessDeniedException"):
        events(trigger())
    assert len(client.threads) == 1


def test_a_client_whose_credentials_are_refused_is_dropped(built):
    refused = Client(error("UnrecognizedClientException"))
    use(refused)
    with pytest.raises(ClientError, match="UnrecognizedClientException"):
        events(trigger())
    assert triggers._clients == {}
    assert events(trigger())[0]["status"] == "Completed"  # a new client, from the connection
    assert built == [("aws_default", "us-east-1")]


def test_a_failed_client_build_is_not_kept(built, monkeypatch):
    build = triggers._build

    def broken_once(aws_conn_id: str | None, region_name: str | None) -> Client:
        monkeypatch.setattr(triggers, "_build", build)  # fixed, e.g. the connection added
        raise RuntimeError("connection aws_default not found")

    monkeypatch.setattr(triggers, "_build", broken_once)
    with pytest.raises(RuntimeError, match="not found"):
        events(trigger())
    assert triggers._clients == {} and triggers._building == {}
    assert events(trigger())[0]["status"] == "Completed"  # the next trigger builds it
    assert built == [("aws_default", "us-east-1")]


def test_the_cache_keeps_the_client_and_nothing_of_the_triggers(built, monkeypatch):
    release = threading.Event()

    def slow_build(aws_conn_id: str | None, region_name: str | None) -> Client:
        release.wait(5)  # every trigger asks while the build is under way
        return Client("Completed")

    monkeypatch.setattr(triggers, "_build", slow_build)
    ts = [trigger(f"job-{i}") for i in range(20)]

    async def run() -> list[dict[str, Any]]:
        pending = asyncio.gather(*(first_event(t) for t in ts))
        await asyncio.sleep(0.05)
        release.set()
        return list(await pending)

    assert [e["status"] for e in asyncio.run(run())] == ["Completed"] * 20
    (client,) = triggers._clients.values()
    assert isinstance(client, Client) and triggers._building == {}
    alive = [weakref.ref(t) for t in ts]
    ts.clear()
    gc.collect()
    assert [ref() for ref in alive] == [None] * 20


def test_polls_start_short_and_double_up_to_poll_max(built, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(asyncio, "sleep", no_wait(asyncio.sleep, sleeps))
    use(Client(*["InProgress"] * 6, "Completed"))
    assert events(trigger(poll_max=3.0))[0]["status"] == "Completed"
    assert sleeps == [0.2, 0.4, 0.8, 1.6, 3.0, 3.0]


def test_the_event_carries_the_status_the_job_spec_and_json_only(built):
    use(Client("Completed"))
    event = events(trigger())[0]
    assert event == {"status": "Completed", "reason": "the job ended Completed",
                     "job": {"job_name": "job-1", "spec": 1},
                     "description": {"ModelArtifacts": {
                         "S3ModelArtifacts": "s3://b/job-1/model.tar.gz"}},
                     "usage": {}}  # the fake's description has no times


def test_a_failed_job_fires_its_failure_reason(built):
    use(Client("Failed"))
    event = events(trigger())[0]
    assert (event["status"], event["reason"]) == ("Failed", "AlgorithmError: boom")


def test_a_missing_job_fires_missing(built):
    use(Client(error("ValidationException")))
    assert events(trigger())[0]["status"] == "Missing"


def test_past_the_timeout_the_trigger_fires_timeout(built):
    use(Client("InProgress"))
    event = events(trigger(timeout=60, started=0.0))[0]
    assert event["status"] == "Timeout"
    assert "after the 60 s wait_timeout_seconds" in event["reason"]


def test_serialize_gives_back_the_same_trigger():
    original = trigger(timeout=5, poll_max=7, started=123.0, if_killed="leave")
    classpath, kwargs = original.serialize()
    assert classpath == "smtask.triggers.SageMakerJobTrigger"
    assert kwargs == {"kind": "training", "job": {"job_name": "job-1", "spec": 1},
                      "aws_conn_id": "aws_default", "region_name": "us-east-1", "timeout": 5,
                      "poll_max": 7, "started": 123.0, "if_killed": "leave"}
    assert SageMakerJobTrigger(**kwargs).serialize() == (classpath, kwargs)


class Stoppable(Client):
    def __init__(self) -> None:
        super().__init__("InProgress")
        self.stopped: list[str] = []

    def stop_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        self.stopped.append(TrainingJobName)
        return {}


@pytest.mark.parametrize(("if_killed", "stopped"), [("auto", ["job-1"]), ("stop", ["job-1"]),
                                                    ("leave", [])])
def test_a_users_kill_of_a_deferred_task_stops_its_job(built, if_killed, stopped):
    """Airflow's triggerer calls on_kill only for a user's action (mark failed or success,
    clear); a triggerer shutdown cancels the trigger without it."""
    client = Stoppable()
    use(client)
    asyncio.run(trigger(if_killed=if_killed).on_kill())
    assert client.stopped == stopped
