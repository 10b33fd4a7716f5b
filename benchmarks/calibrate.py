"""Time of ``pyfriction calibrate`` per million events, and what it learns on the journeys.

    python benchmarks/calibrate.py --users 80000          # about a million events
    python benchmarks/calibrate.py --fit-seed 1 --judge-seeds 2 3 --users 20000
    python benchmarks/calibrate.py --fit-seed 1 --judge-seeds 2 3 --users 5000 --config untuned.toml

The first form writes one seed's journeys (``benchmarks/journeys.py``) and times the whole
calibration (three passes over the log: evidence, validation with the base and with the tuned
config). The second calibrates on one seed and judges the tuned config against the default (and
the base, with ``--config``) on other seeds with ``benchmarks/detection.py``, ``--judge-users``
users each (default: ``--users``), and ends with the verdict of calibration's acceptance: on
every judged seed, recall >= 0.97 at <= 1% false positives, and more recall than the default
config at equal or fewer false positives (``--check`` exits 1 when a seed misses it).
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

from pyfriction import calibrate, load_config

#: Calibration's acceptance on the judged seeds (issue 16).
RECALL = 0.97
FPR = 0.01


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=80_000, help="users per seed (default: 80000)")
    parser.add_argument("--fit-seed", type=int, default=1, help="seed of the log calibrated on (default: 1)")
    parser.add_argument("--judge-seeds", type=int, nargs="*", default=[], help="seeds to judge on (default: none)")
    parser.add_argument("--engine", default="auto", choices=["auto", "compiled", "reference"], help="(default: auto)")
    parser.add_argument("--target-fpr", type=float, default=0.01, help="false-positive budget (default: 0.01)")
    parser.add_argument("--config", default=None, help="base config to calibrate from (default: the built-in one)")
    parser.add_argument("--spend-target", action="store_true", help="calibrate with --spend-target (default: off)")
    parser.add_argument("--judge-users", type=int, default=None, help="users per judged seed (default: --users)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a judged seed misses the acceptance")
    args = parser.parse_args(argv)
    met = True
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "fit.jsonl")
        events, _ = journeys.generate(args.users, args.fit_seed)
        journeys.write_log(log, events)
        del events
        started, cpu = time.perf_counter(), time.process_time()
        result = calibrate.calibrate(
            [log], args.config, engine=args.engine, target_fpr=args.target_fpr, spend_target=args.spend_target
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(calibrate.format_result(result))
        print(
            f"calibrate: {result.events:,} events in {seconds:.1f} s = {seconds / result.events * 1e6:.1f} s per million"
            f" ({cpu / result.events * 1e6:.1f} s of CPU per million: the figure to compare on a shared machine)"
        )
        if args.judge_seeds:
            tuned = os.path.join(tmp, "tuned.toml")
            calibrate.write_config(tuned, load_config(args.config), result)
            bases = [("default", None)] + ([("base", args.config)] if args.config else [])
            judged: dict[str, list[detection.SeedResult]] = {}
            for name, config in (*bases, ("tuned", tuned)):
                judged[name] = detection.run(args.judge_seeds, args.judge_users or args.users, config, args.engine)
                print(f"\n== {name} config on seeds {args.judge_seeds}, {args.judge_users or args.users:,} users each")
                print(detection.report(judged[name]).rsplit("\n\n", 1)[-1])
            print(f"\n== acceptance: recall >= {RECALL}, false positives <= {FPR:.0%}, more recall than the default "
                  "at equal or fewer false positives")  # fmt: skip
            for default, tuned_seed in zip(judged["default"], judged["tuned"]):
                ok = (tuned_seed.recall >= RECALL and tuned_seed.fpr <= FPR and tuned_seed.recall > default.recall
                      and tuned_seed.fpr <= default.fpr)  # fmt: skip
                met = met and ok
                print(
                    f"seed {default.seed}: recall {default.recall:.4f} -> {tuned_seed.recall:.4f}, false positives "
                    f"{default.fpr:.3%} -> {tuned_seed.fpr:.3%}, median lead {default.median_lead:.0f} s -> "
                    f"{tuned_seed.median_lead:.0f} s: {'met' if ok else 'MISSED'}"
                )
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
