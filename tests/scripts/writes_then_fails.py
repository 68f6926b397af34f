"""A processing script that writes its outputs (and a _SUCCESS marker) and then fails, or,
with --size-mb N, writes an N MB part before its marker and succeeds."""

import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument("--size-mb", type=int, default=0)
args = parser.parse_args()
out = "/opt/ml/processing/train"
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "part-0.csv"), "w") as f:
    f.write("label,x\n1,2\n")
if args.size_mb:
    with open(os.path.join(out, "part-1.bin"), "wb") as f:
        f.write(os.urandom(args.size_mb * 2**20))
with open(os.path.join(out, "_SUCCESS"), "w") as f:
    f.write("")
print("wrote the outputs", flush=True)
if not args.size_mb:
    raise SystemExit("ValueError: failed after writing the outputs")
