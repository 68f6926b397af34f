"""What the benchmarks share: ending the moto server each runs in a child process."""

from __future__ import annotations

import subprocess


def end(child: subprocess.Popen, timeout: float) -> None:
    """Close the child's stdin (its cue to stop), wait for it, and kill it if it hangs."""
    if child.stdin:
        child.stdin.close()
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
