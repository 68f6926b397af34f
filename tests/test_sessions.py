"""Pins on the SageMaker SDK internals that local mode corrects. If the SDK changes, these
fail loudly instead of local mode silently creating bridge networks or sending telemetry."""

from __future__ import annotations

import socket

import pytest
import yaml
from conftest import LoopbackGuard, is_loopback

from smtask import sessions


@pytest.fixture(autouse=True)
def installed():
    sessions._Compose.install()


def _sdk_compose(tmp_path, klass_name: str, command: str = "serve") -> dict:
    """Let the SDK's own (wrapped) generator write a compose file, then read it back."""
    from sagemaker.core.local.image import _SageMakerContainer
    from sagemaker.core.local.local_session import LocalSession  # noqa: F401 - SDK import check
    from sagemaker.train.local.local_container import _LocalContainer

    class FakeSession:
        config = None
        boto_session = None

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
            sagemaker_session=None, container_entrypoint=["bash"], container_arguments=["x"],
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
        assert sessions._Compose.LABEL in service["labels"]


def test_sdk_compose_generators_are_wrapped_once():
    from sagemaker.core.local.image import _SageMakerContainer
    from sagemaker.train.local.local_container import _LocalContainer

    sessions._Compose.install()
    for klass in (_SageMakerContainer, _LocalContainer):
        generate = klass._generate_compose_file
        assert hasattr(generate, "__wrapped__") and not hasattr(generate.__wrapped__, "__wrapped__")


def test_sdk_functions_are_replaced_inside_a_local_session_and_restored_after():
    from sagemaker.core.local import entities, image
    from sagemaker.core.telemetry import telemetry_logging
    from sagemaker.train.local import local_container

    names = [(telemetry_logging, "_send_telemetry_request"), (image, "_stream_output"),
             (local_container, "_stream_output"), (entities, "_wait_for_serving_container")]
    originals = [getattr(module, name) for module, name in names]
    with sessions._sdk_corrections(print):
        assert telemetry_logging._send_telemetry_request(1, [1], None) is None
        for (module, name), original in zip(names, originals, strict=True):
            assert getattr(module, name) is not original, f"{module.__name__}.{name}"
    assert [getattr(module, name) for module, name in names] == originals


def test_container_output_goes_to_the_sink_and_a_failure_raises():
    import subprocess

    lines: list[str] = []
    stream = sessions._stream_output(lines.append)
    assert stream(subprocess.Popen(["printf", "one\\ntwo\\n"], stdout=subprocess.PIPE)) == 0
    assert lines == ["one\n", "two\n"]
    with pytest.raises(RuntimeError, match="exited with code: 1"):
        stream(subprocess.Popen(["false"], stdout=subprocess.PIPE))


def test_serving_health_wait_returns_as_soon_as_ping_answers(loopback_guard):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Ping(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Ping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        sessions._wait_for_serving_container(server.server_port, timeout=10)
        assert time.monotonic() - started < 1  # the SDK's own wait sleeps 5 s after a miss
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(RuntimeError, match="Giving up"):
        sessions._wait_for_serving_container(server.server_port, timeout=0.5)


def test_local_session_needs_no_aws_and_hands_containers_no_worker_credentials(
        monkeypatch, loopback_guard):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "worker-secret-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret")
    with sessions.local_session({"mode": "local"}) as session:
        assert session.local_mode
        credentials = session.boto_session.get_credentials()
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
