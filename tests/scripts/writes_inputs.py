"""A processing script that tries to change its inputs and its code, as a careless one might.

Reports what it could do in /opt/ml/processing/report/report.json for the test to check
(SageMaker gives a job copies: a job must never change its inputs or code on the host)."""

import json
import os

attempts = {}
code_dir = os.path.dirname(os.path.abspath(__file__))
targets = {"code": code_dir, **{name: os.path.join("/opt/ml/processing/input", name)
                                for name in os.listdir("/opt/ml/processing/input") if name != "code"}}
for name, folder in sorted(targets.items()):
    try:
        with open(os.path.join(folder, "written-by-the-job"), "w") as f:
            f.write("x")
        attempts[name] = "written"
    except OSError as exc:
        attempts[name] = type(exc).__name__ + ": " + exc.strerror
    for existing in sorted(os.listdir(folder)):
        try:
            with open(os.path.join(folder, existing), "a") as f:
                f.write("changed")
            attempts[f"{name}/{existing}"] = "written"
        except OSError as exc:
            attempts[f"{name}/{existing}"] = type(exc).__name__ + ": " + exc.strerror
report = {"attempts": attempts, "visible": {n: sorted(os.listdir(f)) for n, f in targets.items()}}
os.makedirs("/opt/ml/processing/report", exist_ok=True)
with open("/opt/ml/processing/report/report.json", "w") as f:
    json.dump(report, f)
print(json.dumps(report))
raise SystemExit(0)
