"""A processing script that gives up with an exit code and a line on stderr, no traceback."""

import sys

print("reading input", flush=True)
print("no usable rows in the input", file=sys.stderr, flush=True)
sys.exit(3)
