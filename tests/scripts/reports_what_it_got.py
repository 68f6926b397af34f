"""A processing or training script that writes down exactly what reached it: its arguments,
the variables named in $REPORT_VARIABLES, and (training) the hyperparameters as the SDK's
driver exported them. Processing: /opt/ml/processing/report/report.json; training: the model."""

import json
import os
import sys

names = [n for n in os.environ.get("REPORT_VARIABLES", "").split(",") if n]
report = {
    "argv": sys.argv[1:],
    "env": {name: os.environ.get(name) for name in names},
    "sm_hps": json.loads(os.environ["SM_HPS"]) if "SM_HPS" in os.environ else None,
    "sm_hp": {k: v for k, v in os.environ.items() if k.startswith("SM_HP_")},
}
folder = os.environ.get("SM_MODEL_DIR") or "/opt/ml/processing/report"
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "report.json"), "w") as f:
    json.dump(report, f)
print("reported:", json.dumps(report)[:2000])
