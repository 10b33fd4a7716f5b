"""Time of ``pyfriction calibrate`` per million events, and what it learns on the journeys.

    python benchmarks/calibrate.py --users 80000          # about a million events
    python benchmarks/calibrate.py --fit-seed 1 --judge-seeds 2 3 --users 2000
    python benchmarks/calibrate.py --fit-seed 1 --judge-seeds 2 3 --users 5000 --config untuned.toml

The first form writes one seed's journeys (``benchmarks/journeys.py``) and times the whole
calibration (three passes over the log: evidence, validation with the base and with the tuned
config). The second calibrates on one seed and judges the tuned config against the default on
other seeds with ``benchmarks/detection.py`` (the detection issue's acceptance measure).
Goal: <= 60 s per million events on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import detection
import journeys

from pyfriction import calibrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=80_000, help="users per seed (default: 80000)")
    parser.add_argument("--fit-seed", type=int, default=1, help="seed of the log calibrated on (default: 1)")
    parser.add_argument("--judge-seeds", type=int, nargs="*", default=[], help="seeds to judge on (default: none)")
    parser.add_argument("--engine", default="auto", choices=["auto", "compiled", "reference"], help="(default: auto)")
    parser.add_argument("--target-fpr", type=float, default=0.01, help="false-positive budget (default: 0.01)")
    parser.add_argument("--config", default=None, help="base config to calibrate from (default: the built-in one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "fit.jsonl")
        events, _ = journeys.generate(args.users, args.fit_seed)
        journeys.write_log(log, events)
        del events
        started = time.perf_counter()
        result = calibrate.calibrate([log], args.config, engine=args.engine, target_fpr=args.target_fpr)
        seconds = time.perf_counter() - started
        print(calibrate.format_result(result))
        print(
            f"calibrate: {result.events:,} events in {seconds:.1f} s = {seconds / result.events * 1e6:.1f} s per million"
        )
        if args.judge_seeds:
            tuned = os.path.join(tmp, "tuned.toml")
            calibrate.write_config(tuned, calibrate.load_config(args.config), result)
            bases = [("default", None)] + ([("base", args.config)] if args.config else [])
            for name, config in (*bases, ("tuned", tuned)):
                results = detection.run(args.judge_seeds, 2000 if args.users > 20_000 else args.users, config,
                                        args.engine)  # fmt: skip
                print(f"\n== {name} config on seeds {args.judge_seeds}")
                print(detection.report(results).rsplit("\n\n", 1)[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
