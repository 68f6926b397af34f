"""A processing script that runs long enough to be interrupted."""

import time

print("sleeps.py started", flush=True)
time.sleep(120)
print("sleeps.py finished", flush=True)
