"""Prints, from one run, two ratios for local mode:

1. parse time of dags/churn.py (smtask) / parse time of the same DAG with plain @task bodies
   (benchmarks/plain_churn.py), each the median of N fresh interpreters with Airflow imported;
   and the same for parse + serialize, which is what Airflow's DAG processor does per parse;
2. wall time of the example pipeline (``smtask run dags/churn.py``) / the sum of its
   containers' run times (``docker events`` start -> die), i.e. what smtask, Airflow and the
   SDK add around the jobs themselves; and, narrower, the duration of the three smtask tasks
   / the same container time (what smtask and the SDK add, without Airflow's start-up and
   the example's plain tasks).

Needs the local runtime (``./run example`` sets it up). Usage: .venv/bin/python benchmarks/bench_local.py
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N = int(os.environ.get("BENCH_N", "15"))
PARSE = ("import time, runpy, airflow.sdk; t = time.perf_counter(); runpy.run_path({!r}); "
         "print(time.perf_counter() - t)")
# what the DAG processor does with each parse: the module run, then the DAG serialized
SERIALIZE = ("import time, airflow.sdk; from airflow.serialization.serialized_objects import "
             "DagSerialization; from airflow.dag_processing.dagbag import DagBag; "
             "t = time.perf_counter(); bag = DagBag(dag_folder={!r}); "
             "[DagSerialization.to_dict(d) for d in bag.dags.values()]; "
             "print(time.perf_counter() - t)")


def parse_seconds(*dag_files: Path, code: str = PARSE) -> list[float]:
    """Median parse time of each file, each run in a fresh interpreter with Airflow imported,
    the files taking turns so that a busy spell of the machine hits both. Bytecode is cached
    (as on a deployment), and one untimed round writes it first."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runs: list[list[float]] = [[] for _ in dag_files]
    for round_ in range(N + 1):
        for i, dag_file in enumerate(dag_files):
            seconds = float(subprocess.run([sys.executable, "-c", code.format(str(dag_file))],
                                           capture_output=True, text=True, check=True,
                                           env=env).stdout.split()[-1])
            if round_:
                runs[i].append(seconds)
    return [statistics.median(r) for r in runs]


def pipeline_seconds() -> tuple[float, float, int, float]:
    """(wall time, summed container run time, containers, smtask tasks' time) of one local
    run of the example."""
    events = subprocess.Popen(
        ["docker", "events", "--filter", "type=container", "--filter", "label=smtask.session",
         "--format", "{{json .}}"], stdout=subprocess.PIPE, text=True)
    seen: list[dict] = []
    reader = threading.Thread(target=lambda: seen.extend(json.loads(line) for line in events.stdout),
                              daemon=True)
    reader.start()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["SMTASK_HOME"] = home
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env={
            **env, "AIRFLOW_HOME": f"{home}/airflow"}, check=True, capture_output=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "smtask.cli", "run", str(ROOT / "dags/churn.py")],
                              env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
    time.sleep(1)
    events.terminate()
    reader.join(timeout=5)
    if done.returncode:
        sys.exit(f"the pipeline failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    starts = {e["id"]: e["timeNano"] for e in seen if e.get("status") == "start"}
    dies = {e["id"]: e["timeNano"] for e in seen if e.get("status") == "die"}
    busy = sum(dies[c] - starts[c] for c in starts if c in dies) / 1e9
    durations = dict(re.findall(r"^-- (\S+): \S+ \(([\d.]+) s\)$", done.stdout, re.M))
    smtask_tasks = sum(float(durations[t]) for t in ("split", "train", "predict"))
    return wall, busy, len(starts), smtask_tasks


def main() -> None:
    smtask_parse, plain_parse = parse_seconds(ROOT / "dags" / "churn.py",
                                              ROOT / "benchmarks" / "plain_churn.py")
    print(f"parse: smtask {smtask_parse * 1000:.1f} ms, plain @task {plain_parse * 1000:.1f} ms "
          f"(median of {N}); ratio {smtask_parse / plain_parse:.2f}")
    smtask_full, plain_full = parse_seconds(ROOT / "dags" / "churn.py",
                                            ROOT / "benchmarks" / "plain_churn.py", code=SERIALIZE)
    print(f"parse + serialize (a DAG processor's pass): smtask {smtask_full * 1000:.1f} ms, "
          f"plain @task {plain_full * 1000:.1f} ms (median of {N}); "
          f"ratio {smtask_full / plain_full:.2f}")
    wall, busy, count, smtask_tasks = pipeline_seconds()
    print(f"local pipeline: wall {wall:.1f} s (DB migrate excluded), {count} containers ran "
          f"{busy:.1f} s in all; ratio {wall / busy:.2f}")
    print(f"smtask tasks (split, train, predict): {smtask_tasks:.1f} s for the same {busy:.1f} s "
          f"of containers; ratio {smtask_tasks / busy:.2f}")


if __name__ == "__main__":
    main()
