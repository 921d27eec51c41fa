"""Long-run fuzzer of the generator: mutated definitions built into temporary folders.

    .venv/bin/python bench/fuzz_definitions.py --count 3000 --seed 1 [--seconds 600]

Each case mutates a definition of ``tests/generator/corpus/`` or ``schemas/`` (text edits,
hostile values, inserted keys) and builds its folder in a worker process with a time bound.
Prints a table: definitions tried, problems (expected), crashes (tracebacks), "OK" builds whose
output does not compile, writes outside the output folder, and hangs. Every count but the first
two must be zero; the first few bad cases are printed with their input.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.pool import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "generator"))

from definition_fuzzing import Outcome, Seed, mutate, run_case, seeds

CASE_TIMEOUT_S = 60.0
_CACHE: Path | None = None


def _init(cache: str) -> None:
    global _CACHE
    _CACHE = Path(cache)


def _one(case: tuple[Seed, str]) -> tuple[Outcome, str]:
    seed, text = case
    with tempfile.TemporaryDirectory(prefix="fuzz-def-") as tmp:
        return run_case(seed, text, Path(tmp), _CACHE)


def _cases(count: int, rng: random.Random) -> list[tuple[Seed, str]]:
    pool = seeds()
    chosen = [rng.choice(pool) for _ in range(count)]
    return [(seed, mutate(seed, rng)) for seed in chosen]


def run(count: int, seed: int, seconds: float | None, workers: int) -> Counter[Outcome]:
    """Fuzz ``count`` cases (or until ``seconds`` pass) and print the table."""
    cases = _cases(count, random.Random(seed))
    tally: Counter[Outcome] = Counter()
    shown = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-def-cache-") as cache:
        pool = Pool(workers, initializer=_init, initargs=(cache,))
        try:
            pending = [(case, pool.apply_async(_one, (case,))) for case in cases]
            for index, (case, future) in enumerate(pending):
                if seconds is not None and time.monotonic() - started > seconds:
                    break
                try:
                    outcome, detail = future.get(CASE_TIMEOUT_S)
                except multiprocessing.TimeoutError:
                    outcome, detail = Outcome.HANG, f"no result within {CASE_TIMEOUT_S:.0f} s"
                    pool.terminate()  # the hung worker cannot be stopped alone: start afresh
                    pool = Pool(workers, initializer=_init, initargs=(cache,))
                    pending[index + 1:] = [(c, pool.apply_async(_one, (c,)))
                                           for c, _ in pending[index + 1:]]
                tally[outcome] += 1
                if outcome not in (Outcome.BUILT, Outcome.PROBLEMS) and shown < 5:
                    shown += 1
                    print(f"--- {outcome.value}: {case[0].folder.name}/{case[0].rel}\n"
                          f"{case[1][:1500]}\n{detail}", file=sys.stderr)
        finally:
            pool.terminate()
    elapsed = time.monotonic() - started
    tried = sum(tally.values())
    print(f"definitions fuzzer: seed {seed}, {elapsed:.0f} s")
    print(f"{'definitions tried':<50}{tried:>8}")
    for outcome in Outcome:
        print(f"{outcome.value:<50}{tally[outcome]:>8}")
    return tally


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit code 1 when any bad count is not zero."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="definitions to try")
    parser.add_argument("--seed", type=int, default=1, help="random seed (reproducible runs)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--workers", type=int, default=max(1, (multiprocessing.cpu_count()
                                                               or 2) - 1))
    args = parser.parse_args(argv)
    tally = run(args.count, args.seed, args.seconds, args.workers)
    bad = sum(n for outcome, n in tally.items()
              if outcome not in (Outcome.BUILT, Outcome.PROBLEMS))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
