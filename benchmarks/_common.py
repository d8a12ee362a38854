"""Shared set-up of the benchmark scripts (run from the repository root: `python
benchmarks/NAME.py`)."""

import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))  # tiny_cfg of the training tests


def timed(fn, repeats, warmup=2):
    """Seconds per call of fn() (after `warmup` calls), the median of `repeats` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]
