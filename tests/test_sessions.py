"""Pins on the SageMaker SDK internals that local mode corrects, and the corrections' rules.
If the SDK changes, these fail loudly instead of local mode silently creating bridge networks,
mounting the user's folders writable or sending telemetry."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from conftest import LoopbackGuard, is_loopback, local_state

from smtask import local
from smtask.errors import ContainerFailed
from smtask.local import compose, containers, output, serving, state
from smtask.local import session as local_session


@pytest.fixture(autouse=True)
def installed():
    compose.install()


def _sdk_compose(tmp_path, klass_name: str, command: str = "serve") -> dict:
    """Let the SDK's own (wrapped) generator write a compose file, then read it back."""
    from sagemaker.core.local.image import _SageMakerContainer
    from sagemaker.core.local.local_session import LocalSession  # noqa: F401 - SDK import check
    from sagemaker.train.local.local_container import _LocalContainer

    class FakeSession:
        config = None
        boto_session = None
        smtask = local_state(tmp_path, serving_port=23456).smtask

    if klass_name == "core":
        container = object.__new__(_SageMakerContainer)
        container.__dict__.update(sagemaker_session=FakeSession(), hosts=["algo-1-abc"],
                                  container_root=str(tmp_path), image="img", is_studio=False,
                                  instance_type="local", container_entrypoint=None,
                                  container_arguments=None)
        _SageMakerContainer._generate_compose_file(container, command)
    else:
        container = _LocalContainer.model_construct(
            training_job_name="j", instance_type="local", instance_count=1, image="img",
            container_root=str(tmp_path), is_studio=False, hosts=["algo-1"],
            sagemaker_session=FakeSession(), container_entrypoint=["bash"], container_arguments=["x"],
            environment={}, hyper_parameters={}, input_data_config=[])
        _LocalContainer._generate_compose_file(container, {"A": "1"}, [])
    return yaml.safe_load((tmp_path / "docker-compose.yaml").read_text())


@pytest.mark.parametrize("klass", ["core", "train"])
def test_sdk_compose_files_use_host_networking_only(tmp_path, klass):
    content = _sdk_compose(tmp_path, klass)
    assert "networks" not in content
    for service in content["services"].values():
        assert service["network_mode"] == "host"
        assert "networks" not in service and "ports" not in service
        assert service["labels"][state.LABEL] == "s1"
        assert service["labels"][state.OWNER_LABEL] == "h:1:2.00"


def test_sdk_serving_compose_file_binds_the_sessions_own_port(tmp_path):
    service = next(iter(_sdk_compose(tmp_path, "core", "serve")["services"].values()))
    assert "SAGEMAKER_BIND_TO_PORT=23456" in service["environment"]


def test_sdk_patches_are_installed_once():
    from sagemaker.core.local.image import _SageMakerContainer
    from sagemaker.train.local.local_container import _LocalContainer

    compose.install()
    for function in (_SageMakerContainer._generate_compose_file,
                     _LocalContainer._generate_compose_file,
                     _SageMakerContainer._prepare_processing_volumes):
        assert hasattr(function, "__wrapped__") and not hasattr(function.__wrapped__, "__wrapped__")


@pytest.mark.parametrize("klass", ["core", "train"])
def test_the_sdk_runs_compose_files_with_smtask_compose_not_docker_compose(tmp_path, klass):
    """Every local job's compose file goes to smtask.local.compose's runner: no compose
    process holding a job's output in memory, no 0.5-0.9 s of compose start per job."""
    import sys

    from sagemaker.core.local.image import _SageMakerContainer
    from sagemaker.train.local.local_container import _LocalContainer

    prefix = _SageMakerContainer._get_compose_cmd_prefix() if klass == "core" else \
        _LocalContainer._get_compose_cmd_prefix(object())
    assert prefix[:3] == [sys.executable, "-I", "-S"] and compose.__file__ in prefix[-1]
    # and smtask.local.compose takes every key the SDK's (hardened) compose files hold
    for name, service in _sdk_compose(tmp_path, klass)["services"].items():
        args, _ = compose.run_args("p", name, service)
        assert args[:5] == ["run", "-d", "--pull", "never", "--name"]


def test_smtask_compose_runs_a_service_as_docker_run_with_literal_values():
    service = {"image": "img:1", "container_name": "abc-algo-1", "tty": True, "stdin_open": True,
               "network_mode": "host", "labels": {"smtask.session": "s1"},
               "volumes": ["/h/out:/opt/ml/output", "/h/in:/opt/ml/input/data/x:ro"],
               "environment": ["A=costs $$5", "B=${X}", "EMPTY="],
               "entrypoint": ["python3", "/opt/ml/code/x.py", "--note", "$$HOME"]}
    args, passed = compose.run_args("proj", "algo-1", service, detach=False)
    assert args == ["run", "--pull", "never", "--name", "abc-algo-1", "--network", "host", "-t",
                    "--label", "smtask.session=s1", "-v", "/h/out:/opt/ml/output",
                    "-v", "/h/in:/opt/ml/input/data/x:ro",
                    "--entrypoint", "python3", "img:1", "/opt/ml/code/x.py", "--note", "$HOME"]
    assert passed == {"A": "costs $5", "B": "${X}", "EMPTY": ""}  # never on the command line
    args, _ = compose.run_args("proj", "algo-1", {"image": "img", "command": "serve"})
    assert args[-2:] == ["img", "serve"] and "proj_algo-1_1" in args


def test_smtask_compose_refuses_a_compose_key_it_does_not_know():
    with pytest.raises(SystemExit, match="service algo-1: unsupported compose key.*healthcheck"):
        compose.run_args("p", "algo-1", {"image": "img", "healthcheck": {}})


def test_long_lines_are_cut_and_say_how_much():
    import io

    stream = io.BytesIO(b"short\n" + b"y" * 200_000 + b"\nnext\n")
    lines = list(compose.bounded_lines(stream, limit=1000))
    assert lines[0] == b"short\n" and lines[2] == b"next\n"
    assert lines[1] == b"y" * 1000 + b" ... [199000 more bytes of this line cut]\n"


def test_user_folders_are_mounted_read_only_and_scratch_folders_writable(tmp_path):
    scratch, user = tmp_path / "scratch", tmp_path / "user"
    (scratch / "out").mkdir(parents=True)
    user.mkdir()
    (user / "data.csv").write_text("1\n")
    content = {"services": {"algo-1": {"volumes": [
        f"{scratch / 'out'}:/opt/ml/processing/train",
        f"{user}:/opt/ml/processing/input/data-source",
        f"{user / 'data.csv'}:/opt/ml/input/data/train",
        f"{user}:/opt/ml/code:rw"]}}}
    hardened = compose.harden(content, local_state(scratch))
    assert hardened["services"]["algo-1"]["volumes"] == [
        f"{scratch / 'out'}:/opt/ml/processing/train",
        f"{user}:/opt/ml/processing/input/data-source:ro",
        f"{user / 'data.csv'}:/opt/ml/input/data/train/data.csv:ro",  # the file, not its folder
        f"{user}:/opt/ml/code:ro"]
    assert content["services"]["algo-1"]["volumes"][1].endswith("data-source")  # SDK's copy kept


def test_sdk_functions_are_replaced_inside_a_local_session_and_restored_after():
    from sagemaker.core.local import entities, image
    from sagemaker.core.telemetry import telemetry_logging
    from sagemaker.train.local import local_container

    names = [(telemetry_logging, "_send_telemetry_request"), (image, "_stream_output"),
             (local_container, "_stream_output"), (entities, "_wait_for_serving_container")]
    originals = [getattr(module, name) for module, name in names]
    from smtask import sdk

    with sdk.corrected(local_session.corrections(local_state(Path("/nonexistent")))):
        assert telemetry_logging._send_telemetry_request(1, [1], None) is None
        for (module, name), original in zip(names, originals, strict=True):
            assert getattr(module, name) is not original, f"{module.__name__}.{name}"
    assert [getattr(module, name) for module, name in names] == originals


def test_a_replaced_attribute_comes_back_as_it_was_in_its_owner():
    """The trainer's correction of TrainDefaults.get_role (a staticmethod) left a plain
    function behind, which an instance's call would bind as a method."""
    from sagemaker.train.defaults import TrainDefaults

    from smtask import sdk

    class Base:
        inherited = "base's"

    class Owner(Base):
        @staticmethod
        def static(role):
            return role

    before = vars(TrainDefaults)["get_role"]
    with sdk.replaced((Owner, "static", lambda role: "x"), (Owner, "inherited", "own"),
                      (TrainDefaults, "get_role", staticmethod(lambda **kwargs: "r"))):
        assert Owner.inherited == "own" and TrainDefaults.get_role() == "r"
    assert isinstance(vars(Owner)["static"], staticmethod) and Owner().static("r") == "r"
    assert "inherited" not in vars(Owner) and Owner.inherited == "base's"
    assert vars(TrainDefaults)["get_role"] is before


def test_container_output_goes_to_the_sink_and_a_failure_quotes_the_exit_code(tmp_path):
    import subprocess
    lines: list[str] = []
    fake = local_state(tmp_path)
    stream = output.stream_output(local.ContainerOutput(lines.append), fake)
    assert stream(subprocess.Popen(["printf", "one\\ntwo\\n"], stdout=subprocess.PIPE)) == 0
    assert lines == ["one", "two"] and not fake.smtask.job_failed
    with pytest.raises(ContainerFailed, match=r"\(exit code 1; last lines: no output\)"):
        stream(subprocess.Popen(["false"], stdout=subprocess.PIPE))
    assert fake.smtask.job_failed  # its outputs will not be published


@pytest.mark.parametrize(("lines", "cause"), [
    (["algo-1-x  | Traceback (most recent call last):",
      'algo-1-x  |   File "/opt/ml/input/data/code/train.py", line 3, in <module>',
      "algo-1-x  | ValueError: label column 'y' not found",
      "algo-1-x  | Traceback (most recent call last):",
      "algo-1-x  | subprocess.CalledProcessError: Command '['python3', 'train.py']' returned "
      "non-zero exit status 1.",
      "algo-1-x exited with code 1"], "ValueError: label column 'y' not found"),
    (["Attaching to abc-algo-1", "abc-algo-1  | split 10 rows", "abc-algo-1 exited with code 3",
      "Aborting on container exit...", "3"], "split 10 rows"),
    (["\x1b[36mxyz-algo-1 |\x1b[0m KeyError: 'label'"], "KeyError: 'label'"),
    (["docker: Error response from daemon: Duplicate mount point: /opt/ml/processing/x.",
      "Run 'docker run --help' for more information"],
     "docker: Error response from daemon: Duplicate mount point: /opt/ml/processing/x."),
], ids=["driver-wraps-the-scripts-error", "exit-without-traceback", "colour-codes",
        "dockers-own-refusal"])
def test_failure_reason_quotes_the_scripts_own_error(lines, cause):
    reason = local.ContainerOutput(print).failure(1, lines)
    assert reason.startswith(cause + " (exit code 1; last lines: ")


def test_serving_health_wait_returns_as_soon_as_ping_answers(loopback_guard, monkeypatch):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Ping(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    monkeypatch.setattr(serving, "_exited_container", lambda session_id: None)
    wait = serving.wait_for_server(local_state(Path("/nonexistent")), local.ContainerOutput(print))
    server = HTTPServer(("127.0.0.1", 0), Ping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        wait(server.server_port, timeout=10)
        assert time.monotonic() - started < 1  # the SDK's own wait sleeps 5 s after a miss
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ContainerFailed, match="not healthy after 0.5 s"):
        wait(server.server_port, timeout=0.5)


def test_serving_health_wait_fails_at_once_when_the_server_exits(loopback_guard, monkeypatch):
    import time

    lines = ["srv-algo-1 | FileNotFoundError: [Errno 2] No such file: '/opt/ml/model/model.joblib'",
             "srv-algo-1 | [INFO] Shutting down: Master"]
    monkeypatch.setattr(serving, "_exited_container", lambda session_id: (1, lines))
    wait = serving.wait_for_server(local_state(Path("/nonexistent")), local.ContainerOutput(print))
    started = time.monotonic()
    with pytest.raises(ContainerFailed, match=r"exited before it was healthy: "
                       r"FileNotFoundError: .*model.joblib' \(exit code 1"):
        wait(1, timeout=60)
    assert time.monotonic() - started < 5


def test_reserved_ports_are_distinct_while_held_and_skip_ports_in_use(monkeypatch):
    import socket as sock

    listener = sock.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    busy = listener.getsockname()[1]
    picks = iter([busy, 25001, 25001, 25002])
    monkeypatch.setattr(serving.random, "randrange", lambda *_: next(picks))
    try:
        with serving.reserved_port() as first, serving.reserved_port() as second:
            assert first == 25001  # the listening port was skipped
            assert second == 25002  # 25001's lock is held
    finally:
        listener.close()


def test_a_dead_owners_scratch_folder_is_removed_and_a_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    root = tmp_path / "tmp"
    dead, live = root / "dead", root / "live"
    for folder, owner in ((dead, state.Owner(socket.gethostname(), 2**22 + 7, 1.0)),
                          (live, state.Owner.current())):
        folder.mkdir(parents=True)
        (folder / state.OWNER_FILE).write_text(str(owner))
    monkeypatch.setattr(containers, "docker", lambda *args: "")
    removed = containers.cleanup_orphans()
    assert not dead.exists() and live.exists()
    assert removed == [f"scratch folder {dead} of dead process {2**22 + 7}"]


def test_confined_refuses_paths_that_escape_the_root(tmp_path):
    from smtask.errors import SmtaskError
    from smtask.storage import confined

    root = tmp_path / "run"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert confined(root / "step" / "out", root) == (root / "step" / "out").resolve()
    for escape in (root / "..", root / "step" / ".." / ".." / "x", root / "link" / "x", "/etc"):
        with pytest.raises(SmtaskError, match="outside"):
            confined(escape, root)


@pytest.mark.docker  # a session starts by asking the engine for dead processes' containers
@pytest.mark.usefixtures("docker")
def test_local_session_needs_no_aws_and_hands_containers_no_worker_credentials(
        monkeypatch, loopback_guard):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "worker-secret-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret")
    with local.open_session({"mode": "local"}, local.ContainerOutput(print)) as opened:
        assert opened.local_mode
        credentials = opened.boto_session.get_credentials()
        assert credentials.access_key == "smtask-local"


def test_loopback_guard_refuses_non_loopback_and_records_it(monkeypatch):
    # the guard decides before any packet: nothing below is sent anywhere
    guard = LoopbackGuard()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("sm-pysdk-t-us-east-1.s3.us-east-1.amazonaws.com")
    assert not is_loopback("169.254.169.254")
    with pytest.raises(OSError):
        guard.check("connect", "169.254.169.254")
    assert guard.attempts == ["connect 169.254.169.254"]


def test_loopback_guard_fixture_catches_a_telemetry_lookup(loopback_guard):
    with pytest.raises(OSError, match="loopback guard"):
        socket.getaddrinfo("sm-pysdk-t-us-east-1.s3.us-east-1.amazonaws.com", 443)
    loopback_guard.attempts.clear()  # expected here; any other test fails on such an attempt


@pytest.mark.parametrize("step", ["..", "../x", "/abs", "a/b"])
def test_a_plain_tasks_step_folder_cannot_escape_the_run(step):
    from smtask.errors import SmtaskError
    from smtask.storage import run_prefix

    with pytest.raises(SmtaskError, match="run_prefix: step"):
        run_prefix({"run_id": "r", "ti": None}, step, {"mode": "local", "pipeline_name": "p"})


def test_only_regular_files_and_folders_leave_a_local_job(tmp_path):
    """A job could link its outputs to host files; the SDK would copy them out on the host."""
    import os

    secret = tmp_path / "secret.txt"
    secret.write_text("HOST SECRET")
    out = tmp_path / "scratch" / "output" / "train"
    out.mkdir(parents=True)
    (out / "data.csv").write_text("1\n")
    (out / "leak.txt").symlink_to(secret)
    (out / "leakdir").symlink_to(tmp_path)
    (out / "inside.csv").symlink_to(out / "data.csv")  # even a link inside: copies follow it
    os.mkfifo(out / "hang")
    removed: list[str] = []
    output.keep_only_files(tmp_path / "scratch", removed.append)
    assert sorted(p.name for p in out.iterdir()) == ["data.csv"]
    assert len(removed) == 4 and secret.read_text() == "HOST SECRET"


def test_a_job_cleans_only_its_own_writable_mounts_and_a_file_gone_meanwhile_is_no_error(
        tmp_path):
    """Parallel tuning trials share the session's scratch folder: when one trial's container
    exits, only that trial's writable mounts are cleaned; a sibling trial's files (which come
    and go while it runs, found by a CI run where one of four trials failed) are not walked."""
    import json
    import subprocess

    scratch = tmp_path / "scratch"
    mine, sibling, inputs = scratch / "trial-001", scratch / "trial-002", tmp_path / "in"
    for folder in (mine / "model", sibling / "model", inputs):
        folder.mkdir(parents=True)
    (mine / "model" / "leak").symlink_to(tmp_path)
    (sibling / "model" / "latest").symlink_to(sibling / "model")  # the running trial's own
    (inputs / "link").symlink_to(tmp_path)  # read-only in the container: not its output
    compose = mine / "docker-compose.yaml"
    compose.write_text(json.dumps({"services": {"algo-1": {"volumes": [
        f"{mine / 'model'}:/opt/ml/model", f"{inputs}:/opt/ml/input/data/train:ro"]}}}))
    process = subprocess.Popen(["true", "-f", str(compose), "up"])
    process.wait()
    assert output.writable_mounts(process, scratch) == [mine / "model"]
    for folder in output.writable_mounts(process, scratch):
        output.keep_only_files(folder, lambda line: None)
    assert not (mine / "model" / "leak").is_symlink()
    assert (sibling / "model" / "latest").is_symlink() and (inputs / "link").is_symlink()
    # no compose file to read: the whole scratch folder, as before
    bare = subprocess.Popen(["true"])
    bare.wait()
    assert output.writable_mounts(bare, scratch) == [scratch]

    # a file removed between the walk's listing and its look at it is skipped
    (mine / "model" / "l1").symlink_to(tmp_path)
    (mine / "model" / "l2").symlink_to(tmp_path)

    def the_other_one_goes(line: str) -> None:
        for name in ("l1", "l2"):
            if name not in line:
                (mine / "model" / name).unlink(missing_ok=True)

    output.keep_only_files(mine / "model", the_other_one_goes)
    assert list((mine / "model").iterdir()) == []


def test_a_symlinked_folder_below_the_root_does_not_carry_a_delete_elsewhere(tmp_path):
    from smtask.errors import SmtaskError
    from smtask.kinds.common import prepare_output

    root, precious = tmp_path / "artifacts", tmp_path / "precious"
    (precious / "train").mkdir(parents=True)
    (precious / "train" / "KEEP.txt").write_text("keep")
    (root / "churn" / "run").mkdir(parents=True)
    (root / "churn" / "run" / "splitor").symlink_to(precious)  # a step folder made a link
    with pytest.raises(SmtaskError, match="through a symlink"):
        prepare_output((root / "churn" / "run" / "splitor" / "train").as_uri(), root.as_uri())
    assert (precious / "train" / "KEEP.txt").read_text() == "keep"
    linked_root = tmp_path / "linked-artifacts"
    linked_root.symlink_to(root)  # the root itself may be a link
    (root / "churn" / "run" / "trainer").mkdir()
    prepare_output((linked_root / "churn" / "run" / "trainer").as_uri(), linked_root.as_uri())


def test_a_cloud_session_makes_one_client_per_service_and_only_when_used(monkeypatch):
    """The SDK's Session asks for eight clients (and sagemaker-core for its own SageMaker
    one); each made costs a parse of its service's endpoint rules."""
    import boto3
    from botocore.config import Config

    from smtask import sessions

    made: list[str] = []
    real = boto3.Session.client

    def counted(self: Any, service: str, *args: Any, **kwargs: Any) -> Any:
        made.append(service)
        return real(self, service, *args, **kwargs)

    monkeypatch.setattr(boto3.Session, "client", counted)
    hook = mock.Mock(verify=None, conn_config=mock.Mock(
        get_service_endpoint_url=lambda service: "http://127.0.0.1:9"))
    hook.get_session.return_value = boto3.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    hook._get_config.return_value = Config()
    session = sessions.connection_session(hook, "us-east-1")
    first = session.client("sagemaker")
    assert session.client("sagemaker", "us-east-1", config=mock.sentinel.other) is first
    session.client("sagemaker-metrics")
    assert made == []  # nothing used yet
    assert first.meta.endpoint_url == "http://127.0.0.1:9"  # the connection's endpoint
    assert made == ["sagemaker"]
    assert session.client("s3") is not first


@pytest.mark.parametrize(("executor", "local", "refused"), [
    ("LocalExecutor", {}, False),
    ("CeleryExecutor", {}, True),
    ("airflow.providers.celery.executors.celery_executor.CeleryExecutor", {}, True),
    ("LocalExecutor,KubernetesExecutor", {}, True),
    ("CeleryExecutor", {"artifacts": "s3://shared/artifacts",
                        "s3_endpoint": "http://127.0.0.1:9000"}, False),
    ("CeleryExecutor", {"artifacts": "s3://shared/artifacts"}, True),  # no endpoint: unreachable
])
def test_local_mode_on_several_workers_needs_artifacts_they_all_reach(monkeypatch, executor,
                                                                    local, refused):
    from smtask.sessions import spread_problem

    monkeypatch.delenv("SMTASK_IN_PROCESS", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    problem = spread_problem({"mode": "local", "local": local})
    assert (problem is not None) == refused, problem
    if refused:
        assert problem.startswith("local.artifacts: local mode under the ")
        assert "set local.artifacts to an s3:// URI with local.s3_endpoint" in problem
    assert spread_problem({"mode": "sagemaker", "artifacts": "s3://b/p"}) is None
    monkeypatch.setenv("SMTASK_IN_PROCESS", "0")  # only smtask run's own "1" exempts
    assert (spread_problem({"mode": "local", "local": local}) is not None) == refused
    monkeypatch.setenv("SMTASK_IN_PROCESS", "1")  # smtask run: every task in its one process
    assert spread_problem({"mode": "local", "local": local}) is None


def test_clients_of_one_session_are_made_one_at_a_time_and_once_each():
    """A boto3 session is not safe to make clients from in two threads at once: smtask's
    upload threads and the SDK's may be the first to use one."""
    import threading
    import time

    from smtask.sessions import OnFirstUse

    making, made, inside = threading.Lock(), [], []

    def make(name: str):
        inside.append(name)
        time.sleep(0.05)
        assert inside == [name], f"made beside another: {inside}"
        inside.remove(name)
        made.append(name)
        return type("Client", (), {"meta": name})()

    s3 = OnFirstUse(lambda: make("s3"), making)
    sagemaker = OnFirstUse(lambda: make("sagemaker"), making)
    seen: list[str] = []
    threads = [threading.Thread(target=lambda c=c: seen.append(c.meta))
               for c in (s3, s3, sagemaker, s3, sagemaker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(made) == ["s3", "sagemaker"]  # once each
    assert sorted(seen) == ["s3", "s3", "s3", "sagemaker", "sagemaker"]


def test_a_container_run_imports_the_sessions_warm_up_modules_beside_it_and_waits_for_them(
        tmp_path, monkeypatch):
    """While a job's container runs, the task's main thread only reads its output: the
    session's warm-up modules (the next kinds' SDK modules, in an in-process run) are imported
    then, in a thread, once per session; the output ends only once that thread has, so no
    import of the task's own runs beside it. Not from another thread (a tuning trial's, a
    serving container's), whose main thread is not waiting."""
    import subprocess
    import sys
    import threading
    import time

    for name in ("warm_probe", "warm_other"):
        (tmp_path / f"{name}.py").write_text(
            "import threading, time\nTHREAD = threading.current_thread().name\n"
            "time.sleep(0.5)\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "warm_probe", raising=False)
    monkeypatch.delitem(sys.modules, "warm_other", raising=False)
    fake = local_state(tmp_path, warm_up=("no_such_module_of_smtask", "warm_probe"))
    lines: list[str] = []
    stream = output.stream_output(local.ContainerOutput(lines.append), fake)
    started = time.monotonic()
    assert stream(subprocess.Popen(["printf", "one\\n"], stdout=subprocess.PIPE)) == 0
    assert time.monotonic() - started >= 0.45  # the container's output ended before the import
    probe = sys.modules["warm_probe"]
    assert probe.THREAD == "smtask-warm-up" and probe.DONE and lines == ["one"]
    assert fake.smtask.warm_up == ()  # once per session; a failed import is no job's failure
    assert not [t for t in threading.enumerate() if t.name == "smtask-warm-up"]

    other = local_state(tmp_path, warm_up=("warm_other",))
    beside = threading.Thread(target=lambda: output.stream_output(
        local.ContainerOutput(lines.append), other)(
            subprocess.Popen(["true"], stdout=subprocess.PIPE)))
    beside.start()
    beside.join()
    assert "warm_other" not in sys.modules


def test_only_an_in_process_run_warms_up_its_local_sessions(monkeypatch):
    from smtask import sessions

    seen: list[tuple[str, ...]] = []
    monkeypatch.setattr(local, "open_session", lambda params, output, step, warm_up: seen.append(
        warm_up))
    monkeypatch.delenv("SMTASK_IN_PROCESS", raising=False)
    sessions.open_session({"mode": "local"}, None, "s")
    monkeypatch.setenv("SMTASK_IN_PROCESS", "1")
    sessions.open_session({"mode": "local"}, None, "s")
    assert seen[0] == ()
    assert "sagemaker.train.model_trainer" in seen[1] and all(
        name.startswith("sagemaker.") for name in seen[1])


def test_the_warm_up_is_waited_for_whatever_ends_the_output(tmp_path, monkeypatch):
    """A sink that fails on the last line, or a second signal during the wait, still leaves
    no warm-up thread importing beside the task (found by a hostile trial)."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    (tmp_path / "warm_slow.py").write_text("import time\ntime.sleep(0.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "warm_slow", raising=False)

    class Boom(Exception):
        pass

    class FailingFlush(local.ContainerOutput):  # e.g. held last lines the log refuses
        def flush(self) -> None:
            raise Boom

    fake = local_state(tmp_path, warm_up=("warm_slow",))
    stream = output.stream_output(FailingFlush(lambda line: None), fake)
    with pytest.raises(Boom):
        stream(subprocess.Popen(["printf", "last"], stdout=subprocess.PIPE))
    assert "warm_slow" in sys.modules
    assert not [t for t in threading.enumerate() if t.name == "smtask-warm-up"]

    class Stop(BaseException):
        pass

    def stop(signum: int, frame: Any) -> None:
        raise Stop

    done = threading.Event()
    slow = threading.Thread(target=lambda: (time.sleep(0.5), done.set()))
    previous = signal.signal(signal.SIGALRM, stop)
    try:
        slow.start()
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        started = time.monotonic()
        with pytest.raises(Stop):
            output.joined(done)
        assert done.is_set() and time.monotonic() - started >= 0.35
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_tasks_first_sdk_import_builds_its_models_on_use_and_quiets_the_collector():
    """A task's first import of the SDK (sdk.importing) runs with the cyclic collector paused
    and freezes what it made (nine full collections walked the run's heap, 1.5 s of a local
    run), and leaves the SDK's pydantic shapes (870 in its shapes module) to build on first
    use: each validates as it would have, a model defined later builds at once, and
    build_models (an in-process run's warm-up) builds the rest. Run in a fresh interpreter:
    this one has the SDK."""
    import json
    import subprocess
    import sys

    probe = """
import gc, json
from smtask import sdk
from pydantic import BaseModel, ValidationError
frozen = gc.get_freeze_count()
try:
    with sdk.importing():
        inside = gc.isenabled()
        from sagemaker.core import shapes
        raise KeyError("leaves the block")
except KeyError:
    pass
def unbuilt():
    return sorted(n for n, c in vars(shapes.shapes).items() if isinstance(c, type)
                  and c.__dict__.get("__pydantic_complete__") is False)
deferred = len(unbuilt())
ok = shapes.StoppingCondition(max_runtime_in_seconds=5).max_runtime_in_seconds
try:
    shapes.StoppingCondition(max_runtime_in_seconds="abc")
    refused = ""
except ValidationError as exc:
    refused = exc.errors()[0]["type"]
class After(BaseModel):
    x: int
print(json.dumps({"inside": inside, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count() - frozen,
                  "deferred": deferred, "ok": ok, "refused": refused,
                  "after": After.__pydantic_complete__, "built": sdk.build_models(),
                  "left": unbuilt()}))
"""
    found = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                      text=True, check=True).stdout.splitlines()[-1])
    plain = json.loads(subprocess.run(
        [sys.executable, "-c", "import json; from sagemaker.core import shapes; print(json.dumps("
         "sorted(n for n, c in vars(shapes.shapes).items() if isinstance(c, type) and "
         "c.__dict__.get('__pydantic_complete__') is False)))"],
        capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    assert found["inside"] is False and found["enabled"] is True and found["frozen"] > 100_000
    assert found["deferred"] > 800 and found["ok"] == 5 and found["refused"] == "int_parsing"
    assert found["after"] is True  # the block's end restored pydantic's default
    # built as the import would have: what a plain import leaves unbuilt (the SDK's own
    # BaseModel, a base class) is all that is left
    assert found["built"] > 800 and found["left"] == plain != []


def test_an_in_process_runs_sdk_import_freezes_nothing_an_earlier_task_made():
    """In an in-process run (smtask run) an earlier task's data may be alive when a later task
    first imports the SDK; frozen with it, a cycle dropped after would never be freed."""
    import json
    import os
    import subprocess
    import sys

    probe = """
import gc, json, weakref
class Data:
    pass
held = Data()
held.me = held
kept = weakref.ref(held)
from smtask import sdk
with sdk.importing():
    from sagemaker.core import shapes
del held
gc.collect()
print(json.dumps({"frozen": gc.get_freeze_count(), "freed": kept() is None}))
"""
    found = json.loads(subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env={**os.environ, "SMTASK_IN_PROCESS": "1"}).stdout.splitlines()[-1])
    assert found == {"frozen": 0, "freed": True}


def test_quiet_imports_nest_and_restore_a_disabled_collector():
    import gc

    from smtask import sdk

    assert gc.isenabled()
    with sdk.quiet_imports():
        with sdk.quiet_imports():
            pass
        assert not gc.isenabled()  # the inner block leaves the outer's pause alone
    assert gc.isenabled()
    gc.disable()
    try:
        with sdk.quiet_imports():
            pass
        assert not gc.isenabled()  # a caller's own pause is kept
    finally:
        gc.enable()


def test_a_signal_while_the_local_session_is_made_leaves_no_scratch_folder(monkeypatch, tmp_path):
    """A SIGTERM between the scratch folder's making and the session's (the SDK's
    LocalSession reads its S3 model: 0.1 s) left the folder behind (found by CI once the SDK
    was imported before the first task, which moved the signal's moment there)."""
    import sagemaker.core.local as sdk_local

    def interrupted(**_: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    monkeypatch.setattr(local_session.JANITOR, "sweep", lambda: None)
    monkeypatch.setattr(sdk_local, "LocalSession", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with local.open_session({"mode": "local"}, local.ContainerOutput(print)):
            pass
    assert (tmp_path / "tmp").is_dir() and list((tmp_path / "tmp").iterdir()) == []


def _held_stops(monkeypatch, tmp_path) -> tuple[list[str], Any]:
    """open_session's removal of a session's containers, recorded, held until released."""
    import threading

    stopped: list[str] = []
    release = threading.Event()

    def stop(session: Any) -> list[str]:
        release.wait(30)
        stopped.append(state.of(session).session_id)
        return []

    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    monkeypatch.setattr(local_session.JANITOR, "sweep", lambda: None)
    monkeypatch.setattr(local_session, "stop", stop)
    return stopped, release


def test_a_completed_jobs_containers_are_removed_beside_the_next_task(monkeypatch, tmp_path):
    """The exited containers and the scratch folder of a session whose job completed are
    removed by a thread of their own (0.03-0.1 s a task, which held up the next one); the
    run waits for them at its end (settle, the CLI's in-process run, the process's exit)."""
    stopped, release = _held_stops(monkeypatch, tmp_path)
    with local.open_session({"mode": "local"}, local.ContainerOutput(print)) as session:
        scratch = local_session.scratch_of(session)
    assert stopped == [] and scratch.is_dir()  # the task goes on while they are removed
    release.set()
    containers.JANITOR.settle()
    assert stopped == [state.of(session).session_id] and not scratch.exists()


def test_a_failed_or_killed_jobs_containers_are_removed_before_the_task_ends(monkeypatch, tmp_path):
    """A job that failed or was killed may still have containers running: removed there and
    then, as before."""
    stopped, release = _held_stops(monkeypatch, tmp_path)
    release.set()
    with pytest.raises(RuntimeError):
        with local.open_session({"mode": "local"}, local.ContainerOutput(print)) as failed:
            raise RuntimeError("the job failed")
    assert stopped == [state.of(failed).session_id]
    with local.open_session({"mode": "local"}, local.ContainerOutput(print)) as killed:
        state.of(killed).killed = True  # the SDK swallowed the kill's exception
    assert stopped[-1] == state.of(killed).session_id
    assert not local_session.scratch_of(killed).exists()


def test_a_process_waits_at_its_exit_for_the_removals_it_handed_over(tmp_path):
    """``smtask run`` leaves by os._exit once the exit handlers ran; a task process by
    sys.exit: both wait for the removals still under way. A forked child hands its own to a
    thread of its own (the parent's is not in the child)."""
    import subprocess
    import sys

    script = tmp_path / "exits.py"
    script.write_text(f'''
import atexit, os, sys, time
from pathlib import Path
from smtask.local.containers import JANITOR
done = Path({str(tmp_path)!r})
JANITOR.later(lambda: (time.sleep(0.5), (done / "parent").write_text("x")))
if os.fork() == 0:
    JANITOR.later(lambda: (done / "child").write_text("x"))
    JANITOR.settle()
    os._exit(0)
os.wait()
atexit._run_exitfuncs()  # as smtask's console() leaves
os._exit(0)
''')
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert (tmp_path / "parent").exists() and (tmp_path / "child").exists()


def test_the_compose_runner_reads_only_its_json_and_ignores_the_workers_python_settings(tmp_path):
    """The runner starts as an isolated interpreter without site-packages (20 ms a job
    less): a PYTHONPATH of the worker's cannot put its own modules in it, and a compose file
    that is not the JSON smtask writes is refused by name."""
    import os
    import subprocess

    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("json", "subprocess", "sitecustomize"):
        (evil / f"{name}.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write({name!r})\n")
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text("services: {algo-1: {image: x}}\n")  # YAML, not JSON
    hostile = {**os.environ, "PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "json.py")}
    done = subprocess.run([*compose.command(), "-f", str(broken), "up"], capture_output=True,
                          text=True, timeout=60, env=hostile)
    assert done.returncode == 1
    assert f"{broken} is not a compose file smtask wrote (JSON)" in done.stderr
    assert not (tmp_path / "ran").exists()


def test_a_failed_clean_up_beside_the_run_is_said_and_the_next_one_still_runs(capfd):
    ran: list[str] = []

    def fails() -> None:
        raise OSError("the engine hung up")

    containers.JANITOR.later(fails)
    containers.JANITOR.later(lambda: ran.append("next"))
    containers.JANITOR.settle()
    assert ran == ["next"]
    assert "smtask: a clean-up beside the run failed (the engine hung up)" in capfd.readouterr().err


def test_a_signal_while_a_run_waits_for_its_removals_is_acted_on_once_they_are_done():
    """A SIGTERM or SIGINT at a run's end (or at its process's exit, where the default action
    killed the process mid-removal and left a container) waits for the removals under way;
    the handler there was then gets it, as it would have."""
    import os
    import signal
    import threading

    done, got = threading.Event(), []

    def removal() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while settle() waits for this
        done.wait(0.3)
        got.append("removed")

    previous = signal.signal(signal.SIGTERM, lambda signum, _: got.append(signum))
    try:
        containers.JANITOR.later(removal)
        containers.JANITOR.settle()
        assert got == ["removed", signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
