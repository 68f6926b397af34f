"""A training script that reads its settings from the config channel, imports a package its
requirements installed, and saves what it saw in the model folder."""

import json
import os

import tabulate

path = os.environ["SMTASK_SETTINGS"]
with open(path) as f:
    config = json.load(f)
channels = sorted(os.listdir("/opt/ml/input/data"))
with open(os.path.join(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"), "seen.json"), "w") as f:
    json.dump({"config": config, "path": path, "tabulate": tabulate.__version__,
               "channels": channels,
               "pip_env": {k: v for k, v in os.environ.items() if k.startswith("PIP_")}}, f)
print("trained with settings", json.dumps(config["steps"]))
