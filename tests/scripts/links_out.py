"""A processing script that links its output to host paths (given as arguments), hoping the
host's copy of the outputs follows the links, and leaves a fifo that would hang that copy."""

import os
import sys

out = "/opt/ml/processing/train"
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "data.csv"), "w") as f:
    f.write("1\n")
os.symlink(sys.argv[1], os.path.join(out, "leak.txt"))
os.symlink(sys.argv[2], os.path.join(out, "leakdir"))
os.mkfifo(os.path.join(out, "hang"))
print("linked", flush=True)
