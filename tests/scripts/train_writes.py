"""A training script that tries to change its channel and its source dir; writes a report
into the model folder (the one place a training job may write) and fails if any write worked."""

import json
import os

targets = {"train": os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"),
           "code": os.path.dirname(os.path.abspath(__file__))}
attempts = {}
for name, folder in targets.items():
    try:
        with open(os.path.join(folder, "written-by-the-job"), "w") as f:
            f.write("x")
        attempts[name] = "written"
    except OSError as exc:
        attempts[name] = type(exc).__name__ + ": " + exc.strerror
visible = {name: sorted(os.listdir(folder)) for name, folder in targets.items()}
with open(os.path.join(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"), "report.json"), "w") as f:
    json.dump({"attempts": attempts, "visible": visible}, f)
print(json.dumps(attempts))
raise SystemExit(1 if "written" in attempts.values() else 0)
