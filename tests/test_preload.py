"""smtask.preload: what a long-lived worker imports once, before it forks its tasks."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from smtask import preload

SMTASK = Path(preload.__file__).parent
OUTSIDE = ("sagemaker", "boto3", "botocore", "airflow.providers.amazon")


def _module(package: str, name: str) -> str:
    """What ``from package import name`` imports: the module package.name, where it is one."""
    if not package.startswith(OUTSIDE):
        return package
    try:
        return f"{package}.{name}" if importlib.util.find_spec(f"{package}.{name}") else package
    except ModuleNotFoundError:  # package is a module: name is an attribute of it
        return package


def _lazy_imports() -> dict[str, set[str]]:
    """Every module smtask imports inside a function, outside smtask and Airflow's core, with
    the files that do."""
    found: dict[str, set[str]] = {}
    for path in SMTASK.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [_module(node.module, alias.name) for alias in node.names]
                         if isinstance(node, ast.ImportFrom) and node.module else [])
                for name in names:
                    if name.startswith(OUTSIDE):
                        found.setdefault(name, set()).add(str(path.relative_to(SMTASK)))
    return found


def test_preload_lists_every_module_smtask_imports_when_a_job_runs():
    lazy = _lazy_imports()
    assert "sagemaker.train.model_trainer" in lazy  # the scan finds what is there
    missing = {name: files for name, files in lazy.items() if name not in preload.LAZY}
    assert not missing, f"add to smtask.preload.LAZY: {missing}"
    assert sorted(set(preload.LAZY) - set(lazy)) == []  # and lists nothing stale


def test_a_worker_preloads_at_its_start_and_every_other_component_imports_nothing_more():
    """The scheduler and the API server read [celery] celery_config_options too: reading it
    imports no SDK module. Celery's worker_init (sent in a worker's main process, before its
    pool forks) imports them all, and a task forked after it imports none of them again."""
    code = """
import os, sys
import smtask.preload
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
config = smtask.preload.CELERY_CONFIG
assert config is DEFAULT_CELERY_CONFIG  # a team's executor keeps its own broker
assert not [m for m in sys.modules if m.startswith("sagemaker")], "imported the SDK"
from celery.signals import worker_init
worker_init.send(sender=None)
assert set(smtask.preload.LAZY) <= set(sys.modules)
assert set(smtask.preload.smtask_modules()) <= set(sys.modules)
before = set(sys.modules)
pid = os.fork()
if pid == 0:  # a task: the kinds' SDK modules are already there
    import importlib
    for name in smtask.preload.LAZY:
        importlib.import_module(name)
    os._exit(0 if set(sys.modules) == before else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["child", "0"], done.stdout
    assert "smtask: preloaded" in done.stdout + done.stderr


def test_a_module_that_fails_to_import_is_said_and_the_worker_starts(monkeypatch, caplog):
    monkeypatch.setattr(preload, "LAZY", (*preload.LAZY, "sagemaker.no_such_module"))
    with caplog.at_level("INFO", logger="smtask.preload"):
        preload.preload()
    said = [r.getMessage() for r in caplog.records]
    assert any("could not preload sagemaker.no_such_module: ModuleNotFoundError" in m
               for m in said), said
    assert any(m.startswith("smtask: preloaded ") for m in said), said


def test_sessions_share_one_loader_so_a_service_model_is_read_once_per_process(
        monkeypatch, tmp_path):
    import boto3
    from botocore.loaders import JSONFileLoader

    from smtask import clients

    monkeypatch.setattr(clients, "_LOADERS", {})
    reads: list[str] = []
    real = JSONFileLoader.load_file
    monkeypatch.setattr(JSONFileLoader, "load_file",
                        lambda self, path: reads.append(path) or real(self, path))

    def session() -> Any:
        made = boto3.Session(aws_access_key_id="k", aws_secret_access_key="s",
                             region_name="us-east-1")
        clients.share_loader(made)
        return made

    session().client("sagemaker")
    assert any("sagemaker" in path for path in reads)  # the first session reads the model
    reads.clear()
    session().client("sagemaker")
    assert reads == []  # a second session (a second task of a preloaded worker) reads none
    # a session with a data path of its own keeps a loader of its own
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    session().client("sagemaker")
    assert any("sagemaker" in path for path in reads)


def test_preload_reads_the_service_data_of_every_client_smtask_makes(monkeypatch):
    from smtask import clients

    monkeypatch.setattr(clients, "_LOADERS", {})
    preload.preload()
    (loader,) = clients._LOADERS.values()
    read = {key[1] for key in loader._cache if key[0] == "load_service_model"}
    assert read >= set(clients.SERVICES), read
