"""The import cost of a task process, per job kind: smtask's task against the provider's.

Each figure is the median of BENCH_N (default 7) fresh interpreters (bytecode cached: the
environment's ``PYTHONDONTWRITEBYTECODE`` is removed, and one untimed run of each set comes
first), run in turns. Each interpreter imports ``airflow.sdk`` first, untimed (every task
process has it), then times the imports of one set:

- smtask, per kind: what its task process imports before the job's create call. The DAG
  file's ``smtask.decorators``; at execute, ``smtask.kinds.<kind>`` with the modules the task
  and its session use (storage, local, sessions, waiting), the provider's ``base_aws`` hook
  (the connection), the SDK's ``Session`` and telemetry module (smtask/sessions.py, which
  imports them under ``smtask.sdk.importing``: the GC paused, pydantic models built on use),
  and the SDK modules the kind's ``submit`` imports (smtask/kinds/<kind>.py);
- the provider: ``airflow.providers.amazon.aws.operators.sagemaker``, which its DAG file
  imports and which brings the hook its task uses;
- the same sets in a task forked from a worker that ran ``smtask.preload.preload()``
  (the CeleryExecutor's ``celery_config_options``), and that preload's own time, once;
- a deferred task's resume: ``smtask.decorators``, ``smtask.sessions``, ``smtask.waiting``
  and ``base_aws``; it must import no ``sagemaker`` module (the script exits 1 if it does).

Last, ``-X importtime`` of the three kinds' SDK modules together (after airflow.sdk, smtask
and the hook) names the largest contributors by cumulative and by own time.
Usage: .venv/bin/python benchmarks/bench_imports.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOOK = "airflow.providers.amazon.aws.hooks.base_aws"
OWN = ["smtask.decorators", "smtask.storage", "smtask.local", "smtask.sessions",
       "smtask.waiting", HOOK]
SESSION_SDK = ["sagemaker.core.helper.session_helper", "sagemaker.core.telemetry.telemetry_logging"]
TASK = [*OWN, *SESSION_SDK]
SDK = {
    "processing": ["sagemaker.core.processing", "sagemaker.core.shapes"],
    "training": ["sagemaker.train.model_trainer", "sagemaker.core.training.configs",
                 "sagemaker.core.shapes", "sagemaker.train.defaults",
                 "sagemaker.core.utils.utils"],
    "transform": ["sagemaker.core.transformer", "botocore.exceptions"],
}
SETS = {
    **{kind: [f"smtask.kinds.{kind}", *TASK, *sdk] for kind, sdk in SDK.items()},
    "provider": ["airflow.providers.amazon.aws.operators.sagemaker"],
    "resume": ["smtask.decorators", "smtask.sessions", "smtask.waiting", HOOK],
}
CHILD = """
import contextlib, importlib, json, sys, time
import airflow.sdk  # untimed: every task process has it
from smtask.sdk import importing  # imports nothing more (the kinds import it)
before = set(sys.modules)
start = time.perf_counter()
for name in {names!r}:
    # the session's SDK import, as smtask/sessions.py makes it
    with importing() if name in {session!r} else contextlib.nullcontext():
        importlib.import_module(name)
took = time.perf_counter() - start
print(json.dumps({{"seconds": took, "modules": len(set(sys.modules) - before),
                  "sagemaker": sorted(m for m in sys.modules if m.split(".")[0] == "sagemaker")}}))
"""
# a worker with smtask.preload (the CeleryExecutor's celery_config_options): the parent pays
# the imports once; each task, forked from it, times the same set as above
FORKED = """
import importlib, json, os, sys, time
import airflow.sdk
from smtask.preload import preload
start = time.perf_counter()
preload()
once = time.perf_counter() - start
read, write = os.pipe()
if os.fork() == 0:
    before = set(sys.modules)
    start = time.perf_counter()
    for name in {names!r}:
        importlib.import_module(name)
    os.write(write, json.dumps({{"seconds": time.perf_counter() - start,
                                "modules": len(set(sys.modules) - before)}}).encode())
    os._exit(0)
os.close(write)
found = json.loads(os.read(read, 4096))
os.wait()
print(json.dumps({{**found, "preload": once}}))
"""


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="false")
    return env


def measure(names: list[str], env: dict[str, str], code: str = CHILD) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", code.format(names=names, session=SESSION_SDK)], env=env,
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def importtime(env: dict[str, str]) -> list[tuple[int, int, int, str]]:
    """``-X importtime`` of the three kinds' SDK modules, after airflow.sdk, smtask and the
    hook: (depth, own us, cumulative us, module) for every module it imported."""
    sdk = [*SESSION_SDK, *sorted({name for names in SDK.values() for name in names})]
    code = ("import airflow.sdk, importlib, sys\n"
            f"for n in {OWN!r}: importlib.import_module(n)\n"
            "sys.stderr.write('--- timed ---\\n')\n"
            f"for n in {sdk!r}: importlib.import_module(n)\n")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env,
                          capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.split("--- timed ---\n", 1)[1].splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2  # 0: imported by the loop
        rows.append((depth, int(own), int(cumulative), name.strip()))
    return rows


def main() -> None:
    n = int(os.environ.get("BENCH_N", "7"))
    home = Path(tempfile.mkdtemp(prefix="smtask-bench-imports-"))  # an AIRFLOW_HOME
    try:
        report(n, environment(home))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def report(n: int, env: dict[str, str]) -> None:
    for names in SETS.values():  # untimed: compiles smtask's bytecode, warms the page cache
        measure(names, env)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in SETS}
    forked: dict[str, list[dict[str, Any]]] = {kind: [] for kind in SDK}
    for _ in range(n):
        for key, names in SETS.items():  # in turns: a slow moment hits every set alike
            runs[key].append(measure(names, env))
            if key in forked:
                forked[key].append(measure(names, env, FORKED))
    ms = {key: sorted(r["seconds"] * 1000 for r in found) for key, found in runs.items()}

    print(f"import time in a fresh interpreter after `import airflow.sdk` (median of {n}, "
          "bytecode cached)")
    provider = statistics.median(ms["provider"])
    print(f"{'task':<11} {'smtask':>9} {'provider':>9} {'ratio':>6}  {'modules':>7}  "
          "min-max ms smtask / provider")
    for kind in SDK:
        mine = statistics.median(ms[kind])
        print(f"{kind:<11} {mine:>6.0f} ms {provider:>6.0f} ms {mine / provider:>6.2f}  "
              f"{runs[kind][0]['modules']:>7}  {ms[kind][0]:.0f}-{ms[kind][-1]:.0f} / "
              f"{ms['provider'][0]:.0f}-{ms['provider'][-1]:.0f}")
    print(f"(the provider's import brings {runs['provider'][0]['modules']} modules)")
    once = statistics.median(r["preload"] * 1000 for found in forked.values() for r in found)
    print(f"a worker with smtask.preload: {once:.0f} ms once, at its start; then each task "
          "it forks imports the same set in")
    for kind, found in forked.items():
        mine = statistics.median(r["seconds"] * 1000 for r in found)
        print(f"{kind:<11} {mine:>6.1f} ms {provider:>6.0f} ms {mine / provider:>6.2f}  "
              f"{found[0]['modules']:>7}")
    sdk_modules = runs["resume"][0]["sagemaker"]
    print(f"resume a deferred task: {statistics.median(ms['resume']):.0f} ms, "
          f"{runs['resume'][0]['modules']} modules; sagemaker modules imported: "
          f"{len(sdk_modules) if sdk_modules else 'none'} {sdk_modules[:5] if sdk_modules else ''}")
    print("the sets timed:")
    for key, names in SETS.items():
        print(f"  {key}: {', '.join(names)}")

    rows = importtime(env)
    sdk_total = sum(own for _, own, _, name in rows)
    print(f"\n-X importtime, the SDK modules of the three kinds and the session, after "
          "airflow.sdk, smtask and the hook: "
          f"{len(rows)} modules, {sdk_total / 1000:.0f} ms of own time (importtime's overhead "
          "included)")
    print("largest by cumulative, below the modules asked for (depth 1: imported by one):")
    asked = {*SESSION_SDK, *(name for names in SDK.values() for name in names)}
    nested = [row for row in rows if row[0] >= 1 and row[3] not in asked]
    kept: dict[str, tuple[int, int, int, str]] = {}
    for row in nested:  # a module appears once, at its first import; an import cycle's
        if row[3] not in kept or row[2] > kept[row[3]][2]:  # re-entry can list it again
            kept[row[3]] = row
    nested = list(kept.values())
    for depth, own, cumulative, name in sorted(nested, key=lambda r: -r[2])[:5]:
        print(f"  {cumulative / 1000:>7.0f} ms cumulative {own / 1000:>6.0f} ms own  "
              f"depth {depth}  {name}")
    print("largest by own time:")
    for depth, own, cumulative, name in sorted(rows, key=lambda r: -r[1])[:5]:
        print(f"  {own / 1000:>7.0f} ms own {cumulative / 1000:>6.0f} ms cumulative  "
              f"depth {depth}  {name}")
    if sdk_modules:
        sys.exit("the deferred-resume path imported the SageMaker SDK")


if __name__ == "__main__":
    main()
