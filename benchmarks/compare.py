"""Compiled vs reference engine on the realistic 1,000,000-user stream, as one small table.

    python benchmarks/compare.py [--users N] [--rounds R] [--reference-memory]

Same measurements as ``benchmarks/test_engine.py`` but timeit-style (best of R rounds, the
garbage collector off while timing) and without pytest: compiled ``observe()`` per event
(100,000-event chunk), compiled ``observe_many()`` on the whole stream as one columnar batch,
reference ``observe()`` per event (20,000-event chunk), the speed-up over the reference, and
resident bytes per tracked user (a clean subprocess per engine; the reference engine's only
with ``--reference-memory``, which takes about a minute at one million users).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness
import streams


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--users",
        type=int,
        default=harness.users_from_env(),
        help="distinct users in the stream (default: BENCH_USERS or 1,000,000)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per measurement (best is kept)")
    parser.add_argument("--observe-chunk", type=int, default=100_000)
    parser.add_argument("--reference-chunk", type=int, default=20_000)
    parser.add_argument(
        "--reference-memory", action="store_true", help="also measure the reference engine's bytes per user (slow)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the reference engine")
    args = parser.parse_args(argv)  # fmt: skip

    t = time.perf_counter()
    stream = streams.generate(args.users)
    print(f"stream: {len(stream):,} events, {stream.users:,} distinct users, {stream.span / 3600:.1f} h of"
          f" event time, generated in {time.perf_counter() - t:.1f} s; capacity {harness.CAPACITY:,};"
          f" Python {platform.python_version()}, {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    mid = len(stream) // 2
    rows: list[tuple[str, str, float, float | None]] = []  # engine, mode, ns/event, bytes/user

    error = harness.compiled_error()
    if error is None:
        warm = harness.Warm("compiled", stream)
        print(
            f"compiled: warmed with the whole stream in {warm.wall_seconds:.1f} s"
            f" ({warm.episodes / len(stream) * 1000:.1f} friction episodes per 1,000 events)",
            flush=True,
        )
        chunk = harness.DictChunk(stream, mid - args.observe_chunk // 2, args.observe_chunk)
        best = min(harness.time_rounds(chunk, warm, args.rounds, warmup=2))
        observe_ns = best / len(chunk) * 1e9
        batch = harness.ColumnChunk(stream)
        best = min(harness.time_rounds(batch, warm, max(3, args.rounds // 2), warmup=1))
        many_ns = best / len(batch) * 1e9
        warm.tracker.close(timeout=5.0)
        del warm, chunk, batch
        mem = harness.memory_per_user(args.users, "compiled")["bytes_per_user"]
        rows += [("compiled", "observe", observe_ns, mem), ("compiled", "observe_many", many_ns, mem)]
    else:
        print(f"compiled: skipped, {error}")

    ref_ns = None
    if not args.no_reference:
        t = time.perf_counter()
        start = mid - args.reference_chunk // 2
        warmup = harness.reference_warmup(stream, start)
        warm = harness.Warm("reference", warmup)
        print(
            f"reference: warmed with {len(warmup):,} events (every user's first, and the 100,000"
            f" before the chunk) in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        chunk = harness.DictChunk(stream, start, args.reference_chunk)
        best = min(harness.time_rounds(chunk, warm, max(3, args.rounds // 2), warmup=1))
        ref_ns = best / len(chunk) * 1e9
        warm.tracker.close(timeout=5.0)
        del warm, chunk
        ref_mem = harness.memory_per_user(args.users, "reference")["bytes_per_user"] if args.reference_memory else None
        rows.append(("reference", "observe", ref_ns, ref_mem))

    print()
    print(f"{'engine':<10} {'mode':<13} {'ns/event':>9} {'events/s':>12} {'ratio':>7} {'bytes/user':>11}")
    for engine, mode, ns, mem in rows:
        ratio = f"{ref_ns / ns:6.1f}x" if ref_ns else "    n/a"
        mem_s = f"{mem:11.1f}" if mem is not None else f"{'-':>11}"
        print(f"{engine:<10} {mode:<13} {ns:9.1f} {1e9 / ns:12,.0f} {ratio:>7} {mem_s}")
    print("(timeit-style best round; ratio = reference observe ns/event / this row's ns/event;"
          " bytes/user = RSS growth / users tracked)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
