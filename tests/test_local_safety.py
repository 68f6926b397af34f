"""What local mode guarantees, tried the way a careless or hostile user would, in real
containers: confined paths, read-only inputs and code, parallel transforms each scored by
their own model, signals at any moment, clean-up after SIGKILL, failure messages with the cause.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import (
    LOCAL_IMAGE,
    ROOT,
    containers_with_label,
    run_dag,
    write_config,
    write_dag,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker")]


def path(uri: str) -> Path:
    return Path(urlparse(uri).path)


SOURCE = '''
@task
def source():
    from airflow.sdk import get_current_context
    from smtask.storage import run_prefix, write_text
    folder = run_prefix(get_current_context(), "data-source")
    write_text(folder + "/data.csv", "label,x\\n1,2\\n0,3\\n")
    return folder
'''
SPLIT = SOURCE + '''
@sm_processing(step="splitor")
def split(uri):
    return {"data-source": uri}

split(source())
'''
TRAIN = SOURCE + '''
@sm_training(step="trainer")
def train(uri):
    return {"train": uri}

train(source())
'''


# --- confinement ------------------------------------------------------------------------

@pytest.mark.parametrize("output", ["..", "../x", "../../../../../x", "/abs", "a b", "x\ny"])
def test_a_hostile_output_name_is_refused_before_any_job_and_touches_nothing(
        tmp_path, loopback_guard, capfd, output):
    config = write_config(tmp_path)
    conf = {"steps": {"splitor": {"outputs": {output: {"source": "/opt/ml/processing/x"}}}}}
    artifacts = sorted(Path(os.environ["SMTASK_HOME"]).rglob("*"))
    result = run_dag(SPLIT, config=config, conf=conf)
    # the first task that reads the params refuses them: nothing downstream runs
    assert result.states == {"source": "failed", "split": "upstream_failed"}
    assert "steps.splitor.outputs: output name" in capfd.readouterr().out
    assert sorted(Path(os.environ["SMTASK_HOME"]).rglob("*")) == artifacts  # nothing written
    assert containers_with_label() == []


# --- read-only inputs and code ----------------------------------------------------------

def test_a_processing_job_cannot_change_its_inputs_or_its_code(tmp_path, loopback_guard):
    single = tmp_path / "lookup.csv"
    single.write_text("a,b\n")
    config = write_config(tmp_path, steps={"splitor": {
        "code_path": "tests/scripts/writes_inputs.py", "arguments": [],
        "outputs": {"report": {"source": "/opt/ml/processing/report"}}}})
    body = SOURCE + f'''
@sm_processing(step="splitor")
def split(uri):
    return {{"data-source": uri, "lookup": {str(single)!r}}}

split(source())
'''
    result = run_dag(body, config=config)
    assert result.ok, result.states
    report = json.loads((path(result.xcom["split"]["outputs"]["report"]) / "report.json").read_text())
    refused = "OSError: Read-only file system"
    assert {report["attempts"][k] for k in ("code/writes_inputs.py", "data-source",
                                            "data-source/data.csv", "lookup/lookup.csv")} == {refused}
    # a file input is that one file (not its folder); a new file beside it stays in the container
    assert report["visible"]["code"] == ["writes_inputs.py", "written-by-the-job"]
    assert report["visible"]["lookup"] == ["lookup.csv", "written-by-the-job"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("lookup")) == ["lookup.csv"]
    assert single.read_text() == "a,b\n"
    assert (path(result.xcom["source"]) / "data.csv").read_text() == "label,x\n1,2\n0,3\n"
    assert not (ROOT / "tests" / "scripts" / "written-by-the-job").exists()


def test_a_training_job_cannot_change_its_channels_or_its_source_dir(tmp_path, loopback_guard):
    config = write_config(tmp_path, steps={"trainer": {
        "source_dir": "tests/scripts", "entry_script": "train_writes.py"}})
    result = run_dag(TRAIN, config=config)
    assert result.ok, result.states
    with tarfile.open(path(result.xcom["train"]["model"])) as tar:
        report = json.load(tar.extractfile("report.json"))  # type: ignore[arg-type]
    assert report["attempts"] == {"train": "OSError: Read-only file system",
                                  "code": "OSError: Read-only file system"}
    assert report["visible"]["train"] == ["data.csv"]
    assert not (ROOT / "tests" / "scripts" / "written-by-the-job").exists()


def test_a_job_cannot_copy_host_files_into_its_outputs_through_links(tmp_path, loopback_guard,
                                                                    capfd):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "credentials").write_text("HOST SECRET")
    config = write_config(tmp_path, steps={"splitor": {
        "code_path": "tests/scripts/links_out.py",
        "arguments": [str(secret / "credentials"), str(secret)],
        "outputs": {"train": {"source": "/opt/ml/processing/train"}}}})
    result = run_dag(SPLIT, config=config)
    assert result.ok, result.states
    out = path(result.xcom["split"]["outputs"]["train"])
    assert sorted(p.name for p in out.iterdir()) == ["data.csv"]
    assert "HOST SECRET" not in "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    captured = capfd.readouterr()
    assert "/output/train/leak.txt from the job's outputs" in captured.out + captured.err


def test_batch_transform_leaves_the_training_output_as_it_was(tmp_path, loopback_guard):
    model = constant_model(tmp_path, 1)
    before = sorted(p.name for p in model.parent.iterdir())
    result = run_dag(transform_body(model), config=write_config(tmp_path))
    assert result.ok, result.states
    assert sorted(p.name for p in model.parent.iterdir()) == before  # nothing unpacked beside it


# --- parallel transforms ----------------------------------------------------------------

_CONSTANTS = (0, 1, 2)  # the models the tests below score with


@functools.cache
def _constant_models(constants: tuple[int, ...]) -> dict[int, Path]:
    """model.tar.gz archives of models that each predict one constant, all made by one
    container (so their scikit-learn version is the server's), once per test process."""
    folder = Path(os.environ["SMTASK_HOME"]).parent / "constant-models"  # removed after the run
    folder.mkdir(exist_ok=True)
    script = "import joblib; from sklearn.dummy import DummyClassifier\n" + "".join(
        f"joblib.dump(DummyClassifier(strategy='constant', constant={c}).fit([[0], [1]], "
        f"[{c}, {c + 1}]), '/out/model-{c}.joblib')\n" for c in constants)
    subprocess.run(["docker", "run", "--rm", "--network", "host", "-v", f"{folder}:/out", LOCAL_IMAGE,
                    "python3", "-c", script], check=True, capture_output=True)
    archives = {}
    for c in constants:
        archives[c] = folder / f"model-{c}.tar.gz"
        with tarfile.open(archives[c], "w:gz") as tar:
            tar.add(folder / f"model-{c}.joblib", arcname="model.joblib")
    return archives


def constant_model(tmp_path: Path, constant: int) -> Path:
    """A model.tar.gz of its own, in ``tmp_path``, whose model predicts ``constant`` for
    every row."""
    archive = _constant_models(_CONSTANTS if constant in _CONSTANTS else (constant,))[constant]
    folder = tmp_path / f"model-{constant}"
    folder.mkdir()
    shutil.copy(archive, folder / "model.tar.gz")
    return folder / "model.tar.gz"


def transform_body(model: Path, rows: int = 200) -> str:
    """Scores ``rows`` one-column rows with an existing ``model.tar.gz``."""
    return f'''
@task
def data():
    from airflow.sdk import get_current_context
    from smtask.storage import run_prefix, write_text
    folder = run_prefix(get_current_context(), "data-source")
    write_text(folder + "/batch.csv", "".join(f"{{i}}\\n" for i in range({rows})))
    return folder

@task
def model():
    return {{"job_name": "given", "model": {model.as_uri()!r}, "image": {LOCAL_IMAGE!r}}}

@sm_transform(step="transformer")
def predict(model, uri):
    return uri

predict(model(), data())
'''


def test_parallel_transforms_each_score_with_their_own_model(tmp_path, cli_home):
    runs = []
    for constant in range(3):
        folder = tmp_path / f"run-{constant}"
        folder.mkdir()
        _, dag_path = write_dag(transform_body(constant_model(folder, constant)),
                                config=write_config(folder), folder=folder / "dags")
        env = cli_home.env(cli_home.own_airflow(f"parallel-{constant}"))
        runs.append((constant, cli_home.smtask("run", str(dag_path), env=env)))
    for constant, proc in runs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        predictions = json.loads(out.split("-- predict: success", 1)[1].split("\n", 1)[1]
                                 .split("\n-- ", 1)[0])["outputs"]["predictions"]
        scored = (path(predictions) / "batch.csv.out").read_text().split()
        assert len(scored) == 200 and set(scored) == {str(constant)}, (constant, set(scored))
    assert containers_with_label() == []


# --- signals ----------------------------------------------------------------------------

SLEEPER = SOURCE + '''
@sm_processing(step="splitor")
def split(uri):
    return {"data-source": uri}

@task
def after(outputs):
    print("AFTER RAN")

after(split(source()))
'''


class Watched:
    """A ``smtask run`` whose output is read as it comes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)

    def wait_for(self, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < deadline, "".join(self.lines)[-3000:]
            time.sleep(0.05)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, timeout: float = 60) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # ours to end; its output says where it hung
            self.proc.wait()
            self.reader.join(timeout=10)
            raise AssertionError(f"still running after {timeout} s:\n"
                                 + "".join(self.lines)[-6000:]) from None
        self.reader.join(timeout=10)
        return "".join(self.lines)


def owned_containers(pid: int) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.ID}} {{.Labels}}"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if f":{pid}:" in line]


def sleeper_run(tmp_path: Path, cli_home) -> Watched:
    config = write_config(tmp_path, steps={"splitor": {"code_path": "tests/scripts/sleeps.py",
                                                       "arguments": []}})
    _, dag_path = write_dag(SLEEPER, config=config, folder=tmp_path / "dags")
    return Watched(cli_home.smtask("run", str(dag_path)))


def scratch_folders(cli_home) -> list[Path]:
    root = cli_home.root / "tmp"
    return sorted(root.iterdir()) if root.is_dir() else []


def test_a_signal_during_batch_transform_stops_it(tmp_path, cli_home):
    """The SDK's telemetry wrapper swallows any exception raised inside its calls; the task
    must still stop, not wait for a job that will never end."""
    config = write_config(tmp_path, steps={"transformer": {"strategy": "SingleRecord"}})
    _, dag_path = write_dag(transform_body(constant_model(tmp_path, 1), rows=3000), config=config,
                            folder=tmp_path / "dags")
    run = Watched(cli_home.smtask("run", str(dag_path)))
    run.wait_for(lambda: run.saw("Listening at"))
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGTERM)
    out = run.finish(timeout=60)
    assert run.proc.returncode == 143, out[-3000:]
    assert "-- predict: failed" in out and "TaskInterrupted" in out
    assert owned_containers(run.proc.pid) == []
    assert scratch_folders(cli_home) == []


@pytest.mark.parametrize(("signum", "moment"), [
    (signal.SIGTERM, "before the container exists"),
    (signal.SIGTERM, "while the container runs"),
    (signal.SIGINT, "while the container runs"),
])
def test_a_signal_stops_the_task_removes_its_containers_and_fails_the_run(
        tmp_path, cli_home, signum, moment):
    run = sleeper_run(tmp_path, cli_home)
    if moment == "before the container exists":
        run.wait_for(lambda: run.saw("processing job churn-splitor-"))
        assert owned_containers(run.proc.pid) == []
    else:
        run.wait_for(lambda: run.saw("sleeps.py started"))
        assert owned_containers(run.proc.pid)
    sent = time.monotonic()
    run.proc.send_signal(signum)
    out = run.finish()
    assert time.monotonic() - sent < 20, out[-3000:]
    assert run.proc.returncode == 128 + signum, out[-3000:]
    assert f"failed: stopped by {signal.Signals(signum).name}" in out
    assert "-- split: failed" in out and "AFTER RAN" not in out
    assert owned_containers(run.proc.pid) == []
    assert scratch_folders(cli_home) == []


@pytest.mark.orphans  # no other test's session may remove it first
def test_after_sigkill_cleanup_removes_the_orphaned_container_and_scratch(tmp_path, cli_home):
    run = sleeper_run(tmp_path, cli_home)
    run.wait_for(lambda: run.saw("sleeps.py started"))
    run.proc.kill()
    run.finish()
    orphans = owned_containers(run.proc.pid)
    assert orphans and scratch_folders(cli_home)  # SIGKILL left them behind
    cleanup = cli_home.smtask("cleanup")
    out, _ = cleanup.communicate(timeout=60)
    assert cleanup.returncode == 0, out
    assert f"container {orphans[0][:12]} of dead process {run.proc.pid}" in out
    assert owned_containers(run.proc.pid) == []
    assert scratch_folders(cli_home) == []


@pytest.mark.orphans  # no other test's session may remove it first
def test_the_next_local_session_removes_a_dead_processes_container(tmp_path, monkeypatch,
                                                                   loopback_guard):
    from smtask import local
    from smtask.local import state

    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    scratch = tmp_path / "tmp" / "deadbeef"
    scratch.mkdir(parents=True)
    dead = state.Owner(socket.gethostname(), 2**22 + 11, 1.0)
    (scratch / state.OWNER_FILE).write_text(str(dead))
    orphan = subprocess.run(
        ["docker", "run", "-d", "--network", "host", "--label", f"{state.LABEL}=deadbeef",
         "--label", f"{state.OWNER_LABEL}={dead}", "--label", f"{state.SCRATCH_LABEL}={scratch}",
         LOCAL_IMAGE, "sleep", "300"], capture_output=True, text=True, check=True).stdout.strip()
    from smtask.local.containers import JANITOR

    with local.open_session({"mode": "local"}, local.ContainerOutput(print)):
        JANITOR.settle()  # a process's first session sweeps before its job, later ones beside it
        assert containers_with_label(f"{state.LABEL}=deadbeef") == []
        assert not scratch.exists()
    assert orphan


# --- the engine dying mid-job ------------------------------------------------------------

class EngineProxy:
    """The Docker engine's socket as a task's process sees it (``DOCKER_HOST``), forwarded to
    the real engine, which a test can cut (the engine "dies" for that process: its containers
    run on) and restore."""

    def __init__(self, folder: Path) -> None:
        import socket as sockets

        self.path, self.sockets = folder / "docker.sock", []
        self._sockets, self.listener = sockets, None

    def start(self) -> EngineProxy:
        listener = self._sockets.socket(self._sockets.AF_UNIX)
        self.path.unlink(missing_ok=True)
        listener.bind(str(self.path))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            engine = self._sockets.socket(self._sockets.AF_UNIX)
            engine.connect("/var/run/docker.sock")
            self.sockets += [client, engine]
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, target) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:  # a half-close goes on as a half-close (the CLI ends its side of an attach)
            with contextlib.suppress(OSError):
                target.shutdown(1)

    def cut(self) -> None:
        self.listener.close()
        self.path.unlink(missing_ok=True)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(2)
            sock.close()
        self.sockets.clear()

    def env(self, cli_home) -> dict[str, str]:
        return {**cli_home.env(), "DOCKER_HOST": f"unix://{self.path}"}


@pytest.mark.orphans  # its survivor container is for its own clean-up
def test_an_engine_lost_mid_job_fails_in_one_line_and_deletes_nothing_under_the_job(
        tmp_path, cli_home):
    proxy = EngineProxy(tmp_path).start()
    config = write_config(tmp_path, steps={"splitor": {"code_path": "tests/scripts/sleeps.py",
                                                       "arguments": []}})
    _, dag_path = write_dag(SLEEPER, config=config, folder=tmp_path / "dags")
    run = Watched(cli_home.smtask("run", str(dag_path), env=proxy.env(cli_home)))
    try:
        run.wait_for(lambda: run.saw("sleeps.py started"))
        proxy.cut()
        out = run.finish(timeout=120)
        assert run.proc.returncode == 1, out[-3000:]
        assert "the Docker engine stopped answering" in out
        survivors = owned_containers(run.proc.pid)
        assert survivors, "the job's container runs on in the engine"
        scratch = scratch_folders(cli_home)
        assert scratch, "its scratch folder is kept: the container still mounts it"
        # with no engine, cleanup removes nothing and says so
        cleanup = cli_home.smtask("cleanup", env=proxy.env(cli_home))
        text, _ = cleanup.communicate(timeout=60)
        assert cleanup.returncode == 1 and "nothing removed: the Docker engine stopped" in text
        assert all(folder.exists() for folder in scratch)
        proxy.start()  # the engine is back
        cleanup = cli_home.smtask("cleanup", env=proxy.env(cli_home))
        text, _ = cleanup.communicate(timeout=60)
        assert cleanup.returncode == 0, text
        assert f"container {survivors[0][:12]} of dead process {run.proc.pid}" in text
        assert owned_containers(run.proc.pid) == [] and scratch_folders(cli_home) == []
    finally:
        proxy.cut()
        for cid in owned_containers(run.proc.pid):
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


# --- output floods -------------------------------------------------------------------------

def test_a_job_flooding_its_output_keeps_the_worker_bounded_and_its_last_lines(tmp_path, cli_home):
    """300 MB of lines and one line of 20 MB: the task's process and the job's processes
    beside it stay bounded (README: "What local mode guarantees"), the task log holds the
    first SMTASK_LOG_MAX_MB of the output and the job's last lines."""
    import psutil

    config = write_config(tmp_path, steps={"splitor": {
        "code_path": "tests/scripts/floods.py", "arguments": ["--mb", "300", "--line-mb", "20"]}})
    _, dag_path = write_dag(SLEEPER, config=config, folder=tmp_path / "dags")
    env = {**cli_home.env(), "SMTASK_LOG_MAX_MB": "2"}
    run = Watched(cli_home.smtask("run", str(dag_path), env=env))
    run.wait_for(lambda: run.saw("xxxxxxxxxx"))
    task = psutil.Process(run.proc.pid)
    before, task_peak, beside_peak = task.memory_info().rss, 0, 0
    while run.proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            task_peak = max(task_peak, task.memory_info().rss)
            beside = 0
            for child in task.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    beside += child.memory_info().rss
            beside_peak = max(beside_peak, beside)
        time.sleep(0.1)
    out = run.finish()
    assert run.proc.returncode == 0, out[-3000:]
    assert task_peak - before < 100 * 2**20, (before, task_peak)
    assert beside_peak < 100 * 2**20, beside_peak  # was docker-compose: 1.3 GB
    assert "of the job's output are not in the task log; its last 200:" in out
    assert all(f"floods.py last line {i}" in out for i in range(3))
    assert "more bytes of this line cut]" in out
    assert len(out) < 20 * 2**20  # 2 MB of lines, each a log record, and the last lines


# --- failure messages -------------------------------------------------------------------

def failure_message(capfd) -> str:
    out = capfd.readouterr().out
    return next(line for line in out.splitlines() if "JobFailed:" in line)


def test_a_processing_exit_code_fails_with_the_code_and_the_last_lines(tmp_path, loopback_guard,
                                                                      capfd):
    config = write_config(tmp_path, steps={"splitor": {"code_path": "tests/scripts/exits.py",
                                                       "arguments": []}})
    result = run_dag(SPLIT, config=config)
    assert result.states["split"] == "failed"
    message = failure_message(capfd)
    assert "failed: no usable rows in the input (exit code 3; last lines: " in message, message
    assert "reading input" in message


def test_a_training_script_error_is_quoted_not_the_drivers(tmp_path, loopback_guard, capfd):
    config = write_config(tmp_path, steps={"trainer": {"source_dir": "tests/scripts",
                                                       "entry_script": "train_fails.py"}})
    result = run_dag(TRAIN, config=config)
    assert result.states["train"] == "failed"
    message = failure_message(capfd)
    assert ("failed: ValueError: label column 'churned' not found in the train channel "
            "(exit code 1; last lines: ") in message, message


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # no stray trace
def test_a_model_that_cannot_load_fails_at_once_with_the_servers_reason(tmp_path, loopback_guard,
                                                                       capfd):
    broken = tmp_path / "broken"
    broken.mkdir()
    with tarfile.open(broken / "model.tar.gz", "w:gz") as tar:
        data = b"not a model"
        info = tarfile.TarInfo("model.joblib")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    started = time.monotonic()
    result = run_dag(transform_body(broken / "model.tar.gz"), config=write_config(tmp_path))
    assert time.monotonic() - started < 60  # not the SDK's 120 s health wait
    assert result.states["predict"] == "failed"
    message = failure_message(capfd)
    assert "the serving container exited before it was healthy: " in message, message
    assert "UnpicklingError" in message or "Error" in message.split("healthy: ", 1)[1], message
