"""What installing the plugin costs a pytest run that does not use the gate.

    .venv/bin/python bench/bench_startup.py [--pairs 8]

Runs ``pytest --co -q`` in an empty temporary folder, with the plugin and with
``-p no:llamadeploy``, alternating (paired runs, so drift of the machine hits
both sides alike), and prints the medians and the median of the paired
differences. Goal (issue 10): the plugin costs at most 150 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def _once(folder: str, *extra: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *extra], cwd=folder,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=60)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    with_plugin, without, diffs = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        _once(folder)  # warm the file cache and the .pyc files
        for _ in range(args.pairs):
            a = _once(folder)
            b = _once(folder, "-p", "no:llamadeploy")
            with_plugin.append(a)
            without.append(b)
            diffs.append(a - b)
    print(f"with the plugin     median {statistics.median(with_plugin) * 1000:7.0f} ms")
    print(f"-p no:llamadeploy   median {statistics.median(without) * 1000:7.0f} ms")
    print(f"paired difference   median {statistics.median(diffs) * 1000:7.0f} ms over {args.pairs} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
