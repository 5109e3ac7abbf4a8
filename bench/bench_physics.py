"""Benchmark: the gate's decisions under AWS physics over many seeds (run by hand; figures in notes).

    .venv/bin/python bench/bench_physics.py [--seeds 20]

The simulation of tests/test_physics_simulation.py (prod's policy, the real watch, key metrics and
comparison against tests/support/cloudwatch_sim.py on a virtual clock), with many more seeds than the
test suite runs (2 healthy, 1 per fault): prints the false rollbacks of healthy releases, and per fault
where each seed was stopped, by which rule, and how long after the shift.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llamadeploy.policy import load_policy  # noqa: E402
from tests.support.cloudwatch_sim import Faults  # noqa: E402
from tests.test_physics_simulation import FAULTS, run_plan  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    prod = load_policy(ROOT / "policies", "prod").policy
    started = time.process_time()
    false = [o for o in (run_plan(prod, seed, Faults()) for seed in range(args.seeds)) if o["stage"] is not None]
    print(f"healthy: {len(false)} false rollbacks in {args.seeds} seeds "
          f"({(time.process_time() - started) / args.seeds:.1f} s CPU per plan)")
    for o in false:
        print(f"  {o['stage']} {o['rule']}: {o['message'][:200]}")
    wrong = 0
    for name, (faults, stage, rules) in FAULTS.items():
        outcomes = [run_plan(prod, 1000 + seed, faults) for seed in range(args.seeds)]
        where = collections.Counter(f"{o['stage']} {o.get('rule')}" for o in outcomes)
        late = max((o.get("at", 0.0) for o in outcomes), default=0.0)
        wrong += sum(1 for o in outcomes if o["stage"] != stage or o.get("rule") not in rules)
        print(f"{name}: expected {stage}; {dict(where)}; at most {late:.0f} s after the shift")
    return 1 if false or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
