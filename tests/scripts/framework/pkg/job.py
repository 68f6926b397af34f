"""A framework-processing entry script (inside a sub folder of its source dir): imports a
module of its source dir and a package its requirements.txt installs, reads its settings,
tries to change them, and reports everything in its output for the test to check."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import helper  # noqa: E402  (a module of the source dir, beside pkg/)
import tabulate  # noqa: E402  (not in the image: installed from requirements.txt)

settings_path = os.environ["SMTASK_SETTINGS"]
with open(settings_path) as f:
    config = json.load(f)
try:
    with open(settings_path, "a") as f:
        f.write("changed")
    settings_write = "written"
except OSError as exc:
    settings_write = type(exc).__name__
pip_config = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True).stdout
report = {
    "config": config,
    "settings_path": settings_path,
    "settings_write": settings_write,
    "helper": helper.GREETING,
    "tabulate": tabulate.__version__,
    "pip_env": {k: v for k, v in os.environ.items() if k.startswith("PIP_")},
    "pip_config": pip_config.splitlines(),
    "argv": sys.argv[1:],
}
out = config["steps"][next(iter(config["steps"]))]["outputs"]["report"]["source"]
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f)
print("framework job report:", json.dumps(report))
