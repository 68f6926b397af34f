"""A training script that resumes from its checkpoints, as a spot job's script does: it counts
its attempts in /opt/ml/checkpoints (SM_CHECKPOINTS, else SageMaker's default folder), fails
on the first (an interruption) and, on a later one, writes what it resumed from into its
model. It also leaves a link to a host file, a setuid program and a world-writable file among
its checkpoints (no link and no such bit may stay on the host)."""

import json
import os

folder = os.environ.get("CHECKPOINT_DIR", "/opt/ml/checkpoints")
state_file = os.path.join(folder, "state.json")
state = {"attempts": 0}
if os.path.exists(state_file):
    with open(state_file) as f:
        state = json.load(f)
resumed_from = state["attempts"]
state["attempts"] += 1
with open(state_file, "w") as f:
    json.dump(state, f)
link = os.path.join(folder, "passwd-link")
if not os.path.lexists(link):
    os.symlink("/etc/passwd", link)
tool = os.path.join(folder, "suid-tool")  # a setuid-root program, and a world-writable file
with open(tool, "w") as f:
    f.write("#!/bin/sh\n")
os.chmod(tool, 0o4755)
with open(os.path.join(folder, "open-file"), "w") as f:
    f.write("x")
os.chmod(os.path.join(folder, "open-file"), 0o777)
print(f"attempt {state['attempts']}, resumed from {resumed_from}", flush=True)
if state["attempts"] == 1:
    raise SystemExit("InterruptedError: the spot instance was reclaimed (simulated)")
with open(os.path.join(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"), "resumed.json"), "w") as f:
    json.dump({"resumed_from": resumed_from, "listing": sorted(os.listdir(folder))}, f)
