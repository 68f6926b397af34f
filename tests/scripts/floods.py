"""A processing script that floods its output: --mb MB of 100-byte lines, one line of
--line-mb MB, then its last lines (which must reach the task log)."""

import argparse
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--mb", type=int, default=600)
parser.add_argument("--line-mb", type=int, default=60)
args = parser.parse_args()
line = ("x" * 98 + "\n").encode()
out = sys.stdout.buffer
chunk = line * 10_000  # ~1 MB
for _ in range(args.mb):
    out.write(chunk)
out.write(b"y" * (args.line_mb * 2**20) + b"\n")
for i in range(3):
    out.write(f"floods.py last line {i}\n".encode())
out.flush()
