"""A training script that runs long enough to meet a time limit."""

import time

print("train_sleeps.py started", flush=True)
time.sleep(120)
print("train_sleeps.py finished", flush=True)
